"""Every isolation rule, checked against the repository's evaluated stacks.

(a) The clean pair has no violation and exactly the declared flow.
(b) Each leak of `mutations.py` fires its rule, in the right stack, with a message that names
    the problem (and the other environment where it is a cross-environment finding); no
    unrelated rule fires alongside it.
(c) Every registered rule has at least one case in the table that makes it fire.
(d) Near misses stay quiet.

Cases marked `xfail(strict=True, reason="BUG: ...")` are correct tests of behaviour the rules
get wrong today; they start failing (strict) as soon as the rule is fixed, so the mark is
removed together with the bug.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mutations as m
import pytest

from envfence.model import StackState
from envfence.project import Project
from envfence.rules import Result, all_rules, run_all
from envfence.rules import classify as c

FLOW = "prod/pipeline may read experiment/results"


def check(stacks: dict[str, StackState], project: Project) -> Result:
    return run_all(stacks.values(), project)


def ids(result: Result) -> set[str]:
    return {v.rule for v in result.violations}


def describe(result: Result) -> str:
    return (
        "\n".join(
            f"{v.rule} {v.stack} other={v.other} {v.urn.rsplit('::', 1)[-1]}: {v.message}"
            for v in result.violations
        )
        or "(no violations)"
    )


# --------------------------------------------------------------------------------------------
# (a) clean stacks


def test_clean_stacks_have_no_violations(stacks: dict[str, StackState], project: Project) -> None:
    result = check(stacks, project)
    assert result.violations == [], describe(result)
    assert sorted(result.stacks) == ["experiment", "prod"]
    assert all(result.checked[s] > 0 for s in result.stacks)


def test_clean_stacks_use_exactly_the_declared_flow(
    stacks: dict[str, StackState], project: Project
) -> None:
    result = check(stacks, project)
    assert {f.flow for f in result.flows} == {FLOW}
    # Both sides of the flow are listed: prod's read permission, experiment's grants.
    by_stack = {(f.stack, f.urn.rsplit("::", 1)[-1]) for f in result.flows}
    assert ("prod", "policy-pipeline") in by_stack
    assert ("experiment", "store-results-policy") in by_stack
    assert ("experiment", "key") in by_stack


def test_checking_does_not_change_the_states(
    stacks: dict[str, StackState], project: Project
) -> None:
    before = {n: [r.to_dict() for r in s.resources] for n, s in stacks.items()}
    check(stacks, project)
    assert {n: [r.to_dict() for r in s.resources] for n, s in stacks.items()} == before


# --------------------------------------------------------------------------------------------
# (b) one table: a leak, the rule it must fire


@dataclass(frozen=True)
class Case:
    mutation: str  # a name in mutations.MUTATIONS
    rule: str  # the rule that must fire
    stack: str  # the stack the violation is reported in
    message: str  # a substring of that violation's message
    other: str | None = None  # its otherStack (None: not a cross-environment finding)
    also: frozenset[str] = frozenset()  # other rule ids allowed to fire with it
    kwargs: dict[str, Any] = field(default_factory=dict)
    bug: str | None = None  # a rule bug: the case is xfail(strict=True)

    @property
    def id(self) -> str:
        extra = "-".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.rule}-{self.mutation}" + (f"-{extra}" if extra else "")


def also(*rule_ids: str) -> frozenset[str]:
    return frozenset(rule_ids)


P, E = "prod", "experiment"
# One side of the flow gone: every grant the flow made becomes a plain cross-environment grant.
FLOW_GRANTS = also("EF206", "EF207", "EF301", "EF401")

CASES = [
    # EF101-EF107 network
    Case(
        "vpc_peering",
        "EF101",
        P,
        "connects this VPC to another network (the VPC of stack 'experiment')",
        E,
    ),
    Case("vpc_peering", "EF101", E, "(the VPC of stack 'prod')", P, kwargs={"at": E, "peer": P}),
    Case("transit_gateway_attachment", "EF102", P, "VpcAttachment tgw-attachment can route"),
    Case(
        "route_via_peering", "EF103", E, "leads into the VPC CIDR 10.10.0.0/16 of stack 'prod'", P
    ),
    Case("route_via_peering", "EF103", E, "targets vpcPeeringConnectionId pcx-"),
    Case(
        "route_via_peering",
        "EF103",
        P,
        "leads into the VPC CIDR 10.20.0.0/16",
        E,
        kwargs={"at": P, "peer": E},
    ),
    Case(
        "ingress_from_other_cidr",
        "EF104",
        P,
        "admits 10.20.0.0/16, outside the VPC CIDR 10.10.0.0/16",
        E,
    ),
    Case(
        "ingress_from_other_cidr", "EF104", E, "admits 10.10.0.0/16", P, kwargs={"at": E, "peer": P}
    ),
    Case("ingress_from_ipv6", "EF104", P, "admits IPv6 2001:db8:1234::/56"),
    Case("ingress_from_prefix_list", "EF104", P, "which is not an endpoint of this environment"),
    Case("ingress_from_other_sg", "EF104", P, "(it belongs to stack 'experiment')", E),
    Case("inline_sg_ingress", "EF104", P, "sg-db admits 10.20.0.0/16", E),
    Case("sg_rule_ingress", "EF104", P, "sg-db-in-postgres-legacy admits 10.20.0.0/16", E),
    Case("default_sg_ingress", "EF104", P, "default-sg admits 10.20.0.0/16", E),
    Case("ingress_rule_on_other_sg", "EF105", P, "of stack 'experiment'", E, also=also("EF104")),
    Case("subnet_in_other_vpc", "EF105", P, "is placed in VPC vpc-", E),
    Case("uses_other_subnet", "EF105", P, "db-subnets uses subnet-", E),
    Case("ram_share", "EF105", P, "ResourceShare share-subnets shares resources"),
    Case("ram_share", "EF105", P, "PrincipalAssociation share-subnets-peer shares resources"),
    Case("subnet_public_ip", "EF106", P, "subnet-data-0 has mapPublicIpOnLaunch = true"),
    Case("db_public", "EF106", P, "db has publiclyAccessible = true", also=also("EF201")),
    Case("data_subnet_route", "EF107", E, "route 0.0.0.0/0 in a data subnet's route table"),
    # EF201-EF209 data
    Case("db_public", "EF201", P, "database db is publicly accessible", also=also("EF106")),
    Case("db_other_key", "EF202", E, "kmsKeyId is arn:aws:kms:eu-west-1:123456789012:key/", P),
    Case("pab_setting_off", "EF203", P, "leaves blockPublicPolicy off"),
    Case("pab_missing", "EF203", P, "bucket store-raw has no public access block"),
    Case(
        "bucket_sse_other_key",
        "EF204",
        E,
        "is encrypted with arn:aws:kms:eu-west-1:123456789012:key/",
        P,
    ),
    Case("bucket_sse_s3", "EF204", P, "uses AES256, not SSE-KMS"),
    Case("versioning_suspended", "EF205", P, "versioning is Suspended"),
    Case("bucket_policy_no_tls_deny", "EF206", P, "does not deny requests without TLS"),
    Case(
        "bucket_policy_no_foreign_deny",
        "EF206",
        P,
        "does not deny principals outside the environment",
    ),
    Case(
        "bucket_policy_no_foreign_deny",
        "EF206",
        E,
        "does not deny principals outside the environment",
        kwargs={"at": E, "store": "results"},
    ),
    Case(
        "bucket_policy_deny_exempts_flow_role",
        "EF206",
        E,
        "bucket store-raw policy does not deny principals outside the environment",
    ),
    Case(
        "bucket_policy_allow_other_root",
        "EF207",
        E,
        "statement ShareWithPeer allows "
        "arn:aws:iam::123456789012:root (a principal of stack 'prod')",
        P,
    ),
    Case(
        "bucket_policy_allow_star",
        "EF207",
        P,
        "statement PublicRead allows Principal '*' without a condition",
    ),
    Case("flow_bucket_allow_root", "EF207", E, "allows arn:aws:iam::123456789012:root", P),
    Case("flow_bucket_allow_write", "EF207", E, "DeclaredFlowProdPipelineRead", P),
    Case(
        "queue_policy_grant",
        "EF207",
        E,
        "jobs-policy statement PeerSends allows "
        "arn:aws:iam::123456789012:role/envfence-prod-service",
        P,
    ),
    Case(
        "secret_policy_grant",
        "EF207",
        E,
        "statement PeerReads allows arn:aws:iam::123456789012:role/envfence-prod-analyst",
        P,
    ),
    Case("snapshot_shared", "EF208", P, "db-snapshot is shared with 210987654321", E),
    Case("prod_db_unprotected", "EF209", P, "production db is not protected (protect)"),
    Case("prod_db_no_deletion_protection", "EF209", P, "has no deletion protection"),
    Case("prod_db_skip_final_snapshot", "EF209", P, "has no final snapshot"),
    Case("prod_bucket_force_destroy", "EF209", P, "production bucket store-raw has forceDestroy"),
    # EF210-EF212 queues, log groups, image repositories
    Case(
        "queue_other_key",
        "EF210",
        E,
        "queue ingest is encrypted with arn:aws:kms:eu-west-1:123456789012:key/",
        P,
    ),
    Case("queue_without_kms", "EF210", P, "queue ingest-dlq is encrypted with no key"),
    Case("log_group_without_key", "EF211", P, "log group worker-logs is encrypted with no key"),
    Case("log_group_kept_forever", "EF211", E, "log group flow-logs keeps its logs forever"),
    Case("repository_mutable_tags", "EF212", P, "repository repository tags are mutable"),
    Case("repository_without_scan", "EF212", P, "does not scan images on push"),
    Case(
        "repository_aes256",
        "EF212",
        E,
        "repository repository is not encrypted with this environment's key",
    ),
    # EF301-EF306, EF320 identity
    Case(
        "identity_all_buckets",
        "EF301",
        P,
        "statement AllBuckets allows s3:GetObject, "
        "s3:PutObject on arn:aws:s3:::envfence-experiment-",
        E,
    ),
    Case("identity_all_buckets", "EF301", E, "on arn:aws:s3:::envfence-prod-", P, kwargs={"at": E}),
    Case(
        "identity_results_wildcard",
        "EF301",
        P,
        "statement AllResults allows s3:GetObject on "
        "arn:aws:s3:::envfence-experiment-results-210987654321",
        E,
    ),
    Case("identity_not_resource", "EF301", P, "statement EverythingElse allows s3:GetObject", E),
    Case(
        "identity_resource_star_data", "EF301", P, "statement ReadAnything allows s3:GetObject", E
    ),
    Case(
        "passrole_other_env",
        "EF305",
        P,
        "allows iam:PassRole on arn:aws:iam::210987654321:role/envfence-experiment-service",
        E,
        also=also("EF301"),
    ),
    Case("passrole_other_env", "EF301", P, "allows iam:PassRole", E, also=also("EF305")),
    Case(
        "trust_other_env_role",
        "EF302",
        E,
        "trusts arn:aws:iam::123456789012:role/envfence-prod-pipeline, a principal of stack 'prod'",
        P,
    ),
    Case(
        "trust_service_without_source_account",
        "EF302",
        P,
        "trusts service ecs-tasks.amazonaws.com without aws:SourceAccount = 123456789012",
    ),
    Case("role_without_boundary", "EF303", P, "role role-analyst has no permission boundary"),
    Case(
        "role_other_boundary",
        "EF303",
        E,
        "boundary arn:aws:iam::123456789012:policy/"
        "envfence-prod-boundary is not this environment's boundary",
        P,
    ),
    Case("boundary_without_tag_session_deny", "EF304", P, "does not deny sts:TagSession"),
    Case(
        "boundary_without_tag_keys_deny", "EF304", P, "does not deny changes to the environment tag"
    ),
    Case(
        "managed_policy_attached", "EF306", P, "attaches arn:aws:iam::aws:policy/AmazonS3FullAccess"
    ),
    Case(
        "flow_one_side",
        "EF320",
        P,
        "stack 'prod' declares '" + FLOW + "' but stack 'experiment' does not",
        E,
        also=FLOW_GRANTS,
    ),
    Case(
        "flow_one_side",
        "EF320",
        E,
        "stack 'experiment' declares '" + FLOW + "' but stack 'prod' does not",
        P,
        also=FLOW_GRANTS,
        kwargs={"at": P},
    ),
    # EF401-EF403 keys
    Case(
        "key_policy_other_role",
        "EF401",
        E,
        "statement PeerServiceDecrypts allows "
        "arn:aws:iam::123456789012:role/envfence-prod-service (a principal of stack 'prod')",
        P,
    ),
    Case(
        "key_policy_star",
        "EF401",
        P,
        "statement AnyoneDecrypts allows Principal '*' without a condition",
    ),
    Case("flow_key_grant_widened", "EF401", E, "allows arn:aws:iam::123456789012:root", P),
    Case("key_rotation_off", "EF402", P, "key key does not rotate"),
    Case(
        "key_locks_out_deployer",
        "EF403",
        P,
        "does not let the deployer arn:aws:iam::123456789012:role/envfence-deployer "
        "call kms:PutKeyPolicy",
    ),
    # EF501-EF504 tagging and lifecycle
    Case(
        "provider_tags_removed",
        "EF501",
        P,
        "store-raw lacks the tag(s) environment, tier, "
        "data-classification, owner, managed-by, project",
        also=also("EF903"),
    ),
    Case(
        "provider_tags_removed",
        "EF501",
        E,
        "lacks the tag(s) environment, tier, "
        "data-classification, owner, managed-by, project, experiment-id",
        also=also("EF903"),
        kwargs={"at": E},
    ),
    Case(
        "tagged_other_env",
        "EF502",
        E,
        "store-raw is tagged environment=prod but belongs to stack 'experiment'",
        P,
    ),
    Case(
        "lifecycle_without_expiration",
        "EF503",
        E,
        "experiment bucket store-raw has no enabled expiration rule",
    ),
    Case("experiment_expired", "EF504", E, "stack 'experiment' expired on 2020-01-31"),
    Case(
        "experiment_rolled_out_to_everyone",
        "EF505",
        P,
        "experimental flag curate_v2 is on for everyone in production (variant default",
    ),
    Case("experiment_without_owner", "EF505", P, "is live in production without an owner"),
    Case("experiment_without_owner", "EF505", P, "without an end date (_deprecation.date)"),
    Case("flag_set_not_deployed", "EF505", P, "but AppConfig serves fs-0123456789abcdef0123"),
    # EF601-EF603 compute
    Case("task_privileged", "EF601", P, "container worker is privileged"),
    Case("task_runs_as_root", "EF601", P, "container worker runs as root"),
    Case("task_runs_as_root", "EF601", P, "container worker has a writable root filesystem"),
    Case(
        "task_role_of_other_env",
        "EF601",
        E,
        "taskRoleArn arn:aws:iam::123456789012:role/"
        "envfence-prod-service is not a role of this environment",
        P,
    ),
    Case(
        "task_logs_to_other_env",
        "EF601",
        E,
        "logs to /envfence/prod/worker, not a log group "
        "of this environment (a log group of stack 'prod')",
        P,
    ),
    Case("service_public_ip", "EF602", P, "service worker-service gives its tasks public IPs"),
    Case("service_in_other_subnet", "EF602", E, "uses subnets subnet-", P),
    Case("service_exec", "EF602", P, "allows ECS Exec"),
    Case(
        "image_from_other_repository",
        "EF603",
        E,
        "worker-task runs image 123456789012.dkr.ecr."
        "eu-west-1.amazonaws.com/envfence-prod-worker@sha256:",
        P,
    ),
    Case(
        "image_from_other_repository",
        "EF603",
        E,
        "worker-image pushes image 123456789012.dkr."
        "ecr.eu-west-1.amazonaws.com/envfence-prod-worker:",
        P,
    ),
    Case(
        "task_image_public",
        "EF603",
        P,
        "runs image public.ecr.aws/docker/library/"
        "python:3.12-slim, which is not from this environment's repository",
    ),
    # EF701-EF702 audit
    Case("trail_single_region", "EF701", P, "trail trail records one region only"),
    Case("trail_without_data_events", "EF701", E, "records no data events for store-results"),
    Case(
        "audit_deny_exempts_role",
        "EF702",
        P,
        "nothing denies this environment's roles writing, deleting or re-configuring it",
    ),
    Case(
        "audit_policy_allows_role_delete",
        "EF702",
        E,
        "statement PipelineCleansLogs allows "
        "arn:aws:iam::210987654321:role/envfence-experiment-pipeline: only AWS services",
    ),
    Case(
        "audit_without_object_lock",
        "EF702",
        P,
        "production audit bucket audit-bucket has no object lock",
    ),
    Case(
        "trail_drops_other_stacks",
        "EF701",
        E,
        "does not record the data events of the account's other stacks' buckets "
        "(envfence-experiment-*)",
    ),
    Case(
        "trail_logs_its_own_bucket",
        "EF701",
        E,
        "records data events of its own log bucket envfence-experiment-audit-210987654321",
    ),
    # EF801 account quotas
    Case(
        "elastic_ips_over_quota",
        "EF801",
        E,
        "account 210987654321, region eu-west-1: 6 Elastic IPs declared, quota 5",
    ),
    # EF901-EF903 coverage
    Case(
        "unclassified_type",
        "EF901",
        E,
        "resource type aws:lambda/function:Function (export-fn) is not classified",
    ),
    Case("unknown_value", "EF902", P, "[EF201] cannot decide: publiclyAccessible of db is unknown"),
    Case("unknown_value", "EF902", P, "[EF106] cannot decide: publiclyAccessible of db"),
    Case("unknown_provider_region", "EF902", P, "provider aws region is unknown"),
    Case("unknown_tags", "EF902", P, "tags of store-raw", also=also("EF501", "EF502")),
    Case("no_provider", "EF903", P, "key-alias does not use the stack's explicit AWS provider"),
    Case("default_provider", "EF903", P, "default AWS provider default_7_0_0 is in use"),
    Case(
        "provider_tags_removed", "EF903", P, "provider aws has no defaultTags", also=also("EF501")
    ),
]


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {case.bug}")] if case.bug else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module")
def leak_result(stacks: dict[str, StackState], project: Project) -> Callable[[Case], Result]:
    """The result of checking a case's leaky pair; cases that share a leak share one run."""
    cache: dict[tuple[str, tuple[tuple[str, Any], ...]], Result] = {}

    def get(case: Case) -> Result:
        key = (case.mutation, tuple(sorted(case.kwargs.items())))
        if key not in cache:
            leaky = m.mutated(stacks, m.MUTATIONS[case.mutation], **case.kwargs)
            # Advisory rules (EF504) enforced, as the scheduled run does: every case is a
            # violation here; tests/test_registry.py covers the warning side.
            cache[key] = run_all(leaky.values(), project, enforce_advisories=True)
        return cache[key]

    return get


@pytest.mark.parametrize("case", [_param(cs) for cs in CASES])
def test_leak_fires_its_rule(case: Case, leak_result: Callable[[Case], Result]) -> None:
    result = leak_result(case)
    fired = ids(result)
    assert case.rule in fired, describe(result)
    unexpected = fired - {case.rule} - case.also
    assert not unexpected, f"unrelated rules fired: {sorted(unexpected)}\n{describe(result)}"
    hits = [
        v
        for v in result.violations
        if v.rule == case.rule
        and v.stack == case.stack
        and case.message in v.message
        and v.other == case.other
    ]
    assert hits, (
        f"no {case.rule} violation in {case.stack} with otherStack={case.other!r} "
        f"and a message containing {case.message!r}:\n{describe(result)}"
    )
    rule = next(r for r in all_rules() if r.id == case.rule)
    assert all(
        v.fix == rule.fix and v.severity == rule.severity and v.name == rule.name for v in hits
    )


# --------------------------------------------------------------------------------------------
# (c) the table covers every rule


def test_every_rule_has_a_case_where_it_fires() -> None:
    covered = {cs.rule for cs in CASES if cs.bug is None}
    missing = sorted({r.id for r in all_rules()} - covered)
    assert not missing, f"rules without a (passing) leak case in CASES: {missing}"


def test_every_leak_of_the_mutations_module_is_in_the_table() -> None:
    assert sorted(set(m.MUTATIONS) - {cs.mutation for cs in CASES}) == [
        "ingress_from_anywhere",
        "unknown_tag_value",
    ]  # tested below, with their own asserts


def test_table_names_known_rules_only() -> None:
    known = {r.id for r in all_rules()}
    for cs in CASES:
        assert cs.rule in known and cs.also <= known, cs.id
        assert cs.mutation in m.MUTATIONS, cs.id


# --------------------------------------------------------------------------------------------
# (d) near misses stay quiet


@pytest.mark.parametrize("name", sorted(m.NEAR_MISSES))
def test_near_miss_stays_quiet(name: str, stacks: dict[str, StackState], project: Project) -> None:
    result = check(m.mutated(stacks, m.NEAR_MISSES[name]), project)
    assert result.violations == [], describe(result)
    assert {f.flow for f in result.flows} == {FLOW}


def test_prod_key_deny_with_wildcard_principal_is_not_a_grant(
    stacks: dict[str, StackState], project: Project
) -> None:
    # The production key policy has a Deny for Principal {"AWS": "*"}: it must stay quiet.
    key = stacks["prod"].named("key", m.KEY)
    denies = [s for s in m.policy(key)["Statement"] if s["Effect"] == "Deny"]
    assert any(s.get("Principal") in ("*", {"AWS": "*"}) for s in denies)
    assert not [v for v in check(stacks, project).violations if v.urn == key.urn]


def test_declared_flow_grants_are_flows_not_violations(
    stacks: dict[str, StackState], project: Project
) -> None:
    result = check(stacks, project)
    flow_urns = {f.urn for f in result.flows}
    exp, prod = stacks["experiment"], stacks["prod"]
    # The grant on experiment's side (bucket policy and key policy) and the read permission on
    # prod's side are each listed as the declared flow.
    assert exp.named("store-results-policy", m.BUCKET_POLICY).urn in flow_urns
    assert exp.named("key", m.KEY).urn in flow_urns
    assert prod.named("policy-pipeline", m.ROLE_POLICY).urn in flow_urns
    assert all(f.flow == FLOW for f in result.flows)
    assert not [v for v in result.violations if v.urn in flow_urns]


def test_experiment_database_without_final_snapshot_is_fine(
    stacks: dict[str, StackState], project: Project
) -> None:
    # EF209 is for production only; the experiment database skips its final snapshot by design.
    leaky = m.mutated(stacks, m.prod_db_skip_final_snapshot, at="experiment")
    assert check(leaky, project).violations == []


def test_experiment_not_yet_expired_is_fine(
    stacks: dict[str, StackState], project: Project
) -> None:
    leaky = m.mutated(stacks, m.experiment_expired, on="2999-12-31")
    assert check(leaky, project).violations == []


# --------------------------------------------------------------------------------------------
# Rule behaviour outside the table


def test_ingress_from_anywhere_is_not_said_to_be_inside_another_stack(
    stacks: dict[str, StackState], project: Project
) -> None:
    result = check(m.mutated(stacks, m.ingress_from_anywhere), project)
    [v] = [v for v in result.violations if v.rule == "EF104"]
    assert "admits 0.0.0.0/0" in v.message
    assert "inside stack" not in v.message


def test_unknown_tag_value_is_reported_as_unknown_not_as_a_wrong_tag(
    stacks: dict[str, StackState], project: Project
) -> None:
    result = check(m.mutated(stacks, m.unknown_tag_value), project)
    assert "EF501" in ids(result) or "EF902" in ids(result), describe(result)
    assert not [v for v in result.violations if m.UNKNOWN in v.message], describe(result)


PAB_SETTINGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


@pytest.mark.parametrize("setting", PAB_SETTINGS)
@pytest.mark.parametrize("off", [False, "false", None])
def test_each_public_access_block_setting_left_off_fires_ef203(
    setting: str, off: Any, stacks: dict[str, StackState], project: Project
) -> None:
    """The table's pab_setting_off turns off blockPublicPolicy only: each of the four settings
    must be checked (false, "false" as a string, or unset)."""
    leaky = m.mutated(stacks)
    pab = leaky[P].named("store-raw-public-access")
    if off is None:
        pab.drop(setting)
    else:
        pab.set(setting, off)
    result = check(leaky, project)
    assert ids(result) == {"EF203"}, describe(result)
    [v] = result.violations
    assert (v.stack, v.other, v.urn) == (P, None, pab.urn)
    assert v.message == f"bucket store-raw public access block leaves {setting} off", v.message


E_ACCOUNT = "210987654321"


@pytest.mark.parametrize(
    "value",
    [E_ACCOUNT, "999999999999", ["123456789012", E_ACCOUNT], "*"],
    ids=["other-environment", "unrelated-account", "own-and-other", "star"],
)
def test_ef302_fires_on_a_wrong_source_account(
    value: Any, stacks: dict[str, StackState], project: Project
) -> None:
    """A service trust whose aws:SourceAccount names any account but this environment's (or
    this one among others: the values are ORed) is a confused deputy, like a missing one."""
    leaky = m.mutated(stacks)
    trust = leaky[P].named("role-service", m.ROLE)
    doc = m.policy(trust, "assumeRolePolicy")
    for stmt in doc["Statement"]:
        assert stmt["Condition"]["StringEquals"]["aws:SourceAccount"] == m.account(leaky[P])
        stmt["Condition"]["StringEquals"]["aws:SourceAccount"] = value
    m.set_policy(trust, doc, "assumeRolePolicy")
    result = check(leaky, project)
    assert ids(result) == {"EF302"}, describe(result)
    [v] = result.violations
    assert (v.stack, v.urn) == (P, trust.urn)
    assert v.message == (
        "role role-service trusts service ecs-tasks.amazonaws.com without "
        "aws:SourceAccount = 123456789012"
    )


def test_resource_policy_types_are_classified() -> None:
    unclassified = sorted(
        t for t in (*c.RESOURCE_POLICIES, *c.INLINE_RESOURCE_POLICIES) if c.classify(t) is None
    )
    assert unclassified == []


def test_flow_one_side_lists_no_flow(stacks: dict[str, StackState], project: Project) -> None:
    result = check(m.mutated(stacks, m.flow_one_side), project)
    assert result.flows == []


def test_every_rule_type_token_is_a_provider_type() -> None:
    # A misspelled token would make a resource rule silently never fire.
    for r in all_rules():
        for t in r.types:
            assert c.resource_class(t) is not None, (r.id, t)


# --------------------------------------------------------------------------------------------
# The mutations module itself


def _registration_problems(
    before: dict[str, StackState], after: dict[str, StackState]
) -> list[str]:
    """What is wrong with the resources a mutation added: each must look like a registration
    of the stack (own URN, parent in the stack, the stack's provider, outputs echoing inputs)."""
    problems = []
    for stack, state in after.items():
        old = {r.urn for r in before[stack].resources}
        urns = state.by_urn()
        if len(urns) != len(state.resources):
            problems.append(f"{stack}: duplicate URN")
        for r in state.resources:
            if r.urn in old:
                continue
            if r.stack != stack or not r.name or r.type not in r.urn or not r.id:
                problems.append(f"{r.urn}: URN, type or id not of this stack")
            if r.parent not in urns:
                problems.append(f"{r.urn}: parent {r.parent} is not in the stack")
            if r.is_provider:
                continue
            if r.provider_urn not in urns or not urns[str(r.provider_urn)].is_provider:
                problems.append(f"{r.urn}: provider {r.provider} is not a provider of the stack")
            if {k: r.outputs.get(k) for k in r.inputs} != r.inputs:
                problems.append(f"{r.urn}: outputs do not echo the inputs")
    return problems


def test_mutations_add_real_registrations_and_leave_the_session_alone(
    stacks: dict[str, StackState],
) -> None:
    before = copy.deepcopy({n: [r.to_dict() for r in s.resources] for n, s in stacks.items()})
    configs = copy.deepcopy({n: s.config for n, s in stacks.items()})
    problems = []
    for name, fn in (*m.MUTATIONS.items(), *m.NEAR_MISSES.items()):
        problems += [f"{name}: {p}" for p in _registration_problems(stacks, m.mutated(stacks, fn))]
    assert not problems, "\n".join(problems)
    assert {n: [r.to_dict() for r in s.resources] for n, s in stacks.items()} == before
    assert {n: s.config for n, s in stacks.items()} == configs
