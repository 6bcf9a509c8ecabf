"""The environment's data: one PostgreSQL database and one S3 bucket per data store.

Everything is encrypted with the environment's own key, nothing is public, and each bucket's
policy denies any principal that is not a role of this environment (or a declared flow). In the
production tier the data resources are protected: `protect`, `retainOnDelete`, deletion
protection and a final snapshot, so no `pulumi destroy` and no refactoring can remove them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.settings import Settings
from infra.components.buckets import guard_bucket
from infra.components.keys import archive_key_statements
from infra.components.policies import account_root, document, statement

# Actions that read, write or delete objects: what a foreign principal must never be allowed.
DATA_ACTIONS = [
    "s3:GetObject*",
    "s3:PutObject*",
    "s3:DeleteObject*",
    "s3:RestoreObject",
    "s3:ReplicateObject",
    "s3:ReplicateDelete",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
# Listing reveals object keys, not contents. The deployer keeps it: the provider reads a bucket
# with HeadBucket, which S3 authorizes as s3:ListBucket, so without it `pulumi refresh` and every
# later update of the bucket fail with 403 (https://docs.aws.amazon.com/AmazonS3/latest/API/
# API_HeadBucket.html; terraform-provider-aws internal/service/s3/bucket.go, resourceBucketRead).
LIST_ACTIONS = ["s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"]
# Condition keys of the SSE headers of PutObject (Service Authorization Reference, Amazon S3).
SSE_HEADER = "s3:x-amz-server-side-encryption"
SSE_KEY_ID = "s3:x-amz-server-side-encryption-aws-kms-key-id"


def archive_class(s: Settings, store: str) -> str:
    """Where archived experiment objects go. GetObject fails on S3 Glacier Flexible Retrieval
    until the object is restored, so a store that another environment reads through a declared
    flow archives to Glacier Instant Retrieval, which GetObject reads in milliseconds.
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/storage-class-intro.html"""
    if any(f.store == store for f in s.inbound_flows()):
        return "GLACIER_IR"
    return "GLACIER"


@dataclass
class DataArgs:
    settings: Settings
    key_arn: pulumi.Input[str]
    role_arns: dict[str, pulumi.Input[str]]
    data_subnet_ids: list[pulumi.Input[str]]
    db_security_group_id: pulumi.Input[str]


class Data(pulumi.ComponentResource):
    buckets: dict[str, aws.s3.Bucket]
    database: aws.rds.Instance
    master_secret_arn: pulumi.Output[str]
    # The experiment account's archive of concluded experiments (its baseline stack only).
    archive: aws.s3.Bucket | None
    archive_key: aws.kms.Key | None

    def __init__(self, name: str, args: DataArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("envfence:index:Data", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        # Production data is protected from `pulumi destroy` and from accidental replacement.
        keep = pulumi.ResourceOptions(
            parent=self, protect=s.is_production, retain_on_delete=s.is_production
        )
        self.buckets = {store: self._store(s, store, args, child, keep) for store in s.data_stores}
        self.archive_key = None
        self.archive = (
            self._archive(s, args, child) if s.owns_trail and not s.is_production else None
        )
        self.database = self._database(s, args, child, keep)
        # The secret RDS keeps the master password in; only the database tasks read it.
        self.master_secret_arn = self.database.master_user_secrets.apply(
            lambda secrets: secrets[0].secret_arn if secrets else ""
        )
        self.register_outputs(
            {
                "buckets": {k: b.bucket for k, b in self.buckets.items()},
                "dbEndpoint": self.database.endpoint,
            }
        )

    def _store(
        self,
        s: Settings,
        store: str,
        args: DataArgs,
        child: pulumi.ResourceOptions,
        keep: pulumi.ResourceOptions,
    ) -> aws.s3.Bucket:
        bucket = aws.s3.Bucket(
            f"store-{store}",
            bucket=s.bucket_name(store),
            # Experiment buckets can be emptied and removed with the stack; production never.
            force_destroy=not s.is_production,
            tags={naming.TAG_DATA_STORE: store},
            opts=keep,
        )
        guard_bucket(f"store-{store}", bucket, args.key_arn, child, keep)
        aws.s3.BucketLifecycleConfiguration(
            f"store-{store}-lifecycle",
            bucket=bucket.id,
            rules=[self._lifecycle(s, store)],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"store-{store}-policy",
            bucket=bucket.id,
            policy=self._bucket_policy(s, store, bucket.arn, args),
            opts=child,
        )
        return bucket

    def _archive(self, s: Settings, args: DataArgs, child: pulumi.ResourceOptions) -> aws.s3.Bucket:
        """The archive `envfence experiment conclude` copies a concluded experiment's results
        into (under `<experiment-id>/`): it outlives every experiment of the account, and
        expires what it keeps after `archive.expireAfterDays` (Pulumi.yaml). Nobody of any
        environment reads or writes it: the deployer writes (conclude runs with its
        credentials), the deployer and the audit readers read, nobody deletes (the lifecycle
        rule does). Encrypted with a key of its own, which nobody may delete: the baseline's
        environment key is scheduled for deletion when the baseline is destroyed, and what it
        encrypts becomes unreadable. Not `protect`ed (the experiment stack stays destroyable),
        but the key, the bucket and every configuration of the bucket are retained when the
        baseline stack is destroyed: the archive stays readable, guarded, and expiring. (A
        later baseline re-creates nothing of it until imported: README, "Experiments".)"""
        kept = pulumi.ResourceOptions(parent=self, retain_on_delete=True)
        name = naming.archive_bucket_name(s.project, s.stack, s.account)
        self.archive_key = aws.kms.Key(
            "archive-key",
            description=f"envfence {s.stack}: the archive of concluded experiments",
            enable_key_rotation=True,
            rotation_period_in_days=365,
            deletion_window_in_days=30,
            policy=document(*archive_key_statements(s, f"arn:aws:s3:::{name}")),
            opts=kept,
        )
        aws.kms.Alias(
            "archive-key-alias",
            name=naming.archive_key_alias(s.project, s.stack),
            target_key_id=self.archive_key.key_id,
            opts=kept,
        )
        bucket = aws.s3.Bucket(
            "archive",
            bucket=name,
            force_destroy=False,
            tags={naming.TAG_DATA_STORE: "archive"},
            opts=kept,
        )
        guard_bucket("archive", bucket, self.archive_key.arn, kept, kept)
        aws.s3.BucketLifecycleConfiguration(
            "archive-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "envfence-archive-expiry",
                    "status": "Enabled",
                    "filter": {},
                    "expiration": {"days": s.archive_expire_days},
                    # An overwritten archive object is kept as long as the original would have been.
                    "noncurrent_version_expiration": {"noncurrent_days": s.archive_expire_days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                }
            ],
            opts=kept,
        )
        objects = pulumi.Output.concat(bucket.arn, "/*")
        writers = [s.deployer] if s.deployer else []
        readers = writers + list(s.audit_readers)
        policy = document(
            statement(
                "DenyInsecureTransport",
                "Deny",
                ["s3:*"],
                [bucket.arn, objects],
                principal="*",
                condition={"Bool": {"aws:SecureTransport": "false"}},
            ),
            # CopyObject into the archive is authorized as s3:PutObject on the destination,
            # plus s3:PutObjectTagging with a new tag set (TaggingDirective REPLACE), and
            # s3:GetObject on the source.
            # https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html
            statement(
                "DenyWritingTheArchiveButTheDeployer",
                "Deny",
                ["s3:PutObject*", "s3:RestoreObject", "s3:ReplicateObject"],
                [objects],
                principal="*",
                condition={"ArnNotEquals": {"aws:PrincipalArn": writers}},
            ),
            statement(
                "DenyReadingTheArchiveButItsReaders",
                "Deny",
                ["s3:GetObject*", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                [objects],
                principal="*",
                condition={"ArnNotEquals": {"aws:PrincipalArn": readers}},
            ),
            statement(
                "DenyListingTheArchiveButItsReaders",
                "Deny",
                LIST_ACTIONS,
                [bucket.arn],
                principal="*",
                condition={"ArnNotEquals": {"aws:PrincipalArn": readers}},
            ),
            # What is archived stays until the lifecycle rule expires it: lifecycle actions are
            # S3's own, not a principal's, so a Deny does not stop them (to stop lifecycle
            # deletions one must deny s3:PutLifecycleConfiguration, which the next statement
            # does for all but the deployer).
            # https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutBucketLifecycleConfiguration.html
            statement(
                "DenyDeletingArchives",
                "Deny",
                ["s3:DeleteObject*", "s3:ReplicateDelete"],
                [objects],
                principal="*",
            ),
            # Nobody but the deployer (`pulumi up`) shortens the expiry or lifts these Denies;
            # the deployer's own provider calls on the bucket are the BUCKET_CALLS controls.
            statement(
                "DenyReconfiguringTheArchiveButTheDeployer",
                "Deny",
                [
                    "s3:PutLifecycleConfiguration",
                    "s3:PutBucketPolicy",
                    "s3:DeleteBucketPolicy",
                    "s3:PutEncryptionConfiguration",
                    "s3:PutBucketVersioning",
                    "s3:PutBucketPublicAccessBlock",
                    "s3:PutBucketOwnershipControls",
                    "s3:DeleteBucket",
                ],
                [bucket.arn],
                principal="*",
                condition={"ArnNotEquals": {"aws:PrincipalArn": writers}},
            ),
        )
        aws.s3.BucketPolicy("archive-policy", bucket=bucket.id, policy=policy, opts=kept)
        return bucket

    @staticmethod
    def _lifecycle(s: Settings, store: str) -> dict[str, object]:
        r = s.retention
        rule: dict[str, object] = {
            "id": "envfence-retention",
            "status": "Enabled",
            "filter": {},
            "abort_incomplete_multipart_upload": {
                "days_after_initiation": r.abort_incomplete_upload_days
            },
        }
        if s.is_production:
            # Production keeps every version; old versions only move to cheaper storage.
            rule["noncurrent_version_transitions"] = [
                {"noncurrent_days": r.noncurrent_archive_days, "storage_class": "GLACIER"}
            ]
        else:
            # Experiment data ends with the experiment: archived, then expired.
            rule["expiration"] = {"days": r.expire_after_days}
            rule["noncurrent_version_expiration"] = {"noncurrent_days": r.noncurrent_expire_days}
            if r.archive_after_days:
                rule["transitions"] = [
                    {"days": r.archive_after_days, "storage_class": archive_class(s, store)}
                ]
        return rule

    @staticmethod
    def _bucket_policy(
        s: Settings, store: str, arn: pulumi.Output[str], args: DataArgs
    ) -> pulumi.Output[str]:
        objects = pulumi.Output.concat(arn, "/*")
        flows = [f for f in s.inbound_flows() if f.store == store]
        flow_principals = [
            naming.role_arn(s.project, f.source, f.role, s.peers[f.source].account or s.account)
            for f in flows
        ]
        # Experiment buckets are emptied by `pulumi destroy` (forceDestroy: ListObjectVersions,
        # DeleteObjects), which runs as the deployer; production data is never readable or
        # deletable by the deployer or any administrator.
        deployer = [s.deployer] if s.deployer else []
        teardown = [] if s.is_production else deployer
        statements = [
            statement(
                "DenyInsecureTransport",
                "Deny",
                ["s3:*"],
                [arn, objects],
                principal="*",
                condition={"Bool": {"aws:SecureTransport": "false"}},
            ),
            statement(
                "DenyPrincipalsOutsideThisEnvironment",
                "Deny",
                DATA_ACTIONS,
                [arn, objects],
                principal="*",
                condition={
                    "ArnNotEquals": {"aws:PrincipalArn": s.role_arns() + flow_principals + teardown}
                },
            ),
            statement(
                "DenyListingOutsideThisEnvironment",
                "Deny",
                LIST_ACTIONS,
                [arn],
                principal="*",
                condition={
                    "ArnNotEquals": {"aws:PrincipalArn": s.role_arns() + flow_principals + deployer}
                },
            ),
            # A PutObject with no SSE header is encrypted with the bucket default (our key) and
            # carries neither SSE condition key; the worker sends none. So each deny tests that
            # its key is present ("Null": false) -- an ...IfExists operator would be true on
            # the missing key and deny every write of the environment's own roles. A header
            # naming aws:kms without a key id selects the AWS managed key aws/s3, not ours: the
            # second deny refuses an SSE header that comes without our key id.
            # https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html
            # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html#Conditions_IfExists
            statement(
                "DenyOtherEncryptionKeys",
                "Deny",
                ["s3:PutObject"],
                [objects],
                principal="*",
                condition={
                    "StringNotEquals": {SSE_KEY_ID: args.key_arn},
                    "Null": {SSE_KEY_ID: "false"},
                },
            ),
            statement(
                "DenyEncryptionHeaderWithoutThisKey",
                "Deny",
                ["s3:PutObject"],
                [objects],
                principal="*",
                condition={"Null": {SSE_HEADER: "false", SSE_KEY_ID: "true"}},
            ),
        ]
        for flow, principal in zip(flows, flow_principals, strict=True):
            peer_account = s.peers[flow.source].account or s.account
            sid = f"DeclaredFlow{flow.source.title().replace('-', '')}{flow.role.title()}"
            statements += [
                statement(
                    f"{sid}List",
                    "Allow",
                    ["s3:ListBucket"],
                    [arn],
                    principal={"AWS": account_root(peer_account)},
                    condition={"ArnEquals": {"aws:PrincipalArn": principal}},
                ),
                statement(
                    f"{sid}Read",
                    "Allow",
                    ["s3:GetObject"],
                    [objects],
                    principal={"AWS": account_root(peer_account)},
                    condition={"ArnEquals": {"aws:PrincipalArn": principal}},
                ),
            ]
        return document(*statements)

    @staticmethod
    def _database(
        s: Settings, args: DataArgs, child: pulumi.ResourceOptions, keep: pulumi.ResourceOptions
    ) -> aws.rds.Instance:
        db = s.database
        major = db.major_version
        subnet_group = aws.rds.SubnetGroup(
            "db-subnets",
            subnet_ids=args.data_subnet_ids,
            description=f"envfence {s.stack}: isolated data subnets",
            opts=child,
        )
        params = aws.rds.ParameterGroup(
            "db-params",
            family=f"postgres{major}",
            description=f"envfence {s.stack}: TLS only, connections logged",
            parameters=[
                {"name": "rds.force_ssl", "value": "1"},
                {"name": "log_connections", "value": "1"},
                {"name": "log_disconnections", "value": "1"},
            ],
            opts=child,
        )
        identifier = naming.db_identifier(s.project, s.stack)
        log_group = aws.cloudwatch.LogGroup(
            "db-logs",
            name=naming.rds_log_group_name(identifier),
            kms_key_id=args.key_arn,
            retention_in_days=s.log_retention_days,
            opts=child,
        )
        return aws.rds.Instance(
            "db",
            identifier=identifier,
            engine="postgres",
            engine_version=db.engine_version,
            instance_class=db.instance_class,
            allocated_storage=db.allocated_storage,
            max_allocated_storage=db.max_allocated_storage,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=args.key_arn,
            db_name="envfence",
            username="envfence_admin",
            # RDS keeps the master password in Secrets Manager, encrypted with our key: it
            # never passes through Pulumi config or state.
            manage_master_user_password=True,
            master_user_secret_kms_key_id=args.key_arn,
            iam_database_authentication_enabled=True,
            db_subnet_group_name=subnet_group.name,
            vpc_security_group_ids=[args.db_security_group_id],
            parameter_group_name=params.name,
            publicly_accessible=False,
            multi_az=db.multi_az,
            backup_retention_period=db.backup_retention_days,
            copy_tags_to_snapshot=True,
            deletion_protection=db.deletion_protection,
            skip_final_snapshot=not s.is_production,
            final_snapshot_identifier=f"{identifier}-final" if s.is_production else None,
            # "16": RDS applies minor upgrades in the maintenance window and the provider
            # compares only the prefix given; "16.4": pinned, upgrades are a config change.
            # https://registry.terraform.io/providers/hashicorp/aws/latest/docs/resources/db_instance#engine_version
            auto_minor_version_upgrade=db.auto_minor_version_upgrade,
            # The server log (connections, errors) goes to CloudWatch Logs, into a group created
            # first with the environment's key and retention (RDS would create it unencrypted,
            # kept forever).
            # https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_LogAccess.Concepts.PostgreSQL.html
            enabled_cloudwatch_logs_exports=["postgresql"],
            opts=pulumi.ResourceOptions.merge(keep, pulumi.ResourceOptions(depends_on=[log_group])),
        )
