"""From an SDK call to the IAM requests AWS evaluates for it: the one translation table.

A recorded call (`Call`: service, operation, parameters, as botocore saw them) becomes one or
more `RealRequest`s: the action, the resource ARN, and the condition keys the call sets or
leaves absent, made by the caller's role; plus the requests a service makes on the caller's
behalf with the caller's identity (forward access sessions: S3 and SQS calling KMS).

Each row of `TABLE` cites the Service Authorization Reference (SAR) page its action and
resource come from, and the service page for its context keys and side calls; the facts and
the points AWS leaves open are collected in ../shared/docs/notes-real-requests.md. Where AWS
leaves a key open (present or absent), the row emits one request per reading, and a control
holds only if every reading is allowed: a control must not depend on a guess.

What a `Site` is: everything a call's parameters name, resolved in one environment's stack
(bucket name -> bucket ARN and default key, queue URL -> queue ARN and key, database host ->
resource id, AppConfig ids -> configuration ARN, the VPC endpoints the task's traffic goes
through). A name the site cannot resolve raises `Unresolved`: the control is broken, never
skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from envfence.iam import Policy
from envfence.prove.requests import ContextValue, RealRequest

SAR = "https://docs.aws.amazon.com/service-authorization/latest/reference/"
GCK = "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html"
FAS = "https://docs.aws.amazon.com/IAM/latest/UserGuide/access_forward_access_sessions.html"


class Unresolved(LookupError):
    """A call names something the environment's stack does not declare."""


class Untranslated(LookupError):
    """A recorded call has no row in `TABLE`."""


@dataclass(frozen=True)
class Call:
    """One SDK call as botocore saw it (parameter names as in the API reference)."""

    service: str
    operation: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.service}.{self.operation}"


@dataclass(frozen=True)
class Bucket:
    arn: str
    key_arn: str | None  # default encryption key (SSE-KMS), None for SSE-S3
    bucket_key: bool


@dataclass(frozen=True)
class Queue:
    arn: str
    key_arn: str | None
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Database:
    arn: str
    resource_id: str


@dataclass(frozen=True)
class Configuration:
    arn: str  # .../application/A/environment/E/configuration/P
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Endpoint:
    id: str
    vpc: str
    policy: Policy | None


@dataclass
class Site:
    """What the calls of one environment's task resolve to."""

    stack: str
    region: str
    account: str
    principal: str  # the role the calls are made with (the task role)
    buckets: dict[str, Bucket] = field(default_factory=dict)  # by bucket name
    queues: dict[str, Queue] = field(default_factory=dict)  # by queue URL
    databases: dict[str, Database] = field(default_factory=dict)  # by host name
    configurations: dict[tuple[str, str, str], Configuration] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # by service (s3, sqs, ...)
    key_tags: dict[str, Mapping[str, str]] = field(default_factory=dict)  # by key ARN

    def bucket(self, name: object) -> Bucket:
        found = self.buckets.get(str(name))
        if found is None:
            raise Unresolved(f"bucket {name!r} is no bucket of stack {self.stack}")
        return found

    def queue(self, url: object) -> Queue:
        found = self.queues.get(str(url))
        if found is None:
            raise Unresolved(f"queue URL {url!r} is no queue of stack {self.stack}")
        return found

    def database(self, host: object) -> Database:
        found = self.databases.get(str(host))
        if found is None:
            raise Unresolved(f"database host {host!r} is no database of stack {self.stack}")
        return found

    def configuration(self, app: object, env: object, profile: object) -> Configuration:
        found = self.configurations.get((str(app), str(env), str(profile)))
        if found is None:
            raise Unresolved(
                f"AppConfig application/environment/profile {app}/{env}/{profile} is not "
                f"declared by stack {self.stack}"
            )
        return found


Context = dict[str, ContextValue]


def network_context(site: Site, service: str) -> tuple[Context, tuple[Policy, ...]]:
    """Keys of a direct call made from the task, and the endpoint policy on its way.

    "AWS global condition context keys": aws:SecureTransport is always present (the SDK uses
    HTTPS); aws:SourceVpc and aws:SourceVpce are present only through a VPC endpoint, and then
    aws:SourceIp is absent; aws:ViaAWSService is false for a direct call. The endpoint's policy
    is evaluated with the caller's request ("Control access to VPC endpoints using endpoint
    policies": https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-access.html).
    Without an endpoint for the service the call leaves through a NAT: no VPC keys."""
    context: Context = {"aws:SecureTransport": True, "aws:ViaAWSService": False}
    endpoint = site.endpoints.get(service)
    if endpoint is None:
        return context, ()
    context["aws:SourceVpce"] = endpoint.id
    context["aws:SourceVpc"] = endpoint.vpc
    return context, (endpoint.policy,) if endpoint.policy is not None else ()


def _request(
    site: Site,
    call: Call,
    action: str,
    resource: str,
    context: Context,
    source: str,
    endpoint: tuple[Policy, ...] = (),
    what: str = "",
) -> RealRequest:
    return RealRequest(
        what=what or f"{call.name} -> {action}",
        principal=site.principal,
        action=action,
        resource=resource,
        context=context,
        source=source,
        endpoint_policies=endpoint,
    )


def _kms_side_call(
    site: Site,
    call: Call,
    action: str,
    key_arn: str,
    service: str,
    encryption_context: Mapping[str, str],
    source: str,
) -> RealRequest:
    """A call a service makes to KMS with the caller's identity (forward access session).

    "AWS KMS condition keys": kms:ViaService names the calling service's endpoint,
    kms:CallerAccount the caller's account, kms:EncryptionContext:<k> each pair; the key type
    supports aws:ResourceTag (SAR, AWS KMS). "Forward access sessions": the same principal's
    permissions; aws:ViaAWSService is true. No VPC keys: KMS warns that aws:SourceVpc(e)
    conditions deny the calls integrated services make for you
    (https://docs.aws.amazon.com/kms/latest/developerguide/conditions-aws.html)."""
    context: Context = {
        "aws:SecureTransport": True,
        "aws:ViaAWSService": True,
        "kms:CallerAccount": site.account,
        "kms:ViaService": f"{service}.{site.region}.amazonaws.com",
    }
    for k, v in encryption_context.items():
        context[f"kms:EncryptionContext:{k}"] = v
    for k, v in site.key_tags.get(key_arn, {}).items():
        context[f"aws:ResourceTag/{k}"] = v
    return _request(
        site,
        call,
        action,
        key_arn,
        context,
        source,
        what=f"{call.name} -> {service} calls {action} for the caller",
    )


# -- S3 -------------------------------------------------------------------------------------------

S3_SOURCE = (
    f"{SAR}list_amazons3.html; "
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/tagging-and-policies.html; "
    "https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html; "
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html; "
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-key.html"
)
# Request parameters that S3 exposes as condition keys (SAR, Amazon S3, condition keys).
_S3_HEADER_KEYS = {
    "ServerSideEncryption": "s3:x-amz-server-side-encryption",
    "SSEKMSKeyId": "s3:x-amz-server-side-encryption-aws-kms-key-id",
    "ACL": "s3:x-amz-acl",
    "StorageClass": "s3:x-amz-storage-class",
    "ObjectLockMode": "s3:object-lock-mode",
    # Conditional writes: `If-None-Match` is the condition key s3:if-none-match
    # (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes-enforce.html).
    "IfNoneMatch": "s3:if-none-match",
}


def _s3_put_object(site: Site, call: Call) -> list[RealRequest]:
    """PutObject: `s3:PutObject` on the object ARN (no region or account in an S3 ARN).

    Condition keys are named after the request's headers: a header the call does not send is
    absent (SSE headers included: with none, S3 applies the bucket's default encryption).
    Object tags put `s3:RequestObjectTagKeys` and `s3:RequestObjectTag/<k>` in the request,
    and a PutObject with tags is authorized as `s3:PutObjectTagging` too (API_PutObject). S3
    buckets put no aws:ResourceTag in the request unless ABAC is enabled on the bucket (it is
    off by default and envfence does not enable it). S3 then calls kms:GenerateDataKey with the
    caller's identity; with an S3 Bucket Key the encryption context is the bucket ARN, without
    one the object ARN."""
    p = call.params
    bucket = site.bucket(p.get("Bucket"))
    key = str(p.get("Key", ""))
    obj = f"{bucket.arn}/{key}"
    context, endpoint = network_context(site, "s3")
    for param, condition_key in _S3_HEADER_KEYS.items():
        if p.get(param) is not None:
            context[condition_key] = str(p[param])
    requests = []
    tagging = p.get("Tagging")
    if tagging:
        tags = dict(parse_qsl(str(tagging), keep_blank_values=True))
        context["s3:RequestObjectTagKeys"] = sorted(tags)
        for k, v in tags.items():
            context[f"s3:RequestObjectTag/{k}"] = v
    requests.append(_request(site, call, "s3:PutObject", obj, context, S3_SOURCE, endpoint))
    if tagging:
        requests.append(
            _request(site, call, "s3:PutObjectTagging", obj, context, S3_SOURCE, endpoint)
        )
    sse = p.get("ServerSideEncryption")
    # No SSE header: the bucket's default key. `aws:kms` without a key id: the AWS managed key
    # aws/s3, not the bucket's (API_PutObject), which no stack declares: its side call cannot
    # be decided and the control fails. DSSE-KMS never uses a Bucket Key.
    if p.get("SSEKMSKeyId"):
        key_arn: str | None = str(p["SSEKMSKeyId"])
    elif sse is None:
        key_arn = bucket.key_arn
    elif sse in ("aws:kms", "aws:kms:dsse"):
        key_arn = f"arn:aws:kms:{site.region}:{site.account}:alias/aws/s3"
    else:
        key_arn = None
    if key_arn:
        context_arn = bucket.arn if bucket.bucket_key and sse != "aws:kms:dsse" else obj
        requests.append(
            _kms_side_call(
                site,
                call,
                "kms:GenerateDataKey",
                key_arn,
                "s3",
                {"aws:s3:arn": context_arn},
                S3_SOURCE,
            )
        )
    return requests


def _s3_get_object(site: Site, call: Call) -> list[RealRequest]:
    """GetObject: `s3:GetObject` on the object ARN, or `s3:GetObjectVersion` when the call names
    a version ("To get a specific version ... you need the s3:GetObjectVersion permission",
    API_GetObject.html); S3 calls kms:Decrypt with the caller's identity and the encryption
    context of the write."""
    p = call.params
    bucket = site.bucket(p.get("Bucket"))
    obj = f"{bucket.arn}/{p.get('Key', '')}"
    context, endpoint = network_context(site, "s3")
    action = "s3:GetObjectVersion" if p.get("VersionId") else "s3:GetObject"
    if p.get("VersionId"):  # a condition key of GetObjectVersion (SAR, Amazon S3)
        context["s3:versionid"] = str(p["VersionId"])
    requests = [_request(site, call, action, obj, context, S3_SOURCE, endpoint)]
    if bucket.key_arn:
        context_arn = bucket.arn if bucket.bucket_key else obj
        requests.append(
            _kms_side_call(
                site, call, "kms:Decrypt", bucket.key_arn, "s3", {"aws:s3:arn": context_arn},
                S3_SOURCE,
            )
        )  # fmt: skip
    return requests


def _s3_list_objects(site: Site, call: Call) -> list[RealRequest]:
    """ListObjectsV2: `s3:ListBucket` on the bucket ARN, with `s3:prefix` when the call sends a
    prefix (SAR, Amazon S3: ListBucket's condition keys; API_ListObjectsV2.html). No KMS call:
    listing reads no object data."""
    p = call.params
    bucket = site.bucket(p.get("Bucket"))
    context, endpoint = network_context(site, "s3")
    if p.get("Prefix") is not None:
        context["s3:prefix"] = str(p["Prefix"])
    return [_request(site, call, "s3:ListBucket", bucket.arn, context, S3_SOURCE, endpoint)]


# -- SQS ------------------------------------------------------------------------------------------

SQS_SOURCE = (
    f"{SAR}list_amazonsqs.html; "
    "https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/"
    "sqs-key-management.html"
)


def _sqs_context(site: Site, queue: Queue) -> tuple[Context, tuple[Policy, ...]]:
    """The queue resource type supports aws:ResourceTag (SAR, Amazon SQS): the queue's tags are
    in the request (the tags AWS holds: the stack's default tags plus the queue's own)."""
    context, endpoint = network_context(site, "sqs")
    for k, v in queue.tags.items():
        context[f"aws:ResourceTag/{k}"] = v
    return context, endpoint


def _sqs(action: str, kms: tuple[str, ...]) -> Callable[[Site, Call], list[RealRequest]]:
    """`sqs:<Action>` on the queue ARN. On a queue encrypted with a customer key, SQS calls KMS
    with the caller's permissions: a consumer's ReceiveMessage needs kms:Decrypt, a producer's
    SendMessage kms:GenerateDataKey and kms:Decrypt ("Key management", SQS developer guide).
    SQS documents no encryption context for these calls, so none is put in."""

    def translate(site: Site, call: Call) -> list[RealRequest]:
        queue = site.queue(call.params.get("QueueUrl"))
        context, endpoint = _sqs_context(site, queue)
        out = [_request(site, call, action, queue.arn, context, SQS_SOURCE, endpoint)]
        if queue.key_arn:
            for kms_action in kms:
                out.append(
                    _kms_side_call(site, call, kms_action, queue.key_arn, "sqs", {}, SQS_SOURCE)
                )
        return out

    return translate


# -- AppConfig Data -------------------------------------------------------------------------------

APPCONFIG_SOURCE = (
    f"{SAR}list_awsappconfig.html; "
    "https://docs.aws.amazon.com/appconfig/2019-10-09/APIReference/"
    "API_appconfigdata_StartConfigurationSession.html"
)


def _appconfig(action: str) -> Callable[[Site, Call], list[RealRequest]]:
    """`appconfig:StartConfigurationSession` and `appconfig:GetLatestConfiguration` on the
    `configuration` resource `.../application/A/environment/E/configuration/P` (SAR, AWS
    AppConfig). GetLatestConfiguration carries only the session token: it acts on the
    configuration of the session the same task started before. The SAR lists aws:ResourceTag
    for the type without saying whose tags a configuration carries, so two readings are
    emitted: no resource tag, and the configuration profile's tags."""

    def translate(site: Site, call: Call, session: dict[str, Any]) -> list[RealRequest]:
        p = call.params
        if call.operation == "StartConfigurationSession":
            config = site.configuration(
                p.get("ApplicationIdentifier"),
                p.get("EnvironmentIdentifier"),
                p.get("ConfigurationProfileIdentifier"),
            )
            session["configuration"] = config
        else:
            found = session.get("configuration")
            if not isinstance(found, Configuration):
                raise Unresolved(
                    "GetLatestConfiguration before any StartConfigurationSession: no "
                    "configuration to name"
                )
            config = found
        context, endpoint = network_context(site, "appconfigdata")
        tagged: Context = dict(context)
        for k, v in config.tags.items():
            tagged[f"aws:ResourceTag/{k}"] = v
        readings = [("no resource tag", context)]
        if tagged != context:
            readings.append(("the profile's tags", tagged))
        return [
            _request(
                site,
                call,
                action,
                config.arn,
                ctx,
                APPCONFIG_SOURCE,
                endpoint,
                what=f"{call.name} -> {action} (reading: {label})",
            )
            for label, ctx in readings
        ]

    return translate  # type: ignore[return-value]


# -- RDS IAM database authentication --------------------------------------------------------------

RDS_DB_SOURCE = (
    f"{SAR}list_amazonrdsiamauthentication.html; "
    "https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.IAMPolicy.html"
)


def _rds_connect(site: Site, call: Call) -> list[RealRequest]:
    """The token `generate_db_auth_token` signs locally is checked when the connection opens:
    `rds-db:connect` on `arn:aws:rds-db:REGION:ACCOUNT:dbuser:DbiResourceId/USER`. The SAR
    lists no condition keys for it and RDS does not document which global keys the check
    sees, so the request carries none but aws:ViaAWSService (a policy that needs one would deny
    it)."""
    p = call.params
    db = site.database(p.get("DBHostname"))
    user = str(p.get("DBUsername", ""))
    arn = f"arn:aws:rds-db:{site.region}:{site.account}:dbuser:{db.resource_id}/{user}"
    # aws:ViaAWSService is "always included" (false for a direct call).
    context: Context = {"aws:ViaAWSService": False}
    return [_request(site, call, "rds-db:connect", arn, context, RDS_DB_SOURCE)]


Translator = Callable[..., list[RealRequest]]


@dataclass(frozen=True)
class Row:
    translate: Translator
    source: str
    stateful: bool = False  # takes the session dict (calls that depend on an earlier call)


# The table: every call the contract may hold. A recorded call without a row is an error.
TABLE: dict[tuple[str, str], Row] = {
    ("s3", "PutObject"): Row(_s3_put_object, S3_SOURCE),
    ("s3", "GetObject"): Row(_s3_get_object, S3_SOURCE),
    ("s3", "ListObjectsV2"): Row(_s3_list_objects, S3_SOURCE),
    ("sqs", "ReceiveMessage"): Row(_sqs("sqs:ReceiveMessage", ("kms:Decrypt",)), SQS_SOURCE),
    ("sqs", "DeleteMessage"): Row(_sqs("sqs:DeleteMessage", ()), SQS_SOURCE),
    ("sqs", "SendMessage"): Row(
        _sqs("sqs:SendMessage", ("kms:GenerateDataKey", "kms:Decrypt")), SQS_SOURCE
    ),
    ("appconfigdata", "StartConfigurationSession"): Row(
        _appconfig("appconfig:StartConfigurationSession"), APPCONFIG_SOURCE, stateful=True
    ),
    ("appconfigdata", "GetLatestConfiguration"): Row(
        _appconfig("appconfig:GetLatestConfiguration"), APPCONFIG_SOURCE, stateful=True
    ),
    ("rds-db", "connect"): Row(_rds_connect, RDS_DB_SOURCE),
}


def translate(
    calls: list[Call], site: Site, session: dict[str, Any] | None = None
) -> list[RealRequest]:
    """Every IAM request the calls make, in order. Raises `Untranslated` for a call without a
    row and `Unresolved` for a name the site does not declare. `session` carries what a call
    leaves for later ones (the AppConfig session's configuration) across separate calls."""
    session = {} if session is None else session
    out: list[RealRequest] = []
    for call in calls:
        row = TABLE.get((call.service, call.operation))
        if row is None:
            raise Untranslated(
                f"no translation for {call.name}: add a row to envfence/prove/translate.py"
            )
        produced = row.translate(site, call, session) if row.stateful else row.translate(site, call)
        out.extend(produced)
    return out
