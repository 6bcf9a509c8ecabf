"""What every bucket of an environment has, whatever it holds: no public access, ACLs off,
SSE-KMS with a bucket key under the given key, versioning. One builder for the data stores,
the audit log and the experiment archive (EF203, EF204, EF205 check each)."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws


def guard_bucket(
    name: str,
    bucket: aws.s3.Bucket,
    key_arn: pulumi.Input[str],
    child: pulumi.ResourceOptions,
    keep: pulumi.ResourceOptions,
) -> None:
    """`<name>-public-access`, `-ownership`, `-encryption` (with `child`) and `-versioning`
    (with `keep`: versioning is what protects the data, so it is kept like the bucket)."""
    aws.s3.BucketPublicAccessBlock(
        f"{name}-public-access",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=child,
    )
    aws.s3.BucketOwnershipControls(
        f"{name}-ownership",
        bucket=bucket.id,
        rule={"object_ownership": "BucketOwnerEnforced"},
        opts=child,
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-encryption",
        bucket=bucket.id,
        rules=[
            {
                "apply_server_side_encryption_by_default": {
                    "sse_algorithm": "aws:kms",
                    "kms_master_key_id": key_arn,
                },
                "bucket_key_enabled": True,
            }
        ],
        opts=child,
    )
    aws.s3.BucketVersioning(
        f"{name}-versioning",
        bucket=bucket.id,
        versioning_configuration={"status": "Enabled"},
        opts=keep,
    )
