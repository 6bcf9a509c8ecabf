"""Controls that are real requests: what must work in each environment, decided as AWS decides.

A control fails the proof when the access it names is not there; unlike the encoding controls
of `envfence.prove.iam_proof` (which ask the solvers whether *some* request is allowed), every
control here is one concrete request, shaped as AWS receives it, decided by the concrete
evaluator through the whole path (identity policy, permissions boundary, resource policy, the
VPC endpoint policy on the way, the key policy for a KMS call a service makes for the caller).

Four groups, per environment:

- **worker**: the worker's request contract (`app/request-contract.json`, recorded from its
  real boto3 calls) instantiated with the environment's task definition, translated by
  `envfence.prove.translate`.
- **job**: what no recorded call covers: the pipeline's and the analysts' jobs, each as a
  concrete call through the same translation.
- **service**: what AWS services must be allowed to do on the environment's key, buckets and
  roles, with the request context each service documents (CloudTrail, CloudWatch Logs, VPC flow
  logs, CloudWatch alarms, ECS task execution). CloudTrail's are expected of the stack that owns
  its account's trail (the registry's `accountBaseline`) only: another stack of the account has
  no trail, audit bucket, trail role or trail log group, and its data events reach the owner's
  trail (rule EF701 checks that they do).
- **deployer**: what the provider calls as the deployer on every resource whose own policy can
  lock it out (key, buckets, queues, repository), the key uses AWS services make on its behalf;
  and, in production, what the deployer must *not* be able to do (read or write data, decrypt
  outside a service's use, read the database's master password).

Nothing is skipped: a name the stack does not declare, a policy that cannot be read, a call
without a translation makes its control fail, with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envfence import iam, naming
from envfence.model import UNKNOWN, Resource, StackState
from envfence.project import ProjectFileError, load_project
from envfence.prove import contract, translate
from envfence.prove.query import role_target
from envfence.prove.requests import ContextValue, RealRequest, UnknownTarget, decide
from envfence.prove.translate import Call, Site, Unresolved, Untranslated
from envfence.prove.world import ANY, Target, World
from envfence.registry import RegistryError
from envfence.rules import classify
from envfence.rules.context import provider_account, provider_tags
from envfence.rules.providers import aws

_T = classify.token
WORKER, JOB, SERVICE, DEPLOYER = "worker", "job", "service", "deployer"
GROUPS = (WORKER, JOB, SERVICE, DEPLOYER)
TITLES = {
    WORKER: "the worker's recorded requests",
    JOB: "pipeline and analyst jobs",
    SERVICE: "AWS services",
    DEPLOYER: "the deployer",
}


class Unreadable(ValueError):
    """A value the control needs cannot be read from the state."""


@dataclass(frozen=True)
class Check:
    """One control: requests that must all be allowed, or (`denied`) a chain of requests that
    together make one access, of which at least one must be denied."""

    stack: str
    group: str
    what: str
    requests: tuple[RealRequest, ...]
    denied: bool = False
    targets: Mapping[int, Target] = field(default_factory=dict)  # explicit target by index


@dataclass(frozen=True)
class Result:
    check: Check
    ok: bool
    detail: str

    @property
    def stack(self) -> str:
        return self.check.stack

    @property
    def group(self) -> str:
        return self.check.group

    @property
    def what(self) -> str:
        return self.check.what


def run(checks: Iterable[Check], world: World) -> list[Result]:
    out = []
    for check in checks:
        out.append(_run_one(check, world))
    return out


def _run_one(check: Check, world: World) -> Result:
    outcomes = []
    for i, request in enumerate(check.requests):
        try:
            outcomes.append(decide(world, request, check.targets.get(i)))
        except (UnknownTarget, iam.Unsupported, ValueError) as exc:
            return Result(check, False, f"cannot decide {request.what}: {exc}")
    if check.denied:
        stopped = [o for o in outcomes if not o.allowed]
        if stopped:
            return Result(check, True, f"stopped: {stopped[0].request.action} {stopped[0].reason}")
        return Result(
            check,
            False,
            "ALLOWED: "
            + "; ".join(f"{o.request.action} on {o.request.resource}" for o in outcomes),
        )
    refused = [o for o in outcomes if not o.allowed]
    if refused:
        o = refused[0]
        return Result(
            check, False, f"{o.request.action} on {o.request.resource} DENIED: {o.reason}"
        )
    return Result(check, True, ", ".join(o.request.action for o in outcomes))


def failed(check: Check, problem: str) -> Result:
    return Result(check, False, problem)


# -- reading a state ------------------------------------------------------------------------------


def _json(value: Any, what: str) -> Any:
    seen = 0
    while isinstance(value, str) and seen < 3:
        if UNKNOWN in value:
            raise Unreadable(f"{what} is unknown until deployment")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise Unreadable(f"{what} is not valid JSON") from None
        seen += 1
    return value


def _text(r: Resource, key: str) -> str:
    value = r.get(key)
    if value == UNKNOWN:
        raise Unreadable(f"{key} of {r.name} ({r.type}) is unknown until deployment")
    if not isinstance(value, str) or not value:
        raise Unreadable(f"{r.name} ({r.type}) has no {key}")
    return value


def _tags(defaults: Mapping[str, str], r: Resource) -> dict[str, str]:
    """The tags AWS holds for `r`: the provider's default tags, then its own."""
    own = r.get("tags")
    return {
        str(k): str(v) for k, v in {**defaults, **(own if isinstance(own, dict) else {})}.items()
    }


def containers(r: Resource) -> list[dict[str, Any]]:
    found = _json(r.get("containerDefinitions"), f"containerDefinitions of {r.name}")
    if not isinstance(found, list):
        raise Unreadable(f"containerDefinitions of {r.name} is not a list")
    return [c for c in found if isinstance(c, dict)]


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {
        str(e["name"]): str(e.get("value", ""))
        for e in container.get("environment") or []
        if isinstance(e, dict) and "name" in e
    }


class StackView:
    """What the controls need from one stack's state, read once."""

    def __init__(self, state: StackState, world: World, deployer: str | None = None) -> None:
        self.state = state
        self.stack = state.stack
        account, region = provider_account(state)
        if not account or not region:
            raise Unreadable(f"stack {state.stack}: the AWS provider names no account or region")
        self.account, self.region = account, region
        self.world = world
        self.default_tags = provider_tags(state)
        self._site: Site | None = None
        # The deployer as the rules read it (the stack's config, or the repository's stack file
        # for a `pulumi stack export`, which carries no config).
        self.deployer = deployer

    def one(self, type_: str, name: str | None = None) -> Resource:
        found = [r for r in self.state.of_type(type_) if name is None or r.name == name]
        if len(found) != 1:
            raise Unreadable(
                f"stack {self.stack} declares {len(found)} {type_}"
                + (f" named {name}" if name else "")
            )
        return found[0]

    def all(self, type_: str) -> list[Resource]:
        return self.state.of_type(type_)

    def policy(self, r: Resource, key: str = "policy") -> iam.Policy | None:
        raw = r.get(key)
        if raw in (None, ""):
            return None
        doc = _json(raw, f"{key} of {r.name} ({r.type})")
        if not isinstance(doc, dict):
            raise Unreadable(f"{key} of {r.name} ({r.type}) is not a policy document")
        return iam.Policy(doc, f"{r.name} {key}")

    def role(self, arn: str) -> str:
        if arn not in self.world.roles:
            raise Unreadable(f"role {arn} is no role of any stack")
        return arn

    def site(self, principal: str, *, in_vpc: bool = True) -> Site:
        """What the calls of `principal` resolve to; outside the VPC no endpoint is on the way."""
        if self._site is None:
            self._site = self._resolve()
        return dataclasses.replace(
            self._site, principal=principal, endpoints=self._site.endpoints if in_vpc else {}
        )

    def _resolve(self) -> Site:
        site = Site(self.stack, self.region, self.account, "")
        for key in self.all(_T(aws.kms.Key)):
            site.key_tags[_text(key, "arn")] = _tags(self.default_tags, key)
        keys = {_text(k, "keyId"): _text(k, "arn") for k in self.all(_T(aws.kms.Key))}

        def key_arn(value: object) -> str | None:
            if not isinstance(value, str) or not value:
                return None
            return keys.get(value, value)

        encryption = {}
        for r in self.all(_T(aws.s3.BucketServerSideEncryptionConfiguration)) + self.all(
            _T(aws.s3.BucketServerSideEncryptionConfigurationV2)
        ):
            rules = r.get("rules") or []
            rule = rules[0] if isinstance(rules, list) and rules else {}
            default = rule.get("applyServerSideEncryptionByDefault") or {}
            encryption[_text(r, "bucket")] = (
                key_arn(default.get("kmsMasterKeyId"))
                if default.get("sseAlgorithm") in ("aws:kms", "aws:kms:dsse")
                else None,
                bool(rule.get("bucketKeyEnabled")),
            )
        for b in self.all(_T(aws.s3.Bucket)):
            name = _text(b, "bucket")
            default_key, bucket_key = encryption.get(name, (None, False))
            site.buckets[name] = translate.Bucket(_text(b, "arn"), default_key, bucket_key)
        for q in self.all(_T(aws.sqs.Queue)):
            site.queues[_text(q, "url")] = translate.Queue(
                _text(q, "arn"), key_arn(q.get("kmsMasterKeyId")), _tags(self.default_tags, q)
            )
        for db in self.all(_T(aws.rds.Instance)):
            site.databases[_text(db, "address")] = translate.Database(
                _text(db, "arn"), _text(db, "resourceId")
            )
        apps = {_text(a, "id"): a for a in self.all(_T(aws.appconfig.Application))}
        for p in self.all(_T(aws.appconfig.ConfigurationProfile)):
            app_id = _text(p, "applicationId")
            app = apps.get(app_id)
            for e in self.all(_T(aws.appconfig.Environment)):
                if _text(e, "applicationId") != app_id:
                    continue
                env_id, profile_id = _text(e, "environmentId"), _text(p, "configurationProfileId")
                arn = (
                    f"arn:aws:appconfig:{self.region}:{self.account}:application/{app_id}"
                    f"/environment/{env_id}/configuration/{profile_id}"
                )
                config = translate.Configuration(arn, _tags(self.default_tags, p))
                names = (
                    str(app.get("name")) if app else app_id,
                    _text(e, "name"),
                    _text(p, "name"),
                )
                site.configurations[(app_id, env_id, profile_id)] = config
                site.configurations[names] = config
        for ep in self.all(_T(aws.ec2.VpcEndpoint)):
            service = _text(ep, "serviceName").split(f".{self.region}.", 1)[-1]
            site.endpoints[service] = translate.Endpoint(
                _text(ep, "id"), _text(ep, "vpcId"), self.policy(ep)
            )
        return site


def _anything(view: StackView) -> Target:
    """The target of a resourceless action (`Resource: *` in the SAR)."""
    return Target(view.stack, "", "resourceless", "*", (("*",),), view.account, {}, None)


# -- the groups -----------------------------------------------------------------------------------


def worker_checks(view: StackView, found: contract.Contract) -> list[Check | Result]:
    placeholder = Check(view.stack, WORKER, f"{view.stack}: the worker's requests", ())
    try:  # the project's worker (app/ of the checkout, on the path: see `checks`)
        from app.worker.config import ConfigError, load_config
    except ImportError as exc:
        return [failed(placeholder, f"the worker's code (app/worker/config.py) is missing: {exc}")]

    tasks = [
        t
        for t in view.all(_T(aws.ecs.TaskDefinition))
        if any("QUEUE_URL" in _env(c) for c in containers(t))
    ]
    if len(tasks) != 1:
        return [failed(placeholder, f"{len(tasks)} worker task definitions (expected 1)")]
    task = tasks[0]
    try:
        config = load_config(_env(next(c for c in containers(task) if "QUEUE_URL" in _env(c))))
    except ConfigError as exc:
        return [failed(placeholder, f"the worker would refuse its task's configuration: {exc}")]
    scenario = found.scenarios.get(config.identity.tier)
    if scenario is None:
        return [failed(placeholder, f"the contract has no {config.identity.tier} scenario")]
    role = _text(task, "taskRoleArn")
    site = view.site(role)
    calls = contract.instantiate(scenario, config.variables())
    return _call_checks(view, WORKER, site, calls, lambda call: f"worker {call.name}")


def _call_checks(
    view: StackView, group: str, site: Site, calls: Sequence[Call], label: Callable[[Call], str]
) -> list[Check | Result]:
    """One control per call: the IAM requests it makes, or why it cannot be translated. The
    calls share one session (a call may name what an earlier one started)."""
    out: list[Check | Result] = []
    session: dict[str, Any] = {}
    for call in calls:
        what = f"{view.stack}: {label(call)}"
        try:
            requests = translate.translate([call], site, session)
        except (Unresolved, Untranslated) as exc:
            out.append(failed(Check(view.stack, group, what, ()), str(exc)))
            continue
        out.append(Check(view.stack, group, what, tuple(requests)))
    return out


def _role_arn(view: StackView, kind: str) -> str:
    name = naming.role_name(view.state.project, view.stack, kind)
    for role in view.world.roles_of(view.stack):
        if role.name == name:
            return role.arn
    raise Unreadable(f"stack {view.stack} has no {kind} role ({name})")


def job_checks(view: StackView) -> list[Check | Result]:
    """The pipeline's and the analysts' jobs: concrete calls, the same translation. The
    pipeline runs in the environment's VPC (its endpoints on the way); analysts work from
    outside it (no VPC keys, no endpoint)."""
    queue = next((q for q in view.all(_T(aws.sqs.Queue)) if q.name == "ingest"), None)
    stores = {
        str(_tags(view.default_tags, b).get("data-store")): _text(b, "bucket")
        for b in view.all(_T(aws.s3.Bucket))
    }
    db = view.one(_T(aws.rds.Instance))
    host = _text(db, "address")
    jobs: dict[str, list[Call]] = {
        "pipeline": [
            Call("rds-db", "connect", {"DBHostname": host, "DBUsername": "worker"}),
        ],
        "analyst": [
            Call("rds-db", "connect", {"DBHostname": host, "DBUsername": "analyst"}),
        ],
    }
    if queue is not None:
        jobs["pipeline"].insert(0, Call("sqs", "SendMessage", {"QueueUrl": _text(queue, "url")}))
    if "raw" in stores:
        jobs["pipeline"].append(
            Call("s3", "GetObject", {"Bucket": stores["raw"], "Key": "raw/x/m-1.json"})
        )
    for store in ("curated", "results"):
        if store in stores:
            jobs["pipeline"].append(
                Call("s3", "PutObject", {"Bucket": stores[store], "Key": f"{store}/run-1/part-0"})
            )
            jobs["analyst"].append(
                Call("s3", "GetObject", {"Bucket": stores[store], "Key": f"{store}/run-1/part-0"})
            )
    if "curated" in stores and "results" in stores:
        jobs["pipeline"] += pipeline_run_calls(stores["curated"], stores["results"], view.stack)
    out: list[Check | Result] = []
    for kind, calls in jobs.items():
        site = view.site(_role_arn(view, kind), in_vpc=kind == "pipeline")
        out += _call_checks(view, JOB, site, calls, functools.partial(_job_label, kind))
    return out


def pipeline_run_calls(curated: str, results: str, stack: str) -> list[Call]:
    """A pipeline run (app/worker/run.py) as it calls S3: list and read the curated store,
    write the flag set, the results and last the manifest, each never over an existing object
    (If-None-Match), with provenance metadata (no tags); its replay reads the manifest, the
    inputs and the flag set at their recorded versions.
    tests/test_pipeline_runs.py records the run's real calls and holds them to these."""
    return [
        Call("s3", "ListObjectsV2", {"Bucket": curated, "Prefix": "datasets/v1/"}),
        Call("s3", "GetObject", {"Bucket": curated, "Key": "datasets/v1/part-1.jsonl"}),
        Call(
            "s3",
            "GetObject",
            {"Bucket": curated, "Key": "datasets/v1/part-1.jsonl", "VersionId": "v1"},
        ),
        # replay: the manifest, then the flag set the run evaluated, at its recorded version
        Call("s3", "GetObject", {"Bucket": results, "Key": "runs/r1/manifest.json"}),
        Call(
            "s3",
            "GetObject",
            {"Bucket": results, "Key": "runs/r1/flag-set.json", "VersionId": "v1"},
        ),
        Call(
            "s3",
            "PutObject",
            {
                "Bucket": results,
                "Key": "runs/r1/results.json",
                "Body": b"{}",
                "ContentType": "application/json",
                "Metadata": {"environment": stack},
                "IfNoneMatch": "*",
            },
        ),
        Call(
            "s3",
            "PutObject",
            {
                "Bucket": results,
                "Key": "runs/r1/manifest.json",
                "Body": b"{}",
                "ContentType": "application/json",
                "Metadata": {"environment": stack},
                "IfNoneMatch": "*",
            },
        ),
    ]


def _job_label(kind: str, call: Call) -> str:
    return f"{kind} {call.name} {call.params.get('Bucket', '')}".rstrip()


def _service(
    view: StackView,
    what: str,
    requests: Sequence[RealRequest],
    targets: Mapping[int, Target] | None = None,
) -> Check:
    """A service control; `targets` names the target of a request (by index) that is no data
    resource: a role's trust policy, a resourceless action."""
    return Check(
        view.stack, SERVICE, f"{view.stack}: {what}", tuple(requests), targets=dict(targets or {})
    )


CT_S3 = "https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-s3-bucket-policy-for-cloudtrail.html"
CT_KMS = "https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-kms-key-policy-for-cloudtrail.html"
CT_CWL = "https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-required-policy-for-cloudwatch-logs.html"
LOGS_KMS = "https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/encrypt-log-data-kms.html"
FLOW = "https://docs.aws.amazon.com/vpc/latest/userguide/flow-logs-iam-role.html"
ALARM_KMS = "https://repost.aws/knowledge-center/cloudwatch-configure-alarm-sns"
ECS_EXEC = (
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_execution_IAM_role.html"
)
ECR_VPCE = "https://docs.aws.amazon.com/AmazonECR/latest/userguide/vpc-endpoints.html"
ECS_SECRETS = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/secrets-envvar-secrets-manager.html"
SM_KMS = "https://docs.aws.amazon.com/secretsmanager/latest/userguide/security-encryption.html"
SCHEDULER_KMS = "https://docs.aws.amazon.com/scheduler/latest/UserGuide/encryption-rest.html"


def schedule_arn(view: StackView, schedule: Resource) -> str:
    """A schedule's ARN as AWS forms it (`schedule/<group>/<name>`, the default group when none
    is named): the encryption context of the KMS calls for its payload (SCHEDULER_KMS)."""
    group = schedule.get("groupName") or "default"
    name = _text(schedule, "name")
    return f"arn:aws:scheduler:{view.region}:{view.account}:schedule/{group}/{name}"


def encrypted_schedules(view: StackView) -> list[tuple[Resource, str]]:
    """The stack's schedules whose payload is under a customer managed key, with that key."""
    return [
        (schedule, _text(schedule, "kmsKeyArn"))
        for schedule in view.all(_T(aws.scheduler.Schedule))
        if schedule.get("kmsKeyArn")
    ]


def _assume(
    view: StackView, service: str, role_arn: str, context: dict[str, Any], source: str
) -> tuple[RealRequest, Target]:
    """A service principal assuming a service role: the role's trust policy decides."""
    role = view.world.roles.get(role_arn)
    if role is None:
        raise Unreadable(f"role {role_arn} is no role of any stack")
    target = role_target(role)
    return RealRequest(
        f"{service} assumes {role.name}", service, "sts:AssumeRole", role.arn, context, source
    ), target


def service_checks(view: StackView, owns_trail: bool | None = None) -> list[Check | Result]:
    """`owns_trail`: whether the stack owns its account's trail (the registry's baseline); None
    when no registry says (every stack is then held to the trails it declares)."""
    out: list[Check | Result] = []
    acct, region = view.account, view.region
    key = view.one(_T(aws.kms.Key), ENV_KEY)
    key_arn = _text(key, "arn")

    def guard(what: str, build: Any) -> None:
        try:
            out.append(build())
        except (Unreadable, Unresolved) as exc:
            out.append(failed(Check(view.stack, SERVICE, f"{view.stack}: {what}", ()), str(exc)))

    # CloudTrail: the bucket and the key, with the trail's source ARN. The account's trail is
    # its owner's: the owner must declare it (else nothing of the account is recorded), and a
    # stack that does not own it expects none. A trail a stack declares anyway is still held
    # to what CloudTrail needs (EF701 reports that it should not be there).
    trails = view.all(_T(aws.cloudtrail.Trail))
    if owns_trail and not trails:
        out.append(
            failed(
                _service(view, "CloudTrail writes the trail to its bucket with the key", []),
                f"stack {view.stack} owns account {acct}'s trail (registry accountBaseline) "
                "but declares none",
            )
        )
    for trail in trails:

        def trail_checks(trail: Resource = trail) -> Check:
            arn = _text(trail, "arn")
            bucket = _text(trail, "s3BucketName")
            prefix = str(trail.get("s3KeyPrefix") or "")
            source: dict[str, ContextValue] = {
                "aws:SourceArn": arn,
                "aws:SourceAccount": acct,
                "aws:SecureTransport": True,
            }
            folder = f"{prefix}/" if prefix else ""
            obj = (
                f"arn:aws:s3:::{bucket}/{folder}AWSLogs/{acct}/CloudTrail/{region}/"
                "2026/12/02/x.json.gz"
            )
            ct = "cloudtrail.amazonaws.com"
            requests = [
                RealRequest(
                    "GetBucketAcl", ct, "s3:GetBucketAcl", f"arn:aws:s3:::{bucket}", source, CT_S3
                ),
                RealRequest(
                    "PutObject",
                    ct,
                    "s3:PutObject",
                    obj,
                    {**source, "s3:x-amz-acl": "bucket-owner-full-control"},
                    CT_S3,
                ),
            ]
            trail_key = trail.get("kmsKeyId")
            if trail_key:
                requests += [
                    RealRequest(
                        "GenerateDataKey",
                        ct,
                        "kms:GenerateDataKey",
                        key_arn,
                        {**source, "kms:EncryptionContext:aws:cloudtrail:arn": arn},
                        CT_KMS,
                    ),
                    RealRequest("DescribeKey", ct, "kms:DescribeKey", key_arn, source, CT_KMS),
                    RealRequest("Decrypt (bucket key)", ct, "kms:Decrypt", key_arn, source, CT_KMS),
                ]
            return _service(
                view, "CloudTrail writes the trail to its bucket with the key", requests
            )

        guard("CloudTrail writes the trail", trail_checks)

        def trail_logs(trail: Resource = trail) -> Check:
            role_arn = _text(trail, "cloudWatchLogsRoleArn")
            group = _text(trail, "cloudWatchLogsGroupArn").removesuffix(":*")
            # Whether CloudTrail sends aws:SourceArn/SourceAccount when it assumes this role is
            # not documented: both readings must be allowed.
            sourced: dict[str, ContextValue] = {
                "aws:SecureTransport": True,
                "aws:SourceArn": _text(trail, "arn"),
                "aws:SourceAccount": acct,
            }
            assume, target = _assume(view, "cloudtrail.amazonaws.com", role_arn, sourced, CT_CWL)
            bare, _ = _assume(
                view, "cloudtrail.amazonaws.com", role_arn, {"aws:SecureTransport": True}, CT_CWL
            )
            stream = f"{group}:log-stream:{acct}_CloudTrail_{region}_1"
            return _service(
                view,
                "CloudTrail delivers to its log group",
                [
                    assume,
                    bare,
                    RealRequest(
                        "CreateLogStream",
                        role_arn,
                        "logs:CreateLogStream",
                        stream,
                        {"aws:SecureTransport": True},
                        CT_CWL,
                    ),
                    RealRequest(
                        "PutLogEvents",
                        role_arn,
                        "logs:PutLogEvents",
                        stream,
                        {"aws:SecureTransport": True},
                        CT_CWL,
                    ),
                ],
                {0: target, 1: target},
            )

        if trail.get("cloudWatchLogsRoleArn"):
            guard("CloudTrail delivers to its log group", trail_logs)

    # CloudWatch Logs encrypts every group that names the key, with the group as context.
    for group in view.all(_T(aws.cloudwatch.LogGroup)):
        if not group.get("kmsKeyId"):
            continue

        def logs_key(group: Resource = group) -> Check:
            arn = _text(group, "arn").removesuffix(":*")
            principal = f"logs.{region}.amazonaws.com"
            context: dict[str, ContextValue] = {
                "kms:EncryptionContext:aws:logs:arn": arn,
                "aws:SecureTransport": True,
            }
            return _service(
                view,
                f"CloudWatch Logs encrypts {_text(group, 'name')}",
                [
                    RealRequest(a, principal, a, key_arn, context, LOGS_KMS)
                    # The data calls AWS's key-policy statement for Logs is written for, all
                    # with the group's ARN as context. (DescribeKey carries no encryption
                    # context, so AWS's own statement could never allow it: not modelled.)
                    for a in ("kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt")
                ],
            )

        guard(f"CloudWatch Logs encrypts {group.name}", logs_key)

    # VPC flow logs: the service assumes its role, the role writes the group.
    for flow in view.all(_T(aws.ec2.FlowLog)):

        def flow_checks(flow: Resource = flow) -> Check:
            role_arn = _text(flow, "iamRoleArn")
            context: dict[str, ContextValue] = {
                "aws:SourceAccount": acct,
                "aws:SourceArn": _text(flow, "arn"),
                "aws:SecureTransport": True,
            }
            assume, target = _assume(view, "vpc-flow-logs.amazonaws.com", role_arn, context, FLOW)
            stream = f"{_text(flow, 'logDestination').removesuffix(':*')}:log-stream:eni-0abc-all"
            return _service(
                view,
                "VPC flow logs reach their group",
                [
                    assume,
                    RealRequest(
                        "CreateLogStream",
                        role_arn,
                        "logs:CreateLogStream",
                        stream,
                        {"aws:SecureTransport": True},
                        FLOW,
                    ),
                    RealRequest(
                        "PutLogEvents",
                        role_arn,
                        "logs:PutLogEvents",
                        stream,
                        {"aws:SecureTransport": True},
                        FLOW,
                    ),
                ],
                {0: target},
            )

        guard("VPC flow logs reach their group", flow_checks)

    # CloudWatch alarms publish to the encrypted topic: the service uses the topic's key.
    # (sns:Publish itself is allowed by the topic's default policy, which no stack declares.)
    for topic in view.all(_T(aws.sns.Topic)):
        if topic.get("kmsMasterKeyId"):

            def alarm_checks(topic: Resource = topic) -> Check:
                cw = "cloudwatch.amazonaws.com"
                return _service(
                    view,
                    f"CloudWatch alarms encrypt messages for {_text(topic, 'name')}",
                    [
                        RealRequest(a, cw, a, key_arn, {}, ALARM_KMS)
                        for a in ("kms:GenerateDataKey", "kms:Decrypt")
                    ],
                )

            guard("CloudWatch alarms use the topic's key", alarm_checks)

    # ECS task execution: image pull (token, layers through the endpoints), logs, secrets.
    for task in view.all(_T(aws.ecs.TaskDefinition)):

        def exec_checks(task: Resource = task) -> Check:
            role = _text(task, "executionRoleArn")
            site = view.site(role)
            # The registry token: through a Fargate-owned interface (ECS guide) or, on the
            # other reading, through the environment's ecr.api endpoint: both must work.
            api, api_endpoint = translate.network_context(site, "ecr.api")
            requests: list[RealRequest] = [
                RealRequest(
                    "registry token",
                    role,
                    "ecr:GetAuthorizationToken",
                    "*",
                    {"aws:SecureTransport": True, "aws:ViaAWSService": False},
                    ECS_EXEC,
                ),
                RealRequest(
                    "registry token (through ecr.api)",
                    role,
                    "ecr:GetAuthorizationToken",
                    "*",
                    api,
                    ECS_EXEC,
                    api_endpoint,
                ),
            ]
            targets: dict[int, Target] = {0: _anything(view), 1: _anything(view)}
            for c in containers(task):
                image = str(c.get("image", ""))
                repo_name = image.split("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
                repo = next(
                    (r for r in view.all(_T(aws.ecr.Repository)) if r.get("name") == repo_name),
                    None,
                )
                if repo is None:
                    raise Unreadable(f"image {image} is in no repository of stack {view.stack}")
                # The pull: the registry API (ecr.dkr) by the ECR guide; ECR recommends one
                # policy on both endpoints, so both are evaluated.
                for service in ("ecr.dkr", "ecr.api"):
                    network, endpoint = translate.network_context(site, service)
                    for k, v in _tags(view.default_tags, repo).items():
                        network[f"aws:ResourceTag/{k}"] = v
                    for action in (
                        "ecr:BatchCheckLayerAvailability",
                        "ecr:GetDownloadUrlForLayer",
                        "ecr:BatchGetImage",
                    ):
                        requests.append(
                            RealRequest(
                                f"{action} (through {service})",
                                role,
                                action,
                                _text(repo, "arn"),
                                network,
                                ECS_EXEC,
                                endpoint,
                            )
                        )
                # The layers themselves come from ECR's bucket through the S3 gateway endpoint,
                # on a URL ECR presigns: the endpoint's policy is the only one of ours on that
                # path (the signer is ECR's, the bucket AWS's; both taken as allowing).
                layers = f"arn:aws:s3:::prod-{region}-starport-layer-bucket"
                network, endpoint = translate.network_context(site, "s3")
                requests.append(
                    RealRequest(
                        "layer download (presigned by ECR)",
                        LAYER_SIGNER,
                        "s3:GetObject",
                        f"{layers}/sha256/0123",
                        network,
                        ECR_VPCE,
                        endpoint,
                    )
                )
                targets[len(requests) - 1] = Target(
                    view.stack, "", "aws:s3/bucket:Bucket", "ECR layers", ((layers + "/", ANY),),
                    "", {}, iam.Policy(OPEN_BUCKET, "AWS-owned layer bucket (taken as open)"),
                )  # fmt: skip
                options = (c.get("logConfiguration") or {}).get("options") or {}
                group = options.get("awslogs-group")
                if group:
                    prefix = options.get("awslogs-stream-prefix", "x")
                    stream = (
                        f"arn:aws:logs:{region}:{acct}:log-group:{group}:log-stream:{prefix}/c/1"
                    )
                    network, endpoint = translate.network_context(site, "logs")
                    for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
                        requests.append(
                            RealRequest(action, role, action, stream, network, ECS_EXEC, endpoint)
                        )
                for secret in c.get("secrets") or []:
                    ref = str(secret.get("valueFrom", ""))
                    arn = ":".join(ref.split(":")[:7])
                    network, endpoint = translate.network_context(site, "secretsmanager")
                    requests.append(
                        RealRequest(
                            "GetSecretValue",
                            role,
                            "secretsmanager:GetSecretValue",
                            arn,
                            network,
                            ECS_SECRETS,
                            endpoint,
                        )
                    )
                    targets[len(requests) - 1] = _secret_target(view, arn)
                    context: dict[str, ContextValue] = {
                        "aws:SecureTransport": True,
                        "aws:ViaAWSService": True,
                        "kms:CallerAccount": acct,
                        "kms:ViaService": f"secretsmanager.{region}.amazonaws.com",
                        "kms:EncryptionContext:SecretARN": arn,
                        "kms:EncryptionContext:SecretVersionId": "EXAMPLE1-90ab-cdef-fedc",
                    }
                    requests.append(
                        RealRequest(
                            "Secrets Manager decrypts",
                            role,
                            "kms:Decrypt",
                            key_arn,
                            context,
                            SM_KMS,
                        )
                    )
            return _service(
                view,
                f"ECS starts {_text(task, 'family')} (pull, logs, secrets)",
                requests,
                targets,
            )

        guard(f"ECS starts {task.name}", exec_checks)

    # EventBridge Scheduler decrypts an encrypted schedule's payload with the schedule's
    # execution role at each invocation (the CloudTrail example of SCHEDULER_KMS: the role's
    # own session, the schedule's ARN as encryption context). Whether KMS sees
    # kms:ViaService on that call is not documented: both readings must be allowed.
    for schedule, cmk in encrypted_schedules(view):

        def schedule_checks(schedule: Resource = schedule, cmk: str = cmk) -> Check:
            role = _role_of(schedule)
            context: dict[str, ContextValue] = {
                "aws:SecureTransport": True,
                "aws:ViaAWSService": False,
                "kms:CallerAccount": acct,
                "kms:EncryptionContext:aws:scheduler:schedule:arn": schedule_arn(view, schedule),
            }
            via: dict[str, ContextValue] = {
                **context,
                "aws:ViaAWSService": True,
                "kms:ViaService": f"scheduler.{region}.amazonaws.com",
            }
            name = _text(schedule, "name")
            return _service(
                view,
                f"EventBridge Scheduler decrypts the payload of {name}",
                [
                    RealRequest("payload", role, "kms:Decrypt", cmk, context, SCHEDULER_KMS),
                    RealRequest(
                        "payload (through Scheduler)", role, "kms:Decrypt", cmk, via, SCHEDULER_KMS
                    ),
                ],
            )

        guard(f"EventBridge Scheduler decrypts {schedule.name}", schedule_checks)
    return out


def _role_of(schedule: Resource) -> str:
    target = schedule.get("target")
    role = target.get("roleArn") if isinstance(target, dict) else None
    if not isinstance(role, str) or not role or role == UNKNOWN:
        raise Unreadable(f"{schedule.name} (a schedule) names no execution role")
    return role


# Stand-ins for what is not ours on the image layers' path (see exec_checks).
LAYER_SIGNER = "arn:aws:iam::000000000000:role/ecr-layer-presigner"
OPEN_BUCKET = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}],
}


def _secret_target(view: StackView, arn: str) -> Target:
    policies = [
        view.policy(p)
        for p in view.all(_T(aws.secretsmanager.SecretPolicy))
        if p.get("secretArn") == arn
    ]
    return Target(
        view.stack,
        "",
        "aws:secretsmanager/secret:Secret",
        arn.rsplit(":", 1)[-1],
        ((arn,),),
        view.account,
        {},
        next((p for p in policies if p), None),
    )


# What the provider calls as the deployer. The bucket reads are those of a refresh of
# aws.s3.Bucket and its sub-resources ("Amazon S3 API operations and permissions":
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-with-s3-policy-actions.html;
# HeadBucket is authorized as s3:ListBucket); the key's are what keys.py's ADMIN_ACTIONS names.
BUCKET_CALLS = (
    "s3:ListBucket",
    "s3:GetBucketPolicy",
    "s3:PutBucketPolicy",
    "s3:GetBucketTagging",
    "s3:PutBucketTagging",
    "s3:GetEncryptionConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:GetBucketVersioning",
    "s3:PutBucketVersioning",
    "s3:GetBucketPublicAccessBlock",
    "s3:PutBucketPublicAccessBlock",
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
    "s3:GetBucketOwnershipControls",
    "s3:PutBucketOwnershipControls",
    "s3:GetBucketAcl",
    "s3:GetBucketLocation",
    "s3:GetBucketLogging",
    "s3:GetBucketCORS",
    "s3:GetBucketWebsite",
    "s3:GetReplicationConfiguration",
    "s3:GetBucketRequestPayment",
    "s3:GetAccelerateConfiguration",
    "s3:GetBucketObjectLockConfiguration",
    # pulumi-aws 7.13+ reads and writes bucket tags through the S3 Control tagging API
    # (pulumi/pulumi-aws#6317, hashicorp/terraform-provider-aws#45251)
    "s3:ListTagsForResource",
    "s3:TagResource",
    "s3:UntagResource",
    "s3:CreateBucket",
    "s3:DeleteBucketPolicy",
)
# What `pulumi destroy` of an experiment does to its buckets (forceDestroy empties them first).
DESTROY_CALLS = (
    "s3:ListBucketVersions",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:DeleteBucket",
)
KEY_CALLS = (
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:EnableKeyRotation",
    "kms:ListResourceTags",
    "kms:TagResource",
    "kms:UntagResource",
)
QUEUE_CALLS = (
    "sqs:GetQueueAttributes",
    "sqs:SetQueueAttributes",
    "sqs:ListQueueTags",
    "sqs:TagQueue",
)
REPOSITORY_CALLS = (
    "ecr:DescribeRepositories",
    "ecr:GetRepositoryPolicy",
    "ecr:SetRepositoryPolicy",
    "ecr:ListTagsForResource",
    "ecr:GetLifecyclePolicy",
    "ecr:PutLifecyclePolicy",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:BatchCheckLayerAvailability",
    "ecr:PutImage",
    "ecr:BatchGetImage",
)
# The environment's key is the resource named "key" (infra/components/keys.py); the account's
# archive, in an experiment account's baseline, has a key of its own ("archive-key").
ENV_KEY = "key"
ARCHIVE_KEY = "archive-key"
DEPLOYER_SOURCE = "../shared/docs/notes-real-requests.md sections 2, 10-12"


def deployer_checks(view: StackView, production: bool) -> list[Check | Result]:
    placeholder = Check(view.stack, DEPLOYER, f"{view.stack}: the deployer", ())
    if not isinstance(view.deployer, str) or not view.deployer:
        return [failed(placeholder, "envfence:access.deployer is not set")]
    who, acct, region = view.deployer, view.account, view.region
    base: dict[str, Any] = {"aws:SecureTransport": True, "aws:ViaAWSService": False}
    kms_base = {**base, "kms:CallerAccount": acct}
    key_arn = _text(view.one(_T(aws.kms.Key), ENV_KEY), "arn")

    def req(action: str, resource: str, context: Mapping[str, Any]) -> RealRequest:
        return RealRequest(
            f"deployer {action}", who, action, resource, dict(context), DEPLOYER_SOURCE
        )

    def must(what: str, requests: list[RealRequest]) -> Check:
        return Check(view.stack, DEPLOYER, f"{view.stack}: deployer {what}", tuple(requests))

    via = {
        s: {**kms_base, "kms:ViaService": f"{s}.{region}.amazonaws.com", "aws:ViaAWSService": True}
        for s in ("rds", "ecr", "secretsmanager", "s3")
    }
    secret = f"arn:aws:secretsmanager:{region}:{acct}:secret:rds!db-0123456789ab-cdef0"
    out: list[Check | Result] = [
        must("manages the key", [req(a, key_arn, kms_base) for a in KEY_CALLS]),
        must(
            "creates the encrypted database, its master secret and the repository",
            [
                req("kms:DescribeKey", key_arn, via["rds"]),
                req("kms:CreateGrant", key_arn, via["rds"]),
                req("kms:CreateGrant", key_arn, via["ecr"]),
                req("kms:DescribeKey", key_arn, via["ecr"]),
                req("kms:RetireGrant", key_arn, kms_base),
                # The master secret (Secrets Manager's GenerateDataKey and key-access check).
                # Which service KMS sees for RDS -> Secrets Manager -> KMS is not documented:
                # both readings must be allowed.
                *[
                    req(
                        action,
                        key_arn,
                        {
                            **via[service],
                            "kms:EncryptionContext:SecretARN": secret,
                            "kms:EncryptionContext:SecretVersionId": version,
                        },
                    )
                    for service in ("secretsmanager", "rds")
                    for action, version in (
                        ("kms:GenerateDataKey", "v-1"),
                        ("kms:Decrypt", "RequestToValidateKeyAccess"),
                    )
                ],
            ],
        ),
    ]
    # An encrypted schedule: CreateSchedule/UpdateSchedule encrypt its payload with the
    # caller's permissions, through Scheduler, the schedule's ARN as encryption context
    # (SCHEDULER_KMS; the CreateSchedule/UpdateSchedule examples of "Using identity-based
    # policies in EventBridge Scheduler"). DescribeKey carries no encryption context.
    via_scheduler = {
        **kms_base,
        "aws:ViaAWSService": True,
        "kms:ViaService": f"scheduler.{region}.amazonaws.com",
    }
    for schedule, key in encrypted_schedules(view):
        context = {
            **via_scheduler,
            "kms:EncryptionContext:aws:scheduler:schedule:arn": schedule_arn(view, schedule),
        }
        out.append(
            must(
                f"creates and updates the encrypted schedule {_text(schedule, 'name')}",
                [
                    req("kms:DescribeKey", key, via_scheduler),
                    req("kms:GenerateDataKey", key, context),
                    req("kms:Decrypt", key, context),
                ],
            )
        )
    locked = {_text(r, "bucket") for r in view.all(_T(aws.s3.BucketObjectLockConfiguration))}
    for b in view.all(_T(aws.s3.Bucket)):
        arn, name = _text(b, "arn"), _text(b, "bucket")
        calls = [req(a, arn, base) for a in BUCKET_CALLS]
        if name in locked:
            calls.append(req("s3:PutBucketObjectLockConfiguration", arn, base))
        out.append(must(f"manages bucket {name}", calls))
        # `pulumi destroy` empties (forceDestroy) and deletes an experiment's buckets; a bucket
        # the stack keeps (retainOnDelete, not forceDestroy: the account's archive of concluded
        # experiments, which nobody may delete from) is neither emptied nor deleted.
        if not production and b.get("forceDestroy") in (True, "true") and not b.retain_on_delete:
            out.append(
                must(
                    f"empties and deletes bucket {name} on destroy",
                    [req(a, arn if a.endswith("Bucket") or "List" in a else f"{arn}/x/y.json", base)
                     for a in DESTROY_CALLS],
                )
            )  # fmt: skip
    for q in view.all(_T(aws.sqs.Queue)):
        arn = _text(q, "arn")
        out.append(
            must(f"manages queue {_text(q, 'name')}", [req(a, arn, base) for a in QUEUE_CALLS])
        )
    for r in view.all(_T(aws.ecr.Repository)):
        arn = _text(r, "arn")
        out.append(
            must(
                f"manages and pushes to repository {_text(r, 'name')}",
                [req(a, arn, base) for a in REPOSITORY_CALLS],
            )
        )

    def must_not(
        what: str, requests: list[RealRequest], targets: Mapping[int, Target] | None = None
    ) -> Check:
        return Check(
            view.stack,
            DEPLOYER,
            f"{view.stack}: deployer cannot {what}",
            tuple(requests),
            denied=True,
            targets=dict(targets or {}),
        )

    if not production:
        return out + conclude_checks(view, req, must, must_not, via)

    for b in view.all(_T(aws.s3.Bucket)):
        name = _text(b, "bucket")
        obj = f"{_text(b, 'arn')}/data/x.json"
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            out.append(must_not(f"{action} in {name}", [req(action, obj, base)]))
    out += [
        must_not("decrypt with the key directly", [req("kms:Decrypt", key_arn, kms_base)]),
        must_not("grant itself the key", [req("kms:CreateGrant", key_arn, kms_base)]),
        must_not(
            "decrypt through S3",
            [
                req(
                    "kms:Decrypt",
                    key_arn,
                    {**via["s3"], "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::x"},
                )
            ],
        ),
    ]
    for db in view.all(_T(aws.rds.Instance)):
        secrets = _json(db.get("masterUserSecrets") or "[]", f"masterUserSecrets of {db.name}")
        for s in secrets if isinstance(secrets, list) else []:
            arn = str(s.get("secretArn", ""))
            out.append(
                must_not(
                    "read the database's master password",
                    [
                        req("secretsmanager:GetSecretValue", arn, base),
                        req(
                            "kms:Decrypt",
                            key_arn,
                            {
                                **via["secretsmanager"],
                                "kms:EncryptionContext:SecretARN": arn,
                                "kms:EncryptionContext:SecretVersionId": "EXAMPLE1-90ab-cdef",
                            },
                        ),
                    ],
                    {0: _secret_target(view, arn)},
                )
            )
    return out


CONCLUDE_SOURCE = (
    "envfence/lifecycle.py (archive_results: ListObjectVersions, CopyObject of a pinned "
    "version with TaggingDirective REPLACE, the manifest's Put/GetObject); S3 API_CopyObject"
)


def conclude_checks(
    view: StackView,
    req: Any,
    must: Any,
    must_not: Any,
    via: Mapping[str, Mapping[str, Any]],
) -> list[Check | Result]:
    """`envfence experiment conclude`, run as the deployer: it reads the experiment's `results`
    store and writes the account's archive (the baseline's); nobody deletes from the archive,
    and no role of the baseline's environment reads it."""
    out: list[Check | Result] = []
    base: dict[str, Any] = {"aws:SecureTransport": True, "aws:ViaAWSService": False}
    key_arn = _text(view.one(_T(aws.kms.Key), ENV_KEY), "arn")
    by_store = {
        str(_tags({}, b).get(naming.TAG_DATA_STORE) or ""): b for b in view.all(_T(aws.s3.Bucket))
    }
    results = by_store.get("results")
    if results is not None:
        arn = _text(results, "arn")
        obj = f"{arn}/run-1/summary.json"
        out.append(
            must(
                "reads the results for the archive (experiment conclude)",
                [
                    req("s3:ListBucketVersions", arn, base),
                    req("s3:GetObjectVersion", obj, base),
                    req("s3:GetObject", obj, base),
                    req(
                        "kms:Decrypt",
                        key_arn,
                        {**via["s3"], "kms:EncryptionContext:aws:s3:arn": arn},
                    ),
                ],
            )
        )
    archive = by_store.get("archive")
    if archive is not None:
        arn = _text(archive, "arn")
        obj = f"{arn}/abtest/results/run-1/summary.json"
        kms = {**via["s3"], "kms:EncryptionContext:aws:s3:arn": arn}
        archive_key = _text(view.one(_T(aws.kms.Key), ARCHIVE_KEY), "arn")
        out.append(
            must(
                "writes the archive (experiment conclude)",
                [
                    req("s3:ListBucket", arn, base),
                    req("s3:PutObject", obj, base),
                    req("s3:PutObjectTagging", obj, base),
                    req("s3:GetObject", f"{arn}/abtest/MANIFEST.json", base),
                    req("kms:GenerateDataKey", archive_key, kms),
                    req("kms:Decrypt", archive_key, kms),
                ],
            )
        )
        out.append(
            must(
                "copies the final snapshot under the archive key (experiment conclude)",
                [
                    req("kms:DescribeKey", archive_key, via["rds"]),
                    req("kms:CreateGrant", archive_key, via["rds"]),
                ],
            )
        )
        out.append(
            must_not(
                "schedule the archive key's deletion",
                [
                    req(
                        "kms:ScheduleKeyDeletion",
                        archive_key,
                        {**base, "kms:CallerAccount": view.account},
                    )
                ],
            )
        )
        for action in ("s3:DeleteObject", "s3:DeleteObjectVersion"):
            out.append(must_not(f"{action} in the archive", [req(action, obj, base)]))
        for role in view.all(_T(aws.iam.Role)):
            role_arn = _text(role, "arn")
            out.append(
                Check(
                    view.stack,
                    DEPLOYER,
                    f"{view.stack}: role {_text(role, 'name')} cannot read the archive",
                    (
                        RealRequest(
                            f"{_text(role, 'name')} s3:GetObject",
                            role_arn,
                            "s3:GetObject",
                            obj,
                            dict(base),
                            CONCLUDE_SOURCE,
                        ),
                    ),
                    denied=True,
                )
            )
    return out


# -- all of it ------------------------------------------------------------------------------------


def _stack_checks(
    view: StackView,
    found: contract.Contract | None,
    problem: str,
    production: bool,
    owns_trail: bool | None = None,
) -> list[Check | Result]:
    name = view.stack
    items: list[Check | Result] = []
    for group in GROUPS:
        try:
            if group == WORKER:
                items += (
                    worker_checks(view, found)
                    if found
                    else [
                        failed(Check(name, WORKER, f"{name}: the worker's requests", ()), problem)
                    ]
                )
            elif group == JOB:
                items += job_checks(view)
            elif group == SERVICE:
                items += service_checks(view, owns_trail)
            else:
                items += deployer_checks(view, production)
        except (Unreadable, Unresolved) as exc:
            items.append(failed(Check(name, group, f"{name}: {group} controls", ()), str(exc)))
    return items


def trail_owners(states: Mapping[str, StackState], project_root: Path) -> dict[str, bool]:
    """Whether each stack of the repository's project owns its account's trail, as the
    environment registry says (`Registry.baseline`). Stacks of another project, of an account
    the registry does not name, or without a repository are left out (None: no expectation)."""
    try:
        project = load_project(project_root)
        registry = project.registry
    except ProjectFileError:
        return {}
    owners: dict[str, bool] = {}
    for name, state in states.items():
        if state.project != project.name or not registry.knows(name):
            continue
        account, _ = provider_account(state)
        if account is None:
            continue
        try:
            owners[name] = registry.baseline(account) == name
        except RegistryError:
            continue
    return owners


def checks(
    states: Mapping[str, StackState],
    world: World,
    project_root: Path,
    production: Mapping[str, bool],
    deployers: Mapping[str, str | None] | None = None,
    owns_trail: Mapping[str, bool] | None = None,
) -> list[Result]:
    """Every real-request control of every stack, decided. `production` and `deployers` come
    from the rules' reading of each environment (`envfence.rules.context`); `owns_trail` from
    the environment registry (`trail_owners`, read from `project_root` when not given)."""
    owners = trail_owners(states, project_root) if owns_trail is None else owns_trail
    # The worker's own config parser decides what its task definition means (worker_checks): it
    # is the checkout's app/, importable even when envfence runs from an installed wheel.
    if (project_root / "app").is_dir() and str(project_root) not in sys.path:
        sys.path.append(str(project_root))
    results: list[Result] = []
    found: contract.Contract | None = None
    problem = ""
    try:
        found = contract.load(project_root / contract.CONTRACT_FILE)
    except contract.ContractError as exc:
        problem = str(exc)
    for name, state in states.items():
        try:
            view = StackView(state, world, (deployers or {}).get(name))
        except Unreadable as exc:
            results.append(failed(Check(name, WORKER, f"{name}: the stack", ()), str(exc)))
            continue
        items = _stack_checks(view, found, problem, production.get(name, False), owners.get(name))
        for item in items:
            results.append(item if isinstance(item, Result) else _run_one(item, world))
    return results


__all__ = ["GROUPS", "Check", "Result", "checks", "run", "trail_owners"]
