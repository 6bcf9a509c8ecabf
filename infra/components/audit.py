"""The account's audit trail: who touched which data, kept where no environment role can alter
it, and an alarm on access attempts that were denied (a cross-environment probe shows up here
first).

CloudTrail allows five trails per Region per account, not adjustable, and a multi-Region trail
counts in every Region (https://docs.aws.amazon.com/awscloudtrail/latest/userguide/
WhatIsCloudTrail-Limits.html). So an account has exactly one envfence trail, declared by its
baseline stack (`accountBaseline` in the registry, `Settings.owns_trail`): the stack that owns the
account. Only that stack builds this component. Its trail records management events and S3 data
events for its own data stores *and* for every other stack of the account, by bucket-name prefix
(`Settings.trail_prefixes`, e.g. `envfence-experiment-`), so a new `experiment-<id>` stack is
covered the moment it exists, without a change to the baseline.

The logs go to an audit bucket encrypted with the baseline's key, versioned, object-locked in
production, whose policy denies every role of every environment of the account any write,
delete or re-configuration. Events also go to a log group, where a metric filter counts
AccessDenied errors against the data services and an alarm notifies an SNS topic.

What a non-baseline stack has of its own: nothing of this. No trail (it would spend one of the
five), no audit bucket, no trail log group and no `trail` role or CloudTrail key statements
(`identity.support_roles`, `keys.py`). Nor an alarm or topic: the denied-access signal exists only
in the owner's trail log group, and the owner's metric filter already counts every denied call
in the account, the experiment's included. A per-stack alarm would need a metric filter of the
experiment's inside the baseline's log group: a resource of one environment attached to
another's, which `pulumi destroy` of the experiment would then change. The baseline's alarm is
the account's; its topic reaches the account's owners.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.settings import Settings
from infra.components.buckets import guard_bucket
from infra.components.identity import environment_roles
from infra.components.policies import document, statement

# Services whose denied calls count as an attempt on this environment's data.
WATCHED_SOURCES = (
    "s3.amazonaws.com",
    "kms.amazonaws.com",
    "sqs.amazonaws.com",
    "rds.amazonaws.com",
    "secretsmanager.amazonaws.com",
    "ecr.amazonaws.com",
    "appconfig.amazonaws.com",
)
# What an environment role must never do to its audit log.
TAMPERING = [
    "s3:PutObject*",
    "s3:DeleteObject*",
    "s3:PutBucket*",
    "s3:DeleteBucket*",
    "s3:PutLifecycleConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:BypassGovernanceRetention",
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:PutReplicationConfiguration",
]


def denied_access_pattern() -> str:
    sources = " || ".join(f'($.eventSource = "{src}")' for src in WATCHED_SOURCES)
    return (
        f'{{ (($.errorCode = "AccessDenied*") || ($.errorCode = "*UnauthorizedOperation")) '
        f"&& ({sources}) }}"
    )


def other_stacks_roles(s: Settings) -> list[str]:
    """ARN patterns of every role of the account's other stacks (the baseline's prefixes:
    role names are `<project>-<stack>-<role>`, like bucket names)."""
    return [f"arn:aws:iam::{s.account}:role/{prefix}*" for prefix in s.trail_prefixes]


def other_stacks_objects(s: Settings) -> list[str]:
    """`resources.ARN` prefixes of the objects of the account's other stacks' buckets."""
    return [f"arn:aws:s3:::{prefix}" for prefix in s.trail_prefixes]


@dataclass
class AuditArgs:
    """Only for the stack that owns the account's trail (`settings.owns_trail`)."""

    settings: Settings
    key_arn: pulumi.Input[str]
    trail_role_arn: pulumi.Input[str]
    data_bucket_arns: list[pulumi.Input[str]]


class Audit(pulumi.ComponentResource):
    bucket: aws.s3.Bucket
    trail: aws.cloudtrail.Trail
    log_group: aws.cloudwatch.LogGroup
    topic: aws.sns.Topic

    def __init__(self, name: str, args: AuditArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("envfence:index:Audit", name, None, opts)
        s = args.settings
        if not s.owns_trail:
            raise ValueError(
                f"stack {s.stack} does not own account {s.account}'s trail ({s.trail_owner} does)"
            )
        child = pulumi.ResourceOptions(parent=self)
        keep = pulumi.ResourceOptions(
            parent=self, protect=s.is_production, retain_on_delete=s.is_production
        )
        trail_name = naming.trail_name(s.project, s.stack)
        trail_arn = f"arn:aws:cloudtrail:{s.region}:{s.account}:trail/{trail_name}"
        locked = s.audit.object_lock_days > 0

        self.bucket = aws.s3.Bucket(
            "audit-bucket",
            bucket=naming.audit_bucket_name(s.project, s.stack, s.account),
            object_lock_enabled=locked,
            force_destroy=not s.is_production,
            tags={naming.TAG_DATA_STORE: "audit"},
            opts=keep,
        )
        guard_bucket("audit", self.bucket, args.key_arn, child, keep)
        if locked:
            # COMPLIANCE mode: not even the account's root user can shorten or remove it.
            aws.s3.BucketObjectLockConfiguration(
                "audit-object-lock",
                bucket=self.bucket.id,
                rule={
                    "default_retention": {"mode": "COMPLIANCE", "days": s.audit.object_lock_days}
                },
                opts=keep,
            )
        lifecycle: dict[str, object] = {
            "id": "audit-retention",
            "status": "Enabled",
            "filter": {},
            # CloudTrail uploads in one PUT, but any multipart upload left behind is billed
            # until aborted.
            "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
        }
        if s.is_production:
            lifecycle["transitions"] = [{"days": 90, "storage_class": "GLACIER"}]
        else:
            lifecycle["expiration"] = {"days": max(s.log_retention_days, 30)}
            lifecycle["noncurrent_version_expiration"] = {"noncurrent_days": 7}
        aws.s3.BucketLifecycleConfiguration(
            "audit-lifecycle", bucket=self.bucket.id, rules=[lifecycle], opts=child
        )
        every_role = [
            naming.role_arn(s.project, s.stack, r, s.account) for r in environment_roles(s)
        ]
        objects = pulumi.Output.concat(self.bucket.arn, "/*")
        deployer = [s.deployer] if s.deployer else []
        policy = aws.s3.BucketPolicy(
            "audit-policy",
            bucket=self.bucket.id,
            policy=document(
                statement(
                    "DenyInsecureTransport",
                    "Deny",
                    ["s3:*"],
                    [self.bucket.arn, objects],
                    principal="*",
                    condition={"Bool": {"aws:SecureTransport": "false"}},
                ),
                statement(
                    "DenyTamperingByEnvironmentRoles",
                    "Deny",
                    TAMPERING,
                    [self.bucket.arn, objects],
                    principal="*",
                    condition={
                        "ArnEquals": {"aws:PrincipalArn": every_role + list(s.audit_readers)}
                    },
                ),
                # The account's other environments (experiment-<id> stacks, now and later) write
                # their history here too: none of their roles may touch it either. A pattern per
                # prefix, so a new stack is covered without changing this policy.
                *(
                    [
                        statement(
                            "DenyTamperingByTheAccountsOtherEnvironments",
                            "Deny",
                            TAMPERING,
                            [self.bucket.arn, objects],
                            principal="*",
                            condition={"ArnLike": {"aws:PrincipalArn": other_stacks_roles(s)}},
                        )
                    ]
                    if s.trail_prefixes
                    else []
                ),
                # Requests from AWS services carry no aws:PrincipalArn; the Null test keeps
                # CloudTrail's own writes out of these Denies. The audit readers (the security
                # team, outside every environment) read and validate the log
                # (`aws cloudtrail validate-logs` reads digest and log files); the deployer only
                # lists, which is how the provider reads the bucket back (HeadBucket).
                statement(
                    "DenyReadingOutsideTheAuditors",
                    "Deny",
                    ["s3:GetObject*", "s3:RestoreObject"],
                    [objects],
                    principal="*",
                    condition={
                        "ArnNotEquals": {"aws:PrincipalArn": every_role + list(s.audit_readers)},
                        "Null": {"aws:PrincipalArn": "false"},
                    },
                ),
                statement(
                    "DenyListingOutsideTheAuditors",
                    "Deny",
                    ["s3:ListBucket*"],
                    [self.bucket.arn],
                    principal="*",
                    condition={
                        "ArnNotEquals": {
                            "aws:PrincipalArn": every_role + list(s.audit_readers) + deployer
                        },
                        "Null": {"aws:PrincipalArn": "false"},
                    },
                ),
                # Nobody but CloudTrail writes the log, and in production nobody deletes from
                # it; an experiment's deployer empties the bucket when the stack is destroyed
                # (forceDestroy). The deployer is outside every environment role, so the Deny
                # above does not cover it. aws:PrincipalIsAWSService is the documented way to
                # tell CloudTrail's own writes apart ("AWS global condition context keys":
                # true when a service uses a service principal, as CloudTrail does to write
                # logs; present in every signed request):
                # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-principalisawsservice
                statement(
                    "DenyWritingTheLogOutsideCloudTrail",
                    "Deny",
                    ["s3:PutObject*"],
                    [objects],
                    principal="*",
                    condition={"Bool": {"aws:PrincipalIsAWSService": "false"}},
                ),
                statement(
                    "DenyDeletingTheLog",
                    "Deny",
                    ["s3:DeleteObject*"],
                    [objects],
                    principal="*",
                    condition=(
                        {"Bool": {"aws:PrincipalIsAWSService": "false"}}
                        if s.is_production or not deployer
                        else {
                            "Bool": {"aws:PrincipalIsAWSService": "false"},
                            "ArnNotEquals": {"aws:PrincipalArn": deployer},
                        }
                    ),
                ),
                statement(
                    "CloudTrailAclCheck",
                    "Allow",
                    ["s3:GetBucketAcl"],
                    [self.bucket.arn],
                    principal={"Service": "cloudtrail.amazonaws.com"},
                    condition={"StringEquals": {"aws:SourceArn": trail_arn}},
                ),
                statement(
                    "CloudTrailWrite",
                    "Allow",
                    ["s3:PutObject"],
                    [pulumi.Output.concat(self.bucket.arn, f"/AWSLogs/{s.account}/*")],
                    principal={"Service": "cloudtrail.amazonaws.com"},
                    condition={"StringEquals": {"aws:SourceArn": trail_arn}},
                ),
            ),
            opts=child,
        )

        self.log_group = aws.cloudwatch.LogGroup(
            "trail-logs",
            name=naming.log_group_name(s.project, s.stack, "cloudtrail"),
            kms_key_id=args.key_arn,
            retention_in_days=s.log_retention_days,
            opts=child,
        )
        # Data events of the account's data stores. `resources.ARN` of an S3 object is
        # `arn:aws:s3:::<bucket>/<key>`; a bucket's ARN followed by "/" selects every object in
        # it ("Logging data events": "use the StartsWith operator, and include only the bucket
        # ARN as the matching value. The trailing slash is intentional").
        #   https://docs.aws.amazon.com/awscloudtrail/latest/userguide/logging-data-events-with-cloudtrail.html
        # The other stacks are selected by prefix. That prefix (`envfence-experiment-`) also
        # matches this stack's own audit bucket (`envfence-experiment-audit-<account>`), and
        # logging the data events of the bucket a trail writes to makes every delivery a new
        # event to deliver: AWS says not to ("Filtering data events by using advanced event
        # selectors": you can exclude the S3 bucket for your trail; "Logging data events",
        # note on the bucket that receives the log files). So the same field selector excludes
        # it with NotStartsWith. How operators combine within one field selector ("How
        # CloudTrail evaluates multiple conditions for a field"): StartsWith/Equals/EndsWith
        # values are ORed, NotStartsWith/NotEquals/NotEndsWith are ANDed (any match excludes
        # the event), and the two groups are ANDed. Across the field selectors of one advanced
        # event selector every field selector must match; across advanced event selectors an
        # event is logged when it matches any of them (PutEventSelectors API reference). So
        # the exclusion must sit in this field selector: a separate advanced event selector
        # could only add events, never remove them.
        #   https://docs.aws.amazon.com/awscloudtrail/latest/userguide/filtering-data-events.html
        #   https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_AdvancedFieldSelector.html
        #   https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_PutEventSelectors.html
        object_selectors: list[pulumi.Input[str]] = [
            pulumi.Output.concat(arn, "/") for arn in args.data_bucket_arns
        ]
        object_selectors += other_stacks_objects(s)
        self.trail = aws.cloudtrail.Trail(
            "trail",
            name=trail_name,
            s3_bucket_name=self.bucket.id,
            kms_key_id=args.key_arn,
            is_multi_region_trail=True,
            include_global_service_events=True,
            enable_log_file_validation=True,
            cloud_watch_logs_group_arn=pulumi.Output.concat(self.log_group.arn, ":*"),
            cloud_watch_logs_role_arn=args.trail_role_arn,
            advanced_event_selectors=[
                {
                    "name": "Management events",
                    "field_selectors": [{"field": "eventCategory", "equals": ["Management"]}],
                },
                {
                    "name": (
                        "Data events on the data stores of this account's environments"
                        if s.trail_prefixes
                        else "Data events on this environment's data stores"
                    ),
                    "field_selectors": [
                        {"field": "eventCategory", "equals": ["Data"]},
                        {"field": "resources.type", "equals": ["AWS::S3::Object"]},
                        {
                            "field": "resources.ARN",
                            "starts_withs": object_selectors,
                            "not_starts_withs": [pulumi.Output.concat(self.bucket.arn, "/")],
                        },
                    ],
                },
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy]),
        )

        self.topic = aws.sns.Topic(
            "alerts",
            name=f"{naming.prefix(s.project, s.stack)}-alerts",
            kms_master_key_id=args.key_arn,
            opts=child,
        )
        for i, email in enumerate(s.audit.alert_emails):
            aws.sns.TopicSubscription(
                f"alerts-email-{i}",
                topic=self.topic.arn,
                protocol="email",
                endpoint=email,
                opts=child,
            )
        namespace = f"envfence/{s.stack}"
        aws.cloudwatch.LogMetricFilter(
            "denied-access-filter",
            log_group_name=self.log_group.name,
            pattern=denied_access_pattern(),
            metric_transformation={
                "name": "DeniedDataAccess",
                "namespace": namespace,
                "value": "1",
                "default_value": "0",
            },
            opts=child,
        )
        aws.cloudwatch.MetricAlarm(
            "denied-access-alarm",
            name=f"{naming.prefix(s.project, s.stack)}-denied-data-access",
            # The filter reads the account's trail: it counts denied calls of every environment
            # of the account (the experiment-<id> stacks have no alarm of their own).
            alarm_description=(
                f"Access to data in account {s.account} ({s.stack}"
                + "".join(f", {p}*" for p in s.trail_prefixes)
                + ") was denied: a principal of another environment (or a broken job) tried "
                "to reach it"
            ),
            namespace=namespace,
            metric_name="DeniedDataAccess",
            statistic="Sum",
            period=300,
            evaluation_periods=1,
            threshold=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=[self.topic.arn],
            opts=child,
        )
        self.register_outputs({"trailArn": self.trail.arn, "auditBucket": self.bucket.bucket})
