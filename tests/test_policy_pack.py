"""The real CrossGuard pack (`policy/`), run in-process by `envfence.packrunner` the way
`pulumi preview --policy-pack policy --policy-pack-config policy/config.json` drives it, reports
exactly what `envfence check` reports (`envfence.rules.run_all`): per stack, the same set of
(rule id, resource URN) as mandatory violations — on the clean stacks, on near misses and on
leaky stacks built with `tests/mutations.py`.

The pack sees one stack at a time and learns the other environments from the repository's stack
files. What that cannot show it is listed in `KNOWN_GAPS`; everything else must match exactly.

Speed: one pack run costs ~0.4 s per stack (the SDK deserializes every resource for every stack
policy), so leaks are checked in batches (`BATCHES`): the leaks of a batch change disjoint
resources and config keys (asserted), each must show up in `envfence check`'s findings on or
next to what it changed, and the pack runs once per changed stack. A stack whose state and stack
files are those of the clean run gets the clean run's diagnostics: the pack's verdict depends on
nothing else.
Leaks that change config are written into the stack files of a copy of the repository, as a user
would make them, and every stack's pack reads those.
"""

from __future__ import annotations

import ast
import copy
import json
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mutations as m
import pytest
import yaml
from google.protobuf import empty_pb2

from envfence import packrunner
from envfence.crossguard import PER_RESOURCE_RULES, RESOURCE_RULES_NEEDING_STACK
from envfence.model import STACK_TYPE, StackState
from envfence.project import Project
from envfence.rules import all_rules, run_all

RULES = all_rules()
RULE_ID = {r.name: r.id for r in RULES}
UNKNOWN_PREFIX = "EF902 values-known:"
TESTS = Path(__file__).resolve().parent

Pairs = set[tuple[str, str]]  # (rule id, resource URN)

# What the pack cannot see, per leak: {rule id: why}. The pack analyzes one stack; the other
# environments are known from their stack files only (account, CIDR, names and the ARNs derived
# from them), never from their resources' ids.
KNOWN_GAPS: dict[str, dict[str, str]] = {
    "ingress_rule_on_other_sg": {
        "EF105": "the rule is attached to the other stack's security group by its id (sg-...): "
        "only the other stack's state knows that id",
    },
    "uses_other_subnet": {
        "EF105": "the subnet group lists the other stack's subnet by its id (subnet-...): only "
        "the other stack's state knows that id",
    },
    "no_provider": {
        "EF903": "the engine gives every custom resource a provider (the default one when none "
        "is set: the `default_provider` leak, which the pack reports); CrossGuard does not say "
        "which resources are custom, so a provider-less AWS resource, possible only in a "
        "hand-edited state, looks like a component to the pack",
    },
}

# Leaks checked together: "name" or "name key=value ..." (keyword arguments for the mutation).
# Each batch changes disjoint resources and config keys; every rule id is covered by some batch
# (`test_batches_cover_every_rule`).
BATCHES: dict[str, tuple[str, ...]] = {
    "prod-network-data": (
        "vpc_peering",
        "transit_gateway_attachment",
        "ingress_from_other_cidr",
        "inline_sg_ingress",
        "sg_rule_ingress",
        "subnet_in_other_vpc",
        "subnet_public_ip",
        "db_public",
        "pab_setting_off",
        "bucket_sse_s3",
        "versioning_suspended",
        "bucket_policy_no_tls_deny",
        "snapshot_shared",
        "queue_without_kms",
        "log_group_without_key",
        "repository_mutable_tags",
        "identity_results_wildcard",
        "task_runs_as_root",
        "audit_without_object_lock",
        "unknown_tag_value",
        "no_provider",
        "flag_set_not_deployed",
    ),
    "prod-identity-compute": (
        "ingress_from_prefix_list",
        "default_sg_ingress",
        "ingress_rule_on_other_sg",
        "uses_other_subnet",
        "ram_share",
        "pab_missing store=curated",
        "bucket_policy_allow_star",
        "prod_db_unprotected",
        "identity_all_buckets",
        "passrole_other_env",
        "trust_service_without_source_account",
        "role_without_boundary",
        "boundary_without_tag_session_deny",
        "managed_policy_attached",
        "key_policy_star",
        "task_privileged",
        "service_public_ip",
        "trail_single_region",
        "audit_deny_exempts_role",
        "unknown_tags",
        "default_provider",
    ),
    "experiment": (
        "route_via_peering",
        "data_subnet_route",
        "db_other_key",
        "bucket_sse_other_key",
        "bucket_policy_allow_other_root",
        "flow_bucket_allow_write",
        "queue_policy_grant",
        "secret_policy_grant",
        "queue_other_key",
        "log_group_kept_forever",
        "repository_aes256",
        "trust_other_env_role",
        "key_policy_other_role",
        "lifecycle_without_expiration",
        "task_role_of_other_env",
        "service_in_other_subnet",
        "trail_without_data_events",
        "audit_policy_allows_role_delete",
        "unclassified_type",
        "elastic_ips_over_quota",
    ),
    # The deployer locked out of prod's key (the same key as key_rotation_off, so apart).
    "prod-key-deployer": ("key_locks_out_deployer",),
    # Config leaks (in the stack files) and, while every stack's pack runs anyway, more of both.
    "stack-files": (
        "flow_one_side",
        "experiment_expired",
        "role_other_boundary",
        "tagged_other_env",
        "image_from_other_repository",
        "ingress_from_anywhere",
        "boundary_without_tag_keys_deny",
        "key_rotation_off",
        "provider_tags_removed",
        "prod_bucket_force_destroy",
        "unknown_value",
        "identity_not_resource",
        "service_exec",
        "task_image_public",
        "repository_without_scan",
        "trail_drops_other_stacks",
    ),
}


# --------------------------------------------------------------------------------------------
# Findings of both front-ends


def rule_of(d: packrunner.Diagnostic) -> str:
    """The rule id of a pack diagnostic: its policy's rule, or EF902 when that policy could not
    decide (the SDK's message is the policy description, a newline, then the reported text)."""
    body = d.message.split("\n", 1)[1] if "\n" in d.message else ""
    return "EF902" if body.startswith(UNKNOWN_PREFIX) else RULE_ID[d.policy_name]


def pack_pairs(stack: str, diagnostics: list[packrunner.Diagnostic]) -> Pairs:
    # Anything not mandatory would be a check that silently did not happen (the SDK's advisory
    # "can't run policy during preview") or a policy below its configured level; only the
    # advisory rules (EF504: an expired experiment warns) report at their own level.
    advisory = {r.name for r in RULES if r.advisory}
    assert [
        d
        for d in diagnostics
        if d.enforcement_level != "mandatory"
        and not (d.enforcement_level == "advisory" and d.policy_name in advisory)
    ] == []
    reported = [
        d for d in diagnostics if d.policy_name in advisory or d.enforcement_level == "mandatory"
    ]
    pairs = {(rule_of(d), d.urn) for d in reported}
    assert {urn.split("::")[0] for _, urn in pairs} <= {f"urn:pulumi:{stack}"}, pairs
    return pairs


def check_pairs(states: Mapping[str, StackState], project: Project) -> dict[str, Pairs]:
    out: dict[str, Pairs] = {name: set() for name in states}
    result = run_all(list(states.values()), project)
    for v in [*result.violations, *result.warnings]:  # the pack reports both, at their level
        out[v.stack].add((v.rule, v.urn))
    return out


def root_urn(state: StackState) -> str:
    return next(r.urn for r in state.resources if r.type == STACK_TYPE)


def describe(pairs: Pairs) -> list[str]:
    return sorted(f"{rule} {urn.rsplit('::', 1)[-1]}" for rule, urn in pairs)


# --------------------------------------------------------------------------------------------
# Running the pack


@contextmanager
def sys_path_kept() -> Iterator[None]:
    """policy/__main__.py puts its repository root on sys.path; keep a copy's root off it."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def repository_copy(root: Path, project: Project, states: Mapping[str, StackState]) -> Path:
    """A copy of the repository's Pulumi.yaml and pack, with stack files holding each state's
    config (as the CLI-style strings the program reads: `to_cli_string` keeps them as they are).
    Returns the copy's pack directory."""
    shutil.copy(project.root / "Pulumi.yaml", root / "Pulumi.yaml")
    shutil.copytree(
        packrunner.pack_dir(), root / "policy", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name, state in states.items():
        text = yaml.safe_dump({"config": dict(state.config)}, sort_keys=True)
        (root / f"Pulumi.{name}.yaml").write_text(text)
    return root / "policy"


class Snapshot:
    """The resources and config of `states` as they were: copies of only what changes (a deep
    copy of both stacks per leak would cost more than the checks)."""

    def __init__(self, states: Mapping[str, StackState]) -> None:
        # Kept by reference: the caller never mutates these (the session's clean stacks).
        self.resources = {n: {r.urn: r for r in s.resources} for n, s in states.items()}
        self.config = {n: dict(s.config) for n, s in states.items()}

    def update(self, states: Mapping[str, StackState]) -> set[str]:
        """The URNs and config keys (`config:<stack>:<key>`) changed since; then remember them."""
        out: set[str] = set()
        for name, state in states.items():
            old, new = self.resources[name], {r.urn: r for r in state.resources}
            diff = {u for u in old.keys() | new.keys() if old.get(u) != new.get(u)}
            self.resources[name] = {
                u: copy.deepcopy(r) if u in diff else old[u] for u, r in new.items()
            }
            a, b = self.config[name], state.config
            out |= diff | {
                f"config:{name}:{k}" for k in a.keys() | b.keys() if a.get(k) != b.get(k)
            }
            self.config[name] = dict(b)
        return out


def near(footprint: set[str], *states: Mapping[str, StackState]) -> set[str]:
    """Where findings about a change are reported: the changed resources, what they depend on (a
    bucket for its public access block), and for a config key its stack's root resource."""
    out = set(footprint)
    for group in states:
        for state in group.values():
            for r in state.resources:
                if r.urn in footprint:
                    out.update(r.dependencies)
            if any(key.startswith(f"config:{state.stack}:") for key in footprint):
                out.add(root_urn(state))
    return out


def apply(
    stacks: Mapping[str, StackState], leaks: tuple[str, ...]
) -> tuple[dict[str, StackState], dict[str, set[str]]]:
    """A copy of `stacks` with every leak applied, and what each leak changed (disjoint)."""
    snapshot = Snapshot(stacks)
    states = copy.deepcopy(dict(stacks))
    footprints: dict[str, set[str]] = {}
    for leak in leaks:
        name, *args = leak.split()
        mutation = m.MUTATIONS.get(name) or m.NEAR_MISSES[name]
        mutation(states, **dict(a.split("=", 1) for a in args))
        footprints[leak] = snapshot.update(states)
        assert footprints[leak], f"{leak} changed nothing"
        for other, fp in footprints.items():
            assert other == leak or not (fp & footprints[leak]), (
                f"{leak} and {other} both change {sorted(fp & footprints[leak])}: "
                "put them in different batches"
            )
    return states, footprints


@dataclass
class Run:
    states: dict[str, StackState]
    check: dict[str, Pairs]  # envfence check's findings per stack
    pack: dict[str, Pairs]  # the pack's findings per stack
    ran: list[str]  # the stacks the pack ran on (the others reuse the clean run)
    footprints: dict[str, set[str]]  # leak -> the URNs and config keys it changed
    near: dict[str, set[str]]  # leak -> where findings about it land (`near`; not on the others)


def run(
    clean: Mapping[str, StackState],
    clean_pack: Mapping[str, Pairs],
    project: Project,
    states: dict[str, StackState],
    footprints: dict[str, set[str]],
    root: Path,
) -> Run:
    config_changed = any(states[n].config != clean[n].config for n in clean)
    pack: dict[str, Pairs] = {}
    ran: list[str] = []
    if config_changed:
        root.mkdir(parents=True, exist_ok=True)
        pack_dir = repository_copy(root, project, states)
        with sys_path_kept():
            for name, state in states.items():
                pack[name] = pack_pairs(name, packrunner.run_stack(state, directory=pack_dir))
                ran.append(name)
    else:
        for name, state in states.items():
            if state == clean[name]:
                pack[name] = set(clean_pack[name])
            else:
                pack[name] = pack_pairs(name, packrunner.run_stack(state))
                ran.append(name)
    nearby = {
        leak: near(fp, clean, states).difference(*(o for k, o in footprints.items() if k != leak))
        for leak, fp in footprints.items()
    }
    return Run(states, check_pairs(states, project), pack, ran, footprints, nearby)


@pytest.fixture(scope="session")
def clean_pack(stacks: dict[str, StackState]) -> dict[str, Pairs]:
    return {
        name: pack_pairs(name, diags)
        for name, diags in packrunner.run_pack(list(stacks.values())).items()
    }


@pytest.fixture(scope="session")
def batch_runs(
    stacks: dict[str, StackState],
    clean_pack: dict[str, Pairs],
    project: Project,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Run]:
    out = {}
    for batch, leaks in BATCHES.items():
        states, footprints = apply(stacks, leaks)
        root = tmp_path_factory.mktemp(f"repo-{batch}")
        out[batch] = run(stacks, clean_pack, project, states, footprints, root)
    return out


# --------------------------------------------------------------------------------------------
# The pack itself


def test_config_names_every_rule_mandatory_but_the_advisory_ones() -> None:
    doc = json.loads(packrunner.pack_config().read_text())
    assert doc.pop("all") == "mandatory"
    assert list(doc) == [r.name for r in RULES]
    assert doc == {r.name: "advisory" if r.advisory else "mandatory" for r in RULES}
    assert [r.id for r in RULES if r.advisory] == ["EF504"]


def test_pack_policies_are_the_rules_all_mandatory() -> None:
    info = packrunner.load_pack().GetAnalyzerInfo(empty_pb2.Empty(), None)
    assert info.name == "envfence"
    assert [p.name for p in info.policies] == [r.name for r in RULES]
    assert [p.description for p in info.policies] == [r.description() for r in RULES]
    config = packrunner.parse_pack_config(json.loads(packrunner.pack_config().read_text()))
    reconciled = packrunner.reconcile(info, config)
    # Like the CLI's ReconcilePolicyPackConfig, which keeps the "all" entry too.
    assert set(reconciled) == {r.name for r in RULES} | {"all"}
    advisory = {r.name for r in RULES if r.advisory}
    assert {name for name, (level, _) in reconciled.items() if level != "mandatory"} == advisory


def test_resource_rules_lists_are_consistent() -> None:
    resource_rules = {r.id for r in RULES if r.scope == "resource"}
    assert resource_rules >= PER_RESOURCE_RULES
    assert resource_rules - PER_RESOURCE_RULES >= set(RESOURCE_RULES_NEEDING_STACK)


# Ways to load a module or run a script by name, other than `import`.
LOADERS = {"import_module", "__import__", "spec_from_file_location", "run_path", "run_module"}


def called(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def test_pack_entry_point_is_only_run_through_packrunner(clean_pack: dict[str, Pairs]) -> None:
    """policy/__main__.py is run as a script (`runpy`, by packrunner as by the policy host),
    never imported: no test imports it or runs it by itself, and running the pack leaves no
    module behind."""
    entry = (packrunner.pack_dir() / "__main__.py").resolve()
    for name, module in list(sys.modules.items()):
        assert name != "policy" and not name.startswith("policy.")
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith("__main__.py"):
            assert Path(path).resolve() != entry, name
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                mods.append(getattr(node, "module", None) or "")
                for mod in mods:
                    assert mod.split(".")[0] not in ("policy", "runpy"), f"{where} imports {mod}"
            elif isinstance(node, ast.Call) and called(node) in LOADERS:
                args = [a.value for a in node.args if isinstance(a, ast.Constant)]
                assert not any("policy" in str(a) for a in args), f"{where} loads the pack"


# --------------------------------------------------------------------------------------------
# Same findings as envfence check


def test_clean_stacks(
    stacks: dict[str, StackState], clean_pack: dict[str, Pairs], project: Project
) -> None:
    assert sorted(clean_pack) == sorted(stacks) == ["experiment", "prod"]
    assert check_pairs(stacks, project) == {"experiment": set(), "prod": set()}
    assert clean_pack == {"experiment": set(), "prod": set()}


def test_near_misses(
    stacks: dict[str, StackState],
    clean_pack: dict[str, Pairs],
    project: Project,
    tmp_path: Path,
) -> None:
    states, footprints = apply(stacks, tuple(m.NEAR_MISSES))
    result = run(stacks, clean_pack, project, states, footprints, tmp_path)
    assert result.ran  # the near misses changed something the pack had to look at
    assert result.check == {"experiment": set(), "prod": set()}
    assert result.pack == {"experiment": set(), "prod": set()}


@pytest.mark.parametrize("batch", list(BATCHES))
def test_leaks(batch: str, batch_runs: dict[str, Run]) -> None:
    result = batch_runs[batch]
    assert result.ran
    # Each leak shows up in envfence check's findings, on or next to what it changed.
    found = {urn for pairs in result.check.values() for _, urn in pairs}
    for leak, footprint in result.footprints.items():
        assert found & result.near[leak], f"{leak}: nothing found near {sorted(footprint)}"
    # The known gaps: what envfence check finds on what such a leak changed, and the pack cannot.
    gaps: Pairs = set()
    for leak, footprint in result.footprints.items():
        rules = KNOWN_GAPS.get(leak.split()[0], {})
        hidden = {
            (rule, urn)
            for pairs in result.check.values()
            for rule, urn in pairs
            if rule in rules and urn in footprint
        }
        assert {rule for rule, _ in hidden} == set(rules), (
            f"{leak}: envfence check no longer finds {sorted(rules)} on it: update KNOWN_GAPS"
        )
        gaps |= hidden
    for stack in sorted(result.states):
        got = result.pack[stack]
        assert not (got & gaps), (
            f"stack {stack}: the pack now sees {describe(got & gaps)}: update KNOWN_GAPS"
        )
        want = result.check[stack] - gaps
        assert got == want, (
            f"stack {stack}: the pack misses {describe(want - got)}, "
            f"and reports what envfence check does not: {describe(got - want)}"
        )


def test_batches_cover_every_rule(batch_runs: dict[str, Run]) -> None:
    leaks = [leak for batch in BATCHES.values() for leak in batch]
    assert len(leaks) == len(set(leaks))
    names = {leak.split()[0] for leak in leaks}
    assert names <= set(m.MUTATIONS)
    assert set(KNOWN_GAPS) <= names
    seen = {rule for r in batch_runs.values() for pairs in r.pack.values() for rule, _ in pairs}
    assert sorted({r.id for r in RULES} - seen) == []
