"""What each stack declares in part 2: the ingestion pipeline, the containers, the feature flags,
the audit trail and their retention, plus the isolation invariants for those resources.

Same rules as tests/test_stacks.py (whose helpers this file reuses): every test runs for every
stack of the repository, expected values come from the stack file (or, where the file has no
key, from the README's table), never from the program's settings module, and policies are
parsed statement by statement. Two more evaluations of the unmodified program (one per stack,
once per module) run with config overrides: a prebuilt image instead of a build, another
desired count, flags with explicit values, other alert e-mails and, for experiments, an
`expiresOn`.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_isolation_invariants import owner_of
from test_stacks import (
    BUCKET_POLICY,
    DATA_ROLES,
    DB,
    ENV_ROLES,
    LIFECYCLE,
    LOG_GROUP,
    PROJECT,
    ROLE,
    ROLE_POLICY,
    SG,
    STACKS,
    VERSIONING,
    Facts,
    _actions,
    _by_sid,
    _value,
    as_list,
    attached,
    boundary_of,
    bucket_of,
    facts_of,
    grants,
    grants_any,
    key_of,
    only,
    principals,
    registered_tier,
    role_named,
    statements,
    subnets,
    with_inputs,
)

import envfence.evaluate as evaluate_module
from envfence.cli import main
from envfence.evaluate import evaluate
from envfence.flagset import flag_set_version
from envfence.model import Resource, StackState
from envfence.project import Project

QUEUE = "aws:sqs/queue:Queue"
QUEUE_POLICY = "aws:sqs/queuePolicy:QueuePolicy"
REPOSITORY = "aws:ecr/repository:Repository"
REPOSITORY_POLICY = "aws:ecr/repositoryPolicy:RepositoryPolicy"
ECR_LIFECYCLE = "aws:ecr/lifecyclePolicy:LifecyclePolicy"
IMAGE = "docker:index/image:Image"
DOCKER_PROVIDER = "pulumi:providers:docker"
CLUSTER = "aws:ecs/cluster:Cluster"
TASK = "aws:ecs/taskDefinition:TaskDefinition"
SERVICE = "aws:ecs/service:Service"
APP = "aws:appconfig/application:Application"
APP_ENV = "aws:appconfig/environment:Environment"
PROFILE = "aws:appconfig/configurationProfile:ConfigurationProfile"
VERSION = "aws:appconfig/hostedConfigurationVersion:HostedConfigurationVersion"
STRATEGY = "aws:appconfig/deploymentStrategy:DeploymentStrategy"
DEPLOYMENT = "aws:appconfig/deployment:Deployment"
TRAIL = "aws:cloudtrail/trail:Trail"
OBJECT_LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
METRIC_FILTER = "aws:cloudwatch/logMetricFilter:LogMetricFilter"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
TOPIC_POLICY = "aws:sns/topicPolicy:TopicPolicy"
SCHEDULE = "aws:scheduler/schedule:Schedule"
MIGRATION = "pulumi-python:dynamic/envfence:MigrationRun"

APP_DIR = PROJECT.root / "app"
DAY = 86400
# README: "ingest-dlq (5 receives, then parked)"; experiments keep queued records 4 days.
MAX_RECEIVES = 5
QUEUE_RETENTION = {"production": 14 * DAY, "experiment": 4 * DAY}
# SQS keeps a message's original enqueue time when it moves to a dead-letter queue: a DLQ that
# retains less than its source drops parked records on arrival. 14 days is SQS's maximum.
DLQ_RETENTION = {"production": 14 * DAY, "experiment": 4 * DAY}
QUEUE_DATA_ACTIONS = (
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:PurgeQueue",
)
PULLS = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability")
PUSHES = (
    "ecr:PutImage",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:BatchDeleteImage",
)
FLAG_READS = ("appconfig:StartConfigurationSession", "appconfig:GetLatestConfiguration")
# Writing, deleting or re-configuring an audit log: none may be left to an environment role.
AUDIT_TAMPERING = (
    "s3:PutObject",
    "s3:PutObjectAcl",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:BypassGovernanceRetention",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:PutBucketVersioning",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketPublicAccessBlock",
    "s3:PutBucketOwnershipControls",
    "s3:PutBucketAcl",
    "s3:PutLifecycleConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:PutReplicationConfiguration",
    "s3:DeleteBucket",
)
TRAIL_TAMPERING = (
    "cloudtrail:StopLogging",
    "cloudtrail:DeleteTrail",
    "cloudtrail:UpdateTrail",
    "cloudtrail:PutEventSelectors",
    "logs:DeleteLogGroup",
    "logs:PutRetentionPolicy",
)
# Services whose refused calls mean someone tried this environment's data.
DATA_SERVICES = ("s3", "kms", "sqs", "rds", "secretsmanager", "ecr", "appconfig")


# -- expectations from the stack file --------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """Part 2 of a stack file (container, flags, audit, expiry) and the names derived from it."""

    facts: Facts
    build: bool
    image: str | None
    cpu: int
    memory: int
    desired_count: int
    flags: dict[str, bool]  # the value each flag must have in this stack
    flag_descriptions: dict[str, str]
    alert_emails: tuple[str, ...]
    object_lock_days: int
    expires_on: str | None

    @property
    def prefix(self) -> str:
        return f"{self.facts.project}-{self.facts.stack}"

    @property
    def repository(self) -> str:
        return f"{self.prefix}-worker"

    @property
    def repository_url(self) -> str:
        f = self.facts
        return f"{f.account}.dkr.ecr.{f.region}.amazonaws.com/{self.repository}"

    @property
    def audit_bucket(self) -> str:
        return f"{self.prefix}-audit-{self.facts.account}"

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.facts.region}:{self.facts.account}:{resource}"

    def log_group(self, purpose: str) -> str:
        return f"/{self.facts.project}/{self.facts.stack}/{purpose}"

    @property
    def rds_log_group(self) -> str:
        return f"/aws/rds/instance/{self.prefix}/postgresql"

    def role(self, role: str) -> str:
        return f"{self.prefix}-{role}"


def expect_of(state: StackState) -> Expect:
    c = state.config
    facts = facts_of(state)
    container = _value(c, "envfence:container", {})
    flags = _value(c, "envfence:flags", {})
    audit = _value(c, "envfence:audit", {})
    cpu = int(container.get("cpu", 256))
    return Expect(
        facts=facts,
        build=container.get("build", True) in (True, "true"),
        image=container.get("image"),
        cpu=cpu,
        memory=int(container.get("memory", 2 * cpu)),
        desired_count=int(container.get("desiredCount", 1)),
        # Experimental flags are on only in experiment stacks, unless `enabled` says otherwise.
        flags={
            name: bool(spec.get("enabled", bool(spec.get("experimental")) and not facts.production))
            for name, spec in flags.items()
        },
        flag_descriptions={name: spec.get("description", "") for name, spec in flags.items()},
        alert_emails=tuple(audit.get("alertEmails", ())),
        # Pulumi.yaml: production audit logs are always locked, 365 days unless configured.
        object_lock_days=int(audit.get("objectLockDays", 365 if facts.production else 0)),
        expires_on=c.get("envfence:expiresOn"),
    )


@pytest.fixture(params=STACKS)
def state(request: pytest.FixtureRequest, stacks: dict[str, StackState]) -> StackState:
    return stacks[request.param]


@pytest.fixture
def expect(state: StackState) -> Expect:
    return expect_of(state)


# -- the same program, other config ----------------------------------------------------------

DIGEST = "sha256:" + "0123456789abcdef" * 4


def override_config(stack: str) -> dict[str, str]:
    """The stack file's config with a prebuilt image of the stack's own repository, one more
    task, every experimental flag of the file switched off (in production: its variants), three
    new flags,
    other alert e-mails and (experiments only) an expiry date."""
    config = dict(PROJECT.stack_config(stack))
    production = registered_tier(stack) == "production"
    account = json.loads(config["envfence:allowedAccountIds"])[0]
    repo = f"{account}.dkr.ecr.{config['aws:region']}.amazonaws.com/{PROJECT.name}-{stack}-worker"
    container = _value(config, "envfence:container", {})
    container.update(
        build=False,
        image=f"{repo}@{DIGEST}" if production else f"{repo}:v1.2.3",
        desiredCount=int(container.get("desiredCount", 1)) + 1,
    )
    flags = _value(config, "envfence:flags", {})
    for spec in flags.values():
        if spec.get("experimental"):
            if production:  # never on for everyone there: the live experiment is stopped
                for variant in spec.get("variants", []):
                    variant["enabled"] = False
            else:
                spec["enabled"] = False
    flags["fresh_experimental"] = {"description": "new, no value", "experimental": True}
    flags["stable"] = {"description": "not experimental, no value"}
    flags["forced_on"] = {"description": "not experimental, on", "enabled": True}
    audit = _value(config, "envfence:audit", {})
    audit["alertEmails"] = ["oncall@example.com", "audit@example.com"] if production else []
    config["envfence:container"] = json.dumps(container)
    config["envfence:flags"] = json.dumps(flags)
    config["envfence:audit"] = json.dumps(audit)
    if not production:
        config["envfence:expiresOn"] = "2030-01-31"
    return config


class _OverriddenProject(Project):
    def stack_config(self, stack: str) -> dict[str, str]:
        return override_config(stack)


@pytest.fixture(scope="module", params=STACKS)
def overridden(request: pytest.FixtureRequest, project: Project) -> StackState:
    return evaluate(request.param, _OverriddenProject(project.root, project.name, project.defaults))


# -- helpers ---------------------------------------------------------------------------------


def arn(r: Resource) -> str:
    return str(r.outputs["arn"])


def role_arn(state: StackState, expect: Expect, role: str) -> str:
    return arn(role_named(state, expect.role(role)))


def role_policy(state: StackState, role: str) -> list[dict[str, Any]]:
    return statements(
        only(with_inputs(state, ROLE_POLICY, role=role), f"policy of {role}").inputs["policy"]
    )


def queue_named(state: StackState, name: str) -> Resource:
    return only(with_inputs(state, QUEUE, name=name), f"queue {name}")


def repository_of(state: StackState, expect: Expect) -> Resource:
    return only(with_inputs(state, REPOSITORY, name=expect.repository), "ECR repository")


def log_group_named(state: StackState, name: str) -> Resource:
    return only(with_inputs(state, LOG_GROUP, name=name), f"log group {name}")


def task_named(state: StackState, name: str) -> Resource:
    """The worker's task definition (`worker-task`), the database tasks' (`db-task`) or the
    pipeline runs' (`pipeline-task`)."""
    assert sorted(r.name for r in state.of_type(TASK)) == [
        "db-task",
        "pipeline-task",
        "worker-task",
    ]
    return only([r for r in state.of_type(TASK) if r.name == name], f"task definition {name}")


def container_of(state: StackState, task: str = "worker-task") -> dict[str, Any]:
    definitions = json.loads(task_named(state, task).inputs["containerDefinitions"])
    assert len(definitions) == 1, [d.get("name") for d in definitions]
    return dict(definitions[0])


def strings(value: Any) -> Iterator[str]:
    """Every string in `value`, JSON documents (policies, container definitions) opened up."""
    if isinstance(value, str):
        yield value
        if value[:1] in "[{":
            try:
                doc = json.loads(value)
            except json.JSONDecodeError:
                return
            yield from strings(doc)
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def appconfig_of(state: StackState) -> tuple[Resource, Resource, Resource]:
    return (
        only(state.of_type(APP), "AppConfig application"),
        only(state.of_type(APP_ENV), "AppConfig environment"),
        only(state.of_type(PROFILE), "AppConfig configuration profile"),
    )


# -- pipeline --------------------------------------------------------------------------------


def test_ingest_queue_and_dead_letter_queue_use_the_environment_key(
    state: StackState, expect: Expect
) -> None:
    key_arn = arn(key_of(state))
    queues = state.of_type(QUEUE)
    names = {f"{expect.prefix}-ingest", f"{expect.prefix}-ingest-dlq"}
    assert sorted(q.inputs["name"] for q in queues) == sorted(names)
    for queue in queues:
        assert queue.inputs["kmsMasterKeyId"] == key_arn, queue.name
        assert not queue.inputs.get("sqsManagedSseEnabled"), queue.name
        assert arn(queue) == expect.arn("sqs", queue.inputs["name"])


def test_ingest_queue_parks_failures_in_its_dead_letter_queue(
    state: StackState, expect: Expect
) -> None:
    ingest = queue_named(state, f"{expect.prefix}-ingest")
    dlq = queue_named(state, f"{expect.prefix}-ingest-dlq")
    assert json.loads(ingest.inputs["redrivePolicy"]) == {
        "deadLetterTargetArn": arn(dlq),
        "maxReceiveCount": MAX_RECEIVES,
    }
    assert not dlq.inputs.get("redrivePolicy")
    assert ingest.inputs["messageRetentionSeconds"] == QUEUE_RETENTION[expect.facts.tier]
    # Issue 8: an experiment's dead letters expire with its other data (SQS keeps a message's
    # original enqueue time when it moves to the DLQ, so equal retention loses nothing).
    assert dlq.inputs["messageRetentionSeconds"] == DLQ_RETENTION[expect.facts.tier]
    assert dlq.inputs["messageRetentionSeconds"] >= ingest.inputs["messageRetentionSeconds"]


@pytest.mark.parametrize("purpose", ["ingest", "ingest-dlq"])
def test_queue_policy_denies_plain_http_and_every_other_principal(
    state: StackState, expect: Expect, purpose: str
) -> None:
    queue = queue_named(state, f"{expect.prefix}-{purpose}")
    policy = only(with_inputs(state, QUEUE_POLICY, queueUrl=queue.outputs["url"]), "queue policy")
    stmts = statements(policy.inputs["policy"])
    # Only denies: no Allow hands the queue to another account.
    assert [st for st in stmts if st["Effect"] != "Deny"] == []
    for st in stmts:
        assert as_list(st["Resource"]) == [arn(queue)]
        assert st["Principal"] in ("*", {"AWS": "*"})

    tls = [
        st
        for st in stmts
        if st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
    ]
    assert len(tls) == 1
    assert set(tls[0]["Condition"]) == {"Bool"}
    for action in (*QUEUE_DATA_ACTIONS, "sqs:SetQueueAttributes"):
        assert grants(tls[0], action), action

    fence = [
        st for st in stmts if "aws:PrincipalArn" in st.get("Condition", {}).get("ArnNotEquals", {})
    ]
    assert len(fence) == 1
    st = fence[0]
    assert set(st["Condition"]) == {"ArnNotEquals"}, "the fence must not be conditional"
    for action in QUEUE_DATA_ACTIONS:
        assert grants(st, action), action
    admitted = set(as_list(st["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]))
    assert admitted == {expect.facts.role_arn(r) for r in DATA_ROLES}
    assert admitted == {role_arn(state, expect, r) for r in DATA_ROLES}


def test_pipeline_role_names_only_its_own_stores_and_queues(
    state: StackState, expect: Expect
) -> None:
    f = expect.facts
    flows = [flow for flow in f.outbound() if flow["role"] == "pipeline"]
    flow_buckets: set[str] = set().union(*(f.bucket_arns(fl["store"], fl["to"]) for fl in flows))
    peer_keys = {f"arn:aws:kms:{f.region}:{f.account_of(fl['to'])}:key/*": fl for fl in flows}
    queues = {arn(q) for q in state.of_type(QUEUE)}
    ingest = arn(queue_named(state, f"{expect.prefix}-ingest"))
    db_id = only(state.of_type(DB), "database").outputs["resourceId"]
    s3_named: set[str] = set()
    sqs_named: set[str] = set()
    for st in role_policy(state, expect.role("pipeline")):
        assert st["Effect"] == "Allow" and "NotResource" not in st and "NotAction" not in st
        for resource in as_list(st["Resource"]):
            service = resource.split(":")[2] if resource.startswith("arn:") else resource
            if service == "s3":
                assert resource in f.own_bucket_arns() | flow_buckets, resource
                if resource in flow_buckets:  # a declared flow: read only
                    assert set(as_list(st["Action"])) <= {"s3:GetObject", "s3:ListBucket"}, st
                s3_named.add(resource)
            elif service == "sqs":
                assert resource in queues, resource
                assert resource == ingest or not grants(st, "sqs:SendMessage"), st
                sqs_named.add(resource)
            elif service == "kms":
                if resource != arn(key_of(state)):
                    flow = peer_keys[resource]
                    equals = st["Condition"]["StringEquals"]
                    assert equals["kms:ViaService"] == f"s3.{f.region}.amazonaws.com"
                    assert equals["aws:ResourceTag/environment"] == flow["to"]
                    assert as_list(st["Action"]) == ["kms:Decrypt"]
            elif service == "rds-db":
                assert resource == f"arn:aws:rds-db:{f.region}:{f.account}:dbuser:{db_id}/worker"
            else:
                pytest.fail(f"the pipeline role names {resource}")
    # And it does read and write every store of its own, and feeds its own queue.
    assert s3_named >= f.own_bucket_arns()
    assert sqs_named == queues
    writes = {
        r
        for st in role_policy(state, expect.role("pipeline"))
        if grants(st, "s3:PutObject")
        for r in as_list(st["Resource"])
    }
    assert writes == {f"arn:aws:s3:::{f.bucket(store)}/*" for store in f.stores}


# -- compute: repository and image -------------------------------------------------------------


def test_repository_is_immutable_scanned_and_encrypted(state: StackState, expect: Expect) -> None:
    repo = repository_of(state, expect)
    assert state.of_type(REPOSITORY) == [repo]
    assert repo.inputs["imageTagMutability"] == "IMMUTABLE"
    assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo.inputs["encryptionConfigurations"] == [
        {"encryptionType": "KMS", "kmsKey": arn(key_of(state))}
    ]
    assert repo.inputs["forceDelete"] is (not expect.facts.production)
    assert arn(repo) == expect.arn("ecr", f"repository/{expect.repository}")
    assert repo.outputs["repositoryUrl"] == expect.repository_url


def test_repository_policy_admits_only_this_environment(state: StackState, expect: Expect) -> None:
    f = expect.facts
    repo = repository_of(state, expect)
    policy = only(
        with_inputs(state, REPOSITORY_POLICY, repository=repo.inputs["name"]), "repository policy"
    )
    stmts = statements(policy.inputs["policy"])
    assert [st for st in stmts if st["Effect"] != "Deny"] == []  # no other account is admitted
    assert sorted(st.get("Sid") for st in stmts) == [
        "DenyPullsOutsideThisEnvironment",
        "OnlyTheDeployerPushes",
    ]
    own_roles = {arn(r) for r in state.of_type(ROLE)}

    # Pulls: the environment's roles (the execution and migrator roles start the tasks) and
    # the deployer, whose `docker push` checks layers (BatchCheckLayerAvailability).
    pulls = [st for st in stmts if grants(st, "ecr:BatchGetImage")]
    assert len(pulls) == 1
    st = pulls[0]
    assert st["Sid"] == "DenyPullsOutsideThisEnvironment"
    assert st["Principal"] in ("*", {"AWS": "*"})
    assert set(st["Condition"]) == {"ArnNotEquals"}
    assert _actions(st) == set(PULLS)
    exempt = set(as_list(st["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]))
    env_roles = {f.role_arn(r) for r in ENV_ROLES}
    assert env_roles <= own_roles
    assert {role_arn(state, expect, "execution"), role_arn(state, expect, "migrator")} <= exempt
    assert exempt == env_roles | {f.deployer}
    assert not exempt & set(f.admins)

    # Pushes: the deployer alone.
    pushes = [st for st in stmts if grants(st, "ecr:PutImage")]
    assert len(pushes) == 1
    assert pushes[0]["Sid"] == "OnlyTheDeployerPushes"
    assert _actions(pushes[0]) == set(PUSHES)
    assert pushes[0]["Principal"] in ("*", {"AWS": "*"})
    assert pushes[0]["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": [f.deployer]}}


def test_repository_lifecycle_expires_old_images(state: StackState, expect: Expect) -> None:
    repo = repository_of(state, expect)
    lifecycle = only(
        with_inputs(state, ECR_LIFECYCLE, repository=repo.inputs["name"]), "lifecycle policy"
    )
    rules = json.loads(lifecycle.inputs["policy"])["rules"]
    priorities = [r["rulePriority"] for r in rules]
    assert len(set(priorities)) == len(priorities)
    assert all(r["action"] == {"type": "expire"} for r in rules)
    untagged = [r["selection"] for r in rules if r["selection"]["tagStatus"] == "untagged"]
    assert [s["countType"] for s in untagged] == ["sinceImagePushed"]
    assert untagged[0]["countUnit"] == "days" and untagged[0]["countNumber"] >= 1
    capped = [r for r in rules if r["selection"]["countType"] == "imageCountMoreThan"]
    assert capped and all(r["selection"]["countNumber"] >= 1 for r in capped)
    for rule in rules:  # ECR refuses a policy whose `any` rule is not the last one evaluated
        if rule["selection"]["tagStatus"] == "any":
            assert rule["rulePriority"] == max(priorities)


def check_image(state: StackState, expect: Expect) -> None:
    """Built from app/ and pushed to this environment's repository, and run by digest; or, with
    `build: false`, no build at all and the configured image."""
    task_image = container_of(state)["image"]
    images = state.of_type(IMAGE)
    if not expect.build:
        assert images == []
        assert task_image == expect.image
    else:
        image = only(images, "worker image")
        build = image.inputs["build"]
        # Issue 8: relative to where `pulumi up` runs (the stacks are evaluated from the
        # repository root), so another checkout records the same inputs and rebuilds nothing.
        assert not Path(build["context"]).is_absolute(), build["context"]
        assert not Path(build["dockerfile"]).is_absolute(), build["dockerfile"]
        assert Path(build["context"]).resolve() == PROJECT.root.resolve()
        dockerfile = Path(build["dockerfile"]).resolve()
        assert dockerfile == (APP_DIR / "Dockerfile").resolve() and dockerfile.is_file()
        # The task's runtime platform is X86_64: an arm64 image would not start.
        assert build["platform"] == "linux/amd64"
        repo, _, tag = image.inputs["imageName"].rpartition(":")
        assert repo == expect.repository_url
        assert re.fullmatch(r"src-[0-9a-f]{16}", tag), tag  # tags are immutable: one per source
        registry = image.inputs["registry"]
        assert registry["server"] in (expect.repository_url, expect.repository_url.split("/")[0])
        assert registry["username"] == "AWS"
        assert image.inputs.get("skipPush") in (None, False)
        docker = {f"{p.urn}::{p.id}": p for p in state.of_type(DOCKER_PROVIDER)}
        assert image.provider in docker and not docker[image.provider].name.startswith("default")
        assert task_image == image.outputs["repoDigest"]
        assert task_image.startswith(f"{expect.repository_url}@sha256:")
    assert state.outputs["image"] == task_image


def test_image_is_built_from_app_and_pushed_to_this_environments_repository(
    state: StackState, expect: Expect
) -> None:
    assert expect.build, "the repository's stack files build the image"
    check_image(state, expect)


# -- compute: cluster, task, service -----------------------------------------------------------


def test_task_definition_is_locked_down(state: StackState, expect: Expect) -> None:
    task = task_named(state, "worker-task").inputs
    assert task["family"] == f"{expect.prefix}-worker"
    assert task["requiresCompatibilities"] == ["FARGATE"]
    assert task["networkMode"] == "awsvpc"
    assert (int(task["cpu"]), int(task["memory"])) == (expect.cpu, expect.memory)
    assert task["runtimePlatform"] == {
        "operatingSystemFamily": "LINUX",
        "cpuArchitecture": "X86_64",
    }
    assert task["taskRoleArn"] == role_arn(state, expect, "service")
    assert task["executionRoleArn"] == role_arn(state, expect, "execution")
    assert all(set(v) == {"name"} for v in task["volumes"]), "task storage only, no host or EFS"

    c = container_of(state)
    check_container_is_locked_down(c)
    assert not c.get("secrets"), "the worker authenticates to the database with IAM"
    volumes = {v["name"] for v in task["volumes"]}
    assert all(m["sourceVolume"] in volumes for m in c["mountPoints"])
    check_task_logs(state, expect, c, "worker")


def check_container_is_locked_down(c: dict[str, Any]) -> None:
    """Non-root (the image's own USER), read-only root, not privileged, no capabilities,
    nothing listening."""
    assert c["essential"] is True
    assert c["readonlyRootFilesystem"] is True
    assert c["privileged"] is False
    capabilities = c["linuxParameters"]["capabilities"]
    assert capabilities["drop"] == ["ALL"] and not capabilities.get("add")
    uid, _, gid = c["user"].partition(":")
    assert int(uid) != 0 and gid and int(gid) != 0
    dockerfile = (APP_DIR / "Dockerfile").read_text()
    assert re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)[-1] == c["user"]
    assert not c.get("portMappings"), "nothing listens in the tasks"


def check_task_logs(state: StackState, expect: Expect, c: dict[str, Any], purpose: str) -> None:
    """The container logs to its own group of the environment, encrypted, with retention."""
    f = expect.facts
    logging = c["logConfiguration"]
    assert logging["logDriver"] == "awslogs"
    group = log_group_named(state, expect.log_group(purpose))
    assert logging["options"]["awslogs-group"] == group.inputs["name"]
    assert logging["options"]["awslogs-region"] == f.region
    assert group.inputs["kmsKeyId"] == arn(key_of(state))
    assert group.inputs["retentionInDays"] == f.log_retention


def db_command(f: Facts, job: str) -> list[str]:
    """`python -m db.<job>` for this environment, as the stack file names it."""
    identity = ["--environment", f.stack, "--tier", f.tier]
    if f.experiment_id:
        identity += ["--experiment-id", f.experiment_id]
    return [f"db.{job}", *identity]


def master_secret_arn(state: StackState) -> str:
    secrets = only(state.of_type(DB), "database").outputs["masterUserSecrets"]
    assert len(secrets) == 1
    return str(secrets[0]["secretArn"])


def test_pipeline_run_task_is_locked_down(state: StackState, expect: Expect) -> None:
    """Pipeline runs (app/worker/run.py) run the worker's image as the environment's pipeline
    role, read its own curated store, write its own results store, and record the image by
    digest and the flag set the worker evaluates."""
    task = task_named(state, "pipeline-task").inputs
    assert task["family"] == f"{expect.prefix}-pipeline-run"
    assert task["taskRoleArn"] == role_arn(state, expect, "pipeline")
    assert task["executionRoleArn"] == role_arn(state, expect, "execution")
    c = container_of(state, "pipeline-task")
    check_container_is_locked_down(c)
    worker = container_of(state)
    assert c["image"] == worker["image"]
    # the module is fixed: an override changes the run's arguments only
    assert c["entryPoint"] == ["python", "-m", "worker.run"] and c["command"] == ["--help"]
    env = {v["name"]: v["value"] for v in c["environment"]}
    worker_env = {v["name"]: v["value"] for v in worker["environment"]}
    assert env["ENVFENCE_IMAGE"] == worker["image"]
    assert env["INPUT_BUCKET"] == expect.facts.bucket("curated")
    assert env["RESULTS_BUCKET"] == expect.facts.bucket("results")
    for name in ("ENVFENCE_ENVIRONMENT", "ENVFENCE_TIER", "FLAG_SET", "FLAG_SET_VERSION"):
        assert env[name] == worker_env[name], name
    assert "QUEUE_URL" not in env and "DB_HOST" not in env  # a run touches S3 only
    outputs = state.outputs
    assert "--overrides" in outputs["pipelineRunCommand"]
    assert outputs["dvcRemote"] == f"s3://{expect.facts.bucket('curated')}/dvc"


def test_database_task_is_locked_down(state: StackState, expect: Expect) -> None:
    """The one-off database tasks (migrate; retention in experiments) run the worker's image with
    the master password ECS hands them, and nothing else: no task role (no AWS credentials in
    the container), their own execution role, their own log group."""
    f = expect.facts
    task = task_named(state, "db-task").inputs
    assert task["family"] == f"{expect.prefix}-db"
    assert task["requiresCompatibilities"] == ["FARGATE"]
    assert task["networkMode"] == "awsvpc"
    assert task["runtimePlatform"] == {
        "operatingSystemFamily": "LINUX",
        "cpuArchitecture": "X86_64",
    }
    cpu, memory = int(task["cpu"]), int(task["memory"])
    assert cpu == 256 and memory in (512, 1024, 2048), (cpu, memory)  # a Fargate size
    assert "taskRoleArn" not in task, "the database tasks get no role and no AWS credentials"
    assert task["executionRoleArn"] == role_arn(state, expect, "migrator")
    assert task["executionRoleArn"] != role_arn(state, expect, "execution")
    assert not task.get("volumes"), "no host, EFS or task storage"

    c = container_of(state, "db-task")
    assert c["name"] == "db"
    check_container_is_locked_down(c)
    assert not c.get("mountPoints")
    assert c["image"] == container_of(state)["image"], "the worker's image, which carries db/"
    assert c["entryPoint"] == ["python", "-m"]
    assert c["command"] == db_command(f, "migrate")
    db = only(state.of_type(DB), "database")
    env = {v["name"]: v["value"] for v in c["environment"]}
    assert len(env) == len(c["environment"])
    sslroot = env.pop("PGSSLROOTCERT")  # the image's CA bundle: verify-full checks the name
    assert sslroot.startswith("/") and sslroot.endswith(".pem"), sslroot
    assert int(env.pop("PGCONNECT_TIMEOUT")) > 0
    assert env == {
        "PGHOST": db.outputs["address"],
        "PGPORT": "5432",
        "PGDATABASE": db.inputs["dbName"],
        "PGUSER": db.inputs["username"],
        "PGSSLMODE": "verify-full",
    }
    # The password comes from the RDS-managed secret of this environment's database, fetched by
    # ECS with the execution role; it is never in the definition itself.
    assert c["secrets"] == [
        {"name": "PGPASSWORD", "valueFrom": f"{master_secret_arn(state)}:password::"}
    ]
    check_task_logs(state, expect, c, "db-tasks")
    assert c["logConfiguration"]["options"]["awslogs-group"] != expect.log_group("worker")


def test_migrator_role_reads_only_this_environments_master_secret(
    state: StackState, expect: Expect
) -> None:
    """The database tasks' execution role: the image, the tasks' logs, the master secret and the
    key through Secrets Manager. It is the only role that may read that secret."""
    f = expect.facts
    role = role_named(state, expect.role("migrator"))
    assert role.inputs["permissionsBoundary"] == arn(boundary_of(state, f))
    trust = statements(role.inputs["assumeRolePolicy"])
    assert trust
    for st in trust:
        assert st["Effect"] == "Allow"
        assert st["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert as_list(st["Action"]) == ["sts:AssumeRole"]
        assert st["Condition"]["StringEquals"]["aws:SourceAccount"] == f.account
    repo = arn(repository_of(state, expect))
    group = arn(log_group_named(state, expect.log_group("db-tasks")))
    secret = master_secret_arn(state)
    assert secret.startswith(expect.arn("secretsmanager", "secret:"))
    stmts = role_policy(state, expect.role("migrator"))
    for st in stmts:
        assert st["Effect"] == "Allow" and "NotResource" not in st and "NotAction" not in st
    assert {st["Sid"]: (_actions(st), set(as_list(st["Resource"]))) for st in stmts} == {
        "EcrLogin": ({"ecr:GetAuthorizationToken"}, {"*"}),
        "PullTheWorkerImage": (set(PULLS), {repo}),
        "WriteDatabaseTaskLogs": (
            {"logs:CreateLogStream", "logs:PutLogEvents"},
            {group, f"{group}:log-stream:*"},
        ),
        "ReadThisEnvironmentsMasterSecret": ({"secretsmanager:GetSecretValue"}, {secret}),
        "DecryptTheMasterSecret": ({"kms:Decrypt"}, {arn(key_of(state))}),
    }
    for st in stmts:
        if st["Sid"] == "DecryptTheMasterSecret":
            assert st["Condition"] == {
                "StringEquals": {"kms:ViaService": f"secretsmanager.{f.region}.amazonaws.com"}
            }
        else:
            assert "Condition" not in st, st
    # No other role of the environment names Secrets Manager at all.
    for policy in state.of_type(ROLE_POLICY):
        if policy.inputs["role"] == expect.role("migrator"):
            continue
        for st in statements(policy.inputs["policy"]):
            assert not grants(st, "secretsmanager:GetSecretValue"), (policy.inputs["role"], st)
            assert secret not in json.dumps(st), policy.inputs["role"]


def test_worker_is_wired_to_this_environments_resources_only(
    state: StackState, expect: Expect
) -> None:
    f = expect.facts
    env = {v["name"]: v["value"] for v in container_of(state)["environment"]}
    app, app_env, profile = appconfig_of(state)
    expected = {
        "ENVFENCE_ENVIRONMENT": f.stack,
        "ENVFENCE_TIER": f.tier,
        "QUEUE_URL": queue_named(state, f"{expect.prefix}-ingest").outputs["url"],
        "RAW_BUCKET": f.bucket("raw"),
        "DB_HOST": only(state.of_type(DB), "database").outputs["address"],
        "AWS_REGION": f.region,
        "APPCONFIG_APPLICATION": app.id,
        "APPCONFIG_ENVIRONMENT": app_env.outputs["environmentId"],
        "APPCONFIG_PROFILE": profile.outputs["configurationProfileId"],
    }
    assert {k: env.get(k) for k in expected} == expected
    # Provenance: every row the worker writes is stamped with the experiment, if any.
    assert env.get("ENVFENCE_EXPERIMENT_ID") == f.experiment_id


def test_execution_role_pulls_its_repository_and_writes_its_log_group_only(
    state: StackState, expect: Expect
) -> None:
    f = expect.facts
    role = role_named(state, expect.role("execution"))
    assert role.inputs["permissionsBoundary"] == arn(boundary_of(state, f))
    for st in statements(role.inputs["assumeRolePolicy"]):
        assert st["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert st["Condition"]["StringEquals"]["aws:SourceAccount"] == f.account
    repo = arn(repository_of(state, expect))
    group = arn(log_group_named(state, expect.log_group("worker")))
    allowed = {repo, group, f"{group}:log-stream:*"}
    named: set[str] = set()
    for st in role_policy(state, expect.role("execution")):
        assert st["Effect"] == "Allow" and "NotResource" not in st and "NotAction" not in st
        resources = set(as_list(st["Resource"]))
        if "*" in resources:  # GetAuthorizationToken acts on no resource; AWS wants "*"
            assert resources == {"*"} and as_list(st["Action"]) == ["ecr:GetAuthorizationToken"]
            continue
        assert resources <= allowed, resources
        assert {a.split(":")[0] for a in as_list(st["Action"])} <= {"ecr", "logs"}
        if grants_any(st, PULLS):
            assert resources == {repo}
        named |= resources
    assert named == allowed


def test_service_runs_in_the_app_subnets_without_public_ip(
    state: StackState, expect: Expect
) -> None:
    cluster = only(state.of_type(CLUSTER), "ECS cluster")
    assert cluster.inputs["name"] == expect.prefix
    assert {"name": "containerInsights", "value": "enabled"} in cluster.inputs["settings"]
    service_resource = only(state.of_type(SERVICE), "ECS service")
    service = service_resource.inputs
    assert service["name"] == f"{expect.prefix}-worker"
    assert service["cluster"] == arn(cluster)
    assert service["taskDefinition"] == arn(task_named(state, "worker-task"))
    assert service["launchType"] == "FARGATE"
    assert service["enableExecuteCommand"] is False, "ECS Exec is a way around the roles"
    assert service["desiredCount"] == expect.desired_count
    network = service["networkConfiguration"]
    assert network["assignPublicIp"] is False
    assert sorted(network["subnets"]) == sorted(sn.id for sn in subnets(state, "app"))
    sg_app = only([sg for sg in state.of_type(SG) if sg.name == "sg-app"], "app security group")
    assert network["securityGroups"] == [sg_app.id]
    # `pulumi up` succeeds only once the new worker tasks are stable (a worker that cannot start
    # trips the circuit breaker and rolls back), and only after the database is migrated.
    assert service["waitForSteadyState"] is True
    assert service["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    migration = only(state.of_type(MIGRATION), "migration run")
    assert migration.urn in service_resource.dependencies


def test_migration_runs_the_database_task_before_the_worker(
    state: StackState, expect: Expect
) -> None:
    """`pulumi up` runs the migration task (a dynamic resource, in the deployer's process) in
    this environment's cluster, app subnets and app security group, without a public IP."""
    f = expect.facts
    migration = only(state.of_type(MIGRATION), "migration run")
    assert migration.name == "db-migration"
    cluster = arn(only(state.of_type(CLUSTER), "ECS cluster"))
    task = arn(task_named(state, "db-task"))
    sg_app = only([sg for sg in state.of_type(SG) if sg.name == "sg-app"], "app security group")
    props = {k: v for k, v in migration.inputs.items() if k != "__provider"}
    checksum = props.pop("migrationsChecksum")
    assert re.fullmatch(r"[0-9a-f]{64}", checksum), checksum
    assert sorted(props.pop("subnets")) == sorted(sn.id for sn in subnets(state, "app"))
    assert props == {
        "region": f.region,
        "account": f.account,
        "cluster": cluster,
        "taskDefinition": task,
        "securityGroups": [sg_app.id],
        "logGroup": expect.log_group("db-tasks"),
    }
    # The same run, by hand: the stack exports the command.
    command = shlex.split(state.outputs["migrateCommand"])
    network = command[-1]
    assert command[:-1] == [
        "aws",
        "ecs",
        "run-task",
        "--region",
        f.region,
        "--cluster",
        cluster,
        "--task-definition",
        task,
        "--launch-type",
        "FARGATE",
        "--network-configuration",
    ]
    assert network == (
        f"awsvpcConfiguration={{subnets=[{','.join(migration.inputs['subnets'])}],"
        f"securityGroups=[{sg_app.id}],assignPublicIp=DISABLED}}"
    )


def test_retention_schedule_runs_the_database_task_in_experiments_only(
    state: StackState, expect: Expect
) -> None:
    """Experiments: EventBridge Scheduler starts the database task daily with the retention
    command, through a role of the environment that may start only that task and pass only the
    migrator role. Production rows are never expired: no schedule, no such role."""
    f = expect.facts
    schedules = state.of_type(SCHEDULE)
    scheduler_roles = with_inputs(state, ROLE, name=expect.role("scheduler"))
    if f.production:
        assert schedules == [] and scheduler_roles == []
        assert [p.inputs["role"] for p in state.of_type(ROLE_POLICY)].count(
            expect.role("scheduler")
        ) == 0
        return
    role = only(scheduler_roles, "scheduler role")
    assert role.inputs["permissionsBoundary"] == arn(boundary_of(state, f))
    assert statements(role.inputs["assumeRolePolicy"]) == [
        {
            "Sid": "SchedulesOfThisAccount",
            "Effect": "Allow",
            "Principal": {"Service": "scheduler.amazonaws.com"},
            "Action": ["sts:AssumeRole"],
            "Condition": {"StringEquals": {"aws:SourceAccount": f.account}},
        }
    ]
    cluster = arn(only(state.of_type(CLUSTER), "ECS cluster"))
    task = arn(task_named(state, "db-task"))
    family, _, revision = task.rpartition(":")
    assert family == expect.arn("ecs", f"task-definition/{expect.prefix}-db") and revision
    stmts = role_policy(state, expect.role("scheduler"))
    assert stmts == [
        {
            "Sid": "RunTheDatabaseTask",
            "Effect": "Allow",
            "Action": ["ecs:RunTask"],
            "Resource": [f"{family}:*"],
            "Condition": {"ArnEquals": {"ecs:cluster": cluster}},
        },
        {
            "Sid": "PassTheMigratorRole",
            "Effect": "Allow",
            "Action": ["iam:PassRole"],
            "Resource": [role_arn(state, expect, "migrator")],
            "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        },
        {
            # the payload is under the environment's key (CKV_AWS_297): decrypted by this
            # role at each run, for this schedule only
            "Sid": "DecryptThePayload",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": [arn(key_of(state))],
            "Condition": {
                "StringEquals": {
                    "kms:EncryptionContext:aws:scheduler:schedule:arn": expect.arn(
                        "scheduler", f"schedule/default/{expect.prefix}-retention"
                    )
                }
            },
        },
    ]

    schedule = only(schedules, "retention schedule")
    assert schedule.name == "retention-schedule"
    i = schedule.inputs
    assert i["name"] == f"{expect.prefix}-retention"
    assert i["groupName"] == "default"
    assert i["kmsKeyArn"] == arn(key_of(state))
    assert i["flexibleTimeWindow"] == {"mode": "OFF"}
    assert re.fullmatch(r"cron\(\d+ \d+ \* \* \? \*\)", i["scheduleExpression"])  # daily
    target = i["target"]
    assert target["arn"] == cluster
    assert target["roleArn"] == arn(role)
    sg_app = only([sg for sg in state.of_type(SG) if sg.name == "sg-app"], "app security group")
    ecs = target["ecsParameters"]
    assert ecs["taskDefinitionArn"] == task
    assert ecs["launchType"] == "FARGATE"
    assert ecs["networkConfiguration"]["assignPublicIp"] is False
    assert sorted(ecs["networkConfiguration"]["subnets"]) == sorted(
        sn.id for sn in subnets(state, "app")
    )
    assert ecs["networkConfiguration"]["securityGroups"] == [sg_app.id]
    assert not ecs.get("taskCount") or ecs["taskCount"] == 1
    days = int(f.retention.get("expireAfterDays", 30))
    assert json.loads(target["input"]) == {
        "containerOverrides": [
            {"name": "db", "command": [*db_command(f, "retention"), "--older-than-days", str(days)]}
        ]
    }


# -- feature flags -----------------------------------------------------------------------------


def default_status(value: dict[str, Any]) -> bool:
    """A flag's status for records no variant targets: the last variant's, else its own."""
    variants = value.get("_variants")
    return bool(variants[-1]["enabled"] if variants else value["enabled"])


def check_flags(state: StackState, expect: Expect) -> None:
    """Application, environment, profile, hosted version from `flags`, and its deployment."""
    app, env, profile = appconfig_of(state)
    assert app.inputs["name"] == expect.prefix
    assert env.inputs["applicationId"] == app.id
    assert env.inputs["name"] == expect.facts.stack
    assert profile.inputs["applicationId"] == app.id
    assert profile.inputs["type"] == "AWS.AppConfig.FeatureFlags"
    assert profile.inputs["locationUri"] == "hosted"
    profile_id = profile.outputs["configurationProfileId"]

    version = only(state.of_type(VERSION), "hosted configuration version")
    assert version.inputs["applicationId"] == app.id
    assert version.inputs["configurationProfileId"] == profile_id
    assert version.inputs["contentType"] == "application/json"
    content = json.loads(version.inputs["content"])
    assert content["version"] == "1"
    assert {name: spec["name"] for name, spec in content["flags"].items()} == {
        name: name for name in expect.flags
    }
    assert {name: spec.get("description", "") for name, spec in content["flags"].items()} == (
        expect.flag_descriptions
    )
    assert {name: default_status(value) for name, value in content["values"].items()} == (
        expect.flags
    )
    # The worker evaluates exactly this document, and stamps rows with its label.
    assert version.inputs["versionLabel"] == flag_set_version(version.inputs["content"])
    task = state.named("worker-task", TASK)
    (worker,) = json.loads(task.inputs["containerDefinitions"])
    variables = {e["name"]: e["value"] for e in worker["environment"]}
    assert variables["FLAG_SET"] == version.inputs["content"]
    assert variables["FLAG_SET_VERSION"] == version.inputs["versionLabel"]

    strategy = only(state.of_type(STRATEGY), "deployment strategy")
    assert owner_of(strategy.inputs["name"], expect.facts.project) == expect.facts.stack
    deployment = only(state.of_type(DEPLOYMENT), "AppConfig deployment").inputs
    assert deployment["applicationId"] == app.id
    assert deployment["environmentId"] == env.outputs["environmentId"]
    assert deployment["configurationProfileId"] == profile_id
    assert deployment["configurationVersion"] == str(int(version.outputs["versionNumber"]))
    assert deployment["deploymentStrategyId"] == strategy.id


def test_flags_are_deployed_from_the_stack_file(state: StackState, expect: Expect) -> None:
    assert expect.flags, "the stack file configures flags"
    check_flags(state, expect)


def test_experimental_flags_are_on_only_in_experiment_stacks(
    state: StackState, expect: Expect
) -> None:
    config = _value(state.config, "envfence:flags", {})
    unset = [n for n, spec in config.items() if spec.get("experimental") and "enabled" not in spec]
    assert unset, "the stack file has an experimental flag without a value"
    content = json.loads(only(state.of_type(VERSION), "hosted version").inputs["content"])
    for name in unset:
        assert default_status(content["values"][name]) is (not expect.facts.production), name


def test_only_the_service_role_reads_flags_and_only_its_own(
    state: StackState, expect: Expect
) -> None:
    app, env, profile = appconfig_of(state)
    configuration = expect.arn(
        "appconfig",
        f"application/{app.id}/environment/{env.outputs['environmentId']}"
        f"/configuration/{profile.outputs['configurationProfileId']}",
    )
    readers: dict[str, set[str]] = {}
    for policy in state.of_type(ROLE_POLICY):
        for st in statements(policy.inputs["policy"]):
            if st["Effect"] == "Allow" and grants_any(st, FLAG_READS):
                assert set(as_list(st["Action"])) <= set(FLAG_READS), st
                readers.setdefault(policy.inputs["role"], set()).update(as_list(st["Resource"]))
    assert readers == {expect.role("service"): {configuration}}


# -- audit -------------------------------------------------------------------------------------


# The registry (Pulumi.yaml): `experiment-*` stacks share the experiment account, whose trail
# is the experiment stack's; prod is alone in its account.
OTHER_STACK_PREFIXES = {"prod": (), "experiment": ("envfence-experiment-",)}


def test_trail_records_every_data_store_into_the_audit_bucket(
    state: StackState, expect: Expect
) -> None:
    f = expect.facts
    trail = only(state.of_type(TRAIL), "trail")
    i = trail.inputs
    assert i["name"] == expect.prefix
    assert arn(trail) == expect.arn("cloudtrail", f"trail/{expect.prefix}")
    assert i["isMultiRegionTrail"] is True
    assert i["includeGlobalServiceEvents"] is True
    assert i["enableLogFileValidation"] is True
    assert i["kmsKeyId"] == arn(key_of(state))
    bucket = bucket_of(state, expect.audit_bucket)
    assert i["s3BucketName"] == bucket.id
    # The trail is created once the bucket policy lets CloudTrail write (else creation fails).
    assert attached(state, BUCKET_POLICY, bucket).urn in trail.dependencies

    selectors = {
        s["name"]: {fs["field"]: fs for fs in s["fieldSelectors"]}
        for s in i["advancedEventSelectors"]
    }
    management = [s for s in selectors.values() if s["eventCategory"]["equals"] == ["Management"]]
    assert len(management) == 1
    data = [s for s in selectors.values() if s["eventCategory"]["equals"] == ["Data"]]
    assert len(data) == 1
    assert data[0]["resources.type"]["equals"] == ["AWS::S3::Object"]
    # Its own stores and its archive by name (the archive too: a baseline with no short-lived
    # stacks in its account has no prefix that covers it); the account's other stacks by prefix
    # (so a new experiment-<id> is recorded without a change here); never its own audit bucket,
    # which the prefix matches.
    archives = {f"{arn(b)}/" for b in state.of_type("aws:s3/bucket:Bucket") if b.name == "archive"}
    assert len(archives) == (0 if state.stack == "prod" else 1)
    assert (
        set(data[0]["resources.ARN"]["startsWiths"])
        == {f"arn:aws:s3:::{f.bucket(store)}/" for store in f.stores}
        | {f"arn:aws:s3:::{p}" for p in OTHER_STACK_PREFIXES[state.stack]}
        | archives
    )
    assert data[0]["resources.ARN"]["notStartsWiths"] == [f"{arn(bucket)}/"]


def test_trail_delivers_to_its_own_encrypted_log_group(state: StackState, expect: Expect) -> None:
    f = expect.facts
    trail = only(state.of_type(TRAIL), "trail").inputs
    group = log_group_named(state, expect.log_group("cloudtrail"))
    assert group.inputs["kmsKeyId"] == arn(key_of(state))
    assert group.inputs["retentionInDays"] == f.log_retention
    assert trail["cloudWatchLogsGroupArn"] == f"{arn(group)}:*"
    role = role_named(state, expect.role("trail"))
    assert trail["cloudWatchLogsRoleArn"] == arn(role)
    assert role.inputs["permissionsBoundary"] == arn(boundary_of(state, f))
    for st in statements(role.inputs["assumeRolePolicy"]):
        assert st["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
        # IfExists: CloudTrail does not document the source keys when it assumes this role
        assert st["Condition"]["StringEqualsIfExists"]["aws:SourceAccount"] == f.account
        sources = st["Condition"]["ArnEqualsIfExists"]["aws:SourceArn"]
        assert as_list(sources) == [expect.arn("cloudtrail", f"trail/{expect.prefix}")]
    for st in role_policy(state, expect.role("trail")):
        assert set(as_list(st["Resource"])) == {arn(group), f"{arn(group)}:log-stream:*"}
        assert set(as_list(st["Action"])) == {"logs:CreateLogStream", "logs:PutLogEvents"}


def _may_deny_cloudtrail(st: dict[str, Any]) -> bool:
    """Whether a Deny could apply to CloudTrail's own delivery (a service principal over TLS,
    which carries no aws:PrincipalArn)."""
    for op, keys in st.get("Condition", {}).items():
        for key, value in keys.items():
            if key == "aws:SecureTransport" and op == "Bool" and value in ("false", False):
                return False
            if key == "aws:PrincipalArn" and op in ("ArnEquals", "ArnLike", "StringEquals"):
                return False  # absent key: a positive operator does not match
            if key == "aws:PrincipalArn" and op == "Null" and value in ("false", False):
                return False
            if key == "aws:PrincipalIsAWSService" and op == "Bool" and value in ("false", False):
                return False  # CloudTrail writes with its service principal: true
    return True


def test_audit_bucket_takes_cloudtrail_writes_and_no_role_tampers(
    state: StackState, expect: Expect
) -> None:
    f = expect.facts
    bucket = bucket_of(state, expect.audit_bucket)
    bucket_arn = arn(bucket)
    trail_arn = arn(only(state.of_type(TRAIL), "trail"))
    logs = f"{bucket_arn}/AWSLogs/{f.account}/*"
    stmts = statements(attached(state, BUCKET_POLICY, bucket).inputs["policy"])

    # CloudTrail of this trail, and nothing else, is allowed in.
    allows = [st for st in stmts if st["Effect"] == "Allow"]
    assert allows
    for st in allows:
        assert st["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
        assert st["Condition"] == {"StringEquals": {"aws:SourceArn": trail_arn}}
    acl = [st for st in allows if grants(st, "s3:GetBucketAcl")]
    assert acl and all(as_list(st["Resource"]) == [bucket_arn] for st in acl)
    writes = [st for st in allows if grants(st, "s3:PutObject")]
    assert len(writes) == 1 and as_list(writes[0]["Resource"]) == [logs]
    assert not grants_any(writes[0], ("s3:DeleteObject", "s3:PutBucketPolicy"))
    denies = [st for st in stmts if st["Effect"] == "Deny"]
    blocking = [
        st
        for st in denies
        if grants(st, "s3:PutObject") and {f"{bucket_arn}/*", "*"} & set(as_list(st["Resource"]))
    ]
    assert [st.get("Sid") for st in blocking if _may_deny_cloudtrail(st)] == []

    others = OTHER_STACK_PREFIXES[state.stack]
    assert sorted(st.get("Sid") for st in denies) == sorted(
        [
            "DenyDeletingTheLog",
            "DenyInsecureTransport",
            "DenyListingOutsideTheAuditors",
            "DenyReadingOutsideTheAuditors",
            "DenyTamperingByEnvironmentRoles",
            "DenyWritingTheLogOutsideCloudTrail",
        ]
        + (["DenyTamperingByTheAccountsOtherEnvironments"] if others else [])
    )
    # The account's trail keeps the other stacks' history too: none of their roles, present
    # or future, may tamper with it either.
    for st in denies:
        if st["Sid"] == "DenyTamperingByTheAccountsOtherEnvironments":
            assert st["Condition"] == {
                "ArnLike": {
                    "aws:PrincipalArn": [f"arn:aws:iam::{f.account}:role/{p}*" for p in others]
                }
            }
            assert set(as_list(st["Resource"])) == {bucket_arn, f"{bucket_arn}/*"}
            assert [a for a in AUDIT_TAMPERING if not grants(st, a)] == []
    # No IAM principal writes the log (CloudTrail's requests carry no aws:PrincipalArn), and
    # in production none deletes from it; an experiment's deployer empties it on destroy.
    forge = next(st for st in denies if st["Sid"] == "DenyWritingTheLogOutsideCloudTrail")
    assert forge["Condition"] == {"Bool": {"aws:PrincipalIsAWSService": "false"}}
    assert as_list(forge["Resource"]) == [f"{bucket_arn}/*"]
    delete = next(st for st in denies if st["Sid"] == "DenyDeletingTheLog")
    expected: dict[str, Any] = {"Bool": {"aws:PrincipalIsAWSService": "false"}}
    if state.stack != "prod":
        expected["ArnNotEquals"] = {"aws:PrincipalArn": [f.deployer]}
    assert delete["Condition"] == expected
    for st in denies:
        assert st["Principal"] in ("*", {"AWS": "*"}), st

    # Every role of the environment, and the audit readers, are denied every write, delete and
    # re-configuration.
    tls = [st for st in denies if st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
    assert len(tls) == 1 and set(as_list(tls[0]["Resource"])) == {bucket_arn, f"{bucket_arn}/*"}
    tamper = [
        st for st in denies if "aws:PrincipalArn" in st.get("Condition", {}).get("ArnEquals", {})
    ]
    assert len(tamper) == 1
    st = tamper[0]
    assert st["Sid"] == "DenyTamperingByEnvironmentRoles"
    assert set(st["Condition"]) == {"ArnEquals"}
    assert set(as_list(st["Resource"])) == {bucket_arn, f"{bucket_arn}/*"}
    roles = set(as_list(st["Condition"]["ArnEquals"]["aws:PrincipalArn"]))
    env_roles = {f.role_arn(r) for r in ENV_ROLES}
    assert roles == env_roles | set(f.audit_readers)
    assert [a for a in AUDIT_TAMPERING if not grants(st, a)] == []
    # A role of the stack the bucket policy does not name (the experiment's scheduler) carries
    # the boundary, whose S3 fence leaves it no action at all on the audit bucket.
    own_roles = state.of_type(ROLE)
    assert env_roles <= {arn(r) for r in own_roles}
    s3_fence = [
        st
        for st in statements(boundary_of(state, f).inputs["policy"])
        if st["Effect"] == "Deny" and not st.get("Condition") and grants(st, "s3:PutObject")
    ]
    assert len(s3_fence) == 1 and as_list(s3_fence[0]["Action"]) == ["s3:*"]
    assert not {bucket_arn, f"{bucket_arn}/*"} & set(as_list(s3_fence[0]["NotResource"]))
    for role in own_roles:
        if arn(role) not in roles:
            assert role.inputs["permissionsBoundary"] == arn(boundary_of(state, f)), role.name

    # Reading the log: the audit readers (and the environment's roles, which the boundary keeps
    # off the bucket anyway); not the deployer, not the administrators. Listing: the same and
    # the deployer (the provider reads the bucket back with HeadBucket). Requests of AWS
    # services carry no aws:PrincipalArn: the Null test leaves CloudTrail's writes alone.
    reading = _by_sid(denies, "DenyReadingOutsideTheAuditors")
    assert _actions(reading) == {"s3:GetObject*", "s3:RestoreObject"}
    assert as_list(reading["Resource"]) == [f"{bucket_arn}/*"]
    assert set(reading["Condition"]) == {"ArnNotEquals", "Null"}
    assert reading["Condition"]["Null"] == {"aws:PrincipalArn": "false"}
    readers = set(as_list(reading["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]))
    assert readers == env_roles | set(f.audit_readers)
    assert f.deployer not in readers and not readers & set(f.admins)
    listing = _by_sid(denies, "DenyListingOutsideTheAuditors")
    assert as_list(listing["Action"]) == ["s3:ListBucket*"]
    assert as_list(listing["Resource"]) == [bucket_arn]
    assert set(listing["Condition"]) == {"ArnNotEquals", "Null"}
    assert listing["Condition"]["Null"] == {"aws:PrincipalArn": "false"}
    listers = set(as_list(listing["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]))
    assert listers == env_roles | set(f.audit_readers) | {f.deployer}
    assert not listers & set(f.admins)

    # Nor may any role stop, change or delete the trail or its log group.
    boundary = [
        st
        for st in statements(boundary_of(state, f).inputs["policy"])
        if st["Effect"] == "Deny" and not st.get("Condition") and st.get("Resource") in ("*", ["*"])
    ]
    assert [a for a in TRAIL_TAMPERING if not any(grants(st, a) for st in boundary)] == []


def test_audit_log_is_object_locked_in_production(state: StackState, expect: Expect) -> None:
    bucket = bucket_of(state, expect.audit_bucket)
    assert bucket.inputs["tags"] == {"data-store": "audit"}
    locks = with_inputs(state, OBJECT_LOCK, bucket=bucket.id)
    if expect.facts.production:
        assert expect.object_lock_days > 0
    if expect.object_lock_days:
        assert bucket.inputs["objectLockEnabled"] is True
        rule = only(locks, "object lock configuration").inputs["rule"]
        assert rule == {"defaultRetention": {"mode": "COMPLIANCE", "days": expect.object_lock_days}}
        versioning = attached(state, VERSIONING, bucket).inputs["versioningConfiguration"]
        assert versioning["status"] == "Enabled"
    else:
        assert locks == []
        assert not bucket.inputs.get("objectLockEnabled")
    if expect.facts.production:
        assert bucket.protect and bucket.retain_on_delete
        assert bucket.inputs["forceDestroy"] is False
    else:
        assert not bucket.protect
        assert bucket.inputs["forceDestroy"] is True


def test_denied_access_raises_an_alarm_on_an_encrypted_topic(
    state: StackState, expect: Expect
) -> None:
    f = expect.facts
    group = log_group_named(state, expect.log_group("cloudtrail"))
    metric_filter = only(state.of_type(METRIC_FILTER), "metric filter").inputs
    assert metric_filter["logGroupName"] == group.inputs["name"]
    pattern = metric_filter["pattern"]
    assert '$.errorCode = "AccessDenied*"' in pattern
    assert '$.errorCode = "*UnauthorizedOperation"' in pattern
    for service in DATA_SERVICES:
        assert f'$.eventSource = "{service}.amazonaws.com"' in pattern, service
    metric = metric_filter["metricTransformation"]
    assert metric["value"] == "1"
    assert metric["namespace"].endswith(f"/{f.stack}")

    topic = only(state.of_type(TOPIC), "SNS topic")
    assert topic.inputs["name"] == f"{expect.prefix}-alerts"
    assert topic.inputs["kmsMasterKeyId"] == arn(key_of(state))
    alarm = only(state.of_type(ALARM), "alarm").inputs
    assert (alarm["namespace"], alarm["metricName"]) == (metric["namespace"], metric["name"])
    assert alarm["statistic"] == "Sum"
    assert alarm["threshold"] == 1
    assert alarm["comparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["evaluationPeriods"] == 1
    assert alarm["alarmActions"] == [arn(topic)]
    # The alarm can publish to the encrypted topic: CloudWatch may use the key for that, and
    # for nothing else. Deliberately without a condition (keys.py: CloudWatch's KMS calls are not
    # documented to carry aws:SourceAccount/aws:SourceArn, and a missing key would silence every
    # alarm); what keeps other accounts' alarms out is the topic's default policy, so the stack
    # must not replace it.
    alarms_use = [
        st
        for st in statements(key_of(state).inputs["policy"])
        if st["Effect"] == "Allow" and principals(st, "Service") == {"cloudwatch.amazonaws.com"}
    ]
    assert len(alarms_use) == 1
    assert alarms_use[0]["Sid"] == "CloudWatchAlarmsPublishToTheTopic"
    assert alarms_use[0]["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert _actions(alarms_use[0]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert as_list(alarms_use[0]["Resource"]) == ["*"]
    assert "Condition" not in alarms_use[0]
    assert not topic.inputs.get("policy") and state.of_type(TOPIC_POLICY) == []


def check_alert_subscriptions(state: StackState, expect: Expect) -> None:
    topic = arn(only(state.of_type(TOPIC), "SNS topic"))
    subscriptions = state.of_type(SUBSCRIPTION)
    assert all(s.inputs["topic"] == topic for s in subscriptions)
    assert sorted((s.inputs["protocol"], s.inputs["endpoint"]) for s in subscriptions) == sorted(
        ("email", e) for e in expect.alert_emails
    )


def test_alerts_go_to_the_configured_emails(state: StackState, expect: Expect) -> None:
    assert expect.alert_emails, "the stack file configures alert e-mails"
    check_alert_subscriptions(state, expect)


# -- retention ---------------------------------------------------------------------------------


def test_every_log_group_keeps_the_configured_retention(state: StackState, expect: Expect) -> None:
    f = expect.facts
    groups = {g.inputs["name"]: g for g in state.of_type(LOG_GROUP)}
    purposes = ("vpc-flow-logs", "worker", "db-tasks", "cloudtrail")
    assert {expect.log_group(p) for p in purposes} <= set(groups)
    assert expect.rds_log_group in groups
    for name, group in groups.items():
        assert name.startswith(expect.log_group("")) or name == expect.rds_log_group, name
        assert group.inputs["retentionInDays"] == f.log_retention, name


def test_the_database_log_is_exported_into_a_group_made_first(
    state: StackState, expect: Expect
) -> None:
    """Issue 8: RDS exports the PostgreSQL log to /aws/rds/instance/<id>/postgresql; created by
    RDS it would be unencrypted and kept forever, so the stack creates it before the instance."""
    db = state.of_type(DB)[0]
    assert db.inputs["enabledCloudwatchLogsExports"] == ["postgresql"]
    group = log_group_named(state, expect.rds_log_group)
    assert group.urn in db.dependencies
    assert group.inputs["kmsKeyId"] == state.named("key", "aws:kms/key:Key").outputs["arn"]


def test_audit_bucket_lifecycle_follows_the_tier(state: StackState, expect: Expect) -> None:
    rules = attached(state, LIFECYCLE, bucket_of(state, expect.audit_bucket)).inputs["rules"]
    enabled = [r for r in rules if r["status"] == "Enabled" and r.get("filter") in ({}, None)]
    assert enabled
    if expect.facts.production:  # audit logs are never expired in production
        for rule in rules:
            assert "expiration" not in rule and "noncurrentVersionExpiration" not in rule
    else:  # and leave with the experiment, once the logs' own retention has passed
        days = [r["expiration"]["days"] for r in enabled if "expiration" in r]
        assert len(days) == 1 and days[0] >= expect.facts.log_retention
        assert any(r.get("noncurrentVersionExpiration") for r in enabled)


def check_plan_shows_expiry(
    state: StackState,
    expect: Expect,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`envfence plan` (table title and JSON) shows `expiresOn` exactly when the config sets it."""
    monkeypatch.setattr(evaluate_module, "evaluate", lambda stack, project=None, **_: state)
    assert main(["plan", "--stack", state.stack, "--summary"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    first = out.splitlines()[0]  # the summary line starts with the table's title
    assert first.startswith(f"stack {state.stack}: tier {expect.facts.tier}"), out
    if expect.expires_on:
        assert f", expires {expect.expires_on}: " in first, first
    else:
        assert ", expires " not in first, first
    assert main(["plan", "--stack", state.stack, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr()[0])["envfence"]
    assert doc["config"].get("envfence:expiresOn") == expect.expires_on
    assert doc["outputs"].get("expiresOn") == expect.expires_on


def test_plan_shows_expires_on_as_the_stack_file_says(
    state: StackState,
    expect: Expect,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    check_plan_shows_expiry(state, expect, monkeypatch, capsys)


# -- the same program with other config (one evaluation per stack) -----------------------------


def stack_file_state(overridden: StackState) -> StackState:
    """The overridden stack's config as its file has it (only the config is read)."""
    return StackState(
        stack=overridden.stack,
        project=overridden.project,
        tier=overridden.tier,
        config=dict(PROJECT.stack_config(overridden.stack)),
    )


def test_prebuilt_image_is_used_without_a_build(overridden: StackState) -> None:
    expect = expect_of(overridden)
    assert not expect.build and expect.image and expect.image.startswith(expect.repository_url)
    check_image(overridden, expect)
    # Everything else about the containers holds as with a build, and the task count follows
    # the config (the stack file's count plus one here).
    assert expect.desired_count == expect_of(stack_file_state(overridden)).desired_count + 1
    for check in (
        test_repository_is_immutable_scanned_and_encrypted,
        test_repository_policy_admits_only_this_environment,
        test_task_definition_is_locked_down,
        test_database_task_is_locked_down,
        test_execution_role_pulls_its_repository_and_writes_its_log_group_only,
        test_migrator_role_reads_only_this_environments_master_secret,
        test_service_runs_in_the_app_subnets_without_public_ip,
        test_migration_runs_the_database_task_before_the_worker,
        test_retention_schedule_runs_the_database_task_in_experiments_only,
    ):
        check(overridden, expect)


def test_flag_values_follow_the_config(overridden: StackState) -> None:
    expect = expect_of(overridden)
    production = expect.facts.production
    check_flags(overridden, expect)
    # Spelled out rather than derived: the file's experimental flags, given a value against
    # their tier's default, and one new flag of each kind.
    file_flags = _value(PROJECT.stack_config(overridden.stack), "envfence:flags", {})
    experimental = [name for name, spec in file_flags.items() if spec.get("experimental")]
    assert experimental
    content = json.loads(only(overridden.of_type(VERSION), "hosted version").inputs["content"])
    values = {name: default_status(value) for name, value in content["values"].items()}
    assert {name: values[name] for name in experimental} == dict.fromkeys(experimental, False)
    for name in experimental:  # a stopped experiment: no variant is on
        variants = content["values"][name].get("_variants", [])
        assert not any(v["enabled"] for v in variants), name
    assert any(content["values"][n].get("_variants") for n in experimental) is production
    assert {k: values[k] for k in ("fresh_experimental", "stable", "forced_on")} == {
        "fresh_experimental": not production,
        "stable": False,
        "forced_on": True,
    }


def test_alert_subscriptions_follow_the_config(overridden: StackState) -> None:
    expect = expect_of(overridden)
    check_alert_subscriptions(overridden, expect)


def test_plan_shows_a_configured_expiry(
    overridden: StackState, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expect = expect_of(overridden)
    assert bool(expect.expires_on) is (not expect.facts.production)
    check_plan_shows_expiry(overridden, expect, monkeypatch, capsys)


# -- isolation invariants for the new resources ------------------------------------------------

# What names a resource of each new type, and the name's owner must be the stack itself.
NAMES = {
    QUEUE: "name",
    REPOSITORY: "name",
    CLUSTER: "name",
    TASK: "family",
    SERVICE: "name",
    APP: "name",
    STRATEGY: "name",
    TRAIL: "name",
    TOPIC: "name",
    ALARM: "name",
    LOG_GROUP: "name",
}
# Names AWS keeps unique only inside their application: the application is part of the name.
SCOPED = {APP_ENV: "applicationId", PROFILE: "applicationId"}
NEW_TYPES = (
    *NAMES,
    *SCOPED,
    QUEUE_POLICY,
    REPOSITORY_POLICY,
    ECR_LIFECYCLE,
    IMAGE,
    VERSION,
    DEPLOYMENT,
    OBJECT_LOCK,
    METRIC_FILTER,
    SUBSCRIPTION,
    SCHEDULE,  # experiments only
    MIGRATION,
)
KEY_INPUTS = ("kmsMasterKeyId", "kmsKeyId", "kmsKey")


def new_resources(state: StackState) -> list[Resource]:
    audit = bucket_of(state, expect_of(state).audit_bucket)
    return [r for r in state.resources if r.type in NEW_TYPES or r is audit or r.id == audit.id]


def identifiers(state: StackState) -> dict[str, str]:
    """Every name, id, ARN and URL of the new resources, mapped to the resource."""
    out: dict[str, str] = {}
    for r in new_resources(state):
        where = f"{r.type} {r.name}"
        for key in ("name", "family", "bucket"):
            value = r.inputs.get(key)
            if isinstance(value, str):
                scope = r.inputs.get(SCOPED[r.type]) if r.type in SCOPED else None
                out[f"{scope}/{value}" if scope else value] = f"{where}.{key}"
        for key in ("arn", "url", "repositoryUrl", "repoDigest"):
            if isinstance(r.outputs.get(key), str):
                out[r.outputs[key]] = f"{where}.{key}"
        if r.id and not r.type.startswith("aws:s3/bucket"):  # a bucket's parts carry its id
            out[r.id] = f"{where} id"
    return out


def test_new_resources_carry_their_own_stack_name(state: StackState, expect: Expect) -> None:
    f = expect.facts
    for type_, key in NAMES.items():
        resources = state.of_type(type_)
        assert resources, type_
        for r in resources:
            name = r.inputs[key]
            if type_ == LOG_GROUP:
                assert name.startswith((f"/{f.project}/{f.stack}/", expect.rds_log_group)), name
            else:
                assert owner_of(name, f.project) == f.stack, (type_, name)
            parts = arn(r).split(":", 5)
            assert (parts[3], parts[4]) == (f.region, f.account), arn(r)
            for token in re.findall(rf"{f.project}-[a-z0-9-]*[a-z0-9]", parts[5]):
                assert owner_of(token, f.project) == f.stack, arn(r)
    # AppConfig ARNs carry ids, not names: everything lives in this stack's application.
    app = only(state.of_type(APP), "AppConfig application")
    for r in state.of_type(APP_ENV, PROFILE, VERSION, DEPLOYMENT):
        assert r.inputs["applicationId"] == app.id, r.name
        assert arn(r).startswith(f"{arn(app)}/"), arn(r)
    # Every key a new resource is encrypted with is this stack's own.
    keys = {r.inputs[k] for r in new_resources(state) for k in KEY_INPUTS if k in r.inputs}
    assert keys == {arn(key_of(state))}


def test_new_resources_name_nothing_of_another_stack(
    state: StackState, stacks: dict[str, StackState]
) -> None:
    f = facts_of(state)
    others = [s for name, s in stacks.items() if name != state.stack]
    assert others
    foreign_accounts = {facts_of(o).account for o in others} - {f.account}
    foreign = {i: w for o in others for i, w in identifiers(o).items()}
    foreign |= {arn(key_of(o)): f"key of {o.stack}" for o in others}
    problems = []
    for r in new_resources(state):
        for text in strings([r.inputs, r.outputs]):
            if text in foreign:
                problems.append(f"{r.name}: {text} is {foreign[text]}")
            for token in re.findall(rf"{f.project}-[a-z0-9-]*[a-z0-9]", text):
                if owner_of(token, f.project) not in (f.stack, None):
                    problems.append(f"{r.name}: names {token}")
            for path in re.findall(rf"/{f.project}/([a-z0-9-]+)/", text):
                if path != f.stack:
                    problems.append(f"{r.name}: names /{f.project}/{path}/")
            problems += [f"{r.name}: account {a} in {text}" for a in foreign_accounts if a in text]
    assert problems == []


def test_no_new_resource_is_shared_between_stacks(stacks: dict[str, StackState]) -> None:
    by_stack = {name: identifiers(s) for name, s in stacks.items()}
    for name, ids in by_stack.items():
        kinds = {w.split(" ")[0] for w in ids.values()}
        assert set(NAMES) | set(SCOPED) <= kinds, (name, set(NAMES) - kinds)
    for (a, ids_a), (b, ids_b) in itertools.combinations(by_stack.items(), 2):
        shared = {i: (ids_a[i], ids_b[i]) for i in set(ids_a) & set(ids_b)}
        assert shared == {}, f"{a} and {b} share {shared}"
        # Nor does either stack's program name the other's (substrings: ARNs inside policies).
        long_a = [i for i in ids_a if len(i) >= 20]
        long_b = [i for i in ids_b if len(i) >= 20]
        text_a = json.dumps([r.inputs for r in stacks[a].resources])
        text_b = json.dumps([r.inputs for r in stacks[b].resources])
        assert [i for i in long_a if i in text_b] == []
        assert [i for i in long_b if i in text_a] == []
