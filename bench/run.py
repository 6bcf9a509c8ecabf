"""envfence benchmark: how long the proofs take, and how that grows. `make bench` runs it.

Prints figures, asserts nothing (timed tests would be flaky on a shared 2-core machine):

1. the repository's stacks: evaluation, rules, IAM proof and network proof, best of 3;
2. statements per policy: one role's identity policy grown to 10 ... 1,000 statements (each
   naming its own environment's resources, so the proof must show that none of them reaches
   the other environment), time per environment pair;
3. roles per environment: 6 ... 96 roles;
4. environments: 2 ... 10 stacks (clones of the experiment stack, each with its own account,
   names and CIDR), time per pair: flat means total time linear in the number of pairs.

Targets (issue 5): both stacks proved in under 2 s; a 1,000-statement policy in under 1 s per
pair; growth no worse than linear in the number of environment pairs.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envfence.evaluate import _EC2_IDS, evaluate  # noqa: E402
from envfence.model import StackState  # noqa: E402
from envfence.project import Project, load_project  # noqa: E402
from envfence.prove.iam_proof import prove_iam  # noqa: E402
from envfence.prove.network import prove_network  # noqa: E402
from envfence.prove.run import prove as prove_all  # noqa: E402
from envfence.prove.world import build_world  # noqa: E402
from envfence.rules import run_all  # noqa: E402
from envfence.rules.context import build_context  # noqa: E402

Stacks = dict[str, StackState]


def best(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def iam(stacks: Stacks, project: Project) -> Any:
    ctx = build_context(stacks.values(), project)
    world = build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})
    return prove_iam(world, project.name)


def row(*cells: object, widths: tuple[int, ...] = (28, 12, 12, 12, 14)) -> None:
    print(
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        )
    )


# -- generated environments -------------------------------------------------------------------


def replace_everywhere(state: StackState, pairs: list[tuple[str, str]]) -> StackState:
    doc = json.dumps(state.to_document())
    for old, new in pairs:
        doc = doc.replace(old, new)
    data = json.loads(doc)
    from envfence.state import load_document

    clone = load_document(data, f"bench:{pairs[0][1]}")
    return clone


def clone_experiment(state: StackState, index: int) -> StackState:
    """An independent experiment environment: own stack name, account, names and CIDR."""
    name = f"exp{index:02d}"
    return replace_everywhere(
        state,
        [
            ("urn:pulumi:experiment::", f"urn:pulumi:{name}::"),
            ("envfence-experiment", f"envfence-{name}"),
            ("/envfence/experiment/", f"/envfence/{name}/"),
            ('"experiment-id": "', f'"experiment-id": "{name}-'),
            ('"environment": "experiment"', f'"environment": "{name}"'),
            ('"stack": "experiment"', f'"stack": "{name}"'),
            ("210987654321", f"3{index:011d}"),
            ("10.20.", f"10.{40 + index}."),
        ],
    )


# An EC2 id as the offline evaluation makes them: a prefix and 17 characters (hex, or "d"/"m"
# marking a VPC's default group or main route table).
EC2_PREFIXES = "|".join(sorted(map(re.escape, set(_EC2_IDS.values())), key=len, reverse=True))
EC2_ID = re.compile(rf"\b({EC2_PREFIXES})-([0-9a-z]{{17}})\b")


def own_network_ids(state: StackState) -> StackState:
    """The clone with EC2 ids of its own (VPC, subnets, groups, route tables, NAT, endpoints...).

    `clone_experiment` copies the experiment stack's physical ids, so every clone declares the
    *same* VPC, subnets and security groups as the experiment stack: for the network proof that
    is one shared network (the clones are rightly refuted against each other) whose VPC gains a
    CIDR, and its tables and groups a copy of every route and rule, per clone. The evaluation of
    a real new stack gives it its own ids (they are hashed from the stack name), as this does.
    """

    def fresh(m: re.Match[str]) -> str:
        digest = hashlib.sha256(f"{state.stack}/{m[2]}".encode()).hexdigest()
        return f"{m[1]}-{m[2][0]}{digest[:16]}"  # keeps the "d"/"m" marker

    doc = EC2_ID.sub(fresh, json.dumps(state.to_document()))
    from envfence.state import load_document

    return load_document(json.loads(doc), f"bench:{state.stack}")


def grow_policy(stacks: Stacks, statements: int) -> Stacks:
    out = copy.deepcopy(stacks)
    exp = out["experiment"]
    policy = exp.named("policy-pipeline", "aws:iam/rolePolicy:RolePolicy")
    doc = json.loads(policy.get("policy"))
    buckets = [str(r.get("arn")) for r in exp.of_type("aws:s3/bucket:Bucket")]
    actions = ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetObjectVersion", "s3:Get*"]
    extra = []
    for i in range(statements - len(doc["Statement"])):
        bucket = buckets[i % len(buckets)]
        extra.append(
            {
                "Sid": f"Generated{i}",
                "Effect": "Allow",
                "Action": actions[i % len(actions)],
                "Resource": f"{bucket}/prefix-{i}/*" if i % 3 else bucket,
            }
        )
    doc["Statement"] += extra
    policy.set("policy", json.dumps(doc))
    return out


def grow_roles(stacks: Stacks, roles: int) -> Stacks:
    out = copy.deepcopy(stacks)
    exp = out["experiment"]
    role = exp.named("role-pipeline", "aws:iam/role:Role")
    policy = exp.named("policy-pipeline", "aws:iam/rolePolicy:RolePolicy")
    existing = len(exp.of_type("aws:iam/role:Role"))
    for i in range(roles - existing):
        name = f"envfence-experiment-job{i}"
        r = copy.deepcopy(role)
        r.urn = role.urn.replace("role-pipeline", f"role-job{i}")
        r.set("name", name)
        r.set("arn", str(role.get("arn")).replace("envfence-experiment-pipeline", name))
        p = copy.deepcopy(policy)
        p.urn = policy.urn.replace("policy-pipeline", f"policy-job{i}")
        p.set("role", name)
        exp.resources += [r, p]
    return out


def main() -> None:
    project = load_project()
    print("envfence benchmark (best of 3; seconds)\n")

    started = time.perf_counter()
    stacks = {name: evaluate(name, project) for name in project.stacks()}
    print(f"evaluate {len(stacks)} stacks offline (cold): {time.perf_counter() - started:.2f}")
    t_eval, _ = best(lambda: {name: evaluate(name, project) for name in project.stacks()})
    t_rules, _ = best(lambda: run_all(stacks.values(), project))
    t_iam, proof = best(lambda: iam(stacks, project))
    t_net, _ = best(lambda: prove_network(stacks))
    t_all, report = best(lambda: prove_all(stacks.values(), project))
    print(f"evaluate (warm):            {t_eval:.3f}")
    print(f"rules, all stacks:          {t_rules:.3f}")
    print(f"IAM proof, both stacks:     {t_iam:.3f}  (controls included; target < 2 s)")
    print(f"network proof, both stacks: {t_net:.3f}")
    print(
        f"envfence prove, both stacks: {t_all:.3f}  (IAM + network + {len(report.real)} "
        "real-request controls + worker encoding controls; target < 2 s)"
    )
    print(f"statuses: {[(p.source, p.target, p.status) for p in proof.pairs]}")

    print("\nstatements in one identity policy (per pair; target: 1,000 in < 1 s)")
    row("statements", "iam total", "per pair", "status")
    for n in (10, 100, 1000):
        grown = grow_policy(stacks, n)
        t, result = best(lambda grown=grown: iam(grown, project), repeat=1)
        per_pair = statistics.mean(p.seconds for p in result.pairs)
        max_pair = max(p.seconds for p in result.pairs)
        row(n, f"{t:.3f}", f"{max_pair:.3f}", ",".join(sorted({p.status for p in result.pairs})))
        del per_pair

    print("\nroles in one environment")
    row("roles", "iam total", "per pair", "status")
    for n in (6, 24, 96):
        grown = grow_roles(stacks, n)
        t, result = best(lambda grown=grown: iam(grown, project), repeat=1)
        row(
            n,
            f"{t:.3f}",
            f"{max(p.seconds for p in result.pairs):.3f}",
            ",".join(sorted({p.status for p in result.pairs})),
        )

    print("\nenvironments (experiment clones): per-pair time flat = linear in pairs")
    widths = (8, 6, 10, 9, 10, 9, 10, 10)
    row("stacks", "pairs", "iam total", "per pair", "network", "per pair", "iam", "network",
        widths=widths)  # fmt: skip
    for n in (2, 4, 6, 10):
        many = dict(stacks)
        for i in range(n - 2):
            c = clone_experiment(stacks["experiment"], i)
            many[c.stack] = c
        t, result = best(lambda many=many: iam(many, project), repeat=1)
        # The network proof reads physical ids: each clone gets its own (see own_network_ids).
        net = {k: v if k in stacks else own_network_ids(v) for k, v in many.items()}
        t_n, net_results = best(lambda net=net: prove_network(net), repeat=1)
        pairs = len(result.pairs)
        net_pairs = [r for r in net_results if r.source != r.target]
        row(
            n,
            pairs,
            f"{t:.3f}",
            f"{t / pairs:.3f}",
            f"{t_n:.3f}",
            f"{t_n / len(net_pairs):.3f}",
            ",".join(sorted({p.status for p in result.pairs})),
            ",".join(sorted({r.status for r in net_results})),
            widths=widths,
        )


if __name__ == "__main__":
    main()
