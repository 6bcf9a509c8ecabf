"""Who acts in an environment: the permission boundary, the roles, and what each role may do.

`Identity` comes first (the boundary and the roles: other components need their ARNs);
`Permissions` comes last (least-privilege policies that name the resources once they exist).

Every role carries the environment's boundary. The boundary is what makes isolation hold even
if someone later attaches a broad policy to a role: it denies data, keys, databases and roles of
any other environment, session tags (a caller could otherwise forge `aws:PrincipalTag`), and any
change to the environment tags or to IAM itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.settings import Settings
from infra.components.containers import start_task_statements
from infra.components.policies import account_root, document, statement

ENVIRONMENT_TAG_KEYS = [
    naming.TAG_ENVIRONMENT,
    naming.TAG_TIER,
    naming.TAG_CLASSIFICATION,
    naming.TAG_EXPERIMENT_ID,
]

# IAM changes an environment role never needs; denying them keeps the boundary and the trust
# policies out of the roles' own reach.
IAM_MUTATIONS = [
    "iam:Create*",
    "iam:Delete*",
    "iam:Put*",
    "iam:Attach*",
    "iam:Detach*",
    "iam:Update*",
    "iam:Tag*",
    "iam:Untag*",
    "iam:Set*",
    "iam:Add*",
    "iam:Remove*",
]
AUDIT_TAMPERING = [
    "cloudtrail:Stop*",
    "cloudtrail:Delete*",
    "cloudtrail:Update*",
    "cloudtrail:Put*",
    "cloudtrail:Create*",
    "cloudtrail:Remove*",
    "cloudtrail:Add*",
    "logs:Delete*",
    "logs:PutRetentionPolicy",
    "logs:DisassociateKmsKey",
    "logs:AssociateKmsKey",
    "ec2:DeleteFlowLogs",
    "kms:ScheduleKeyDeletion",
    "kms:DisableKey",
    "kms:PutKeyPolicy",
    "kms:CreateGrant",
    "kms:RetireGrant",
    "kms:RevokeGrant",
]

TASK_ROLES = ("service", "pipeline")  # assumed by ECS tasks; the analyst role by people
TRAIL_ROLE = "trail"  # CloudTrail delivers to the trail's log group with it


def support_roles(s: Settings) -> tuple[str, ...]:
    """The support roles this stack declares. The `trail` role only where the account's trail
    is (`s.owns_trail`): an experiment-<id> stack has no trail, so a role CloudTrail could
    assume there would be a principal with nothing to do (and one more for an attacker to aim
    at)."""
    return tuple(r for r in naming.SUPPORT_ROLES if r != TRAIL_ROLE or s.owns_trail)


def environment_roles(s: Settings) -> tuple[str, ...]:
    """Every role of the environment, in declaration order."""
    return (*naming.ROLES, *support_roles(s))


def bucket_arns(s: Settings, stores: list[tuple[str, str, str]]) -> list[str]:
    """Bucket and object ARNs for (stack, store, account) triples."""
    arns = []
    for stack, store, account in stores:
        arn = naming.bucket_arn(s.project, stack, store, account)
        arns += [arn, f"{arn}/*"]
    return arns


def own_stores(s: Settings) -> list[tuple[str, str, str]]:
    return [(s.stack, store, s.account) for store in s.data_stores]


def flow_stores(s: Settings) -> list[tuple[str, str, str]]:
    """Stores of other environments this one may read through declared flows."""
    out = []
    for flow in s.outbound_flows():
        peer = s.peers[flow.target]
        if peer.account is not None:
            out.append((flow.target, flow.store, peer.account))
    return out


def boundary_document(s: Settings, key_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    own_roles = [naming.role_arn(s.project, s.stack, r, s.account) for r in environment_roles(s)]
    flows = flow_stores(s)
    peer_key_arns = sorted({f"arn:aws:kms:{s.region}:{acct}:key/*" for _, _, acct in flows})
    allowed_env_tags = [s.stack, *sorted({stack for stack, _, _ in flows})]
    return document(
        statement("AllowWithinTheBoundary", "Allow", ["*"], ["*"]),
        statement(
            "DenyResourcesTaggedForOtherEnvironments",
            "Deny",
            ["*"],
            ["*"],
            # Only where the tag is in the request: S3 (ABAC is off on general purpose buckets
            # by default) and rds-db:connect may well not supply aws:ResourceTag (the reference
            # lists the key without saying whose tag), and an IfExists operator would turn this
            # into "deny everything untagged" -- the worker's own writes included. Those
            # services are fenced by the ARN statements below.
            condition={
                "StringNotEquals": {f"aws:ResourceTag/{naming.TAG_ENVIRONMENT}": allowed_env_tags},
                "Null": {f"aws:ResourceTag/{naming.TAG_ENVIRONMENT}": "false"},
            },
        ),
        statement(
            "DenyDataStoresOfOtherEnvironments",
            "Deny",
            ["s3:*"],
            not_resources=bucket_arns(s, own_stores(s) + flows),
        ),
        statement(
            "DenyKeysOfOtherEnvironments",
            "Deny",
            ["kms:*"],
            not_resources=[key_arn, *peer_key_arns],
        ),
        statement(
            "DenyDatabasesOutsideThisAccountAndRegion",
            "Deny",
            ["rds-db:*"],
            not_resources=[f"arn:aws:rds-db:{s.region}:{s.account}:dbuser:*/*"],
        ),
        statement(
            "DenyAssumingRolesOfOtherEnvironments",
            "Deny",
            ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity", "sts:AssumeRoleWithSAML"],
            not_resources=own_roles,
        ),
        statement(
            "DenyPassingRolesOfOtherEnvironments", "Deny", ["iam:PassRole"], not_resources=own_roles
        ),
        statement("DenySessionTags", "Deny", ["sts:TagSession"], ["*"]),
        statement(
            "DenyEnvironmentTagChanges",
            "Deny",
            ["*"],
            ["*"],
            condition={"ForAnyValue:StringEquals": {"aws:TagKeys": ENVIRONMENT_TAG_KEYS}},
        ),
        statement("DenyIamChanges", "Deny", IAM_MUTATIONS, ["*"]),
        statement("DenyAuditTampering", "Deny", AUDIT_TAMPERING, ["*"]),
    )


def ecs_trust(s: Settings) -> pulumi.Output[str]:
    # The source conditions stop another account's ECS from assuming the role (confused deputy).
    return document(
        statement(
            "EcsTasksOfThisAccount",
            "Allow",
            ["sts:AssumeRole"],
            principal={"Service": "ecs-tasks.amazonaws.com"},
            condition={
                "StringEquals": {"aws:SourceAccount": s.account},
                "ArnLike": {"aws:SourceArn": f"arn:aws:ecs:{s.region}:{s.account}:*"},
            },
        )
    )


def analyst_trust(s: Settings) -> pulumi.Output[str]:
    return document(
        statement(
            "ConfiguredAnalysts",
            "Allow",
            ["sts:AssumeRole"],
            principal={"AWS": list(s.analyst_principals) or [account_root(s.account)]},
            # With no analysts configured, only principals named here could assume it: none.
            condition={
                "ArnEquals": {
                    "aws:PrincipalArn": list(s.analyst_principals)
                    or [f"arn:aws:iam::{s.account}:role/no-analysts-configured"]
                }
            },
        )
    )


def trail_trust(s: Settings) -> pulumi.Output[str]:
    trail = (
        f"arn:aws:cloudtrail:{s.region}:{s.account}:trail/{naming.trail_name(s.project, s.stack)}"
    )
    return document(
        statement(
            "CloudTrailOfThisEnvironment",
            "Allow",
            ["sts:AssumeRole"],
            principal={"Service": "cloudtrail.amazonaws.com"},
            # CloudTrail documents aws:SourceArn/SourceAccount for the bucket and key policies
            # ("Cross-service confused deputy prevention"), not for assuming the CloudWatch Logs
            # role: IfExists checks them when CloudTrail sends them and does not lock delivery
            # out when it does not. Only a trail of this account can name the role (iam:PassRole
            # works within an account). CloudTrail's own trust example has no condition:
            # https://docs.aws.amazon.com/awscloudtrail/latest/userguide/send-cloudtrail-events-to-cloudwatch-logs.html
            condition={
                "StringEqualsIfExists": {"aws:SourceAccount": s.account},
                "ArnEqualsIfExists": {"aws:SourceArn": trail},
            },
        )
    )


def flow_logs_trust(s: Settings) -> pulumi.Output[str]:
    return document(
        statement(
            "VpcFlowLogsOfThisAccount",
            "Allow",
            ["sts:AssumeRole"],
            principal={"Service": "vpc-flow-logs.amazonaws.com"},
            condition={
                "StringEquals": {"aws:SourceAccount": s.account},
                "ArnLike": {"aws:SourceArn": f"arn:aws:ec2:{s.region}:{s.account}:vpc-flow-log/*"},
            },
        )
    )


@dataclass
class IdentityArgs:
    settings: Settings
    key_arn: pulumi.Input[str]


class Identity(pulumi.ComponentResource):
    """The boundary and every role of the environment: the three roles that act on data and
    the support roles AWS services assume for it. All carry the boundary."""

    boundary: aws.iam.Policy
    roles: dict[str, aws.iam.Role]

    def __init__(self, name: str, args: IdentityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("envfence:index:Identity", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self.boundary = aws.iam.Policy(
            "boundary",
            name=naming.boundary_name(s.project, s.stack),
            description=f"envfence {s.stack}: the most any role of this environment may do",
            policy=boundary_document(s, args.key_arn),
            opts=child,
        )
        trusts = {
            "service": ecs_trust(s),
            "pipeline": ecs_trust(s),
            "analyst": analyst_trust(s),
            "flowlogs": flow_logs_trust(s),
            "execution": ecs_trust(s),
            TRAIL_ROLE: trail_trust(s),
            naming.MIGRATOR_ROLE: ecs_trust(s),
        }
        purposes = {
            "service": "the worker: consumes the ingestion queue, writes raw data and rows",
            "pipeline": "processing jobs: reads and writes the environment's data stores",
            "analyst": "people: reads curated data and results",
            "flowlogs": "delivers VPC flow logs",
            "execution": "pulls the worker image and writes its logs (ECS)",
            TRAIL_ROLE: "delivers the account's CloudTrail events to the trail's log group",
            naming.MIGRATOR_ROLE: (
                "starts the database tasks (migrate, retention): pulls the image, writes their "
                "logs, hands them the master password"
            ),
        }
        self.roles = {
            role: aws.iam.Role(
                f"role-{role}",
                name=naming.role_name(s.project, s.stack, role),
                description=f"envfence {s.stack}: {purposes[role]}",
                assume_role_policy=trusts[role],
                permissions_boundary=self.boundary.arn,
                max_session_duration=3600,
                tags={"role": role},
                opts=child,
            )
            for role in environment_roles(s)
        }
        self.register_outputs({name: r.arn for name, r in self.roles.items()})


@dataclass
class EnvironmentResources:
    """The ARNs the roles' policies name, collected once the resources exist."""

    key_arn: pulumi.Input[str]
    bucket_arns: dict[str, pulumi.Input[str]]
    db_resource_id: pulumi.Input[str]
    flow_log_group_arn: pulumi.Input[str]
    queue_arn: pulumi.Input[str]
    dead_letter_queue_arn: pulumi.Input[str]
    repository_arn: pulumi.Input[str]
    worker_log_group_arn: pulumi.Input[str]
    trail_log_group_arn: pulumi.Input[str] | None  # None: the account's trail is another stack's
    flags_configuration_arn: pulumi.Input[str]
    master_secret_arn: pulumi.Input[str]
    db_tasks_log_group_arn: pulumi.Input[str]


@dataclass
class PermissionsArgs:
    settings: Settings
    roles: dict[str, aws.iam.Role]
    resources: EnvironmentResources


def _log_streams(group_arn: pulumi.Input[str]) -> list[pulumi.Input[str]]:
    return [group_arn, pulumi.Output.concat(group_arn, ":log-stream:*")]


class Permissions(pulumi.ComponentResource):
    """Least privilege: each role names exactly the resources of its environment it uses."""

    def __init__(
        self, name: str, args: PermissionsArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("envfence:index:Permissions", name, None, opts)
        s = args.settings
        res = args.resources
        b = res.bucket_arns

        def objects(*stores: str) -> list[pulumi.Output[str]]:
            return [pulumi.Output.concat(b[st], "/*") for st in stores if st in b]

        def buckets(*stores: str) -> list[pulumi.Input[str]]:
            return [b[st] for st in stores if st in b]

        def db_user(user: str) -> pulumi.Output[str]:
            return pulumi.Output.concat(
                f"arn:aws:rds-db:{s.region}:{s.account}:dbuser:", res.db_resource_id, f"/{user}"
            )

        all_stores = list(s.data_stores)
        key_use = statement(
            "UseTheEnvironmentKey",
            "Allow",
            ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
            [res.key_arn],
        )
        grants: dict[str, list[dict[str, object]]] = {
            "service": [
                statement(
                    "WriteRawRecords",
                    "Allow",
                    ["s3:PutObject", "s3:PutObjectTagging", "s3:GetObject"],
                    objects("raw"),
                ),
                statement(
                    "ConsumeTheIngestionQueue",
                    "Allow",
                    [
                        "sqs:ReceiveMessage",
                        "sqs:DeleteMessage",
                        "sqs:ChangeMessageVisibility",
                        "sqs:GetQueueAttributes",
                    ],
                    [res.queue_arn],
                ),
                statement("ConnectAsWorker", "Allow", ["rds-db:connect"], [db_user("worker")]),
                statement(
                    "ReadOwnFeatureFlags",
                    "Allow",
                    ["appconfig:StartConfigurationSession", "appconfig:GetLatestConfiguration"],
                    [res.flags_configuration_arn],
                ),
                key_use,
            ],
            "pipeline": [
                statement("ListStores", "Allow", ["s3:ListBucket"], buckets(*all_stores)),
                statement(
                    "ReadWriteStores",
                    "Allow",
                    ["s3:GetObject", "s3:PutObject", "s3:GetObjectVersion"],
                    objects(*all_stores),
                ),
                statement("FeedTheIngestionQueue", "Allow", ["sqs:SendMessage"], [res.queue_arn]),
                statement(
                    "InspectDeadLetters",
                    "Allow",
                    ["sqs:ReceiveMessage", "sqs:GetQueueAttributes"],
                    [res.dead_letter_queue_arn],
                ),
                statement("ConnectAsWorker", "Allow", ["rds-db:connect"], [db_user("worker")]),
                key_use,
            ],
            "analyst": [
                statement(
                    "ListAnalysisStores", "Allow", ["s3:ListBucket"], buckets("curated", "results")
                ),
                statement(
                    "ReadAnalysisStores",
                    "Allow",
                    ["s3:GetObject", "s3:GetObjectVersion"],
                    objects("curated", "results"),
                ),
                statement("ConnectAsAnalyst", "Allow", ["rds-db:connect"], [db_user("analyst")]),
                statement(
                    "DecryptWithTheEnvironmentKey",
                    "Allow",
                    ["kms:Decrypt", "kms:DescribeKey"],
                    [res.key_arn],
                ),
            ],
            "flowlogs": [
                statement(
                    "DeliverFlowLogs",
                    "Allow",
                    ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                    _log_streams(res.flow_log_group_arn),
                )
            ],
            "execution": start_task_statements(
                res.repository_arn, _log_streams(res.worker_log_group_arn), "WriteWorkerLogs"
            ),
            # The execution role of the database tasks (ECS uses it before the container
            # starts): the task itself gets no role and no AWS credentials at all.
            # https://docs.aws.amazon.com/AmazonECS/latest/developerguide/secrets-envvar-secrets-manager.html
            naming.MIGRATOR_ROLE: [
                *start_task_statements(
                    res.repository_arn,
                    _log_streams(res.db_tasks_log_group_arn),
                    "WriteDatabaseTaskLogs",
                ),
                statement(
                    "ReadThisEnvironmentsMasterSecret",
                    "Allow",
                    ["secretsmanager:GetSecretValue"],
                    [res.master_secret_arn],
                ),
                statement(
                    "DecryptTheMasterSecret",
                    "Allow",
                    ["kms:Decrypt"],
                    [res.key_arn],
                    condition={
                        "StringEquals": {
                            "kms:ViaService": f"secretsmanager.{s.region}.amazonaws.com"
                        }
                    },
                ),
            ],
        }
        if res.trail_log_group_arn is not None:
            grants[TRAIL_ROLE] = [
                statement(
                    "DeliverTrailEvents",
                    "Allow",
                    ["logs:CreateLogStream", "logs:PutLogEvents"],
                    _log_streams(res.trail_log_group_arn),
                )
            ]
        for flow in s.outbound_flows():
            peer = s.peers[flow.target]
            if peer.account is None:
                continue
            arn = naming.bucket_arn(s.project, flow.target, flow.store, peer.account)
            tag = f"DeclaredFlow{flow.target.title().replace('-', '')}{flow.store.title()}"
            grants[flow.role] += [
                statement(f"{tag}List", "Allow", ["s3:ListBucket"], [arn]),
                statement(f"{tag}Read", "Allow", ["s3:GetObject"], [f"{arn}/*"]),
                statement(
                    f"{tag}Decrypt",
                    "Allow",
                    ["kms:Decrypt"],
                    [f"arn:aws:kms:{s.region}:{peer.account}:key/*"],
                    condition={
                        "StringEquals": {
                            "kms:ViaService": f"s3.{s.region}.amazonaws.com",
                            f"aws:ResourceTag/{naming.TAG_ENVIRONMENT}": flow.target,
                        }
                    },
                ),
            ]

        for role, stmts in grants.items():
            aws.iam.RolePolicy(
                f"policy-{role}",
                role=args.roles[role].id,
                policy=document(*stmts),
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({})
