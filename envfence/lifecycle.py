"""The AWS steps of `envfence experiment conclude <id>`: archive, residue check, stack file.

An experiment stack `experiment-<id>` is concluded by one procedure (the CLI runs the steps in
order); this module holds the steps that talk to AWS, plus the last one:

2. `archive_snapshot` (RDS) and `archive_results` (S3): keep what must outlive the experiment,
   *before* `pulumi destroy` removes the database, the buckets and schedules the key's deletion;
3. (the CLI: `pulumi destroy`);
4. `residue`: after the destroy, list whatever of the experiment is still there;
5. `remove_stack_file`: delete `Pulumi.experiment-<id>.yaml`.

Every step is idempotent and safe to re-run after a failure at any point: each looks at what
exists before it creates anything, names what it creates deterministically, and reports
"already done" when there is nothing left to do. An AWS error never escapes as a traceback:
botocore's `ClientError` and `BotoCoreError` (connection failures, waiter timeouts) become a
"failed" `StepResult` naming the resource and the error, and the CLI decides what to print.

Clients are boto3 clients made by the caller (credentials, region, endpoint are the caller's
business); this module never creates a session of its own. Names come from `envfence.naming`, the
one place that decides what things are called.

Which principal runs these steps is the caller's decision; see the note on permissions in
`archive_results` (the buckets' and key's policies decide, not this code).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    WaiterError,
)

from envfence import naming

Status = Literal["done", "already done", "failed", "skipped"]

# Step names, as the CLI prints them.
STEP_SNAPSHOT = "archive-snapshot"
STEP_RESULTS = "archive-results"
STEP_RESIDUE = "residue"
STEP_STACK_FILE = "remove-stack-file"

ARCHIVED_BY = "envfence"
TAG_ARCHIVED_BY = "archived-by"
TAG_EXPIRES = "archive-expires-on"
RESULTS_STORE = "results"
MANIFEST_NAME = "MANIFEST.json"

# User metadata of every archived object (sent as x-amz-meta-<name>).
META_SOURCE_BUCKET = "source-bucket"
META_SOURCE_KEY = "source-key"
META_SOURCE_VERSION = "source-version-id"
META_SOURCE_ETAG = "source-etag"
META_ARCHIVED_AT = "archived-at"
META_EXPIRES = TAG_EXPIRES

# CopyObject copies an object of up to 5 GB in one request; anything larger must be copied in
# parts with UploadPartCopy (parts of 5 MiB to 5 GiB, at most 10,000 of them).
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_UploadPartCopy.html
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/CopyingObjectsMPUapi.html
COPY_OBJECT_LIMIT = 5 * 1024**3
PART_SIZE = 512 * 1024**2
MAX_PARTS = 10_000

_STACK_FILE_RE = re.compile(r"^Pulumi\.experiment-[a-z0-9][a-z0-9-]*\.yaml$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
# Every physical name envfence gives an environment's resources is its prefix, or the prefix
# plus one dash-free word (`<prefix>-service`, `<prefix>-worker`, `<prefix>-alerts`; queues add
# `-dlq` to that word). Matching exactly that shape keeps a stack whose name extends this one
# (`experiment-ml` vs `experiment-ml-v2`: `envfence-experiment-ml-v2-worker`) out of this one's
# residue, which a bare prefix match would not.
_WORD = r"[a-z0-9]+"


@dataclass(frozen=True)
class StepResult:
    """What one step did: `status` is "done" (it changed something), "already done" (nothing
    was left to do), "failed" (`detail` names the resource and the error) or "skipped"."""

    step: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass(frozen=True)
class Target:
    """The experiment being concluded, and where its archive goes.

    `db_instance_identifier` and `results_bucket` are what `infra/` declares for the stack
    (`naming.db_identifier`, `naming.bucket_name(..., "results", account)`): build a Target with
    `Target.for_experiment` rather than by hand. `archive_bucket` is the account's archive, a
    bucket of another stack that outlives every experiment; `archive_key_arn` is the KMS key ARN
    (a key ARN, not an alias) the archived DB snapshot is re-encrypted with, or None for an
    unencrypted DB instance (see `archive_snapshot`).

    Layout in the archive bucket: everything of one experiment under `archive_prefix`,
    `<experiment-id>/`; the results objects under `<experiment-id>/results/<their key>`, and the
    manifest at `<experiment-id>/MANIFEST.json`. Keeping the objects one level down means no
    results object (not even one called `MANIFEST.json`) can overwrite the manifest, and other
    stores could be archived next to them later. Experiment ids are unique per account (the
    stack name contains them), so prefixes never collide; `<id>/` ends in a slash, so `ab/` is
    not a prefix of `ab-c/`.
    """

    project: str
    stack: str
    experiment_id: str
    account: str
    region: str
    db_instance_identifier: str
    results_bucket: str
    archive_bucket: str
    archive_key_arn: str | None = None

    def __post_init__(self) -> None:
        if self.stack != f"experiment-{self.experiment_id}":
            raise ValueError(
                f"stack {self.stack!r} is not the stack of experiment {self.experiment_id!r} "
                f"(expected experiment-{self.experiment_id})"
            )
        if not _ACCOUNT_RE.match(self.account):
            raise ValueError(f"account {self.account!r} is not a 12-digit AWS account id")
        if not self.archive_bucket:
            raise ValueError("an archive bucket is required")
        if self.archive_bucket == self.results_bucket:
            raise ValueError("the archive bucket must not be the experiment's own results bucket")

    @classmethod
    def for_experiment(
        cls,
        project: str,
        experiment_id: str,
        account: str,
        region: str,
        *,
        archive_bucket: str,
        archive_key_arn: str | None = None,
    ) -> Target:
        """The Target of stack `experiment-<experiment_id>`, every name from `envfence.naming`."""
        stack = f"experiment-{experiment_id}"
        return cls(
            project=project,
            stack=stack,
            experiment_id=experiment_id,
            account=account,
            region=region,
            db_instance_identifier=naming.db_identifier(project, stack),
            results_bucket=naming.bucket_name(project, stack, RESULTS_STORE, account),
            archive_bucket=archive_bucket,
            archive_key_arn=archive_key_arn,
        )

    @property
    def prefix(self) -> str:
        """The prefix of the stack's physical names (`naming.prefix`)."""
        return naming.prefix(self.project, self.stack)

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    @property
    def archive_prefix(self) -> str:
        return f"{self.experiment_id}/"

    @property
    def results_prefix(self) -> str:
        return f"{self.archive_prefix}{RESULTS_STORE}/"

    @property
    def manifest_key(self) -> str:
        return f"{self.archive_prefix}{MANIFEST_NAME}"

    @property
    def snapshot_id(self) -> str:
        """The archived snapshot: `<db identifier>-final`, the name production's final snapshot
        has too (`infra/components/data.py`), e.g. `envfence-experiment-<id>-final`."""
        return f"{self.db_instance_identifier}-final"

    @property
    def staging_snapshot_id(self) -> str:
        """With an archive key, the snapshot is taken under the experiment's key first, then
        copied to `snapshot_id` under the archive key; this is the first one's name."""
        return f"{self.db_instance_identifier}-final-staging"

    @property
    def snapshot_arn(self) -> str:
        """The archived snapshot's ARN: pass it to `residue` in `keep_arns`."""
        return f"arn:{self.partition}:rds:{self.region}:{self.account}:snapshot:{self.snapshot_id}"


def _error(exc: BaseException) -> str:
    """One line for an AWS error: `Code: message` for a ClientError, the text otherwise."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "Error")
        message = err.get("Message") or ""
        return f"{code}: {message}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def _code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


AWS_ERRORS = (ClientError, BotoCoreError)


def _expires_on(today: date | None, expire_after_days: int) -> str:
    if expire_after_days < 1:
        raise ValueError(f"expire_after_days must be at least 1, not {expire_after_days}")
    start = today if today is not None else datetime.now(UTC).date()
    return (start + timedelta(days=expire_after_days)).isoformat()


# --- step 2a: the final DB snapshot ------------------------------------------------------------


def snapshot_tags(target: Target, expires_on: str) -> list[dict[str, str]]:
    """The archived snapshot's tags: the environment's classification tags (so the archive is
    still recognisably this experiment's data), who archived it and until when it is kept."""
    return [
        {"Key": naming.TAG_ENVIRONMENT, "Value": target.stack},
        {"Key": naming.TAG_TIER, "Value": naming.TIER_EXPERIMENT},
        {"Key": naming.TAG_EXPERIMENT_ID, "Value": target.experiment_id},
        {
            "Key": naming.TAG_CLASSIFICATION,
            "Value": naming.CLASSIFICATION[naming.TIER_EXPERIMENT],
        },
        {"Key": TAG_ARCHIVED_BY, "Value": ARCHIVED_BY},
        {"Key": TAG_EXPIRES, "Value": expires_on},
    ]


def _describe_snapshot(rds: Any, snapshot_id: str) -> dict[str, Any] | None:
    try:
        found = rds.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)["DBSnapshots"]
    except ClientError as exc:
        if _code(exc) == "DBSnapshotNotFound":
            return None
        raise
    return dict(found[0]) if found else None


def _describe_instance(rds: Any, identifier: str) -> dict[str, Any] | None:
    try:
        found = rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"]
    except ClientError as exc:
        if _code(exc) == "DBInstanceNotFound":
            return None
        raise
    return dict(found[0]) if found else None


def _key_id(key: str) -> str:
    """`arn:...:key/<id>` and `<id>` name the same key."""
    return key.rsplit("key/", 1)[-1]


def _key_problem(snapshot: Mapping[str, Any], target: Target) -> str | None:
    """Why an available snapshot is not the archive we want, or None."""
    sid = snapshot["DBSnapshotIdentifier"]
    if target.archive_key_arn is None:
        if snapshot.get("Encrypted"):
            return (
                f"snapshot {sid} is encrypted with {snapshot.get('KmsKeyId')}, and no archive key "
                "was given: the experiment's key is deleted after `pulumi destroy`; pass the "
                "archive key, delete this snapshot and re-run"
            )
        return None
    have = snapshot.get("KmsKeyId")
    if (
        not snapshot.get("Encrypted")
        or not have
        or _key_id(have) != _key_id(target.archive_key_arn)
    ):
        return (
            f"snapshot {sid} exists but is encrypted with {have or 'no key'}, not the archive "
            f"key {target.archive_key_arn}; delete it (or pass its key) and re-run"
        )
    return None


def archive_snapshot(
    rds: Any,
    target: Target,
    *,
    expire_after_days: int,
    today: date | None = None,
    wait_delay: float = 30,
    wait_max_attempts: int = 240,
) -> StepResult:
    """Step 2a: a final snapshot of the experiment's DB instance that outlives the stack.

    Experiment instances are declared with `skip_final_snapshot` (infra/components/data.py), so
    `pulumi destroy` keeps nothing: this step, run before the destroy, is the only copy. The
    snapshot is `target.snapshot_id` (`<db identifier>-final`), tagged with `snapshot_tags`
    (environment, tier, experiment-id, data-classification, `archived-by: envfence` and
    `archive-expires-on: <today + expire_after_days>`), and waited for with the
    `db_snapshot_available` waiter (`wait_delay` seconds between polls, `wait_max_attempts`
    polls; a timeout is a failed result, and a re-run resumes waiting).

    Encryption. The instance is encrypted with the experiment's own KMS key, and `pulumi
    destroy` schedules that key for deletion: once the waiting period ends the key and
    everything encrypted under it are unrecoverable, and during the waiting period the key is
    unusable (KeyState PendingDeletion) so the snapshot could not be restored or copied either
    (https://docs.aws.amazon.com/kms/latest/APIReference/API_ScheduleKeyDeletion.html,
    https://docs.aws.amazon.com/kms/latest/developerguide/deleting-keys.html). So with
    `target.archive_key_arn`, the snapshot is taken as `staging_snapshot_id` (under the
    experiment's key, which CreateDBSnapshot cannot change) and copied with CopyDBSnapshot and
    `KmsKeyId` = the archive key, which re-encrypts the copy under that key
    (https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CopyDBSnapshot.html,
    parameter KmsKeyId); the copy gets the same tags (`Tags`, not `CopyTags`, so the staging
    snapshot's tags, which RDS may have copied from the instance, cannot leak in). The staging
    snapshot is deleted only once the copy is available. Without an archive key the instance
    must be unencrypted (tests; no envfence stack declares one): a snapshot under the
    experiment's key is refused rather than reported as archived.
    https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBSnapshot.html

    On re-run: final snapshot available (and under the right key) -> "already done" (a leftover
    staging snapshot is deleted); final snapshot still being created or copied -> wait for it;
    staging snapshot without final -> wait for it and copy; nothing yet -> snapshot the
    instance. No instance and no snapshot -> failed: nothing to archive.
    """
    step = STEP_SNAPSHOT
    final_id, staging_id = target.snapshot_id, target.staging_snapshot_id
    expires_on = _expires_on(today, expire_after_days)
    tags = snapshot_tags(target, expires_on)
    current = final_id

    def wait(snapshot_id: str) -> dict[str, Any]:
        rds.get_waiter("db_snapshot_available").wait(
            DBSnapshotIdentifier=snapshot_id,
            WaiterConfig={"Delay": wait_delay, "MaxAttempts": wait_max_attempts},
        )
        found = _describe_snapshot(rds, snapshot_id)
        if found is None:
            raise LookupError(f"snapshot {snapshot_id} disappeared while waiting for it")
        return found

    def drop_staging() -> str:
        if target.archive_key_arn is None or _describe_snapshot(rds, staging_id) is None:
            return ""
        rds.delete_db_snapshot(DBSnapshotIdentifier=staging_id)
        return f"; deleted the staging snapshot {staging_id}"

    try:
        final = _describe_snapshot(rds, final_id)
        if final is not None:
            waited = final.get("Status") != "available"
            if waited:
                final = wait(final_id)
            problem = _key_problem(final, target)
            if problem:
                return StepResult(step, "failed", problem)
            cleanup = drop_staging()
            return StepResult(
                step,
                "done" if waited or cleanup else "already done",
                f"snapshot {final_id} is available ({final.get('DBSnapshotArn')}){cleanup}",
            )

        staging = None
        if target.archive_key_arn is not None:
            current = staging_id
            staging = _describe_snapshot(rds, staging_id)
        if staging is None:
            instance = _describe_instance(rds, target.db_instance_identifier)
            if instance is None:
                return StepResult(
                    step,
                    "failed",
                    f"nothing to archive: DB instance {target.db_instance_identifier} does not "
                    f"exist and there is no snapshot {final_id}. If the stack was already "
                    "destroyed without this step, its database is gone: experiment instances "
                    "skip the final snapshot",
                )
            if target.archive_key_arn is None and instance.get("StorageEncrypted"):
                return StepResult(
                    step,
                    "failed",
                    f"DB instance {target.db_instance_identifier} is encrypted with "
                    f"{instance.get('KmsKeyId')}, which `pulumi destroy` schedules for deletion: "
                    "a snapshot under it would become unreadable. Pass an archive key",
                )
            current = staging_id if target.archive_key_arn else final_id
            rds.create_db_snapshot(
                DBSnapshotIdentifier=current,
                DBInstanceIdentifier=target.db_instance_identifier,
                Tags=tags,
            )
        source = wait(current)
        if target.archive_key_arn is not None:
            current = final_id
            rds.copy_db_snapshot(
                SourceDBSnapshotIdentifier=staging_id,
                TargetDBSnapshotIdentifier=final_id,
                KmsKeyId=target.archive_key_arn,
                Tags=tags,
                CopyTags=False,
            )
            source = wait(final_id)
        problem = _key_problem(source, target)
        if problem:
            return StepResult(step, "failed", problem)
        cleanup = drop_staging()
        key = f" under {target.archive_key_arn}" if target.archive_key_arn else ""
        return StepResult(
            step,
            "done",
            f"snapshot {final_id}{key} is available ({source.get('DBSnapshotArn')}), kept until "
            f"{expires_on}{cleanup}",
        )
    except WaiterError as exc:
        return StepResult(
            step,
            "failed",
            f"snapshot {current} did not become available ({_error(exc)}); re-run to keep "
            "waiting (if it failed, delete it first)",
        )
    except (*AWS_ERRORS, LookupError) as exc:
        return StepResult(step, "failed", f"snapshot {current}: {_error(exc)}")


# --- step 2b: the results bucket ---------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    key: str
    version_id: str
    size: int
    etag: str


def _tagging(target: Target, expires_on: str) -> str:
    return urllib.parse.urlencode(
        [
            (naming.TAG_EXPERIMENT_ID, target.experiment_id),
            (naming.TAG_ENVIRONMENT, target.stack),
            (TAG_EXPIRES, expires_on),
        ]
    )


def _current_objects(s3: Any, target: Target) -> Iterator[_Source]:
    """The current version of every object of the results bucket.

    ListObjectVersions rather than ListObjectsV2: only it returns each object's version id
    (IsLatest marks the current one, and a key whose latest entry is a delete marker has no
    current object), which the copy pins and the idempotence check compares; ListObjectsV2
    would need one HeadObject per object for it. Paginated by the SDK (KeyMarker/VersionIdMarker).
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectVersions.html"""
    pages = s3.get_paginator("list_object_versions").paginate(
        Bucket=target.results_bucket, ExpectedBucketOwner=target.account
    )
    for page in pages:
        for version in page.get("Versions", []):
            if version.get("IsLatest"):
                yield _Source(
                    key=version["Key"],
                    version_id=version.get("VersionId") or "null",
                    size=int(version["Size"]),
                    etag=str(version.get("ETag", "")).strip('"'),
                )


def _archived_sizes(s3: Any, target: Target) -> dict[str, int]:
    """Key -> size of what is already under the experiment's results prefix in the archive."""
    sizes: dict[str, int] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=target.archive_bucket,
        Prefix=target.results_prefix,
        ExpectedBucketOwner=target.account,
    )
    for page in pages:
        for obj in page.get("Contents", []):
            sizes[obj["Key"]] = int(obj["Size"])
    return sizes


# System-defined metadata a copy keeps only when given again (HeadObject name -> request name).
_SYSTEM_METADATA = (
    "ContentType",
    "ContentEncoding",
    "ContentDisposition",
    "ContentLanguage",
    "CacheControl",
    "Expires",
)


def _system_metadata(s3: Any, target: Target, src: _Source) -> dict[str, Any]:
    """The source version's system-defined metadata, as CopyObject parameters."""
    extra = {"VersionId": src.version_id} if src.version_id != "null" else {}
    head = s3.head_object(
        Bucket=target.results_bucket,
        Key=src.key,
        ExpectedBucketOwner=target.account,
        **extra,
    )
    return {name: head[name] for name in _SYSTEM_METADATA if head.get(name) not in (None, "")}


def _copy_source(target: Target, src: _Source) -> dict[str, str]:
    source = {"Bucket": target.results_bucket, "Key": src.key}
    if src.version_id != "null":
        source["VersionId"] = src.version_id
    return source


def _multipart_copy(
    s3: Any,
    target: Target,
    src: _Source,
    archive_key: str,
    metadata: dict[str, str],
    tagging: str,
    part_size: int,
    system: Mapping[str, Any] | None = None,
) -> None:
    """Copy one object in parts (UploadPartCopy), for objects over CopyObject's 5 GB.

    Not boto3's managed `s3.copy`: its TransferManager does not accept
    ExpectedSourceBucketOwner (not in ALLOWED_COPY_ARGS), so the parts could not pin the source
    bucket's owner. Here every part carries both expected owners, the pinned version and
    `CopySourceIfMatch` (the listed ETag), and a failed copy aborts its upload, so no orphaned
    parts stay behind in the archive bucket.
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_UploadPartCopy.html"""
    size = max(part_size, math.ceil(src.size / MAX_PARTS))
    upload = s3.create_multipart_upload(
        Bucket=target.archive_bucket,
        Key=archive_key,
        Metadata=metadata,
        **dict(system or {}),
        Tagging=tagging,
        ExpectedBucketOwner=target.account,
    )["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, src.size, size), start=1):
            end = min(start + size, src.size) - 1
            extra = {"CopySourceIfMatch": f'"{src.etag}"'} if src.etag else {}
            result = s3.upload_part_copy(
                Bucket=target.archive_bucket,
                Key=archive_key,
                UploadId=upload,
                PartNumber=number,
                CopySource=_copy_source(target, src),
                CopySourceRange=f"bytes={start}-{end}",
                ExpectedBucketOwner=target.account,
                ExpectedSourceBucketOwner=target.account,
                **extra,
            )
            parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
        s3.complete_multipart_upload(
            Bucket=target.archive_bucket,
            Key=archive_key,
            UploadId=upload,
            MultipartUpload={"Parts": parts},
            ExpectedBucketOwner=target.account,
        )
    except BaseException:
        with contextlib.suppress(*AWS_ERRORS):  # the original error is the one to report
            s3.abort_multipart_upload(
                Bucket=target.archive_bucket,
                Key=archive_key,
                UploadId=upload,
                ExpectedBucketOwner=target.account,
            )
        raise


def _manifest_entry(src: _Source, archive_key: str, archived_at: str, expires: str) -> Any:
    return {
        "key": src.key,
        "archive_key": archive_key,
        "source_version_id": src.version_id,
        "size": src.size,
        "etag": src.etag,
        "archived_at": archived_at,
        "expires_on": expires,
    }


def _read_manifest(s3: Any, target: Target) -> bytes | None:
    try:
        body = s3.get_object(
            Bucket=target.archive_bucket,
            Key=target.manifest_key,
            ExpectedBucketOwner=target.account,
        )["Body"]
        return bytes(body.read())
    except ClientError as exc:
        if _code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


# Pipeline runs write `runs/<run-id>/manifest.json` into the results store
# (app/worker/run.py): their inputs by S3 version id and SHA-256, the flag set version, the code
# image and their outputs by version id.
RUN_MANIFEST_RE = re.compile(r"^runs/([a-z0-9][a-z0-9-]{0,62})/manifest\.json$")


def _runs(s3: Any, target: Target, sources: list[_Source]) -> list[dict[str, Any]]:
    """The pipeline runs among `sources`, each with whether every output its manifest names is
    archived at the recorded version (the current one): then the run can be replayed from the
    archive's copy of its results. A manifest that cannot be read says so; it is archived anyway."""
    current = {src.key: src.version_id for src in sources}
    runs = []
    for src in sources:
        m = RUN_MANIFEST_RE.match(src.key)
        if m is None:
            continue
        entry: dict[str, Any] = {
            "run_id": m.group(1),
            "manifest_key": f"{target.results_prefix}{src.key}",
        }
        try:
            body = s3.get_object(
                Bucket=target.results_bucket,
                Key=src.key,
                VersionId=src.version_id,
                ExpectedBucketOwner=target.account,
            )["Body"].read()
            run = json.loads(body)
            outputs = run["outputs"]
            entry["flag_set_version"] = run.get("flag_set_version")
            entry["code_image"] = run.get("code_image")
            entry["inputs"] = len(run["inputs"])
            entry["outputs_archived"] = all(
                current.get(o["key"]) == o["version_id"] for o in outputs
            )
        except (*AWS_ERRORS, ValueError, KeyError, TypeError) as exc:
            entry["outputs_archived"] = False
            entry["unreadable"] = _error(exc) if isinstance(exc, AWS_ERRORS) else str(exc)
        runs.append(entry)
    return runs


def archive_results(
    s3: Any,
    target: Target,
    *,
    expire_after_days: int,
    today: date | None = None,
    copy_object_limit: int = COPY_OBJECT_LIMIT,
    part_size: int = PART_SIZE,
    max_failures_shown: int = 5,
) -> StepResult:
    """Step 2b: copy every current object of the results bucket into the archive bucket.

    Each current object `<key>` (see `_current_objects`) becomes
    `s3://<archive>/<id>/results/<key>`, copied server-side from its pinned version with
    CopyObject, `MetadataDirective=REPLACE` and user metadata `source-bucket`, `source-key`
    (URL-quoted: metadata must be ASCII), `source-version-id`, `source-etag`, `archived-at`
    (UTC, ISO 8601) and `archive-expires-on`, and `TaggingDirective=REPLACE` with
    `experiment-id=<id>&environment=<stack>&archive-expires-on=<date>` (the date is
    `today + expire_after_days`, so the archive bucket's lifecycle rules can expire by tag).
    Objects over `copy_object_limit` (5 GB, CopyObject's limit) are copied in parts
    (`_multipart_copy`). Every request carries `ExpectedBucketOwner` and, for copies,
    `ExpectedSourceBucketOwner` = the account, so S3 refuses (403) rather than reads from or
    writes to a bucket of another account that took the name
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html,
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-owner-condition.html).

    No SSE header is sent: a copy without encryption headers is encrypted with the destination
    bucket's default encryption (the archive's key), not the source's key, which `pulumi
    destroy` schedules for deletion
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-encryption.html, and
    "ServerSideEncryption" on the CopyObject page).

    Idempotence: an archive object with the same size whose `source-version-id` metadata equals
    the current version id is not copied again (an object overwritten since a previous run has
    a new version id and is copied again). Then the manifest `<id>/MANIFEST.json` is written:
    every archived key with its archive key, source version id, size, ETag, archive time and
    expiry (both read back from the archived object, so a re-run produces the same bytes and
    does not rewrite it). It is written only when every object is archived, so its presence
    means the archive is complete. Objects copied by an earlier run and since deleted from the
    results bucket stay in the archive but are not in the manifest; nothing here deletes from
    the archive.

    On re-run: nothing to copy and an identical manifest -> "already done"; objects left over by
    an interrupted run are copied and the manifest written -> "done". A failed object (e.g.
    InvalidObjectState: an object already transitioned to Glacier Flexible Retrieval must be
    restored first) fails the step naming the key; the others are still copied. If the results
    bucket no longer exists but the manifest does, the step is "already done".

    Permissions are not this code's to decide, but note: the results bucket's policy and the
    environment key's policy (infra/components/data.py, keys.py) decide who may read these
    objects and decrypt them through S3, and the archive bucket's who may write there. The
    principal running this step needs both, and must not be an environment role (their
    boundary denies S3 outside their own buckets).
    """
    step = STEP_RESULTS
    expires_on = _expires_on(today, expire_after_days)
    tagging = _tagging(target, expires_on)
    where = f"s3://{target.archive_bucket}/{target.results_prefix}"
    try:
        sources = list(_current_objects(s3, target))
    except ClientError as exc:
        if _code(exc) != "NoSuchBucket":
            return StepResult(
                step, "failed", f"listing s3://{target.results_bucket}: {_error(exc)}"
            )
        try:
            existing = _read_manifest(s3, target)
        except AWS_ERRORS as exc2:
            return StepResult(
                step,
                "failed",
                f"s3://{target.archive_bucket}/{target.manifest_key}: {_error(exc2)}",
            )
        if existing is not None:
            return StepResult(
                step,
                "already done",
                f"results bucket {target.results_bucket} is gone; its archive is complete "
                f"(s3://{target.archive_bucket}/{target.manifest_key})",
            )
        return StepResult(
            step,
            "failed",
            f"results bucket {target.results_bucket} does not exist and there is no manifest "
            f"s3://{target.archive_bucket}/{target.manifest_key}: nothing left to archive",
        )
    except BotoCoreError as exc:
        return StepResult(step, "failed", f"listing s3://{target.results_bucket}: {_error(exc)}")

    try:
        archived = _archived_sizes(s3, target)
    except AWS_ERRORS as exc:
        return StepResult(step, "failed", f"listing {where}: {_error(exc)}")

    entries = []
    copied = skipped = 0
    failures: list[str] = []
    for src in sources:
        archive_key = f"{target.results_prefix}{src.key}"
        try:
            if archived.get(archive_key) == src.size:
                head = s3.head_object(
                    Bucket=target.archive_bucket,
                    Key=archive_key,
                    ExpectedBucketOwner=target.account,
                )
                meta = head.get("Metadata", {})
                if meta.get(META_SOURCE_VERSION) == src.version_id:
                    skipped += 1
                    entries.append(
                        _manifest_entry(
                            src,
                            archive_key,
                            meta.get(META_ARCHIVED_AT, ""),
                            meta.get(META_EXPIRES, ""),
                        )
                    )
                    continue
            archived_at = datetime.now(UTC).replace(microsecond=0).isoformat()
            # MetadataDirective REPLACE replaces *all* metadata, the system-defined headers
            # too: carry the source version's over, so a gzip object stays gzip.
            # https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html
            system = _system_metadata(s3, target, src)
            metadata = {
                META_SOURCE_BUCKET: target.results_bucket,
                META_SOURCE_KEY: urllib.parse.quote(src.key, safe="/"),
                META_SOURCE_VERSION: src.version_id,
                META_SOURCE_ETAG: src.etag,
                META_ARCHIVED_AT: archived_at,
                META_EXPIRES: expires_on,
            }
            if src.size > copy_object_limit:
                _multipart_copy(s3, target, src, archive_key, metadata, tagging, part_size, system)
            else:
                s3.copy_object(
                    Bucket=target.archive_bucket,
                    Key=archive_key,
                    CopySource=_copy_source(target, src),
                    MetadataDirective="REPLACE",
                    Metadata=metadata,
                    **system,
                    TaggingDirective="REPLACE",
                    Tagging=tagging,
                    ExpectedBucketOwner=target.account,
                    ExpectedSourceBucketOwner=target.account,
                )
            copied += 1
            entries.append(_manifest_entry(src, archive_key, archived_at, expires_on))
        except AWS_ERRORS as exc:
            hint = ""
            if _code(exc) == "InvalidObjectState":
                hint = " (in an archive storage class: restore it first)"
            failures.append(f"{src.key} (version {src.version_id}): {_error(exc)}{hint}")

    counts = f"{copied} copied, {skipped} already archived"
    if failures:
        shown = "; ".join(failures[:max_failures_shown])
        more = len(failures) - max_failures_shown
        tail = f"; and {more} more" if more > 0 else ""
        return StepResult(
            step,
            "failed",
            f"{len(failures)} of {len(sources)} objects of s3://{target.results_bucket} not "
            f"archived to {where} ({counts}); manifest not written; re-run to finish: "
            f"{shown}{tail}",
        )

    entries.sort(key=lambda e: e["key"])
    manifest = {
        "experiment_id": target.experiment_id,
        "stack": target.stack,
        "source_bucket": target.results_bucket,
        "archive_bucket": target.archive_bucket,
        "prefix": target.results_prefix,
        "object_count": len(entries),
        "total_bytes": sum(e["size"] for e in entries),
        "objects": entries,
        "runs": _runs(s3, target, sources),
    }
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    manifest_url = f"s3://{target.archive_bucket}/{target.manifest_key}"
    try:
        unchanged = _read_manifest(s3, target) == body
        if not unchanged:
            s3.put_object(
                Bucket=target.archive_bucket,
                Key=target.manifest_key,
                Body=body,
                ContentType="application/json",
                Tagging=tagging,
                ExpectedBucketOwner=target.account,
            )
    except AWS_ERRORS as exc:
        return StepResult(
            step,
            "failed",
            f"{len(sources)} objects archived ({counts}), "
            f"but the manifest {manifest_url}: {_error(exc)}",
        )
    status: Status = "already done" if copied == 0 and unchanged else "done"
    runs = manifest["runs"]
    stale = [r["run_id"] for r in runs if not r["outputs_archived"]]
    run_note = ""
    if runs:
        run_note = f"; {len(runs)} pipeline run manifest(s)"
        if stale:
            run_note += (
                f", of which {len(stale)} name outputs that are no longer current "
                f"({', '.join(stale[:5])}): replay those from the results versions, not the archive"
            )
    return StepResult(
        step,
        status,
        f"{len(sources)} objects of s3://{target.results_bucket} in {where} ({counts}); "
        f"manifest {manifest_url} {'unchanged' if unchanged else 'written'}{run_note}",
    )


# --- step 4: residue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidueItem:
    """Something of the experiment still there: `resource` is an ARN where one is known (a
    name otherwise), `why` says how it was found. `service` "error" items are checks that could
    not run: the residue check fails closed, so an unreadable service is never silence."""

    service: str
    resource: str
    why: str


class _Found:
    def __init__(self, keep: Collection[str]) -> None:
        self.keep = set(keep)
        self.items: dict[str, ResidueItem] = {}

    def add(self, service: str, resource: str, why: str) -> None:
        if resource in self.keep:
            return
        prior = self.items.get(resource)
        if prior is not None:
            if why not in prior.why:
                self.items[resource] = ResidueItem(service, resource, f"{prior.why}; {why}")
            return
        self.items[resource] = ResidueItem(service, resource, why)


def _clients(source: Any, region: str) -> Callable[[str], Any]:
    """service name -> client, from a mapping or from a session (one client per service)."""
    if isinstance(source, Mapping):
        return lambda name: source[name]
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            cache[name] = source.client(name, region_name=region)
        return cache[name]

    return get


def _paginate(client: Any, operation: str, **kwargs: Any) -> Iterable[dict[str, Any]]:
    pages: Iterable[dict[str, Any]] = client.get_paginator(operation).paginate(**kwargs)
    return pages


_PENDING_KEY_STATES = ("PendingDeletion", "PendingReplicaDeletion")


def _task_definition_status(ecs: Any, arn: str) -> str:
    try:
        return str(ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]["status"])
    except AWS_ERRORS as exc:
        if _code(exc) in ("ClientException", "InvalidParameterException"):
            return "gone"
        raise


def _key_state(kms: Any, key: str) -> str:
    return str(kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"])


def residue(
    clients: Any,
    target: Target,
    *,
    keep_arns: Collection[str] = (),
) -> list[ResidueItem]:
    """Step 4: what of the experiment is still there after `pulumi destroy`.

    `clients` is a boto3 Session for the experiment's account (anything with
    `.client(service_name, region_name=...)`; clients are made for `target.region`) or a
    mapping from service name to client. Two nets:

    * the Resource Groups Tagging API, `GetResources` with `experiment-id = <id>`, paginated:
      every resource the provider's default tags reached in the region (VPC parts, alarms,
      task definitions, AppConfig's deployment strategy... are found only this way). A KMS key
      found there that is PendingDeletion (or PendingReplicaDeletion) is not residue: that is
      what destroy leaves for 7 to 30 days. The API returns only resources that are or were
      tagged, and none of IAM's.
      https://docs.aws.amazon.com/resourcegroupstagging/latest/APIReference/API_GetResources.html
    * the services' own listings, for what was never tagged, by the names `envfence.naming` gives:
      S3 buckets `<prefix>-<store>-<account>` (ListBuckets; data stores and the audit bucket);
      the DB instance, its snapshots (manual and automated) and retained automated backups;
      SQS queues `<prefix>-<word>[-dlq]` (ListQueues, QueueNamePrefix); CloudWatch log groups
      under `/<project>/<stack>/` and RDS's `/aws/rds/instance/<db>/`; the KMS alias
      `alias/<project>/<stack>` unless its key is pending deletion; ECR repositories, IAM roles
      and IAM customer-managed policies `<prefix>-<word>`; the ECS cluster, AppConfig
      application and CloudTrail trail named `<prefix>`; SNS topics `<prefix>-<word>`;
      EventBridge Scheduler schedules `<prefix>-<word>` (ListSchedules, NamePrefix, every
      group). See `_WORD` for why names are matched by shape, not by bare prefix.

    Excluded: anything whose ARN (or, for name-only items, name) is in `keep_arns` (pass
    `target.snapshot_arn`), and the archive bucket and its objects (the Tagging API never
    returns S3 objects; the bucket is excluded by ARN and name). Duplicates found by both nets
    are reported once, with both reasons. A listing that fails becomes a `service="error"` item,
    so the check fires when it cannot look. An empty list means: only the archive remains.

    Tested against moto except AppConfig's ListApplications, which moto 5.2 does not implement
    (the tests give a stub client for "appconfig"; the real call path is the same).
    """
    client = _clients(clients, target.region)
    prefix = target.prefix
    region, account, part = target.region, target.account, target.partition
    archive_arn = f"arn:{part}:s3:::{target.archive_bucket}"
    found = _Found({*keep_arns, archive_arn, target.archive_bucket})
    exp_tag = f"tagged {naming.TAG_EXPERIMENT_ID}={target.experiment_id}"
    word = re.compile(rf"^{re.escape(prefix)}-{_WORD}$")

    def check(service: str, what: str, run: Callable[[], None]) -> None:
        try:
            run()
        except AWS_ERRORS as exc:
            found.add("error", f"{service}:{what}", f"could not check ({_error(exc)})")

    def tagged() -> None:
        kms = client("kms")
        pages = _paginate(
            client("resourcegroupstaggingapi"),
            "get_resources",
            TagFilters=[{"Key": naming.TAG_EXPERIMENT_ID, "Values": [target.experiment_id]}],
        )
        for page in pages:
            for mapping in page.get("ResourceTagMappingList", []):
                arn = mapping["ResourceARN"]
                service = arn.split(":")[2] if arn.count(":") >= 2 else "unknown"
                if arn.startswith(f"{archive_arn}/"):
                    continue
                if service == "kms" and ":key/" in arn:
                    state = _key_state(kms, arn)
                    if state in _PENDING_KEY_STATES:
                        continue
                    found.add(service, arn, f"{exp_tag}; key state {state}")
                    continue
                if service == "ecs" and ":task-definition/" in arn:
                    # Destroy deregisters a task definition; AWS keeps INACTIVE revisions,
                    # tags and all, "discoverable in your account indefinitely".
                    # https://docs.aws.amazon.com/AmazonECS/latest/developerguide/deregister-task-definition-v2.html
                    status = _task_definition_status(client("ecs"), arn)
                    if status in ("INACTIVE", "DELETE_IN_PROGRESS", "gone"):
                        continue
                    found.add(service, arn, f"{exp_tag}; task definition {status}")
                    continue
                # GetResources lists what is or was tagged, so a resource deleted moments ago
                # may still appear: it stays residue (fail closed), with the hint.
                found.add(service, arn, f"{exp_tag} (if it was just deleted, re-run in a while)")

    def buckets() -> None:
        shape = re.compile(rf"^{re.escape(prefix)}-[a-z][a-z0-9]{{0,11}}-{re.escape(account)}$")
        for page in _paginate(client("s3"), "list_buckets"):
            for bucket in page.get("Buckets", []):
                name = bucket["Name"]
                if shape.match(name) and name != target.archive_bucket:
                    found.add("s3", f"arn:{part}:s3:::{name}", f"bucket name matches {prefix}")

    def database() -> None:
        rds = client("rds")
        ident = target.db_instance_identifier
        instance = _describe_instance(rds, ident)
        if instance is not None:
            found.add(
                "rds",
                instance.get("DBInstanceArn", ident),
                f"DB instance {ident} ({instance.get('DBInstanceStatus')})",
            )
        # By filter, not DBInstanceIdentifier: that parameter must name an existing instance,
        # and after `pulumi destroy` it does not.
        # https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_DescribeDBSnapshots.html
        by_instance = [{"Name": "db-instance-id", "Values": [ident]}]
        for page in _paginate(rds, "describe_db_snapshots", Filters=by_instance):
            for snap in page.get("DBSnapshots", []):
                if snap.get("DBInstanceIdentifier", ident) != ident:
                    continue
                found.add(
                    "rds",
                    snap.get("DBSnapshotArn", snap["DBSnapshotIdentifier"]),
                    f"{snap.get('SnapshotType', '')} snapshot of {ident}".strip(),
                )
        # Retained automated backups; none at all is a 404 on this call.
        # https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_DescribeDBInstanceAutomatedBackups.html
        try:
            pages = list(
                _paginate(rds, "describe_db_instance_automated_backups", Filters=by_instance)
            )
        except AWS_ERRORS as exc:
            if _code(exc) not in ("DBInstanceAutomatedBackupNotFound", "DBInstanceNotFound"):
                raise
            pages = []
        for page in pages:
            for backup in page.get("DBInstanceAutomatedBackups", []):
                # "active" backups are the live instance's (reported above); "retained" ones
                # outlive it.
                if backup.get("DBInstanceIdentifier", ident) != ident:
                    continue
                if backup.get("Status", "retained") != "retained":
                    continue
                found.add(
                    "rds",
                    backup.get("DBInstanceAutomatedBackupsArn", f"automated-backups:{ident}"),
                    f"retained automated backups of {ident}",
                )

    def queues() -> None:
        shape = re.compile(rf"^{re.escape(prefix)}-{_WORD}(-dlq)?$")
        for page in _paginate(client("sqs"), "list_queues", QueueNamePrefix=f"{prefix}-"):
            for url in page.get("QueueUrls", []):
                name = url.rstrip("/").rsplit("/", 1)[-1]
                if shape.match(name):
                    found.add(
                        "sqs", f"arn:{part}:sqs:{region}:{account}:{name}", "queue name matches"
                    )

    def log_groups() -> None:
        logs = client("logs")
        rds_group = naming.rds_log_group_name(target.db_instance_identifier)
        for group_prefix in (
            f"{naming.log_group_prefix(target.project, target.stack)}/",
            rds_group.rsplit("/", 1)[0] + "/",
        ):
            pages = _paginate(logs, "describe_log_groups", logGroupNamePrefix=group_prefix)
            for page in pages:
                for group in page.get("logGroups", []):
                    arn = group.get("logGroupArn") or str(group.get("arn", "")).removesuffix(":*")
                    found.add("logs", arn, f"log group under {group_prefix}")

    def alias() -> None:
        kms = client("kms")
        name = naming.key_alias(target.project, target.stack)
        for page in _paginate(kms, "list_aliases"):
            for entry in page.get("Aliases", []):
                if entry.get("AliasName") != name:
                    continue
                key = entry.get("TargetKeyId")
                state = _key_state(kms, key) if key else "no key"
                if state in _PENDING_KEY_STATES:
                    continue
                found.add(
                    "kms",
                    entry.get("AliasArn", name),
                    f"alias {name} of key {key} ({state})",
                )

    def repositories() -> None:
        for page in _paginate(client("ecr"), "describe_repositories"):
            for repo in page.get("repositories", []):
                if word.match(repo["repositoryName"]):
                    found.add("ecr", repo["repositoryArn"], "repository name matches")

    def roles() -> None:
        iam = client("iam")
        for page in _paginate(iam, "list_roles"):
            for role in page.get("Roles", []):
                if word.match(role["RoleName"]):
                    found.add("iam", role["Arn"], "role name matches")
        for page in _paginate(iam, "list_policies", Scope="Local"):
            for policy in page.get("Policies", []):
                if word.match(policy["PolicyName"]):
                    found.add("iam", policy["Arn"], "policy name matches")

    def clusters() -> None:
        # A deleted cluster turns INACTIVE and "might remain discoverable in your account for
        # a period of time" (DeleteCluster); it holds nothing, so it is not residue.
        # https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DeleteCluster.html
        ecs = client("ecs")
        for page in _paginate(ecs, "list_clusters"):
            named = [a for a in page.get("clusterArns", []) if a.rsplit("/", 1)[-1] == prefix]
            if not named:
                continue
            for cluster in ecs.describe_clusters(clusters=named).get("clusters", []):
                if cluster.get("status") != "INACTIVE":
                    found.add(
                        "ecs",
                        cluster["clusterArn"],
                        f"cluster {prefix} ({cluster.get('status')})",
                    )

    def applications() -> None:
        for page in _paginate(client("appconfig"), "list_applications"):
            for app in page.get("Items", []):
                if app.get("Name") == prefix:
                    found.add(
                        "appconfig",
                        f"arn:{part}:appconfig:{region}:{account}:application/{app['Id']}",
                        f"application {prefix}",
                    )

    def trails() -> None:
        name = naming.trail_name(target.project, target.stack)
        for page in _paginate(client("cloudtrail"), "list_trails"):
            for trail in page.get("Trails", []):
                if trail.get("Name") == name:
                    found.add("cloudtrail", trail.get("TrailARN", name), f"trail {name}")

    def topics() -> None:
        for page in _paginate(client("sns"), "list_topics"):
            for topic in page.get("Topics", []):
                arn = topic["TopicArn"]
                if word.match(arn.rsplit(":", 1)[-1]):
                    found.add("sns", arn, "topic name matches")

    def schedules() -> None:
        pages = _paginate(client("scheduler"), "list_schedules", NamePrefix=f"{prefix}-")
        for page in pages:
            for schedule in page.get("Schedules", []):
                if word.match(schedule["Name"]):
                    found.add("scheduler", schedule["Arn"], "schedule name matches")

    check("tagging", "GetResources", tagged)
    check("s3", "ListBuckets", buckets)
    check("rds", target.db_instance_identifier, database)
    check("sqs", "ListQueues", queues)
    check("logs", "DescribeLogGroups", log_groups)
    check("kms", "ListAliases", alias)
    check("ecr", "DescribeRepositories", repositories)
    check("iam", "ListRoles/ListPolicies", roles)
    check("ecs", "ListClusters", clusters)
    check("appconfig", "ListApplications", applications)
    check("cloudtrail", "ListTrails", trails)
    check("sns", "ListTopics", topics)
    check("scheduler", "ListSchedules", schedules)
    return sorted(found.items.values(), key=lambda i: (i.service, i.resource))


def residue_result(items: Collection[ResidueItem], target: Target) -> StepResult:
    """The residue check as a step: "done" when nothing remains, "failed" listing each item."""
    if not items:
        return StepResult(
            STEP_RESIDUE,
            "done",
            f"nothing of {target.stack} remains (the archive in {target.archive_bucket} is kept)",
        )
    listed = "; ".join(f"{i.service} {i.resource}: {i.why}" for i in items)
    return StepResult(STEP_RESIDUE, "failed", f"{len(items)} left of {target.stack}: {listed}")


# --- step 5: the stack file --------------------------------------------------------------------


def remove_stack_file(path: Path) -> StepResult:
    """Step 5: delete `Pulumi.experiment-<id>.yaml` (only a file of that name: the shared
    `Pulumi.experiment.yaml` and `Pulumi.prod.yaml` are refused). Missing -> "already done".
    Only the working tree changes; committing the removal is the caller's business."""
    step = STEP_STACK_FILE
    if not _STACK_FILE_RE.match(path.name):
        return StepResult(
            step, "failed", f"{path} is not an experiment stack file (Pulumi.experiment-<id>.yaml)"
        )
    try:
        path.unlink()
    except FileNotFoundError:
        return StepResult(step, "already done", f"{path} does not exist")
    except OSError as exc:
        return StepResult(step, "failed", f"{path}: {exc.strerror or exc}")
    return StepResult(step, "done", f"removed {path}")
