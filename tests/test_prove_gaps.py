"""Small questions put to both IAM proof methods directly (issue 9, "Test gaps found by breaking
the code on purpose", and hole 4): each pins one piece of reasoning that a deliberate mistake in
`envfence.prove.smt`, `envfence.prove.classes` or `envfence.prove.query` got past the
stack-level tests with. The worlds are built by hand (a role, a target, their policies), so each
question takes milliseconds.

Every question is answered by both methods and they must agree, as `iam_proof._Both` demands.
"""

from __future__ import annotations

from typing import Any

import pytest
from cvc5 import pythonic as z

from envfence import iam
from envfence.iam import Policy
from envfence.prove import classes, smt
from envfence.prove.query import (
    ABSENT,
    EITHER,
    TAG,
    TAG_SUPPORT,
    Exemption,
    Query,
    Witness,
    resource_tag_values,
    tag_support,
)
from envfence.prove.smt import ProofError
from envfence.prove.world import ANY, Role, Shape, Target

EXP_ACCOUNT, PROD_ACCOUNT = "210987654321", "123456789012"
REGION = "eu-west-1"
ENV_TAG = "aws:ResourceTag/environment"


def doc(*statements: dict[str, Any], name: str = "policy") -> Policy:
    return Policy({"Version": "2012-10-17", "Statement": list(statements)}, name)


def allow(action: str | list[str], resource: str | list[str], sid: str = "Allow") -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}


def deny(action: str | list[str], resource: str | list[str], sid: str = "Deny") -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Deny", "Action": action, "Resource": resource}


def role(
    *identity: dict[str, Any],
    boundary: Policy | None = None,
    account: str = EXP_ACCOUNT,
    name: str = "envfence-experiment-service",
) -> Role:
    return Role(
        stack="experiment",
        urn=f"urn:pulumi:experiment::envfence::aws:iam/role:Role::{name}",
        name=name,
        arn=f"arn:aws:iam::{account}:role/{name}",
        account=account,
        tags={"environment": "experiment"},
        trust=None,
        identity=(doc(*identity, name="identity"),),
        boundary=boundary,
    )


def target(
    type_: str,
    *shapes: Shape,
    policy: Policy | None = None,
    account: str = PROD_ACCOUNT,
    tags: dict[str, str] | None = None,
    kind: str = "generic",
) -> Target:
    name = type_.rsplit(":", 1)[-1].lower()
    return Target(
        stack="prod",
        urn=f"urn:pulumi:prod::envfence::{type_}::{name}",
        type=type_,
        name=name,
        shapes=shapes,
        account=account,
        tags={"environment": "prod"} if tags is None else tags,
        policy=policy,
        kind=kind,
    )


def queue_arn(account: str = PROD_ACCOUNT) -> str:
    return f"arn:aws:sqs:{REGION}:{account}:envfence-prod-ingest"


def queue(policy: Policy | None = None, account: str = PROD_ACCOUNT, **kw: Any) -> Target:
    return target(
        "aws:sqs/queue:Queue", (queue_arn(account),), policy=policy, account=account, **kw
    )


BUCKET_ARN = "arn:aws:s3:::envfence-prod-raw-123456789012"


def bucket(policy: Policy | None = None, account: str = PROD_ACCOUNT, **kw: Any) -> Target:
    return target(
        "aws:s3/bucket:Bucket",
        (BUCKET_ARN,),
        (BUCKET_ARN + "/", ANY),
        policy=policy,
        account=account,
        **kw,
    )


def grant(principal: Any, action: str | list[str], resource: str) -> Policy:
    return doc(
        {
            "Sid": "Grant",
            "Effect": "Allow",
            "Principal": principal,
            "Action": action,
            "Resource": resource,
        },
        name="resource policy",
    )


def tag_fence(env: str = "experiment") -> Policy:
    """envfence's boundary: everything, except resources tagged for another environment where
    the request carries the tag (infra/components/identity.py)."""
    return doc(
        allow("*", "*", "AllowWithinTheBoundary"),
        {
            "Sid": "DenyResourcesTaggedForOtherEnvironments",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "StringNotEquals": {ENV_TAG: [env]},
                "Null": {ENV_TAG: "false"},
            },
        },
        name="boundary",
    )


def both(query: Query) -> Witness | None:
    """Both methods' answer; they must agree (and a witness must be one the evaluator allows)."""
    by_smt, by_classes = smt.solve(query), classes.search(query)
    assert (by_smt is None) == (by_classes is None), (
        f"SMT found {by_smt and (by_smt.action, by_smt.resource, dict(by_smt.context))}, "
        f"the class method {by_classes and (by_classes.action, by_classes.resource)}"
    )
    for w in (by_smt, by_classes):
        if w is not None:
            assert w.decision.allowed, w.decision.reason
    return by_smt


# --------------------------------------------------------------------------------------------
# 1. `unknown` and timeouts fail the question, never prove it


class _Unknown:
    """A solver that answers `unknown` from the `after`-th check on, as cvc5 does on a timeout."""

    def __init__(self, timeout_ms: int, after: int = 0) -> None:
        self.real = z.SolverFor("QF_SLIA")
        self.real.set("tlimit-per", timeout_ms)
        self.checks = 0
        self.after = after

    def check(self) -> Any:
        self.checks += 1
        if self.checks > self.after:
            return z.unknown
        return self.real.check()

    def reason_unknown(self) -> str:
        return "timeout"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _leaky() -> Query:
    return Query(
        role(allow("sqs:SendMessage", queue_arn(EXP_ACCOUNT))), (queue(account=EXP_ACCOUNT),)
    )


def _sealed() -> Query:
    # Unsatisfiable, but only the solver can tell (no statement folds to False in Python).
    objects = f"{BUCKET_ARN}/*"
    caller = role(allow("s3:GetObject", objects), deny("s3:Get*", objects))
    return Query(caller, (bucket(account=EXP_ACCOUNT),))


@pytest.mark.parametrize("question", [_leaky, _sealed], ids=["leaky", "sealed"])
def test_an_unknown_answer_is_a_proof_error_never_none(
    question: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (both(question()) is None) == (question is _sealed)  # the real answers
    monkeypatch.setattr(smt, "_new_solver", lambda timeout_ms: _Unknown(timeout_ms))
    with pytest.raises(ProofError, match=r"^cvc5 answered unknown \(timeout\)$"):
        smt.solve(question())


def test_an_unknown_answer_while_polishing_the_witness_is_a_proof_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After `sat`, the checks that prefer a readable action and resource must be `sat` too: a
    model read after `unknown` is not a witness."""
    made: list[_Unknown] = []

    def solver(timeout_ms: int) -> _Unknown:
        made.append(_Unknown(timeout_ms, after=1))
        return made[-1]

    monkeypatch.setattr(smt, "_new_solver", solver)
    with pytest.raises(ProofError, match=r"cvc5 answered unknown \(timeout\)"):
        smt.solve(_leaky())
    assert made[0].checks > 1


def test_the_timeout_reaches_the_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []
    real = smt._new_solver

    def solver(timeout_ms: int) -> Any:
        made.append(real(timeout_ms))
        return made[-1]

    monkeypatch.setattr(smt, "_new_solver", solver)
    assert smt.solve(_leaky(), timeout_ms=1234) is not None
    assert [s.getOption("tlimit-per") for s in made] == ["1234"]


# --------------------------------------------------------------------------------------------
# 2. A wildcard's filled instances are classes of their own


def test_an_action_inside_a_wildcard_but_not_its_empty_instance_is_found() -> None:
    """Allow `s3:Get*Object`, deny `s3:GetObject`: only the empty filling of the `*` is denied;
    every other one (`s3:GetzzObject`, any string) is still allowed, and both methods must find
    one. A class method that tries only the empty filling finds nothing."""
    objects = f"{BUCKET_ARN}/*"
    q = Query(
        role(allow("s3:Get*Object", objects), deny("s3:GetObject", objects)),
        (bucket(account=EXP_ACCOUNT),),
    )
    by_smt, by_classes = smt.solve(q), classes.search(q)
    for w in (by_smt, by_classes):
        assert w is not None
        assert iam.action_matches("s3:Get*Object", w.action), w.action
        assert w.action.lower() != "s3:getobject", w.action
        assert w.decision.allowed
    # Without the deny the empty filling is an answer too: the deny is what moved it.
    q = Query(role(allow("s3:Get*Object", objects)), (bucket(account=EXP_ACCOUNT),))
    assert both(q) is not None


# --------------------------------------------------------------------------------------------
# 3. Cross-account: the caller's boundary still limits what the resource policy grants


def _cross_account(principal: Any, boundary: Policy | None) -> Query:
    caller = role(allow("sqs:SendMessage", queue_arn()), boundary=boundary)
    return Query(caller, (queue(policy=grant(principal, "sqs:SendMessage", queue_arn())),))


ROLE_ARN = f"arn:aws:iam::{EXP_ACCOUNT}:role/envfence-experiment-service"
PRINCIPALS = {
    "role ARN": {"AWS": ROLE_ARN},
    "account": {"AWS": f"arn:aws:iam::{EXP_ACCOUNT}:root"},
    "anyone": {"AWS": "*"},
}
ONLY_S3 = doc(allow("s3:*", "*"), name="boundary")  # says nothing about SQS: no Allow
DENIES_SQS = doc(allow("*", "*"), deny("sqs:*", "*"), name="boundary")


@pytest.mark.parametrize("principal", list(PRINCIPALS))
def test_cross_account_grant_stopped_by_the_boundary_alone_is_proved(principal: str) -> None:
    for boundary in (ONLY_S3, DENIES_SQS):
        assert both(_cross_account(PRINCIPALS[principal], boundary)) is None, boundary.document


@pytest.mark.parametrize("principal", list(PRINCIPALS))
def test_the_same_cross_account_grant_without_the_boundary_is_refuted(principal: str) -> None:
    w = both(_cross_account(PRINCIPALS[principal], None))
    assert w is not None
    assert (w.action, w.resource) == ("sqs:SendMessage", queue_arn())
    assert "resource policy#Grant" in w.statements() and "identity#Allow" in w.statements()


# --------------------------------------------------------------------------------------------
# 9. A fixed action is the action the rest of the formula sees


def _own_queue_with_tag_fence(action: str | None) -> Query:
    caller = role(allow("sqs:*", queue_arn(EXP_ACCOUNT)), boundary=tag_fence())
    return Query(caller, (queue(account=EXP_ACCOUNT),), action=action)


def test_a_fixed_action_reads_the_resource_tag_of_its_own_resource_type() -> None:
    """The queue is tagged prod and its requests carry that tag, so the boundary denies
    `sqs:SendMessage`. Only `sqs:CreateQueue` (which acts before the queue's tags exist, read as
    either) gets through: a fixed SendMessage must not borrow CreateQueue's reading."""
    assert both(_own_queue_with_tag_fence("sqs:SendMessage")) is None
    free = both(_own_queue_with_tag_fence(None))
    assert free is not None and free.action.lower() == "sqs:createqueue", free
    assert both(_own_queue_with_tag_fence("sqs:CreateQueue")) is not None


def test_a_fixed_action_inside_an_exemption_is_exempt() -> None:
    objects = f"{BUCKET_ARN}/*"
    store = bucket(account=EXP_ACCOUNT)
    flow = Exemption("a declared flow", frozenset({"s3:getobject"}), (store,))
    caller = role(allow("s3:GetObject", objects))
    assert both(Query(caller, (store,), action="s3:GetObject", exemptions=(flow,))) is None
    w = both(Query(caller, (store,), action="s3:GetObject", exemptions=(flow,), only_exempt=True))
    assert w is not None and w.action == "s3:GetObject"


# --------------------------------------------------------------------------------------------
# 10. aws:ResourceTag as each resource type supplies it (hole 4)


def _shapes(arn: str, *more: Shape) -> tuple[Shape, ...]:
    return ((arn,), *more)


KEY_ARN = f"arn:aws:kms:{REGION}:{PROD_ACCOUNT}:key/93c07eff-22be-4324-893c-07eff22be324"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{PROD_ACCOUNT}:secret:rds!db-7693571b-aa640"
REPO_ARN = f"arn:aws:ecr:{REGION}:{PROD_ACCOUNT}:repository/envfence-prod-worker"
LOGS_ARN = f"arn:aws:logs:{REGION}:{PROD_ACCOUNT}:log-group:/envfence/prod/worker"
APP = f"arn:aws:appconfig:{REGION}:{PROD_ACCOUNT}:application/cc9bbe1"
DB_ARN = f"arn:aws:rds:{REGION}:{PROD_ACCOUNT}:db:envfence-prod-db"
DBUSER = f"arn:aws:rds-db:{REGION}:{PROD_ACCOUNT}:dbuser:db-7693571B37A2AA640/"

# (type, shapes, an action on the resource, the example resource, isolation reading, control)
TYPES: dict[str, tuple[str, tuple[Shape, ...], str, str, str, str]] = {
    "queue": (
        "aws:sqs/queue:Queue",
        _shapes(queue_arn()),
        "sqs:SendMessage",
        queue_arn(),
        TAG,
        TAG,
    ),
    "key": ("aws:kms/key:Key", _shapes(KEY_ARN), "kms:Decrypt", KEY_ARN, TAG, TAG),
    "secret": (
        "aws:secretsmanager/secret:Secret",
        _shapes(SECRET_ARN),
        "secretsmanager:GetSecretValue",
        SECRET_ARN,
        TAG,
        TAG,
    ),
    "repository": (
        "aws:ecr/repository:Repository",
        _shapes(REPO_ARN),
        "ecr:BatchGetImage",
        REPO_ARN,
        TAG,
        TAG,
    ),
    "log group": (
        "aws:cloudwatch/logGroup:LogGroup",
        _shapes(LOGS_ARN, (LOGS_ARN + ":", ANY)),
        "logs:FilterLogEvents",
        LOGS_ARN,
        TAG,
        TAG,
    ),
    "log stream": (
        "aws:cloudwatch/logGroup:LogGroup",
        _shapes(LOGS_ARN, (LOGS_ARN + ":", ANY)),
        "logs:GetLogEvents",
        LOGS_ARN + ":log-stream:example",
        EITHER,
        TAG,
    ),
    "configuration profile": (
        "aws:appconfig/configurationProfile:ConfigurationProfile",
        _shapes(
            f"{APP}/configurationprofile/e903fe1",
            (f"{APP}/environment/", ANY, "/configuration/e903fe1"),
        ),
        "appconfig:GetConfigurationProfile",
        f"{APP}/configurationprofile/e903fe1",
        TAG,
        TAG,
    ),
    "configuration": (
        "aws:appconfig/configurationProfile:ConfigurationProfile",
        _shapes(
            f"{APP}/configurationprofile/e903fe1",
            (f"{APP}/environment/", ANY, "/configuration/e903fe1"),
        ),
        "appconfig:GetLatestConfiguration",
        f"{APP}/environment/a6ae2c2/configuration/e903fe1",
        EITHER,
        TAG,
    ),
    "bucket": (
        "aws:s3/bucket:Bucket",
        bucket().shapes,
        "s3:ListBucket",
        BUCKET_ARN,
        EITHER,
        ABSENT,
    ),
    "object": (
        "aws:s3/bucket:Bucket",
        bucket().shapes,
        "s3:GetObject",
        BUCKET_ARN + "/example",
        EITHER,
        ABSENT,
    ),
    "database user": (
        "aws:rds/instance:Instance",
        _shapes(DB_ARN, (DBUSER, ANY)),
        "rds-db:connect",
        DBUSER + "worker",
        EITHER,
        ABSENT,
    ),
    "database (unlisted)": (
        "aws:rds/instance:Instance",
        _shapes(DB_ARN, (DBUSER, ANY)),
        "rds:DeleteDBInstance",
        DB_ARN,
        EITHER,
        TAG,
    ),
}
VALUES = {TAG: ["prod"], ABSENT: [None], EITHER: ["prod", None]}


@pytest.mark.parametrize("name", list(TYPES))
def test_each_resource_type_reads_its_tag_as_the_reference_says(name: str) -> None:
    type_, shapes, action, resource, isolation, control = TYPES[name]
    t = target(type_, *shapes)
    assert t.matches(resource)
    caller = role()
    for mode, reading in (("either", isolation), ("realistic", control)):
        q = Query(caller, (t,), resource_tags=mode)
        assert resource_tag_values(q, t, resource, action, "environment") == VALUES[reading]
    untagged = target(type_, *shapes, tags={})
    q = Query(caller, (untagged,))
    assert resource_tag_values(q, untagged, resource, action, "environment") == [None]


@pytest.mark.parametrize("name", list(TYPES))
def test_a_boundary_tag_deny_holds_exactly_where_the_tag_is_in_the_request(name: str) -> None:
    """Another environment's resource, granted by the caller's own identity policy (same
    account), fenced only by the boundary's tag deny: proved where the request carries the tag,
    refuted where the reference leaves it unclear -- by both methods."""
    type_, shapes, action, resource, isolation, _ = TYPES[name]
    t = target(type_, *shapes, account=EXP_ACCOUNT)
    caller = role(allow(action, resource), boundary=tag_fence())
    w = both(Query(caller, (t,)))
    assert (w is None) == (isolation == TAG), w and (w.action, w.resource, dict(w.context))
    if w is not None:
        assert ENV_TAG not in w.context  # the reading that lets it through: absent


def test_the_tag_table_names_the_reference_for_every_type() -> None:
    for support in TAG_SUPPORT:
        assert support.source.startswith(
            "https://docs.aws.amazon.com/service-authorization/latest/reference/list_"
        ), support
        assert support.isolation in (TAG, EITHER) and support.control in (TAG, ABSENT)
        assert all(a.startswith(f"{support.service}:") and a == a.lower() for a in support.creators)
    assert tag_support((queue_arn(),)).service == "sqs"
    assert tag_support((f"arn:aws:dynamodb:{REGION}:{PROD_ACCOUNT}:table/t",)).service == "*"


def test_a_cross_account_queue_grant_fenced_by_the_tag_is_proved() -> None:
    """Hole 4 in small: prod's queue names experiment's service role in its policy, the role's
    identity policy allows it, and only the boundary's tag deny stands in the way."""
    principal = {"AWS": ROLE_ARN}
    fenced = role(allow("sqs:SendMessage", queue_arn()), boundary=tag_fence())
    granted = queue(policy=grant(principal, "sqs:SendMessage", queue_arn()))
    assert both(Query(fenced, (granted,))) is None
    open_ = role(allow("sqs:SendMessage", queue_arn()), boundary=doc(allow("*", "*")))
    assert both(Query(open_, (granted,))) is not None
    # The same grant of a bucket: S3 may carry no tag, so the same boundary proves nothing.
    objects = f"{BUCKET_ARN}/*"
    fenced = role(allow("s3:GetObject", objects), boundary=tag_fence())
    w = both(Query(fenced, (bucket(policy=grant(principal, "s3:GetObject", objects)),)))
    assert w is not None and w.action == "s3:GetObject" and ENV_TAG not in w.context
