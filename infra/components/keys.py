"""The environment's customer-managed KMS key: everything the environment stores is encrypted
with it, and its key policy is the last line of defence if every other layer fails."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import naming
from infra.components.policies import account_root, document, statement
from infra.settings import Settings

# Management only: none of these reads or writes data.
ADMIN_ACTIONS = [
    "kms:Create*",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:RotateKeyOnDemand",
]
USE_ACTIONS = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
    "kms:DescribeKey",
]


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
        admins = list(s.admin_principals) or [root]
        statements = [
            statement(
                "KeyAdministration", "Allow", ADMIN_ACTIONS, ["*"], principal={"AWS": admins}
            ),
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
            # RDS and Secrets Manager encrypt the database and its master secret with grants
            # made by whoever deploys: the administrators.
            statement(
                "AdministratorsThroughServices",
                "Allow",
                [*USE_ACTIONS, "kms:CreateGrant", "kms:ListGrants"],
                ["*"],
                principal={"AWS": admins},
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
        trail = (
            f"arn:aws:cloudtrail:{s.region}:{s.account}:trail/"
            f"{naming.trail_name(s.project, s.stack)}"
        )
        statements += [
            statement(
                "CloudTrailOfThisEnvironment",
                "Allow",
                ["kms:GenerateDataKey*", "kms:DescribeKey"],
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
            # Alarms publish to the environment's encrypted SNS topic.
            statement(
                "CloudWatchAlarmsOfThisAccount",
                "Allow",
                ["kms:Decrypt", "kms:GenerateDataKey*"],
                ["*"],
                principal={"Service": "cloudwatch.amazonaws.com"},
                condition={"StringEquals": {"aws:SourceAccount": s.account}},
            ),
        ]
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
