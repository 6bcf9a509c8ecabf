"""Controls that are real requests (envfence.prove.controls): every one holds on the
repository's stacks, and each deploy defect found in review breaks the control that models it,
naming the statement or the name that broke it.

Each regression puts back a policy as it was before its fix (issue 8 and this one), or breaks a
reference, on a deep copy of the evaluated stacks.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from envfence.model import Resource, StackState
from envfence.project import Project
from envfence.prove import contract, controls
from envfence.prove.run import prove
from envfence.prove.world import World, build_world
from envfence.rules.context import build_context
from tests import mutations as m

Stacks = dict[str, StackState]
ROOT = Path(__file__).resolve().parent.parent


def _world(stacks: Stacks, project: Project) -> World:
    ctx = build_context(stacks.values(), project)
    return build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})


def results(stacks: Stacks, project: Project, root: Path = ROOT) -> list[controls.Result]:
    ctx = build_context(stacks.values(), project)
    production = {name: env.tier == "production" for name, env in ctx.envs.items()}
    deployers = {name: env.deployer for name, env in ctx.envs.items()}
    return controls.checks(stacks, _world(stacks, project), root, production, deployers)


def broken(found: list[controls.Result]) -> dict[str, str]:
    return {r.what: r.detail for r in found if not r.ok}


@pytest.fixture(scope="module")
def clean(stacks: Stacks, project: Project) -> list[controls.Result]:
    return results(stacks, project)


def _doc(r: Resource, key: str = "policy") -> dict[str, Any]:
    raw: Any = r.get(key)
    while isinstance(raw, str):
        raw = json.loads(raw)
    return copy.deepcopy(raw)


def _set(r: Resource, doc: dict[str, Any], key: str = "policy") -> None:
    r.set(key, json.dumps(doc))


def _statement(r: Resource, sid: str) -> dict[str, Any]:
    return next(s for s in _doc(r)["Statement"] if s.get("Sid") == sid)


def _edit(r: Resource, sid: str, change: Any) -> None:
    doc = _doc(r)
    doc["Statement"] = [change(s) if s.get("Sid") == sid else s for s in doc["Statement"]]
    doc["Statement"] = [s for s in doc["Statement"] if s is not None]
    _set(r, doc)


# -- on the repository's stacks -------------------------------------------------------------------


def test_every_real_control_holds(clean: list[controls.Result]) -> None:
    assert broken(clean) == {}


@pytest.mark.parametrize("stack", ["prod", "experiment"])
def test_every_group_is_there_for_every_environment(
    clean: list[controls.Result], stack: str
) -> None:
    groups = {r.group for r in clean if r.stack == stack}
    assert groups == set(controls.GROUPS)


@pytest.mark.parametrize("stack,tier", [("prod", "production"), ("experiment", "experiment")])
def test_the_worker_controls_are_the_contract(
    clean: list[controls.Result], stack: str, tier: str
) -> None:
    """One control per recorded call, in the contract's order, each with its real request."""
    found = contract.load(ROOT / contract.CONTRACT_FILE)
    names = [f"{e['service']}.{e['operation']}" for e in found.scenarios[tier]]
    worker = [r for r in clean if r.stack == stack and r.group == controls.WORKER]
    assert [r.what.split("worker ", 1)[1] for r in worker] == names
    put = next(r for r in worker if r.what.endswith("s3.PutObject"))
    request = put.check.requests[0]
    assert request.action == "s3:PutObject"
    assert request.principal.endswith(f":role/envfence-{stack}-service")
    # the worker sends object tags and no SSE header, through the S3 gateway endpoint
    assert "s3:x-amz-server-side-encryption" not in request.context
    assert request.context["s3:RequestObjectTag/environment"] == stack
    assert str(request.context["aws:SourceVpce"]).startswith("vpce-")
    assert request.endpoint_policies
    kms = put.check.requests[-1]
    assert (kms.action, kms.context["kms:ViaService"]) == (
        "kms:GenerateDataKey",
        "s3.eu-west-1.amazonaws.com",
    )
    assert str(kms.context["kms:EncryptionContext:aws:s3:arn"]).startswith("arn:aws:s3:::")
    assert "aws:SourceVpce" not in kms.context  # a service's call for the caller


def test_production_has_must_not_controls_and_experiments_only_the_archives(
    clean: list[controls.Result],
) -> None:
    denied = {r.stack for r in clean if r.check.denied}
    assert denied == {"prod", "experiment"}
    assert all("archive" in r.what for r in clean if r.check.denied and r.stack == "experiment")
    prod_denied = [r.what for r in clean if r.check.denied and r.stack == "prod"]
    assert any("master password" in w for w in prod_denied)
    assert any("audit" in w and "s3:PutObject" in w for w in prod_denied)


# -- regressions: each defect breaks its control --------------------------------------------------


def _raw_policy(state: StackState) -> Resource:
    return state.named("store-raw-policy", "aws:s3/bucketPolicy:BucketPolicy")


def test_the_old_sse_deny_breaks_the_workers_write(stacks: Stacks, project: Project) -> None:
    """Issue 8, item 1: a negated IfExists deny on the SSE header denied every real write (the
    worker sends no SSE header)."""
    bad = m.mutated(stacks)
    raw = bad["prod"]
    m.add_statement(
        _raw_policy(raw),
        {
            "Sid": "DenyUnencryptedObjectUploads",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"{m.bucket_arn(raw, 'raw')}/*",
            "Condition": {
                "StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"},
                "Null": {"s3:x-amz-server-side-encryption": "true"},
            },
        },
    )
    found = broken(results(bad, project))
    assert list(found) == ["prod: worker s3.PutObject"]
    assert "DenyUnencryptedObjectUploads" in found["prod: worker s3.PutObject"]


def test_cloudtrail_describe_key_with_a_context_condition_breaks(
    stacks: Stacks, project: Project
) -> None:
    """Issue 8, item 4: DescribeKey carries no encryption context, so a statement conditioned on
    the trail's context never allows it."""
    bad = m.mutated(stacks)
    key = bad["prod"].named("key", m.KEY)

    def with_context(s: dict[str, Any]) -> dict[str, Any]:
        s = dict(s)
        s["Condition"] = {
            **s["Condition"],
            "StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn": "arn:aws:cloudtrail:*"},
        }
        return s

    _edit(key, "CloudTrailDescribesKeyAndUsesTheBucketKey", with_context)
    found = broken(results(bad, project))
    what = "prod: CloudTrail writes the trail to its bucket with the key"
    assert list(found) == [what]
    assert "kms:DescribeKey" in found[what] and "DENIED" in found[what]


def test_without_retire_grant_the_deployer_cannot_delete_the_repository(
    stacks: Stacks, project: Project
) -> None:
    """Issue 8, item 6: ECR retires its grants as the deleting principal."""
    bad = m.mutated(stacks)
    m.drop_statement(bad["experiment"].named("key", m.KEY), "DeployerRetiresServiceGrants")
    found = broken(results(bad, project))
    what = (
        "experiment: deployer creates the encrypted database, its master secret and the repository"
    )
    assert list(found) == [what]
    assert "kms:RetireGrant" in found[what]


def test_a_listing_deny_without_the_deployer_breaks_head_bucket(
    stacks: Stacks, project: Project
) -> None:
    """Issue 8, item 7: HeadBucket (the provider's read of a bucket) is s3:ListBucket."""
    bad = m.mutated(stacks)
    policy = _raw_policy(bad["prod"])
    deployer = "arn:aws:iam::123456789012:role/envfence-deployer"
    sid = next(s["Sid"] for s in _doc(policy)["Statement"] if "s3:ListBucket" in json.dumps(s))

    def without_deployer(s: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(s).replace(f'"{deployer}", ', "").replace(f', "{deployer}"', "")
        return dict(json.loads(text))

    _edit(policy, sid, without_deployer)
    assert deployer not in json.dumps(_statement(policy, sid))
    found = broken(results(bad, project))
    what = "prod: deployer manages bucket envfence-prod-raw-123456789012"
    assert list(found) == [what]
    assert "s3:ListBucket" in found[what] and sid in found[what]


def test_the_old_secret_statement_lets_the_deployer_read_the_password(
    stacks: Stacks, project: Project
) -> None:
    """Before this issue the deployer could decrypt anything through Secrets Manager: the
    database's master password included."""
    bad = m.mutated(stacks)
    key = bad["prod"].named("key", m.KEY)
    m.add_statement(
        key,
        {
            "Sid": "OldDeployerThroughSecretsManager",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:role/envfence-deployer"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"}
            },
        },
    )
    found = broken(results(bad, project))
    assert list(found) == ["prod: deployer cannot read the database's master password"]
    assert found["prod: deployer cannot read the database's master password"].startswith("ALLOWED")


def test_without_the_write_deny_the_deployer_could_forge_the_audit_log(
    stacks: Stacks, project: Project
) -> None:
    bad = m.mutated(stacks)
    audit = bad["prod"].named("audit-policy", "aws:s3/bucketPolicy:BucketPolicy")
    m.drop_statement(audit, "DenyWritingTheLogOutsideCloudTrail")
    found = broken(results(bad, project))
    assert list(found) == ["prod: deployer cannot s3:PutObject in envfence-prod-audit-123456789012"]


def test_an_endpoint_policy_without_the_store_breaks_the_write(
    stacks: Stacks, project: Project
) -> None:
    """The S3 gateway endpoint's policy is on the worker's path: without the raw bucket in it
    the write fails in AWS, whatever the identity and bucket policies say."""
    bad = m.mutated(stacks)
    endpoint = bad["prod"].named("s3-endpoint", "aws:ec2/vpcEndpoint:VpcEndpoint")

    def without_raw(s: dict[str, Any]) -> dict[str, Any]:
        return {**s, "Resource": [r for r in s["Resource"] if "-raw-" not in r]}

    _edit(endpoint, "OnlyThisEnvironmentsBuckets", without_raw)
    found = broken(results(bad, project))
    assert "prod: worker s3.PutObject" in found
    assert "VPC endpoint policy" in found["prod: worker s3.PutObject"]


def test_a_task_naming_a_bucket_the_stack_does_not_declare_is_broken(
    stacks: Stacks, project: Project
) -> None:
    bad = m.mutated(stacks)
    task = bad["prod"].named("worker-task", "aws:ecs/taskDefinition:TaskDefinition")
    definitions = controls.containers(task)
    for e in definitions[0]["environment"]:
        if e["name"] == "RAW_BUCKET":
            e["value"] = "someone-elses-bucket"
    task.set("containerDefinitions", json.dumps(definitions))
    found = broken(results(bad, project))
    assert found == {
        "prod: worker s3.PutObject": "bucket 'someone-elses-bucket' is no bucket of stack prod"
    }


def test_a_task_the_worker_would_refuse_is_broken(stacks: Stacks, project: Project) -> None:
    bad = m.mutated(stacks)
    task = bad["experiment"].named("worker-task", "aws:ecs/taskDefinition:TaskDefinition")
    definitions = controls.containers(task)
    definitions[0]["environment"] = [
        e for e in definitions[0]["environment"] if e["name"] != "QUEUE_URL"
    ] + [{"name": "QUEUE_URL", "value": "not-a-url"}]
    task.set("containerDefinitions", json.dumps(definitions))
    found = broken(results(bad, project))
    assert list(found) == ["experiment: the worker's requests"]
    assert "QUEUE_URL" in found["experiment: the worker's requests"]


def test_a_missing_contract_breaks_every_worker_control(
    stacks: Stacks, project: Project, tmp_path: Path
) -> None:
    found = broken(results(stacks, project, root=tmp_path))
    assert set(found) == {"prod: the worker's requests", "experiment: the worker's requests"}
    assert all("request contract is missing" in d for d in found.values())


def test_a_broken_control_makes_the_proof_not_proved(stacks: Stacks, project: Project) -> None:
    bad = m.mutated(stacks)
    m.drop_statement(bad["experiment"].named("key", m.KEY), "DeployerRetiresServiceGrants")
    report = prove(bad.values(), project)
    assert not report.ok
    assert all(p.status == "broken" for p in report.iam.pairs)
    assert any("kms:RetireGrant" in f for f in report.failures())


def test_each_worker_call_makes_the_requests_aws_evaluates(clean: list[controls.Result]) -> None:
    """The translation of every contract call, pinned: the call's own action and the KMS call
    the service makes with the worker's identity (S3: GenerateDataKey for the write; SQS:
    Decrypt on receive, "Key management" in the SQS guide; AppConfig: one request per reading
    of its resource tags)."""
    worker = {
        r.what.split("worker ", 1)[1]: r.check.requests
        for r in clean
        if r.stack == "prod" and r.group == controls.WORKER
    }
    actions = {name: [q.action for q in requests] for name, requests in worker.items()}
    assert actions == {
        "sqs.ReceiveMessage": ["sqs:ReceiveMessage", "kms:Decrypt"],
        "appconfigdata.StartConfigurationSession": ["appconfig:StartConfigurationSession"] * 2,
        "appconfigdata.GetLatestConfiguration": ["appconfig:GetLatestConfiguration"] * 2,
        "rds-db.connect": ["rds-db:connect"],
        "s3.PutObject": ["s3:PutObject", "s3:PutObjectTagging", "kms:GenerateDataKey"],
        "sqs.DeleteMessage": ["sqs:DeleteMessage"],
    }
    receive_kms = worker["sqs.ReceiveMessage"][1]
    assert receive_kms.context["kms:ViaService"] == "sqs.eu-west-1.amazonaws.com"
    assert receive_kms.context["aws:ViaAWSService"] is True
    readings = worker["appconfigdata.StartConfigurationSession"]
    assert [any(k.startswith("aws:ResourceTag/") for k in q.context) for q in readings] == [
        False,
        True,
    ]
    db = worker["rds-db.connect"][0]
    assert db.resource.startswith("arn:aws:rds-db:eu-west-1:123456789012:dbuser:db-")
    assert db.resource.endswith("/worker")


# -- experiment conclude: the deployer reads results and writes the archive ------------------------


def _key_policy(state: StackState, name: str = "key") -> Resource:
    return state.named(name, "aws:kms/key:Key")


def test_conclude_controls_hold_on_the_experiment_and_are_absent_in_prod(
    clean: list[controls.Result],
) -> None:
    whats = {r.what for r in clean}
    assert "experiment: deployer reads the results for the archive (experiment conclude)" in whats
    assert "experiment: deployer writes the archive (experiment conclude)" in whats
    assert "experiment: deployer cannot s3:DeleteObject in the archive" in whats
    assert "experiment: role envfence-experiment-analyst cannot read the archive" in whats
    assert not [w for w in whats if w.startswith("prod:") and "conclude" in w]


@pytest.mark.parametrize(
    ("key_name", "sid", "control", "reason"),
    [
        (
            "key",
            "DeployerArchivesTheResults",
            "experiment: deployer reads the results for the archive (experiment conclude)",
            "kms:Decrypt",
        ),
        (
            "archive-key",
            "DeployerWritesTheArchive",
            "experiment: deployer writes the archive (experiment conclude)",
            "kms:GenerateDataKey",
        ),
        (
            "archive-key",
            "DeployerCopiesSnapshotsUnderIt",
            "experiment: deployer copies the final snapshot under the archive key "
            "(experiment conclude)",
            "kms:CreateGrant",
        ),
    ],
)
def test_without_its_key_statement_conclude_cannot_archive(
    stacks: Stacks, project: Project, key_name: str, sid: str, control: str, reason: str
) -> None:
    s = copy.deepcopy(stacks)
    key = _key_policy(s["experiment"], key_name)
    doc = _doc(key)
    assert any(st.get("Sid") == sid for st in doc["Statement"])
    _edit(key, sid, lambda st: None)
    found = broken(results(s, project))
    assert list(found) == [control]
    assert reason in found[control] and "DENIED" in found[control]


def test_without_the_delete_deny_the_deployer_could_empty_the_archive(
    stacks: Stacks, project: Project
) -> None:
    s = copy.deepcopy(stacks)
    _edit(
        s["experiment"].named("archive-policy", "aws:s3/bucketPolicy:BucketPolicy"),
        "DenyDeletingArchives",
        lambda st: None,
    )
    found = broken(results(s, project))
    assert sorted(found) == [
        "experiment: deployer cannot s3:DeleteObject in the archive",
        "experiment: deployer cannot s3:DeleteObjectVersion in the archive",
    ]


def test_without_the_deletion_deny_the_archive_key_could_be_scheduled_for_deletion(
    stacks: Stacks, project: Project
) -> None:
    s = copy.deepcopy(stacks)
    _edit(_key_policy(s["experiment"], "archive-key"), "ArchiveKeyIsNeverDeleted", lambda st: None)
    assert list(broken(results(s, project))) == [
        "experiment: deployer cannot schedule the archive key's deletion"
    ]
