"""The IAM isolation proof: the clean stacks are proved (with controls that find access), and
every leak injected into the evaluated stacks is refuted with a counterexample a person can act
on — by both methods, which must agree.

The repository's pair lives in two accounts, where a request needs both the caller's side
(identity policy and boundary) and the resource's policy to allow it; and every role's boundary
denies resources tagged for another environment. So most leaks here are injected into `shared`:
the same pair moved into one account (a common, riskier deployment), with experiment's boundary
reduced to its ARN-based statements (no `DenyResourcesTaggedForOtherEnvironments`). That base is
itself proved (a test below); each leak then breaks one more layer. Single-layer mistakes that
another layer still stops are near misses: they must stay proved.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mutations as m
import pytest
from cvc5 import pythonic as z

from envfence.model import Resource, StackState
from envfence.project import Project
from envfence.prove import smt
from envfence.prove.iam_proof import BROKEN, JOBS, PROVED, REFUTED, IamProof, PairProof, prove_iam
from envfence.prove.world import build_world
from envfence.rules.context import build_context

Stacks = dict[str, StackState]
PROD, EXP = "prod", "experiment"


# -- helpers ---------------------------------------------------------------------------------


def prove(stacks: Stacks, project: Project, **kwargs: Any) -> IamProof:
    ctx = build_context(stacks.values(), one_account_allowed(project))
    world = build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})
    return prove_iam(world, project.name, **kwargs)


def pair(proof: IamProof, source: str, target: str) -> PairProof:
    return next(p for p in proof.pairs if p.source == source and p.target == target)


def share_account(stacks: Stacks) -> None:
    """Move experiment into prod's account, everywhere an account id appears."""
    old, new = m.account(stacks[EXP]), m.account(stacks[PROD])
    for state in stacks.values():
        for r in state.resources:
            r.inputs = json.loads(json.dumps(r.inputs).replace(old, new))
            r.outputs = json.loads(json.dumps(r.outputs).replace(old, new))
            r.id = r.id.replace(old, new) if r.id else r.id
        state.config = json.loads(json.dumps(state.config).replace(old, new))
    # In prod's account, experiment is no longer its account's baseline (prod is): the
    # account's alarm and audit log are prod's, so it takes no audit settings.
    stacks[EXP].config.pop("envfence:audit", None)


def role(state: StackState, name: str) -> Resource:
    return state.named(f"role-{name}", m.ROLE)


def role_policy(state: StackState, name: str) -> Resource:
    return state.named(f"policy-{name}", m.ROLE_POLICY)


def boundary(state: StackState) -> Resource:
    return state.named("boundary", "aws:iam/policy:Policy")


def trust_add(state: StackState, name: str, stmt: dict) -> None:
    m.add_statement(role(state, name), stmt, key="assumeRolePolicy")


def one_account_allowed(project: Project) -> Project:
    """The repository with a registry that also lets `experiment` live in prod's account. The
    real registry refuses that (envfence/registry.py); the proofs must not rely on it, so every
    case here, the one-account ones included, is proved against this one."""
    registry = project.registry
    entries = tuple(
        dataclasses.replace(e, accounts=(*e.accounts, "123456789012"))
        if e.tier == "experiment"
        else e
        for e in registry.entries
    )
    return dataclasses.replace(
        project, registry_section=dataclasses.replace(registry, entries=entries)
    )


@pytest.fixture(scope="module")
def shared(stacks: Stacks) -> Stacks:
    out = copy.deepcopy(stacks)
    share_account(out)
    m.drop_statement(boundary(out[EXP]), "DenyResourcesTaggedForOtherEnvironments")
    return out


# -- leaks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leak:
    """A change that opens a path; `principal` and `target` are what the counterexample must
    name (role label and data resource label prefix), `sid` a statement it must cite."""

    name: str
    apply: Callable[[Stacks], None]
    source: str
    target: str
    principal: str
    resource: str
    sid: str | None = None
    shared: bool = True
    hops: int = 1


def wildcard_resource(s: Stacks) -> None:
    m.add_statement(
        role_policy(s[EXP], "pipeline"),
        {
            "Sid": "LeakWildcardDb",
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": "arn:aws:rds-db:*:*:dbuser:*/*",
        },
    )


def not_resource_allow(s: Stacks) -> None:
    own = m.account(s[EXP])
    m.add_statement(
        role_policy(s[EXP], "service"),
        {
            "Sid": "LeakNotResource",
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "NotResource": f"arn:aws:rds-db:eu-west-1:{own}:dbuser:db-experiment-only/*",
        },
    )


def missing_boundary(s: Stacks) -> None:
    r = role(s[EXP], "pipeline")
    r.drop("permissionsBoundary")
    m.add_statement(
        role_policy(s[EXP], "pipeline"),
        {
            "Sid": "LeakAllBuckets",
            "Effect": "Allow",
            "Action": "s3:*",
            "Resource": "arn:aws:s3:::envfence-*",
        },
    )


def trust_chain(s: Stacks) -> None:
    trust_add(
        s[PROD],
        "analyst",
        {
            "Sid": "LeakTrustExperiment",
            "Effect": "Allow",
            "Principal": {"AWS": m.role_arn(s[EXP], "pipeline")},
            "Action": "sts:AssumeRole",
        },
    )
    m.drop_statement(boundary(s[EXP]), "DenyAssumingRolesOfOtherEnvironments")


def passrole_chain(s: Stacks) -> None:
    m.add_statement(
        role_policy(s[EXP], "service"),
        {
            "Sid": "LeakPassProdRole",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": m.role_arn(s[PROD], "pipeline"),
        },
    )
    m.drop_statement(boundary(s[EXP]), "DenyPassingRolesOfOtherEnvironments")


def key_policy_grant(s: Stacks) -> None:
    m.add_statement(
        s[PROD].named("key", m.KEY),
        {
            "Sid": "LeakExperimentDecrypts",
            "Effect": "Allow",
            "Principal": {"AWS": m.role_arn(s[EXP], "pipeline")},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    )
    m.drop_statement(boundary(s[EXP]), "DenyKeysOfOtherEnvironments")


def bucket_grant_other_account(s: Stacks) -> None:
    results = m.bucket_arn(s[EXP], "results")
    m.add_statement(
        s[EXP].named("store-results-policy", m.BUCKET_POLICY),
        {
            "Sid": "LeakProdAccountWrites",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{m.account(s[PROD])}:root"},
            "Action": "s3:PutObject",
            "Resource": f"{results}/*",
        },
    )
    m.add_statement(
        role_policy(s[PROD], "pipeline"),
        {
            "Sid": "LeakWriteExperimentResults",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"{results}/*",
        },
    )


def flow_widened_to_delete(s: Stacks) -> None:
    policy = s[EXP].named("store-results-policy", m.BUCKET_POLICY)
    doc = m.policy(policy)
    for stmt in doc["Statement"]:
        if stmt.get("Sid") == "DeclaredFlowProdPipelineRead":
            stmt["Action"] = ["s3:GetObject", "s3:DeleteObject"]
    m.set_policy(policy, doc)
    m.add_statement(
        role_policy(s[PROD], "pipeline"),
        {
            "Sid": "LeakDeleteExperimentResults",
            "Effect": "Allow",
            "Action": "s3:DeleteObject",
            "Resource": f"{m.bucket_arn(s[EXP], 'results')}/*",
        },
    )


def policy_variable(s: Stacks) -> None:
    m.add_statement(
        role_policy(s[EXP], "analyst"),
        {
            "Sid": "LeakAccountWideDb",
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": "arn:aws:rds-db:eu-west-1:${aws:PrincipalAccount}:dbuser:*/analyst",
        },
    )


def tag_session_abac(s: Stacks) -> None:
    # ABAC meant to be safe ("only principals tagged prod") ...
    m.add_statement(
        role_policy(s[EXP], "pipeline"),
        {
            "Sid": "LeakAbacDb",
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": "arn:aws:rds-db:*:*:dbuser:*/*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/environment": "prod"}},
        },
    )
    # ... but a CI runner may tag sessions of the role, so the tag is the caller's choice.
    trust_add(
        s[EXP],
        "pipeline",
        {
            "Sid": "LeakCiTagsSessions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{m.account(s[EXP])}:role/ci-runner"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
        },
    )


def managed_policy(s: Stacks) -> None:
    r = role_policy(s[EXP], "pipeline")
    m.clone(
        s[EXP],
        r,
        type_=m.ROLE_POLICY_ATTACHMENT,
        name="pipeline-s3-full",
        inputs={"role": role(s[EXP], "pipeline").get("name"), "policyArn": m.S3_FULL_ACCESS},
    )


def boundary_wildcard_names(s: Stacks) -> None:
    b = boundary(s[EXP])
    doc = m.policy(b)
    for stmt in doc["Statement"]:
        if stmt.get("Sid") == "DenyDataStoresOfOtherEnvironments":
            stmt["NotResource"] = ["arn:aws:s3:::envfence-*"]
    m.set_policy(b, doc)
    m.add_statement(
        role_policy(s[EXP], "pipeline"),
        {
            "Sid": "LeakBucketConfig",
            "Effect": "Allow",
            "Action": ["s3:PutBucketPolicy", "s3:GetBucketPolicy"],
            "Resource": "arn:aws:s3:::envfence-*",
        },
    )


def kms_grant(s: Stacks) -> None:
    key = s[PROD].named("key", m.KEY)
    m.clone(
        s[PROD],
        key,
        type_="aws:kms/grant:Grant",
        name="experiment-decrypts",
        inputs={
            "keyId": str(key.get("keyId") or key.id),
            "granteePrincipal": m.role_arn(s[EXP], "pipeline"),
            "operations": ["Decrypt"],
        },
    )
    m.drop_statement(boundary(s[EXP]), "DenyKeysOfOtherEnvironments")


def queue_grant(s: Stacks) -> None:
    queue = s[PROD].named("ingest-policy", m.QUEUE_POLICY)
    m.drop_statement(queue, "DenyPrincipalsOutsideThisEnvironment")
    m.add_statement(
        queue,
        {
            "Sid": "LeakExperimentSends",
            "Effect": "Allow",
            "Principal": {"AWS": m.role_arn(s[EXP], "pipeline")},
            "Action": "sqs:SendMessage",
            "Resource": str(s[PROD].named("ingest", "aws:sqs/queue:Queue").get("arn")),
        },
    )


LEAKS = [
    Leak(
        "wildcard_resource",
        wildcard_resource,
        EXP,
        PROD,
        "experiment/envfence-experiment-pipeline",
        "prod/db",
        "LeakWildcardDb",
    ),
    Leak(
        "not_resource_allow",
        not_resource_allow,
        EXP,
        PROD,
        "experiment/envfence-experiment-service",
        "prod/db",
        "LeakNotResource",
    ),
    Leak(
        "missing_boundary",
        missing_boundary,
        EXP,
        PROD,
        "experiment/envfence-experiment-pipeline",
        "prod/",
        "LeakAllBuckets",
    ),
    Leak(
        "trust_chain", trust_chain, EXP, PROD, "prod/envfence-prod-analyst", "prod/", None, hops=2
    ),
    Leak(
        "passrole_chain",
        passrole_chain,
        EXP,
        PROD,
        "prod/envfence-prod-pipeline",
        "prod/",
        None,
        hops=2,
    ),
    Leak(
        "key_policy_grant",
        key_policy_grant,
        EXP,
        PROD,
        "experiment/envfence-experiment-pipeline",
        "prod/key",
        "LeakExperimentDecrypts",
    ),
    Leak(
        "bucket_grant_other_account",
        bucket_grant_other_account,
        PROD,
        EXP,
        "prod/envfence-prod-pipeline",
        "experiment/store-results",
        "LeakProdAccountWrites",
        shared=False,
    ),
    Leak(
        "flow_widened_to_delete",
        flow_widened_to_delete,
        PROD,
        EXP,
        "prod/envfence-prod-pipeline",
        "experiment/store-results",
        "LeakDeleteExperimentResults",
        shared=False,
    ),
    Leak(
        "policy_variable",
        policy_variable,
        EXP,
        PROD,
        "experiment/envfence-experiment-analyst",
        "prod/db",
        "LeakAccountWideDb",
    ),
    Leak(
        "tag_session_abac",
        tag_session_abac,
        EXP,
        PROD,
        "experiment/envfence-experiment-pipeline",
        "prod/db",
        "LeakAbacDb",
    ),
    Leak(
        "managed_policy",
        managed_policy,
        EXP,
        PROD,
        "experiment/envfence-experiment-pipeline",
        "prod/",
        None,
    ),
    Leak(
        "boundary_wildcard_names",
        boundary_wildcard_names,
        EXP,
        PROD,
        "experiment/envfence-experiment-pipeline",
        "prod/store-",
        "LeakBucketConfig",
    ),
    Leak(
        "kms_grant",
        kms_grant,
        EXP,
        PROD,
        "experiment/envfence-experiment-pipeline",
        "prod/key",
        "Grantexperiment-decrypts",
    ),
    Leak(
        "queue_grant",
        queue_grant,
        EXP,
        PROD,
        "experiment/envfence-experiment-pipeline",
        "prod/ingest",
        "LeakExperimentSends",
    ),
]


# -- the clean stacks --------------------------------------------------------------------------


def test_clean_stacks_are_proved_with_controls(stacks: Stacks, project: Project) -> None:
    proof = prove(stacks, project)
    assert [(p.source, p.target, p.status) for p in proof.pairs] == [
        (EXP, PROD, PROVED),
        (PROD, EXP, PROVED),
    ]
    assert all(c.found for c in proof.controls), [c for c in proof.controls if not c.found]
    whats = {c.what for c in proof.controls}
    for stack in (PROD, EXP):
        for kind, jobs in JOBS.items():
            for action, which in jobs:
                assert f"{stack}/{kind} may {action} on {stack}'s {which}" in whats
    assert len(whats) == 2 * sum(len(jobs) for jobs in JOBS.values()) + 1
    assert "declared flow prod/pipeline may read experiment/results is usable" in whats
    assert pair(proof, PROD, EXP).flows == ["prod/pipeline may read experiment/results"]
    assert all(p.principals >= 6 and p.resources >= 10 for p in proof.pairs)


def test_clean_stacks_in_one_account_are_proved(shared: Stacks, project: Project) -> None:
    proof = prove(shared, project)
    assert {p.status for p in proof.pairs} == {PROVED}, [p.details for p in proof.pairs]
    assert all(c.found for c in proof.controls)


# -- leaks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("leak", LEAKS, ids=lambda leak: leak.name)
def test_leak_is_refuted_with_a_counterexample(
    leak: Leak, stacks: Stacks, shared: Stacks, project: Project
) -> None:
    s = copy.deepcopy(shared if leak.shared else stacks)
    leak.apply(s)
    # One pair, no controls: the controls are tested on their own below.
    proof = prove(s, project, pairs=[(leak.source, leak.target)], controls=False)
    result = pair(proof, leak.source, leak.target)
    assert result.status == REFUTED, (result.status, result.details)
    hits = [c for c in result.counterexamples if c.chain[-1].role == leak.principal]
    assert hits, [(c.chain, c.action, c.resource) for c in result.counterexamples]
    ce = hits[0]
    assert ce.target.startswith(leak.resource), ce.target
    assert len(ce.chain) == leak.hops
    assert ce.chain[0].role.startswith(f"{leak.source}/")
    if leak.sid:
        assert any(
            leak.sid in s for s in ce.statements + tuple(x for h in ce.chain for x in h.statements)
        ), ce.statements
    text = "\n".join(ce.lines())
    assert ce.action in text and ce.resource in text and "allowed by" in text


def test_trust_chain_counterexample_names_the_hop(shared: Stacks, project: Project) -> None:
    s = copy.deepcopy(shared)
    trust_chain(s)
    proof = prove(s, project)
    # A leak is reported where it is: the other direction and the controls are unaffected.
    assert pair(proof, PROD, EXP).status == PROVED
    assert all(c.found for c in proof.controls)
    ce = pair(proof, EXP, PROD).counterexamples[0]
    assert [h.via for h in ce.chain] == ["start", "sts:AssumeRole"]
    assert any("LeakTrustExperiment" in x for x in ce.chain[1].statements)


def test_forged_session_tag_is_in_the_counterexample(shared: Stacks, project: Project) -> None:
    s = copy.deepcopy(shared)
    tag_session_abac(s)
    ce = pair(prove(s, project, pairs=[(EXP, PROD)], controls=False), EXP, PROD).counterexamples[0]
    assert ce.session_tags == {"environment": "prod"}


# -- near misses: one layer fails, another still holds ---------------------------------------


def identity_wildcard_alone(s: Stacks) -> None:
    m.add_statement(
        role_policy(s[EXP], "pipeline"),
        {"Sid": "WideS3", "Effect": "Allow", "Action": "s3:*", "Resource": "*"},
    )


def bucket_star_grant_alone(s: Stacks) -> None:
    m.add_statement(
        s[PROD].named("store-raw-policy", m.BUCKET_POLICY),
        {
            "Sid": "EveryoneReads",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"{m.bucket_arn(s[PROD], 'raw')}/*",
        },
    )


def trust_alone(s: Stacks) -> None:
    trust_add(
        s[PROD],
        "analyst",
        {
            "Effect": "Allow",
            "Principal": {"AWS": m.role_arn(s[EXP], "pipeline")},
            "Action": "sts:AssumeRole",
        },
    )


NEAR_MISSES = [identity_wildcard_alone, bucket_star_grant_alone, trust_alone]


@pytest.mark.parametrize("change", NEAR_MISSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("base", ["two-accounts", "one-account"])
def test_one_failed_layer_is_still_proved(
    change: Callable[[Stacks], None], base: str, stacks: Stacks, shared: Stacks, project: Project
) -> None:
    s = copy.deepcopy(stacks if base == "two-accounts" else shared)
    change(s)
    proof = prove(s, project)
    assert {p.status for p in proof.pairs} == {PROVED}, [
        (p.source, p.target, p.counterexamples, p.details) for p in proof.pairs
    ]


# -- broken, never proved ------------------------------------------------------------------------


def test_a_failing_control_breaks_the_proof(stacks: Stacks, project: Project) -> None:
    s = copy.deepcopy(stacks)
    # prod's pipeline can no longer read what the flow declares: the flow control fails.
    m.drop_statement(
        s[EXP].named("store-results-policy", m.BUCKET_POLICY), "DeclaredFlowProdPipelineRead"
    )
    m.drop_statement(
        s[EXP].named("store-results-policy", m.BUCKET_POLICY), "DeclaredFlowProdPipelineList"
    )
    proof = prove(s, project)
    assert {p.status for p in proof.pairs} == {BROKEN}
    # Not allowed, as both methods agree: not "the two methods disagree", not an SMT error.
    flow = "declared flow prod/pipeline may read experiment/results is usable"
    assert [(c.what, c.detail) for c in proof.controls if not c.found] == [(flow, "not allowed")]
    for p in proof.pairs:
        assert f"control failed: {flow} (not allowed)" in p.details, p.details


def test_a_role_losing_all_access_breaks_its_control(stacks: Stacks, project: Project) -> None:
    s = copy.deepcopy(stacks)
    m.set_policy(role_policy(s[EXP], "analyst"), {"Version": "2012-10-17", "Statement": []})
    proof = prove(s, project)
    failed = [c for c in proof.controls if not c.found]
    assert [c.what for c in failed] == [
        f"experiment/analyst may {action} on experiment's {which}"
        for action, which in JOBS["analyst"]
    ]
    assert {c.detail for c in failed} == {"not allowed"}
    assert {p.status for p in proof.pairs} == {BROKEN}


def test_unknown_policy_fails_closed(stacks: Stacks, project: Project) -> None:
    s = copy.deepcopy(stacks)
    role_policy(s[EXP], "pipeline").set("policy", m.UNKNOWN)
    proof = prove(s, project)
    assert {p.status for p in proof.pairs} == {BROKEN}
    assert any("unknown" in d for p in proof.pairs for d in p.details)


def test_an_unmodelled_grant_type_fails_closed(stacks: Stacks, project: Project) -> None:
    s = copy.deepcopy(stacks)
    m.clone(
        s[EXP],
        role(s[EXP], "pipeline"),
        type_="aws:iam/user:User",
        name="contractor",
        inputs={"name": "contractor"},
    )
    proof = prove(s, project, controls=False)
    assert {p.status for p in proof.pairs} == {BROKEN}
    assert any("aws:iam/user:User (contractor)" in d for p in proof.pairs for d in p.details)


def test_unsupported_condition_fails_closed(stacks: Stacks, project: Project) -> None:
    s = copy.deepcopy(stacks)
    m.add_statement(
        role_policy(s[EXP], "pipeline"),
        {
            "Sid": "FromTheOffice",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"{m.bucket_arn(s[PROD], 'raw')}/*",
            "Condition": {"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}},
        },
    )
    proof = prove(s, project)
    result = pair(proof, EXP, PROD)
    assert result.status == BROKEN
    assert any("IpAddress" in d for d in result.details)


def test_a_boundary_that_denies_untagged_requests_breaks_the_controls(
    stacks: Stacks, project: Project
) -> None:
    """`StringNotEqualsIfExists` on aws:ResourceTag denies every request that carries no
    resource tag: S3 and rds-db requests carry none, so the environment's own roles lose their
    data stores. The controls evaluate requests as AWS will and must catch it."""
    s = copy.deepcopy(stacks)
    b = boundary(s[EXP])
    doc = m.policy(b)
    for stmt in doc["Statement"]:
        if stmt.get("Sid") == "DenyResourcesTaggedForOtherEnvironments":
            stmt["Condition"] = {
                "StringNotEqualsIfExists": {"aws:ResourceTag/environment": ["experiment"]}
            }
    m.set_policy(b, doc)
    proof = prove(s, project)
    failed = sorted(c.what for c in proof.controls if not c.found)
    # The controls fix their action: the tag reading must be that action's, so both methods
    # agree that the request is not allowed (a free action variable made them disagree).
    assert {c.detail for c in proof.controls if not c.found} == {"not allowed"}
    # Every S3 and rds-db job of experiment's roles; SQS, KMS and AppConfig carry the tag.
    assert failed == sorted(
        f"experiment/{kind} may {action} on experiment's {which}"
        for kind, jobs in JOBS.items()
        for action, which in jobs
        if action.split(":")[0] in ("s3", "rds-db")
    )
    assert {p.status for p in proof.pairs} == {BROKEN}


class _Unknown:
    """cvc5 as it answers when it runs out of time."""

    def add(self, *_: Any) -> None: ...

    def check(self) -> Any:
        return z.unknown

    def reason_unknown(self) -> str:
        return "timeout"


@pytest.mark.parametrize("per_pair", [False, True], ids=["per-environment", "per-pair"])
def test_a_solver_that_answers_unknown_breaks_the_proof(
    shared: Stacks, project: Project, monkeypatch: pytest.MonkeyPatch, per_pair: bool
) -> None:
    """`unknown` (a timeout) is no answer: every pair and every control is broken, naming it;
    nothing is proved or found. (In one account some pair questions reach the solver; the
    others fold to "no statement applies" before it. The question of one environment against
    everything outside holds only what an Allow statement could reach (`relevance`): for
    experiment's principals in prod's account that is prod's key, which folds before the
    solver; the per-pair questions also hold resources only `_fits` excludes, in the solver.)"""
    monkeypatch.setattr(smt, "_new_solver", lambda timeout_ms: _Unknown())
    proof = prove(shared, project, per_pair=per_pair)
    why = "SMT: cvc5 answered unknown (timeout)"
    assert [(p.source, p.target, p.status) for p in proof.pairs] == [
        (EXP, PROD, BROKEN),
        (PROD, EXP, BROKEN),
    ]
    asking = [(PROD, EXP)] if not per_pair else [(EXP, PROD), (PROD, EXP)]
    for p in proof.pairs:
        assert p.counterexamples == []
        # The pair's own questions (one per principal of the source) that reached the solver.
        asked = [d for d in p.details if d.startswith(f"{p.source}/") and d.endswith(why)]
        assert bool(asked) == ((p.source, p.target) in asking), p.details
    assert proof.controls and all(not c.found and c.detail == why for c in proof.controls)


# -- hole 4: aws:ResourceTag where the service puts it in the request --------------------------


def _queue_granted_to_experiment(s: Stacks) -> None:
    """prod's ingest queue names experiment's service role in its policy, and the role's own
    policy allows sending there: both accounts allow. Only the experiment boundary's
    DenyResourcesTaggedForOtherEnvironments (queue tagged environment=prod) stands between."""
    arn = str(s[PROD].named("ingest", "aws:sqs/queue:Queue").get("arn"))
    policy = s[PROD].named("ingest-policy", m.QUEUE_POLICY)
    m.drop_statement(policy, "DenyPrincipalsOutsideThisEnvironment")
    m.add_statement(
        policy,
        {
            "Sid": "GrantExperimentService",
            "Effect": "Allow",
            "Principal": {"AWS": m.role_arn(s[EXP], "service")},
            "Action": "sqs:SendMessage",
            "Resource": arn,
        },
    )
    m.add_statement(
        role_policy(s[EXP], "service"),
        {
            "Sid": "SendToProd",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": arn,
        },
    )


def test_a_boundary_tag_deny_on_a_queue_is_proved_to_hold(stacks: Stacks, project: Project) -> None:
    """SQS puts the queue's tags in the request (SAR: queue supports aws:ResourceTag), so the
    boundary's tag deny holds: proved. Without that statement the grant goes through."""
    s = copy.deepcopy(stacks)
    _queue_granted_to_experiment(s)
    result = pair(prove(s, project, pairs=[(EXP, PROD)], controls=False), EXP, PROD)
    assert result.status == PROVED, (result.details, result.counterexamples)
    m.drop_statement(boundary(s[EXP]), "DenyResourcesTaggedForOtherEnvironments")
    result = pair(prove(s, project, pairs=[(EXP, PROD)], controls=False), EXP, PROD)
    assert result.status == REFUTED, result.details
    ce = result.counterexamples[0]
    assert (ce.principal, ce.action) == (m.role_arn(s[EXP], "service"), "sqs:SendMessage")
    assert ce.target.startswith("prod/ingest") and "GrantExperimentService" in str(ce.statements)


def test_a_boundary_tag_deny_on_a_bucket_proves_nothing(stacks: Stacks, project: Project) -> None:
    """The same grant on an S3 bucket: S3 requests carry no aws:ResourceTag unless ABAC is
    enabled on the bucket, which the state does not say, so the tag deny may not apply: still
    refuted once the ARN-based statement is gone (sound where the reference is unclear)."""
    s = copy.deepcopy(stacks)
    objects = f"{m.bucket_arn(s[PROD], 'raw')}/*"
    policy = s[PROD].named("store-raw-policy", m.BUCKET_POLICY)
    m.drop_statement(policy, "DenyPrincipalsOutsideThisEnvironment")
    m.add_statement(
        policy,
        {
            "Sid": "GrantExperimentService",
            "Effect": "Allow",
            "Principal": {"AWS": m.role_arn(s[EXP], "service")},
            "Action": "s3:GetObject",
            "Resource": objects,
        },
    )
    m.add_statement(
        role_policy(s[EXP], "service"),
        {"Sid": "ReadProd", "Effect": "Allow", "Action": "s3:GetObject", "Resource": objects},
    )
    result = pair(prove(s, project, pairs=[(EXP, PROD)], controls=False), EXP, PROD)
    assert result.status == PROVED  # the boundary's ARN fence on S3 still holds
    m.drop_statement(boundary(s[EXP]), "DenyDataStoresOfOtherEnvironments")
    result = pair(prove(s, project, pairs=[(EXP, PROD)], controls=False), EXP, PROD)
    assert result.status == REFUTED, result.details
    ce = result.counterexamples[0]
    assert (ce.action, ce.resource) == ("s3:GetObject", f"{m.bucket_arn(s[PROD], 'raw')}/example")
    assert "aws:ResourceTag/environment" not in ce.context
