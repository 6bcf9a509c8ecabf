"""Issue 8: what a real `pulumi up` would hit. Each test is a request as AWS really receives it
(its action, resource and the condition keys it carries or lacks), decided by the concrete
evaluator on the policies the stacks declare. Each one failed on the code before its fix.

The request shapes come from AWS's pages, cited beside each test; see also
../shared/docs/notes-real-requests.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from envfence import naming
from envfence.model import StackState
from envfence.project import Project
from envfence.prove.requests import RealRequest, decide
from envfence.prove.world import World, build_world
from envfence.rules.context import build_context

Stacks = dict[str, StackState]
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def world(stacks: Stacks, project: Project) -> World:
    ctx = build_context(stacks.values(), project)
    return build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})


def account(state: StackState) -> str:
    provider = next(r for r in state.resources if r.type == "pulumi:providers:aws")
    ids = provider.inputs["allowedAccountIds"]
    return str((json.loads(ids) if isinstance(ids, str) else ids)[0])


def role_arn(state: StackState, role: str) -> str:
    return naming.role_arn("envfence", state.stack, role, account(state))


def object_arn(state: StackState, store: str, key: str) -> str:
    return f"{naming.bucket_arn('envfence', state.stack, store, account(state))}/{key}"


def key_arn(state: StackState) -> str:
    key = state.named("key", "aws:kms/key:Key")
    return str(key.outputs["arn"])


def through_gateway(state: StackState) -> dict[str, Any]:
    """Global keys of a request through the S3 gateway endpoint: TLS, VPC and endpoint present,
    source IP absent (AWS global condition context keys)."""
    return {"aws:SecureTransport": True, "aws:SourceVpce": "vpce-0abc", "aws:SourceVpc": "vpc-0abc"}


# -- 1. the worker's own writes ---------------------------------------------------------------


def worker_put(state: StackState, **extra: Any) -> RealRequest:
    """What `RawStore.put` sends (app/worker/store.py): PutObject with object tags and no SSE
    header. Object tags put s3:RequestObjectTagKeys and s3:RequestObjectTag/<k> in the request;
    the SSE keys are absent (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
    tagging-and-policies.html, https://docs.aws.amazon.com/AmazonS3/latest/userguide/
    UsingKMSEncryption.html)."""
    tags = {"environment": state.stack}
    if state.stack != "prod":
        tags["experiment-id"] = state.config.get("envfence:experimentId", "shared")
    context: dict[str, Any] = {
        **through_gateway(state),
        "s3:RequestObjectTagKeys": sorted(tags),
        **{f"s3:RequestObjectTag/{k}": v for k, v in tags.items()},
        **extra,
    }
    return RealRequest(
        "worker PutObject into raw",
        role_arn(state, "service"),
        "s3:PutObject",
        object_arn(state, "raw", f"raw/{state.stack}/2026/12/02/m-1.json"),
        context,
    )


@pytest.mark.parametrize("stack", ["prod", "experiment"])
def test_the_workers_put_without_sse_headers_is_allowed(
    world: World, stacks: Stacks, stack: str
) -> None:
    outcome = decide(world, worker_put(stacks[stack]))
    assert outcome.allowed, outcome.line()
    # Tags on PutObject are authorized as s3:PutObjectTagging as well (API_PutObject).
    tagging = decide(world, _as(worker_put(stacks[stack]), "s3:PutObjectTagging"))
    assert tagging.allowed, tagging.line()


def _as(request: RealRequest, action: str) -> RealRequest:
    return RealRequest(request.what, request.principal, action, request.resource, request.context)


@pytest.mark.parametrize(
    "headers",
    [
        {"s3:x-amz-server-side-encryption": "AES256"},
        # aws:kms without a key id selects the AWS managed key aws/s3, not the environment's
        {"s3:x-amz-server-side-encryption": "aws:kms"},
        {
            "s3:x-amz-server-side-encryption": "aws:kms",
            "s3:x-amz-server-side-encryption-aws-kms-key-id": (
                "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000"
            ),
        },
    ],
)
def test_a_put_naming_another_encryption_is_denied(
    world: World, stacks: Stacks, headers: dict[str, str]
) -> None:
    outcome = decide(world, worker_put(stacks["prod"], **headers))
    assert not outcome.allowed
    assert "Deny" in outcome.reason or "denied by" in outcome.reason


def test_a_put_naming_the_environment_key_is_allowed(world: World, stacks: Stacks) -> None:
    prod = stacks["prod"]
    outcome = decide(
        world,
        worker_put(
            prod,
            **{
                "s3:x-amz-server-side-encryption": "aws:kms",
                "s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn(prod),
            },
        ),
    )
    assert outcome.allowed, outcome.line()


def test_no_deny_uses_a_negated_if_exists_operator(stacks: Stacks) -> None:
    """A negated ...IfExists operator in a Deny is true when the key is missing: it denies every
    request that lacks the key, which is how the worker's writes were denied."""
    found = []
    for state in stacks.values():
        for r in state.resources:
            for field in ("policy", "assumeRolePolicy"):
                raw = r.inputs.get(field)
                if not isinstance(raw, str) or not raw.startswith("{"):
                    continue
                for stmt in json.loads(raw).get("Statement", []):
                    if stmt.get("Effect") != "Deny":
                        continue
                    for op in stmt.get("Condition", {}):
                        if "Not" in op and op.endswith("IfExists"):
                            found.append(f"{state.stack}/{r.name}#{stmt.get('Sid')}: {op}")
    assert not found


# -- 9. engine version and automatic minor upgrades ---------------------------------------------


@pytest.mark.parametrize("stack", ["prod", "experiment"])
def test_the_engine_version_names_the_major_so_minor_upgrades_cause_no_diff(
    stacks: Stacks, stack: str
) -> None:
    """With automatic minor upgrades, a pinned "16.4" becomes 16.5 in the maintenance window and
    the next `pulumi up` tries to go back. The provider compares only the prefix it is given
    (Terraform aws_db_instance, engine_version: "If auto_minor_version_upgrade is enabled, you
    can provide a prefix of the version ... The actual engine version used is returned in the
    attribute engine_version_actual")."""
    db = stacks[stack].of_type("aws:rds/instance:Instance")[0]
    version = db.inputs["engineVersion"]
    assert db.inputs["autoMinorVersionUpgrade"] is ("." not in version)
    assert "." not in version


def test_a_pinned_minor_version_turns_automatic_upgrades_off() -> None:
    from test_settings import parse, raw_config

    pinned = parse(
        "prod", raw_config("prod", merge={"envfence:database": {"engineVersion": "16.4"}})
    )
    assert pinned.database.auto_minor_version_upgrade is False
    assert pinned.database.major_version == "16"
    major = parse("prod", raw_config("prod", merge={"envfence:database": {"engineVersion": "16"}}))
    assert major.database.auto_minor_version_upgrade is True


# -- 10. a store read by a declared flow stays readable -----------------------------------------


def _transitions(state: StackState, store: str) -> list[dict[str, Any]]:
    bucket = naming.bucket_name("envfence", state.stack, store, account(state))
    lifecycle = next(
        r
        for r in state.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
        if r.inputs["bucket"] == bucket
    )
    return [t for rule in lifecycle.inputs["rules"] for t in rule.get("transitions", [])]


def test_the_promoted_results_store_archives_to_a_class_get_object_reads(stacks: Stacks) -> None:
    """GetObject on an object in S3 Glacier Flexible Retrieval fails until it is restored
    (InvalidObjectState); Glacier Instant Retrieval serves it in milliseconds
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/storage-class-intro.html). prod's
    pipeline reads experiment's `results` through a declared flow for as long as it is declared."""
    experiment = stacks["experiment"]
    results = _transitions(experiment, "results")
    assert results, "the experiment stack archives before it expires"
    assert {t["storageClass"] for t in results} == {"GLACIER_IR"}
    # Stores no flow reads keep the cheaper archive.
    assert {t["storageClass"] for t in _transitions(experiment, "raw")} == {"GLACIER"}


# -- 13. experiments stay destroyable ------------------------------------------------------------


def test_object_lock_is_refused_for_the_experiment_tier() -> None:
    from test_settings import assert_message, raw_config, refused

    msg = refused(
        "experiment", raw_config("experiment", merge={"envfence:audit": {"objectLockDays": 30}})
    )
    assert_message(msg, "experiment", "envfence:audit.objectLockDays", 30, "pulumi destroy")


# -- 15. database logs and incomplete uploads -----------------------------------------------------


@pytest.mark.parametrize("stack", ["prod", "experiment"])
def test_the_audit_bucket_aborts_incomplete_uploads(stacks: Stacks, stack: str) -> None:
    state = stacks[stack]
    audit = naming.audit_bucket_name("envfence", stack, account(state))
    lifecycle = next(
        r
        for r in state.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
        if r.inputs["bucket"] == audit
    )
    assert all(
        rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"] >= 1
        for rule in lifecycle.inputs["rules"]
    )


@pytest.mark.parametrize("stack", ["prod", "experiment"])
def test_logs_may_encrypt_the_database_log_group_with_the_key(
    world: World, stacks: Stacks, stack: str
) -> None:
    """CloudWatch Logs encrypts a group's events with the group's key, as the service principal
    logs.REGION.amazonaws.com, with the group ARN as encryption context
    (https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/encrypt-log-data-kms.html)."""
    state = stacks[stack]
    group = (
        f"arn:aws:logs:{REGION}:{account(state)}:log-group:"
        f"/aws/rds/instance/envfence-{stack}/postgresql"
    )
    for action in ("kms:GenerateDataKey", "kms:Decrypt"):
        outcome = decide(
            world,
            RealRequest(
                "logs encrypts the RDS log group",
                f"logs.{REGION}.amazonaws.com",
                action,
                key_arn(state),
                {"kms:EncryptionContext:aws:logs:arn": group, "aws:SecureTransport": True},
            ),
        )
        assert outcome.allowed, outcome.line()


# -- 4. CloudTrail and the key -------------------------------------------------------------------


def trail_arn(state: StackState) -> str:
    return f"arn:aws:cloudtrail:{REGION}:{account(state)}:trail/envfence-{state.stack}"


@pytest.mark.parametrize("stack", ["prod", "experiment"])
@pytest.mark.parametrize("action", ["kms:DescribeKey", "kms:Decrypt", "kms:GenerateDataKey"])
def test_cloudtrail_can_use_the_key(world: World, stacks: Stacks, stack: str, action: str) -> None:
    """CloudTrail calls DescribeKey (no encryption context: KMS API reference, GrantConstraints),
    GenerateDataKey with kms:EncryptionContext:aws:cloudtrail:arn, and Decrypt because the audit
    bucket uses an S3 Bucket Key ("Configure AWS KMS key policies for CloudTrail")."""
    state = stacks[stack]
    context: dict[str, Any] = {
        "aws:SourceArn": trail_arn(state),
        "aws:SourceAccount": account(state),
        "aws:SecureTransport": True,
    }
    if action == "kms:GenerateDataKey":
        context["kms:EncryptionContext:aws:cloudtrail:arn"] = trail_arn(state)
    outcome = decide(
        world,
        RealRequest("CloudTrail", "cloudtrail.amazonaws.com", action, key_arn(state), context),
    )
    assert outcome.allowed, outcome.line()


def test_another_trail_cannot_use_the_key(world: World, stacks: Stacks) -> None:
    state = stacks["prod"]
    other = f"arn:aws:cloudtrail:{REGION}:999999999999:trail/elsewhere"
    outcome = decide(
        world,
        RealRequest(
            "CloudTrail",
            "cloudtrail.amazonaws.com",
            "kms:Decrypt",
            key_arn(state),
            {"aws:SourceArn": other, "aws:SourceAccount": "999999999999"},
        ),
    )
    assert not outcome.allowed


# -- 11. alarms to the encrypted topic ------------------------------------------------------------


@pytest.mark.parametrize("action", ["kms:GenerateDataKey", "kms:Decrypt"])
def test_alarms_reach_the_encrypted_topic_without_source_keys(
    world: World, stacks: Stacks, action: str
) -> None:
    """No AWS page says CloudWatch's KMS calls for an alarm action carry aws:SourceAccount; the
    statement must hold without it (AWS Knowledge Center, cloudwatch-configure-alarm-sns)."""
    state = stacks["prod"]
    outcome = decide(
        world,
        RealRequest("alarm", "cloudwatch.amazonaws.com", action, key_arn(state), {}),
    )
    assert outcome.allowed, outcome.line()


# -- 5, 6, 7, 12. the deployer ---------------------------------------------------------------------


def deployer(state: StackState) -> str:
    return f"arn:aws:iam::{account(state)}:role/envfence-deployer"


VALIDATE = "RequestToValidateKeyAccess"
SECRET = {
    "kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com",
    "kms:EncryptionContext:SecretARN": (
        f"arn:aws:secretsmanager:{REGION}:ACCOUNT:secret:rds!db-0123-abcd"
    ),
}
DEPLOYER_MUST = [
    # the provider's reads of the key, and the policy replacement CreateKey insists on
    ("kms:PutKeyPolicy", "key", {}),
    ("kms:GetKeyPolicy", "key", {}),
    ("kms:DescribeKey", "key", {}),
    ("kms:GetKeyRotationStatus", "key", {}),
    # ECR repository encryption: DescribeKey, CreateGrant at create, RetireGrant at delete
    ("kms:CreateGrant", "key", {"kms:ViaService": f"ecr.{REGION}.amazonaws.com"}),
    ("kms:RetireGrant", "key", {}),
    # RDS storage and the managed master secret
    ("kms:CreateGrant", "key", {"kms:ViaService": f"rds.{REGION}.amazonaws.com"}),
    # RDS-managed master secret: its value written, and the key-access check Secrets Manager
    # makes (https://docs.aws.amazon.com/secretsmanager/latest/userguide/security-encryption.html)
    ("kms:GenerateDataKey", "key", {**SECRET, "kms:EncryptionContext:SecretVersionId": "v-1"}),
    ("kms:Decrypt", "key", {**SECRET, "kms:EncryptionContext:SecretVersionId": VALIDATE}),
    # HeadBucket (the provider's read of a bucket) is authorized as s3:ListBucket
    ("s3:ListBucket", "store:raw", {}),
    ("s3:ListBucket", "store:results", {}),
    ("s3:GetBucketPolicy", "store:raw", {}),
    ("s3:PutBucketPolicy", "store:raw", {}),
]
DEPLOYER_MUST_NOT = [
    ("s3:GetObject", "object:raw", {}),
    ("s3:PutObject", "object:curated", {}),
    ("s3:DeleteObject", "object:results", {}),
    ("kms:Decrypt", "key", {}),
    ("kms:Decrypt", "key", {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}),
    ("kms:CreateGrant", "key", {}),
    # GetSecretValue on the master secret: Secrets Manager decrypts with the real version id
    ("kms:Decrypt", "key", {**SECRET, "kms:EncryptionContext:SecretVersionId": "v-1"}),
]


def _resource(state: StackState, which: str) -> str:
    kind, _, store = which.partition(":")
    if kind == "key":
        return key_arn(state)
    if kind == "store":
        return naming.bucket_arn("envfence", state.stack, store, account(state))
    return object_arn(state, store, "raw/x.json")


def _caller_account(state: StackState, context: dict[str, Any]) -> dict[str, Any]:
    own = {k: v.replace(":ACCOUNT:", f":{account(state)}:") for k, v in context.items()}
    return {"aws:SecureTransport": True, "kms:CallerAccount": account(state), **own}


@pytest.mark.parametrize("stack", ["prod", "experiment"])
@pytest.mark.parametrize("action,which,context", DEPLOYER_MUST)
def test_the_deployer_keeps_what_the_provider_calls(
    world: World, stacks: Stacks, stack: str, action: str, which: str, context: dict[str, Any]
) -> None:
    state = stacks[stack]
    outcome = decide(
        world,
        RealRequest(
            "deployer",
            deployer(state),
            action,
            _resource(state, which),
            _caller_account(state, context),
        ),
    )
    assert outcome.allowed, outcome.line()


@pytest.mark.parametrize("action,which,context", DEPLOYER_MUST_NOT)
def test_the_deployer_cannot_touch_production_data(
    world: World, stacks: Stacks, action: str, which: str, context: dict[str, Any]
) -> None:
    """What the README promises: the deployer manages, it does not read, write or decrypt
    production data (its own IAM policy is taken as Allow *: the worst case)."""
    state = stacks["prod"]
    outcome = decide(
        world,
        RealRequest(
            "deployer",
            deployer(state),
            action,
            _resource(state, which),
            _caller_account(state, context),
        ),
    )
    assert not outcome.allowed, outcome.line()


def test_break_glass_administrators_cannot_grant_themselves_key_use(
    world: World, stacks: Stacks
) -> None:
    state = stacks["prod"]
    for action in ("kms:CreateGrant", "kms:Decrypt", "kms:ReEncryptFrom"):
        outcome = decide(
            world,
            RealRequest(
                "admin",
                f"arn:aws:iam::{account(state)}:role/platform-admins",
                action,
                key_arn(state),
                {"aws:SecureTransport": True},
            ),
        )
        assert not outcome.allowed, outcome.line()


# -- 14. the audit reader ------------------------------------------------------------------------


def test_the_audit_reader_reads_trail_logs_and_no_data(world: World, stacks: Stacks) -> None:
    state = stacks["prod"]
    reader = f"arn:aws:iam::{account(state)}:role/security-audit"
    audit = f"arn:aws:s3:::{naming.audit_bucket_name('envfence', 'prod', account(state))}"
    log = f"{audit}/AWSLogs/{account(state)}/CloudTrail/eu-west-1/2026/12/02/x.json.gz"
    allowed = [
        RealRequest("list", reader, "s3:ListBucket", audit, {"aws:SecureTransport": True}),
        RealRequest("read", reader, "s3:GetObject", log, {"aws:SecureTransport": True}),
        RealRequest(
            "decrypt",
            reader,
            "kms:Decrypt",
            key_arn(state),
            {
                "kms:ViaService": f"s3.{REGION}.amazonaws.com",
                "kms:EncryptionContext:aws:cloudtrail:arn": trail_arn(state),
                "kms:CallerAccount": account(state),
            },
        ),
    ]
    for request in allowed:
        outcome = decide(world, request)
        assert outcome.allowed, outcome.line()
    denied = [
        RealRequest("data", reader, "s3:GetObject", object_arn(state, "raw", "raw/x.json"), {}),
        RealRequest("delete", reader, "s3:DeleteObject", log, {}),
        RealRequest(
            "decrypt data",
            reader,
            "kms:Decrypt",
            key_arn(state),
            {
                "kms:ViaService": f"s3.{REGION}.amazonaws.com",
                "kms:EncryptionContext:aws:s3:arn": _resource(state, "store:raw"),
            },
        ),
    ]
    for request in denied:
        outcome = decide(world, request)
        assert not outcome.allowed, outcome.line()


# -- 8. the image from another checkout ------------------------------------------------------------


def test_the_build_inputs_are_the_same_in_every_checkout(tmp_path: Path) -> None:
    """The docker provider keeps context and Dockerfile in the state: absolute paths made every
    run from another checkout rebuild and re-push the same (immutable) tag."""
    from infra.components.compute import build_paths, source_tag

    laptop, ci = tmp_path / "home" / "me" / "envfence", tmp_path / "runner" / "work" / "envfence"
    for root in (laptop, ci):
        for rel in ("app/Dockerfile", "app/worker/__init__.py", "db/migrate.py", ".dockerignore"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(rel)
    assert build_paths(laptop, laptop) == build_paths(ci, ci) == (".", "app/Dockerfile")
    assert source_tag(laptop) == source_tag(ci)
    (ci / "db" / "migrate.py").write_text("changed")
    assert source_tag(laptop) != source_tag(ci)  # db/ is in the image: a change is a new tag


# -- CloudTrail's CloudWatch Logs role: source keys only if CloudTrail sends them -------------


def _trust_with(stacks: Stacks, role: str, operator: str) -> list[tuple[str, str]]:
    import copy

    from envfence.rules import run_all

    bad = copy.deepcopy(stacks)
    r = bad["prod"].named(f"role-{role}", "aws:iam/role:Role")
    doc = json.loads(r.get("assumeRolePolicy"))
    for st in doc["Statement"]:
        cond = st["Condition"]
        for op in [k for k in cond if k.startswith("StringEquals")]:
            cond[operator] = cond.pop(op)
    r.set("assumeRolePolicy", json.dumps(doc))
    return [(v.rule, v.urn.rsplit("::", 1)[-1]) for v in run_all(bad.values()).violations]


def test_ef302_accepts_if_exists_only_for_cloudtrail(stacks: Stacks) -> None:
    """CloudTrail documents aws:SourceAccount for its bucket and key policies, not for assuming
    the CloudWatch Logs role: IfExists is accepted there (keys checked when sent, delivery not
    locked out when not). Flow logs document the keys on their role: IfExists fires there."""
    assert _trust_with(stacks, "trail", "StringEqualsIfExists") == []
    assert _trust_with(stacks, "flowlogs", "StringEqualsIfExists") == [("EF302", "role-flowlogs")]
    assert _trust_with(stacks, "trail", "StringLike") == [("EF302", "role-trail")]
