"""envfence benchmark: `make bench` prints figures next to their targets (issue 12).

Prints figures and asserts nothing (timed tests would be flaky on a shared 2-core machine):

1. `envfence check` of the repository's stacks, as a user runs it (a new process each time):
   cold (an empty cache: evaluation, rules, proofs) and cached (nothing changed since), median of
   3 runs, wall time and peak memory;
2. the scale series: prod, experiment and generated experiment stacks (bench/generate.py: each
   in an account of its own, with its own CIDR and names, evaluated for real once, then read
   from the cache), `envfence check` of the first 2, 11, 26 and 51 stacks: wall time, rules,
   proofs, peak memory and time per environment (flat: linear in the number of environments);
3. one environment against everything outside it versus one question per pair (the IAM proof
   of 11 stacks both ways: the first grows with the environments, the second with their square);
4. statements per policy: one role's identity policy grown to 10, 100 and 1,000 statements
   (each naming its own environment's resources), time per environment;
5. roles per environment: 6 ... 96 roles.

Peak memory is the largest resident set of the process tree (`wait4`): evaluation and proof
workers are forked processes, each counted on its own, not added up.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generate import generate  # noqa: E402

from envfence.model import StackState  # noqa: E402
from envfence.project import Project, load_project  # noqa: E402
from envfence.prove.iam_proof import prove_iam  # noqa: E402
from envfence.prove.world import build_world  # noqa: E402
from envfence.rules.context import build_context  # noqa: E402

Stacks = dict[str, StackState]
ENVFENCE = str(Path(sys.executable).parent / "envfence")
SERIES = (2, 11, 26, 51)


# -- measuring a process -------------------------------------------------------------------


def measure(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str, int]:
    """Wall seconds, peak RSS in MiB (largest process of the tree), stderr, exit code."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=False
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode()
    return wall, usage.ru_maxrss / 1024, stderr, proc.returncode


def step(stderr: str, what: str) -> float | None:
    """The seconds of a `--progress plain` step line ("envfence: checked ... (0.8 s)")."""
    m = re.search(rf"envfence: {what}[^\n]*\(([\d.]+) s\)", stderr)
    return float(m[1]) if m else None


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ENVFENCE_NO_CACHE", "CI")}
    env.update(extra)
    return env


def row(*cells: object, widths: tuple[int, ...]) -> None:
    print(
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        )
    )


def verdict(value: float, target: float) -> str:
    return "meets" if value < target else "MISSES"


# -- 1. the repository's check, cold and cached -----------------------------------------------


def repository_check() -> None:
    print("1. envfence check of the repository's stacks (rules and proofs; median of 3 runs)")
    cold, cached, peaks = [], [], []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as cache:
            env = environment(ENVFENCE_CACHE_DIR=cache)
            wall, peak, err, code = measure([ENVFENCE, "check"], ROOT, env)
            assert code == 0, err
            cold.append(wall)
            peaks.append(peak)
            wall, peak, err, code = measure([ENVFENCE, "check"], ROOT, env)
            assert code == 0, err
            cached.append(wall)
            peaks.append(peak)
    widths = (34, 10, 10, 10)
    row("", "seconds", "target", "", widths=widths)
    c, w = statistics.median(cold), statistics.median(cached)
    row("cold (empty cache: evaluates)", f"{c:.2f}", "< 2", verdict(c, 2), widths=widths)
    row("cached (nothing changed)", f"{w:.2f}", "< 1", verdict(w, 1), widths=widths)
    print(f"  peak memory: {max(peaks):.0f} MiB\n")


# -- 2. the scale series ------------------------------------------------------------------------


def scale_series(project_dir: Path, cache: Path) -> None:
    print("2. scale series: envfence check of prod, experiment and generated experiment stacks")
    names = generate(project_dir, max(SERIES) - 2)
    env = environment(ENVFENCE_CACHE_DIR=str(cache))
    started = time.perf_counter()
    _, _, err, code = measure([ENVFENCE, "plan", "--format", "json"], project_dir, env)
    assert code == 0, err
    print(
        f"  (setup, not measured: {len(names)} stacks evaluated for real in "
        f"{time.perf_counter() - started:.1f} s, then read from the cache)"
    )
    widths = (7, 8, 7, 7, 9, 9, 9, 10)
    row("stacks", "wall s", "rules", "proofs", "peak MiB", "s / env", "target", "", widths=widths)
    for n in SERIES:
        argv = [ENVFENCE, "check", "--progress", "plain"]
        for name in names[:n]:
            argv += ["--stack", name]
        wall, peak, err, code = measure(argv, project_dir, env)
        assert code == 0, err
        rules = step(err, "checked")
        proofs = step(err, "proved isolation")
        target = "< 10 s" if n == max(SERIES) else ""
        mark = (
            f"{verdict(wall, 10)}, {verdict(peak, 400)} 400 MiB" if n == max(SERIES) else ""
        )
        row(
            n,
            f"{wall:.2f}",
            f"{rules:.2f}" if rules is not None else "?",
            f"{proofs:.2f}" if proofs is not None else "?",
            f"{peak:.0f}",
            f"{wall / n:.3f}",
            target,
            mark,
            widths=widths,
        )
    print("  (s / env flat from 11 stacks on: linear in the number of environments)\n")


def generated_states(project_dir: Path, cache: Path, count: int) -> tuple[Stacks, Project]:
    from envfence.evaluate import evaluate_many

    os.environ["ENVFENCE_CACHE_DIR"] = str(cache)
    project = load_project(project_dir)
    names = ["prod", "experiment", *[s for s in project.stacks() if s.startswith("exp-")]]
    states = evaluate_many(names[:count], project)
    return {s.stack: s for s in states}, project


# -- 3. per environment versus per pair ---------------------------------------------------------


def iam(stacks: Stacks, project: Project, **kwargs: Any) -> Any:
    ctx = build_context(stacks.values(), project)
    world = build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})
    return prove_iam(world, project.name, **kwargs)


def per_environment_versus_per_pair(stacks: Stacks, project: Project) -> None:
    print(f"3. the IAM proof of {len(stacks)} stacks, without controls (one process)")
    widths = (40, 9, 10, 10)
    row("", "seconds", "questions", "verdicts", widths=widths)
    for label, kwargs in (
        ("one per environment, everything outside", {}),
        ("one per ordered pair", {"per_pair": True}),
    ):
        t, result = best(lambda kwargs=kwargs: iam(stacks, project, controls=False, **kwargs), 1)
        statuses = ",".join(sorted({p.status for p in result.pairs}))
        row(label, f"{t:.2f}", len(result.pairs), statuses, widths=widths)
    print()


# -- 4. and 5. policy and role growth ------------------------------------------------------------


def best(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


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


def growth(stacks: Stacks, project: Project) -> None:
    two = {k: stacks[k] for k in ("prod", "experiment")}
    print("4. statements in one identity policy (IAM proof with controls; target: 1,000 in < 1 s")
    print("   per environment)")
    widths = (12, 10, 12, 10, 9)
    row("statements", "iam total", "per env", "target", "verdicts", widths=widths)
    for n in (10, 100, 1000):
        grown = grow_policy(two, n)
        t, result = best(lambda grown=grown: iam(grown, project), repeat=1)
        per_env = t / len(two)
        row(
            n,
            f"{t:.3f}",
            f"{per_env:.3f}",
            f"< 1 s {verdict(per_env, 1)}" if n == 1000 else "",
            ",".join(sorted({p.status for p in result.pairs})),
            widths=widths,
        )
    print("\n5. roles in one environment (IAM proof with controls)")
    row("roles", "iam total", "per env", "", "verdicts", widths=widths)
    for n in (6, 24, 96):
        grown = grow_roles(two, n)
        t, result = best(lambda grown=grown: iam(grown, project), repeat=1)
        row(
            n,
            f"{t:.3f}",
            f"{t / len(two):.3f}",
            "",
            ",".join(sorted({p.status for p in result.pairs})),
            widths=widths,
        )


def main() -> None:
    print(f"envfence benchmark ({os.cpu_count()} CPUs)\n")
    repository_check()
    with tempfile.TemporaryDirectory() as tmp:
        project_dir, cache = Path(tmp) / "project", Path(tmp) / "cache"
        scale_series(project_dir, cache)
        states, project = generated_states(project_dir, cache, 11)
        per_environment_versus_per_pair(states, project)
        growth(states, project)


if __name__ == "__main__":
    main()
