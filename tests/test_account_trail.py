"""One CloudTrail trail per account (issue 10): many experiments in one account.

CloudTrail allows five trails per region per account, not adjustable, and a multi-region trail
counts in every region. So only the account's baseline stack (the registry's `accountBaseline`)
declares the trail, its audit bucket, log group, alarm and the `trail` role; its data-event
selectors cover its own stores by name and every other stack of the account by bucket-name
prefix, its own audit bucket excluded. An `experiment-<id>` stack in the same account declares
none of it and is recorded by the baseline's trail.

Checked here, on real evaluations of temporary repositories (the repository's stack files plus
`experiment-<id>` stacks made by `envfence experiment new`):

- what each stack declares, and that the baseline's selectors cover the short-lived stack's
  buckets and not the baseline's own audit bucket, decided as CloudTrail decides;
- EF701/EF702 fire when the account's trail or audit bucket leaves a stack out, when a
  non-baseline stack declares its own trail, and fail closed when the owner cannot be read;
- EF801: six experiment-<id> stacks in one account exceed the VPC quota (not the trail one),
  a registry quota of 10 VPCs makes that quiet;
- the real-request controls of CloudTrail belong to the baseline only, and still break there.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from envfence import experiments
from envfence.evaluate import evaluate
from envfence.model import Resource, StackState
from envfence.project import Project, load_project
from envfence.prove import controls
from envfence.prove.world import build_world
from envfence.rules import run_all
from envfence.rules.audit import records
from envfence.rules.context import build_context
from envfence.rules.engine import Result, run
from tests import mutations as m

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "210987654321"
SHORT = "experiment-abtest"
SIX = tuple(f"experiment-x{i}" for i in range(1, 7))
Stacks = dict[str, StackState]

TRAIL = "aws:cloudtrail/trail:Trail"
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
KEY = "aws:kms/key:Key"
ROLE = "aws:iam/role:Role"
TRAIL_ONLY = (
    TRAIL,
    "aws:cloudwatch/logMetricFilter:LogMetricFilter",
    "aws:cloudwatch/metricAlarm:MetricAlarm",
    "aws:sns/topic:Topic",
    "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration",
)


def repository(root: Path, ids: tuple[str, ...], quotas: dict[str, Any] | None = None) -> Project:
    """The repository's project and stack files in `root`, plus one `experiment-<id>` stack per
    id (made as the README says, by `envfence experiment new`), and `quotas` for the experiment
    account in the registry."""
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml", "Pulumi.experiment.yaml"):
        shutil.copy(ROOT / name, root / name)
    (root / "infra").symlink_to(ROOT / "infra")
    (root / "app").symlink_to(ROOT / "app")  # the worker's request contract
    if quotas is not None:
        doc = yaml.safe_load((root / "Pulumi.yaml").read_text())
        doc["envfence"]["quotas"][ACCOUNT] = quotas
        (root / "Pulumi.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for ident in ids:
        experiments.new(
            load_project(root), ident, owner="ab-team@example.com", expires="2099-12-31"
        )
    return load_project(root)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, Stacks]:
    project = repository(tmp_path_factory.mktemp("three"), ("abtest",))
    return project, {name: evaluate(name, project) for name in project.stacks()}


@pytest.fixture
def copies(three: tuple[Project, Stacks]) -> Stacks:
    return copy.deepcopy(three[1])


def violations(result: Result, rule: str, stack: str | None = None) -> list[str]:
    return [v.message for v in result.violations if v.rule == rule and stack in (None, v.stack)]


def objects(bucket: Resource) -> str:
    return f"{bucket.get('arn')}/raw/2026/12/02/m-1.json"


def buckets(state: StackState, *, audit: bool = False) -> list[Resource]:
    return [
        b
        for b in state.of_type(BUCKET)
        if ((b.get("tags") or {}).get("data-store") == "audit") == audit
    ]


def doc(r: Resource, key: str = "policy") -> dict[str, Any]:
    raw: Any = r.get(key)
    while isinstance(raw, str):
        raw = json.loads(raw)
    return copy.deepcopy(raw)


def edit_policy(
    r: Resource, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
) -> None:
    d = doc(r)
    d["Statement"] = change(d["Statement"])
    r.set("policy", json.dumps(d))


# -- what each stack declares ------------------------------------------------------------------


def test_only_the_baseline_declares_the_trail_and_what_it_needs(
    three: tuple[Project, Stacks],
) -> None:
    _, stacks = three
    assert sorted(stacks) == ["experiment", SHORT, "prod"]
    for baseline in ("prod", "experiment"):
        state = stacks[baseline]
        assert [t.name for t in state.of_type(TRAIL)] == ["trail"]
        assert len(buckets(state, audit=True)) == 1
        assert any(r.name == "role-trail" for r in state.of_type(ROLE))
    short = stacks[SHORT]
    assert [r.type for r in short.resources if r.type in TRAIL_ONLY] == []
    groups = {str(g.get("name")) for g in short.of_type("aws:cloudwatch/logGroup:LogGroup")}
    assert f"/envfence/{SHORT}/vpc-flow-logs" in groups  # its own logs stay its own
    assert f"/envfence/{SHORT}/cloudtrail" not in groups
    roles = {str(r.get("name")) for r in short.of_type(ROLE)}
    assert f"envfence-{SHORT}-trail" not in roles and f"envfence-{SHORT}-flowlogs" in roles
    key_policy = doc(short.of_type(KEY)[0])
    services = {
        str(st["Principal"]["Service"])
        for st in key_policy["Statement"]
        if isinstance(st.get("Principal"), dict) and "Service" in st["Principal"]
    }
    # CloudWatch Logs still encrypts its own groups (flow logs, worker); no CloudTrail, no alarm.
    assert services == {"logs.eu-west-1.amazonaws.com"}
    assert not any(s.get("Sid", "").startswith("AuditReaders") for s in key_policy["Statement"])
    # The boundary names only roles the stack has.
    boundary = next(r for r in short.of_type("aws:iam/policy:Policy") if r.name == "boundary")
    own = next(
        s for s in doc(boundary)["Statement"] if s["Sid"] == "DenyAssumingRolesOfOtherEnvironments"
    )
    assert f"arn:aws:iam::{ACCOUNT}:role/envfence-{SHORT}-trail" not in own["NotResource"]


def test_the_baseline_trail_records_the_short_lived_stack_and_not_its_own_bucket(
    three: tuple[Project, Stacks],
) -> None:
    _, stacks = three
    trail = stacks["experiment"].named("trail", TRAIL)
    selector = next(
        f
        for s in trail.get("advancedEventSelectors")
        for f in s["fieldSelectors"]
        if f["field"] == "resources.ARN"
    )
    assert "arn:aws:s3:::envfence-experiment-" in selector["startsWiths"]
    audit = buckets(stacks["experiment"], audit=True)[0]
    assert selector["notStartsWiths"] == [f"{audit.get('arn')}/"]
    for stack in ("experiment", SHORT):
        for bucket in buckets(stacks[stack]):
            assert records(trail, objects(bucket)), bucket.get("bucket")
    # Its own audit bucket: not even one call (the prefix matches it; the exclusion wins).
    log = f"{audit.get('arn')}/AWSLogs/{ACCOUNT}/CloudTrail/eu-west-1/2026/12/02/x.json.gz"
    assert not records(trail, log, unknown_matches=True)
    # prod's trail is another account's: it records prod's stores only.
    prod_trail = stacks["prod"].named("trail", TRAIL)
    assert not any(records(prod_trail, objects(b)) for b in buckets(stacks[SHORT]))
    assert all(records(prod_trail, objects(b)) for b in buckets(stacks["prod"]))


def test_selectors_combine_as_cloudtrail_documents() -> None:
    """Within a field selector the SELECT values are ORed, the DESELECT values exclude, the two
    groups are ANDed; an event is logged when any advanced selector matches."""

    def trail(*field_selectors: dict[str, Any], basic: Any = None) -> Resource:
        data = [
            {"field": "eventCategory", "equals": ["Data"]},
            {"field": "resources.type", "equals": ["AWS::S3::Object"]},
        ]
        selectors = [{"name": "d", "fieldSelectors": [*data, *field_selectors]}]
        return Resource(
            urn="urn:pulumi:s::p::aws:cloudtrail/trail:Trail::t",
            type=TRAIL,
            inputs={"advancedEventSelectors": selectors if field_selectors else [], **(
                {"eventSelectors": basic} if basic else {}
            )},
        )  # fmt: skip

    obj = "arn:aws:s3:::envfence-experiment-audit-1/AWSLogs/x"
    other = "arn:aws:s3:::envfence-experiment-abtest-raw-1/k"
    arn = {"field": "resources.ARN"}
    both = trail({**arn, "startsWiths": ["arn:aws:s3:::envfence-experiment-"],
                  "notStartsWiths": ["arn:aws:s3:::envfence-experiment-audit-1/"]})  # fmt: skip
    assert records(both, other) and not records(both, obj, unknown_matches=True)
    only_in = trail({**arn, "startsWiths": ["arn:aws:s3:::envfence-experiment-"]})
    assert records(only_in, obj)
    reads_only = trail(
        arn | {"startsWiths": ["arn:aws:s3:::"]}, {"field": "readOnly", "equals": ["true"]}
    )
    assert not records(reads_only, other) and records(reads_only, other, unknown_matches=True)
    unknown_field = trail({"field": "userIdentity.arn", "startsWiths": ["arn:aws:iam::1:"]})
    assert not records(unknown_field, other) and records(unknown_field, other, unknown_matches=True)
    basic = trail(basic=[{"readWriteType": "All", "dataResources": [
        {"type": "AWS::S3::Object", "values": ["arn:aws:s3:::envfence-experiment-abtest-raw-1/"]}
    ]}])  # fmt: skip
    assert records(basic, other) and not records(basic, obj, unknown_matches=True)


# -- EF701 / EF702 -------------------------------------------------------------------------------


def test_rules_are_quiet_with_one_trail_per_account(three: tuple[Project, Stacks]) -> None:
    project, stacks = three
    result = run_all(stacks.values(), project)
    assert [(v.rule, v.stack, v.message) for v in result.violations] == []


def test_dropping_the_prefix_leaves_the_short_lived_stack_unrecorded(
    three: tuple[Project, Stacks], copies: Stacks
) -> None:
    project, _ = three
    m.trail_drops_other_stacks(copies, at="experiment")
    result = run_all(copies.values(), project)
    short = violations(result, "EF701", SHORT)
    assert len(short) == 3 and all(
        re.search(r"account 210987654321's trail \(experiment/trail\) records no data events "
                  rf"for store-\w+ \(arn:aws:s3:::envfence-{SHORT}-\w+-{ACCOUNT}\)", msg)
        for msg in short
    ), short  # fmt: skip
    assert any("envfence-experiment-*" in msg for msg in violations(result, "EF701", "experiment"))
    assert violations(result, "EF701", "prod") == []


def test_logging_its_own_bucket_fires(three: tuple[Project, Stacks], copies: Stacks) -> None:
    project, _ = three
    m.trail_logs_its_own_bucket(copies, at="experiment")
    result = run_all(copies.values(), project)
    assert violations(result, "EF701") == [
        "trail trail records data events of its own log bucket "
        f"envfence-experiment-audit-{ACCOUNT}: every delivery is a new event to deliver; "
        "exclude it (resources.ARN NotStartsWith "
        f"arn:aws:s3:::envfence-experiment-audit-{ACCOUNT}/ in the same field selector)"
    ]


def _own_trail(stacks: Stacks, at: str) -> Resource:
    """`at` declares a trail of its own, as the baseline's would be."""
    source = stacks["experiment"].named("trail", TRAIL)
    inputs = copy.deepcopy(source.inputs)
    inputs["name"] = f"envfence-{at}"
    anchor = stacks[at].of_type(KEY)[0]
    return m.clone(
        stacks[at],
        anchor,
        type_=TRAIL,
        name="trail",
        inputs=inputs,
        computed={"arn": f"arn:aws:cloudtrail:eu-west-1:{ACCOUNT}:trail/envfence-{at}"},
    )


def test_a_non_baseline_trail_fires(three: tuple[Project, Stacks], copies: Stacks) -> None:
    project, _ = three
    _own_trail(copies, SHORT)
    result = run_all(copies.values(), project)
    assert violations(result, "EF701") == [
        f"stack '{SHORT}' declares its own trail trail: account {ACCOUNT}'s trail is "
        "'experiment''s (registry accountBaseline), and CloudTrail allows 5 per region; remove "
        "it, the owner's trail records this stack's data events"
    ]


def test_an_account_whose_baseline_has_no_trail_fires(
    three: tuple[Project, Stacks], copies: Stacks
) -> None:
    project, _ = three
    m.remove(copies["experiment"], copies["experiment"].named("trail", TRAIL))
    result = run_all(copies.values(), project)
    assert violations(result, "EF701", SHORT) == [
        f"account {ACCOUNT}'s trail owner 'experiment' declares no trail: nothing records the "
        f"data events of stack '{SHORT}'"
    ]
    assert violations(result, "EF701", "experiment") == [
        f"stack 'experiment' has no CloudTrail trail (it owns account {ACCOUNT}'s trail: "
        "registry accountBaseline)"
    ]


def test_the_owner_read_from_its_stack_file_or_fail_closed(three: tuple[Project, Stacks]) -> None:
    project, stacks = three
    # `envfence check --stack experiment-abtest` knows the owner from its stack file: covered.
    checked_alone = run_all([stacks[SHORT]], project)
    assert violations(checked_alone, "EF701") == violations(checked_alone, "EF702") == []
    # Without the owner's state or stack file, the rules cannot tell: they fail closed.
    alone = run(build_context([stacks[SHORT]], project))
    for rule in ("EF701", "EF702"):
        [msg] = violations(alone, rule, SHORT)
        assert msg.startswith("cannot tell whether account 210987654321's") and (
            "its owner 'experiment' is neither among the checked states nor readable from its "
            "stack file"
            in msg
            or "trail owner 'experiment' is neither" in msg
        ), msg
    # The owner's facts from its stack file (what the CrossGuard pack sees): covered.
    ctx = build_context([stacks[SHORT]], project, extra_stacks=project.stacks())
    with_file = run(ctx)
    assert violations(with_file, "EF701") == violations(with_file, "EF702") == []
    # A stack file whose registry entry the owner does not select: not covered.
    ctx.envs["experiment"].trail_prefixes = ("envfence-experiment-other-",)
    narrowed = run(ctx)
    assert sorted(msg.split(" (it selects")[0] for msg in violations(narrowed, "EF701")) == [
        f"account {ACCOUNT}'s trail owner 'experiment' (from its stack file) selects no prefix "
        f"of bucket envfence-{SHORT}-{store}-{ACCOUNT} of stack '{SHORT}'"
        for store in ("curated", "raw", "results")
    ]
    assert len(violations(narrowed, "EF702", SHORT)) == 1


def test_the_audit_bucket_denies_every_stack_of_the_account(
    three: tuple[Project, Stacks], copies: Stacks
) -> None:
    project, stacks = three
    policy = copies["experiment"].named("audit-policy", BUCKET_POLICY)
    deny = next(
        s
        for s in doc(policy)["Statement"]
        if s["Sid"] == "DenyTamperingByTheAccountsOtherEnvironments"
    )
    assert deny["Condition"] == {
        "ArnLike": {"aws:PrincipalArn": [f"arn:aws:iam::{ACCOUNT}:role/envfence-experiment-*"]}
    }
    edit_policy(
        policy,
        lambda stmts: [
            s for s in stmts if s["Sid"] != "DenyTamperingByTheAccountsOtherEnvironments"
        ],
    )
    result = run_all(copies.values(), project)
    [short] = violations(result, "EF702", SHORT)
    assert short.startswith(
        f"account {ACCOUNT}'s audit bucket experiment/audit-bucket: nothing denies stack "
        f"'{SHORT}''s roles writing, deleting or re-configuring it (arn:aws:iam::{ACCOUNT}:role/"
        f"envfence-{SHORT}-service"
    )
    [baseline] = violations(result, "EF702", "experiment")
    assert f"nothing denies stack '{SHORT}''s roles" in baseline
    assert violations(run_all(stacks.values(), project), "EF702") == []


# -- real-request controls -----------------------------------------------------------------------


def control_results(stacks: Stacks, project: Project) -> list[controls.Result]:
    ctx = build_context(stacks.values(), project)
    world = build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})
    production = {name: env.tier == "production" for name, env in ctx.envs.items()}
    deployers = {name: env.deployer for name, env in ctx.envs.items()}
    return controls.checks(stacks, world, project.root, production, deployers)


@pytest.fixture(scope="module")
def clean_controls(three: tuple[Project, Stacks]) -> list[controls.Result]:
    project, stacks = three
    return control_results(stacks, project)


def test_the_registry_names_the_trail_owners(three: tuple[Project, Stacks]) -> None:
    project, stacks = three
    owners = controls.trail_owners(stacks, project.root)
    assert owners == {"prod": True, "experiment": True, SHORT: False}
    assert controls.trail_owners(stacks, project.root / "nowhere") == {}  # no repository


def failing(found: list[controls.Result]) -> dict[str, str]:
    return {r.what: r.detail for r in found if not r.ok}


def test_cloudtrail_controls_belong_to_the_baseline(clean_controls: list[controls.Result]) -> None:
    # The short-lived stack expects no CloudTrail control and fails none for their absence.
    assert [(r.what, r.detail) for r in clean_controls if not r.ok and r.stack == SHORT] == []
    assert [(r.what, r.detail) for r in clean_controls if not r.ok and "Trail" in r.what] == []
    trail_controls = {
        (r.stack, r.what.split(": ", 1)[1])
        for r in clean_controls
        if "CloudTrail" in r.what or "cloudtrail" in r.what
    }
    assert trail_controls == {
        (stack, what)
        for stack in ("prod", "experiment")
        for what in (
            "CloudTrail writes the trail to its bucket with the key",
            "CloudTrail delivers to its log group",
            f"CloudWatch Logs encrypts /envfence/{stack}/cloudtrail",
        )
    }
    assert {r.stack for r in clean_controls if r.group == controls.SERVICE} == {
        "prod",
        "experiment",
        SHORT,
    }


def test_the_baselines_cloudtrail_controls_still_break(
    three: tuple[Project, Stacks], copies: Stacks, clean_controls: list[controls.Result]
) -> None:
    project, _ = three
    before = failing(clean_controls)
    policy = copies["experiment"].named("audit-policy", BUCKET_POLICY)
    edit_policy(policy, lambda stmts: [s for s in stmts if s["Sid"] != "CloudTrailWrite"])
    key = copies["experiment"].of_type(KEY)[0]
    edit_policy(key, lambda stmts: [s for s in stmts if s["Sid"] != "CloudTrailEncryptsLogs"])
    found = {
        what: why
        for what, why in failing(control_results(copies, project)).items()
        if what not in before
    }
    assert list(found) == ["experiment: CloudTrail writes the trail to its bucket with the key"]
    assert found["experiment: CloudTrail writes the trail to its bucket with the key"].startswith(
        "s3:PutObject on arn:aws:s3:::envfence-experiment-audit-210987654321/AWSLogs/"
    )


def test_a_baseline_without_its_trail_breaks_and_the_others_do_not_care(
    three: tuple[Project, Stacks], copies: Stacks, clean_controls: list[controls.Result]
) -> None:
    project, _ = three
    before = failing(clean_controls)
    m.remove(copies["experiment"], copies["experiment"].named("trail", TRAIL))
    found = {
        what: why
        for what, why in failing(control_results(copies, project)).items()
        if what not in before
    }
    assert found == {
        "experiment: CloudTrail writes the trail to its bucket with the key": (
            f"stack experiment owns account {ACCOUNT}'s trail (registry accountBaseline) but "
            "declares none"
        )
    }


# -- EF801: six experiments in one account ---------------------------------------------------------


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory, stacks: Stacks) -> tuple[Project, Stacks]:
    """The six short-lived stacks evaluated in a copy of the repository; prod and experiment
    as the session evaluated them (their resources do not depend on the other stack files)."""
    project = repository(tmp_path_factory.mktemp("six"), tuple(s.split("-", 1)[1] for s in SIX))
    states = {name: stacks[name] for name in ("prod", "experiment")}
    return project, states | {name: evaluate(name, project) for name in SIX}


def test_six_experiments_exceed_the_vpc_quota_not_the_trail_one(
    six: tuple[Project, Stacks],
) -> None:
    project, stacks = six
    result = run_all(stacks.values(), project)
    quota = violations(result, "EF801")
    vpcs = [q for q in quota if "VPCs declared" in q]
    assert vpcs == [
        f"account {ACCOUNT}, region eu-west-1: 7 VPCs declared, quota 5: experiment 1, "
        + ", ".join(f"{s} 1" for s in SIX)
        + ". To raise it: request an increase of 'VPCs per Region' (Amazon VPC) in Service "
        f'Quotas, then set envfence.quotas."{ACCOUNT}".vpcs in Pulumi.yaml; or move stacks to '
        "another account"
    ]
    assert not any("CloudTrail trails" in q for q in quota)
    assert [v.stack for v in result.violations if v.message in vpcs] == [SIX[-1]]
    # Everything else about the seven stacks is fine: one trail records them all.
    assert {v.rule for v in result.violations} == {"EF801"}


def test_the_registry_quota_makes_it_quiet(
    tmp_path_factory: pytest.TempPathFactory, six: tuple[Project, Stacks]
) -> None:
    """The same states, checked against a registry that raised the account's quotas (what
    `envfence check` reads is the registry, not the stack files)."""
    _, stacks = six
    raised = repository(tmp_path_factory.mktemp("six-raised"), (), quotas={"vpcs": 10})
    assert raised.registry.quota(ACCOUNT, "vpcs") == 10
    assert run_all(stacks.values(), raised).violations == []


def test_stacks_not_in_hand_are_counted_from_their_stack_files(six: tuple[Project, Stacks]) -> None:
    project, stacks = six
    ctx = build_context([stacks["experiment"]], project, extra_stacks=project.stacks())
    result = run(ctx)
    [vpcs] = [q for q in violations(result, "EF801") if "VPCs declared" in q]
    assert f"{SIX[0]} 1 (from its stack file, not in hand)" in vpcs
    assert "experiment 1, " in vpcs and "7 VPCs declared, quota 5" in vpcs
    # Elastic IPs: a stack file's NAT gateway count is read only where the environment's facts
    # carry it; where they do not, six stacks of up to 4 each could exceed the quota: EF902.
    unknown = [v.message for v in result.violations if v.rule == "EF902"]
    if hasattr(ctx.envs[SIX[0]], "nat_gateways"):
        assert unknown == []
    else:
        assert [u.split(";")[0] for u in unknown] == [
            "[EF801] cannot decide: the NAT gateway count of "
            + ", ".join(SIX)
            + " (not in hand, known from stack files only) is not among the checker's facts"
        ]
