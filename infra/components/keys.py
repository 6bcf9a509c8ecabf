"""The environment's customer-managed KMS key: everything the environment stores is encrypted
with it, and its key policy is the last line of defence if every other layer fails."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.settings import Settings
from infra.components.database_tasks import retention_schedule_arn
from infra.components.policies import account_root, document, statement

# Management only, named one by one: none of these reads or writes data, and none hands out key
# use (kms:CreateGrant is not here; `kms:Create*` would include it). The provider calls
# DescribeKey, GetKeyPolicy, GetKeyRotationStatus and ListResourceTags on every read of the key.
# PutKeyPolicy must stay: CreateKey refuses a policy that would not let the caller call it later
# (https://docs.aws.amazon.com/kms/latest/APIReference/API_CreateKey.html, "BypassPolicyLockout-
# SafetyCheck"), and whoever holds it can rewrite the policy: the README says so.
ADMIN_ACTIONS = [
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
    "kms:RotateKeyOnDemand",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:ListKeyPolicies",
    "kms:ListGrants",
    "kms:ListAliases",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
]
USE_ACTIONS = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
    "kms:DescribeKey",
]
# What the deployer's creates make AWS services do with the key on its behalf (forward access
# sessions): RDS storage encryption (CreateGrant, DescribeKey), the RDS-managed master secret
# (CreateGrant, DescribeKey; its GenerateDataKey and key-check Decrypt below), ECR repository
# encryption (CreateGrant, DescribeKey).
# https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/Overview.Encryption.Keys.html
# https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-secrets-manager.html
# https://docs.aws.amazon.com/AmazonECR/latest/userguide/encryption-at-rest.html
DEPLOY_THROUGH_SERVICES = [
    "kms:CreateGrant",
    "kms:DescribeKey",
]
# The RDS-managed master secret: Secrets Manager encrypts its value on behalf of the creator
# (GenerateDataKey) and checks the creator's key access with a Decrypt whose encryption context
# has SecretVersionId = "RequestToValidateKeyAccess" ("Secret encryption and decryption in AWS
# Secrets Manager": https://docs.aws.amazon.com/secretsmanager/latest/userguide/
# security-encryption.html). Reading the secret decrypts with its real version id, which these
# statements do not allow: the deployer can create the database but not read its password.
RDS_SECRETS = "secret:rds!*"
VALIDATE_KEY_ACCESS = "RequestToValidateKeyAccess"


def trail_statements(s: Settings, root: str) -> list[dict[str, object]]:
    """What the account's trail needs of the key that encrypts it, and what reading its logs
    needs: only in the stack that owns the trail (`s.owns_trail`). The key of an experiment-<id>
    stack encrypts no trail log and feeds no alarm topic (the account's trail and alarm are its
    baseline's, encrypted with the baseline's key), so it admits neither CloudTrail nor
    CloudWatch: a service statement with nothing to serve is access nobody audits."""
    trail = (
        f"arn:aws:cloudtrail:{s.region}:{s.account}:trail/{naming.trail_name(s.project, s.stack)}"
    )
    statements = [
        # CloudTrail, as "Configure AWS KMS key policies for CloudTrail" lays it out:
        # GenerateDataKey* carries the trail's encryption context; DescribeKey carries no
        # encryption context at all (KMS API reference, GrantConstraints), so a context
        # condition there never matches; Decrypt is needed because the audit bucket has an
        # S3 Bucket Key.
        # https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-kms-key-policy-for-cloudtrail.html
        statement(
            "CloudTrailEncryptsLogs",
            "Allow",
            ["kms:GenerateDataKey*"],
            ["*"],
            principal={"Service": "cloudtrail.amazonaws.com"},
            condition={
                "StringEquals": {"aws:SourceArn": trail},
                "StringLike": {
                    "kms:EncryptionContext:aws:cloudtrail:arn": (
                        f"arn:aws:cloudtrail:*:{s.account}:trail/*"
                    )
                },
            },
        ),
        statement(
            "CloudTrailDescribesKeyAndUsesTheBucketKey",
            "Allow",
            ["kms:DescribeKey", "kms:Decrypt"],
            ["*"],
            principal={"Service": "cloudtrail.amazonaws.com"},
            condition={"StringEquals": {"aws:SourceArn": trail}},
        ),
        # Alarms publish to the account's encrypted SNS topic. No condition: AWS does not
        # document that CloudWatch's KMS calls carry aws:SourceAccount or aws:SourceArn, and
        # an absent key would make the statement never match (no alarm would arrive). Another
        # account's alarm cannot use it: the topic's default policy admits only this account.
        # https://repost.aws/knowledge-center/cloudwatch-configure-alarm-sns
        statement(
            "CloudWatchAlarmsPublishToTheTopic",
            "Allow",
            ["kms:Decrypt", "kms:GenerateDataKey*"],
            ["*"],
            principal={"Service": "cloudwatch.amazonaws.com"},
        ),
    ]
    if s.audit_readers:
        # The security team reads the audit log: objects this trail wrote, through S3.
        statements.append(
            statement(
                "AuditReadersDecryptTrailLogs",
                "Allow",
                ["kms:Decrypt"],
                ["*"],
                principal={"AWS": root},
                condition={
                    "ArnEquals": {"aws:PrincipalArn": list(s.audit_readers)},
                    "StringEquals": {"kms:ViaService": f"s3.{s.region}.amazonaws.com"},
                    "StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn": trail},
                },
            )
        )
    return statements


def archive_statements(s: Settings, root: str) -> list[dict[str, object]]:
    """What `envfence experiment conclude` needs of an experiment's key, run as the account's
    deployer: reading the `results` store (S3 decrypts the objects' bucket key). The archive
    has a key of its own (`archive_key_statements`). Only through S3, only for that bucket:
    with an S3 Bucket Key the encryption context is the bucket ARN, which the condition pins
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-key.html; the S3 row of
    envfence/prove/translate.py). Production keys get none of this: conclude never reads or
    writes production."""
    if s.is_production or not s.deployer:
        return []
    via_s3 = f"s3.{s.region}.amazonaws.com"
    out: list[dict[str, object]] = []
    if "results" in s.data_stores:
        out.append(
            statement(
                "DeployerArchivesTheResults",
                "Allow",
                ["kms:Decrypt"],
                ["*"],
                principal={"AWS": s.deployer},
                condition={
                    "StringEquals": {
                        "kms:CallerAccount": s.account,
                        "kms:ViaService": via_s3,
                        "kms:EncryptionContext:aws:s3:arn": s.bucket_arn("results"),
                    }
                },
            )
        )
    return out


def schedule_statements(s: Settings, root: str) -> list[dict[str, object]]:
    """The experiments' retention schedule carries its payload under this key. Whoever calls
    CreateSchedule/UpdateSchedule encrypts it (DescribeKey, GenerateDataKey, Decrypt, through
    Scheduler, with the schedule's ARN as encryption context): the deployer; DescribeKey it has
    already. The schedule's execution role decrypts it at each invocation; AWS's CloudTrail
    example shows that call made by the role itself with the same context and no documented
    kms:ViaService, so none is required of it. Grants are not supported.
    https://docs.aws.amazon.com/scheduler/latest/UserGuide/encryption-rest.html
    https://docs.aws.amazon.com/scheduler/latest/UserGuide/security_iam_id-based-policy-examples.html"""
    if s.is_production:
        return []
    context = {"kms:EncryptionContext:aws:scheduler:schedule:arn": retention_schedule_arn(s)}
    out = [
        statement(
            "SchedulerDecryptsTheRetentionPayload",
            "Allow",
            ["kms:Decrypt"],
            ["*"],
            principal={"AWS": root},
            condition={
                "ArnEquals": {"aws:PrincipalArn": s.role_arn(naming.SCHEDULER_ROLE)},
                "StringEquals": context,
            },
        )
    ]
    if s.deployer:
        out.append(
            statement(
                "DeployerEncryptsTheRetentionPayload",
                "Allow",
                ["kms:GenerateDataKey", "kms:Decrypt"],
                ["*"],
                principal={"AWS": s.deployer},
                condition={
                    "StringEquals": {
                        "kms:CallerAccount": s.account,
                        "kms:ViaService": f"scheduler.{s.region}.amazonaws.com",
                        **context,
                    }
                },
            )
        )
    return out


def administration(s: Settings) -> dict[str, object]:
    """The deployer and any break-glass administrators manage a key; no data use."""
    managers = [s.deployer, *s.admin_principals] if s.deployer else list(s.admin_principals)
    return statement(
        "KeyAdministration",
        "Allow",
        ADMIN_ACTIONS,
        ["*"],
        principal={"AWS": managers or [account_root(s.account)]},
    )


def archive_key_statements(
    s: Settings, archive_bucket_arn: pulumi.Input[str]
) -> list[dict[str, object]]:
    """The key policy of the archive's own key (an experiment account's baseline only). It
    outlives the baseline's environment key (which `pulumi destroy` schedules for deletion):
    nobody may schedule its deletion, no environment role may use it. The deployer manages it,
    writes and reads the archive through S3 (with an S3 Bucket Key the encryption context is
    the bucket ARN: https://docs.aws.amazon.com/AmazonS3/latest/userguide/configuring-bucket-key.html;
    uploads need GenerateDataKey, multipart copies Decrypt:
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateMultipartUpload.html), and copies
    the final DB snapshot under it (RDS needs CreateGrant and DescribeKey through RDS:
    https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/Overview.Encryption.Keys.html);
    the audit readers read the archive through S3."""
    root = account_root(s.account)
    via_s3 = f"s3.{s.region}.amazonaws.com"
    out = [
        administration(s),
        statement(
            "ArchiveKeyIsNeverDeleted",
            "Deny",
            ["kms:ScheduleKeyDeletion"],
            ["*"],
            principal={"AWS": "*"},
        ),
    ]
    if s.deployer:
        out += [
            statement(
                "DeployerWritesTheArchive",
                "Allow",
                ["kms:GenerateDataKey", "kms:Decrypt"],
                ["*"],
                principal={"AWS": s.deployer},
                condition={
                    "StringEquals": {
                        "kms:CallerAccount": s.account,
                        "kms:ViaService": via_s3,
                        "kms:EncryptionContext:aws:s3:arn": archive_bucket_arn,
                    }
                },
            ),
            statement(
                "DeployerCopiesSnapshotsUnderIt",
                "Allow",
                ["kms:CreateGrant", "kms:DescribeKey"],
                ["*"],
                principal={"AWS": s.deployer},
                condition={
                    "StringEquals": {
                        "kms:CallerAccount": s.account,
                        "kms:ViaService": f"rds.{s.region}.amazonaws.com",
                    }
                },
            ),
        ]
    if s.audit_readers:
        out.append(
            statement(
                "AuditReadersReadTheArchive",
                "Allow",
                ["kms:Decrypt"],
                ["*"],
                principal={"AWS": root},
                condition={
                    "ArnEquals": {"aws:PrincipalArn": list(s.audit_readers)},
                    "StringEquals": {
                        "kms:ViaService": via_s3,
                        "kms:EncryptionContext:aws:s3:arn": archive_bucket_arn,
                    },
                },
            )
        )
    return out


@dataclass
class KeysArgs:
    settings: Settings


class Keys(pulumi.ComponentResource):
    key: aws.kms.Key
    alias: aws.kms.Alias

    def __init__(self, name: str, args: KeysArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("envfence:index:Keys", name, None, opts)
        s = args.settings
        root = account_root(s.account)
        statements = [
            administration(s),
            # Principal is the account, narrowed by aws:PrincipalArn: the roles need not exist yet
            # (KMS rejects a key policy naming a missing principal) and IAM must allow as well.
            statement(
                "EnvironmentRolesUse",
                "Allow",
                USE_ACTIONS,
                ["*"],
                principal={"AWS": root},
                condition={"ArnEquals": {"aws:PrincipalArn": s.role_arns()}},
            ),
        ]
        # Which service KMS sees for the RDS -> Secrets Manager -> KMS chain is not documented:
        # both. The password stays unreadable either way: that rests on the SecretVersionId and
        # SecretARN conditions, not on the service.
        rds_secrets = f"arn:aws:secretsmanager:{s.region}:{s.account}:{RDS_SECRETS}"
        secret_via = [
            f"rds.{s.region}.amazonaws.com",
            f"secretsmanager.{s.region}.amazonaws.com",
        ]
        if s.deployer:
            statements += [
                statement(
                    "DeployerThroughServices",
                    "Allow",
                    DEPLOY_THROUGH_SERVICES,
                    ["*"],
                    principal={"AWS": s.deployer},
                    condition={
                        "StringEquals": {
                            "kms:CallerAccount": s.account,
                            "kms:ViaService": [
                                f"rds.{s.region}.amazonaws.com",
                                f"secretsmanager.{s.region}.amazonaws.com",
                                f"ecr.{s.region}.amazonaws.com",
                            ],
                        }
                    },
                ),
                *(
                    statement(
                        sid,
                        "Allow",
                        [action],
                        ["*"],
                        principal={"AWS": s.deployer},
                        condition={
                            "StringEquals": {
                                "kms:CallerAccount": s.account,
                                "kms:ViaService": secret_via,
                                **version,
                            },
                            "StringLike": {"kms:EncryptionContext:SecretARN": rds_secrets},
                        },
                    )
                    for sid, action, version in (
                        ("DeployerWritesTheMasterSecret", "kms:GenerateDataKey", {}),
                        (
                            "DeployerValidatesTheSecretKeyOnly",
                            "kms:Decrypt",
                            {"kms:EncryptionContext:SecretVersionId": VALIDATE_KEY_ACCESS},
                        ),
                    )
                ),
                # ECR retires its two grants when the repository is deleted; its guide asks for
                # RetireGrant for the creator and says nothing of kms:ViaService on that call.
                statement(
                    "DeployerRetiresServiceGrants",
                    "Allow",
                    ["kms:RetireGrant"],
                    ["*"],
                    principal={"AWS": s.deployer},
                ),
            ]
        statements += [
            # ECS fetches the master password for the database tasks with the migrator role
            # (Secrets Manager decrypts with kms:ViaService = secretsmanager).
            # https://docs.aws.amazon.com/AmazonECS/latest/developerguide/secrets-envvar-secrets-manager.html
            statement(
                "DatabaseTasksReadTheMasterSecret",
                "Allow",
                ["kms:Decrypt"],
                ["*"],
                principal={"AWS": root},
                condition={
                    "ArnEquals": {"aws:PrincipalArn": s.role_arn(naming.MIGRATOR_ROLE)},
                    "StringEquals": {"kms:ViaService": f"secretsmanager.{s.region}.amazonaws.com"},
                },
            ),
            statement(
                "CloudWatchLogsForThisEnvironment",
                "Allow",
                [
                    "kms:Encrypt*",
                    "kms:Decrypt*",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:Describe*",
                ],
                ["*"],
                principal={"Service": f"logs.{s.region}.amazonaws.com"},
                # The environment's own groups, and the one RDS exports the database log to.
                condition={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": [
                            f"arn:aws:logs:{s.region}:{s.account}:log-group:"
                            f"{naming.log_group_prefix(s.project, s.stack)}/*",
                            f"arn:aws:logs:{s.region}:{s.account}:log-group:"
                            + naming.rds_log_group_name(naming.db_identifier(s.project, s.stack)),
                        ]
                    }
                },
            ),
        ]
        if s.owns_trail:
            statements += trail_statements(s, root)
        statements += archive_statements(s, root)
        statements += schedule_statements(s, root)
        for flow in s.inbound_flows():
            peer = s.peers[flow.source]
            if peer.account is None:
                continue
            statements.append(
                statement(
                    f"DeclaredFlow{flow.source.title().replace('-', '')}{flow.role.title()}",
                    "Allow",
                    ["kms:Decrypt", "kms:DescribeKey"],
                    ["*"],
                    principal={"AWS": account_root(peer.account)},
                    condition={
                        "ArnEquals": {
                            "aws:PrincipalArn": naming.role_arn(
                                s.project, flow.source, flow.role, peer.account
                            )
                        },
                        "StringEquals": {"kms:ViaService": f"s3.{s.region}.amazonaws.com"},
                    },
                )
            )
        if s.is_production:
            statements.append(
                statement(
                    "ProductionKeyIsNeverDeleted",
                    "Deny",
                    ["kms:ScheduleKeyDeletion"],
                    ["*"],
                    principal={"AWS": "*"},
                )
            )

        protect = pulumi.ResourceOptions(
            parent=self, protect=s.is_production, retain_on_delete=s.is_production
        )
        self.key = aws.kms.Key(
            "key",
            description=f"envfence {s.stack}: encrypts every data store of this environment",
            enable_key_rotation=True,
            rotation_period_in_days=365,
            deletion_window_in_days=30,
            policy=document(*statements),
            opts=protect,
        )
        self.alias = aws.kms.Alias(
            "key-alias",
            name=naming.key_alias(s.project, s.stack),
            target_key_id=self.key.key_id,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"keyArn": self.key.arn})
