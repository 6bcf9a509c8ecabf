"""The AWS steps of `envfence experiment conclude` (envfence.lifecycle) against a moto server.

The account (tests/moto_server.py, one server per test process) holds one archive bucket and one
archive key, shared like the real account's archive; every test builds its own experiment
`experiment-t<n>` (a unique id, so tests never see each other's resources): a versioned results
bucket with nested keys, an overwritten and a deleted object, an encrypted DB instance, queues,
a log group and the experiment's KMS key and alias, tagged like the provider's default tags. moto
fakes the APIs (listing, copying, tagging), not IAM or key policies: nothing here says who may
do what.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import EndpointConnectionError

from envfence import lifecycle, naming
from envfence.lifecycle import ResidueItem, StepResult, Target

if TYPE_CHECKING:
    from tests.moto_server import Aws

pytest_plugins = ("tests.moto_server",)

PROJECT = "envfence"
TODAY = date(2026, 1, 15)
DAYS = 30
EXPIRES = "2026-02-14"
FAST = {"wait_delay": 0, "wait_max_attempts": 3}

# Current objects of the results bucket after setup: key -> body.
OBJECTS = {
    "summary.json": b'{"winner": "b"}',
    "runs/2026/01/a.csv": b"id,score\n1,0.5\n",
    "runs/2026/01/b.csv": b"id,score\n2,0.7\n",
    "deep/nested/path/model weights.bin": b"\x00\x01" * 40,
}
OVERWRITTEN = "runs/2026/01/a.csv"  # has an older version, which must not be archived
DELETED = "tmp/scratch.txt"  # its current version is a delete marker: not archived

_ids = itertools.count(1)


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def exp_tags(target: Target) -> dict[str, str]:
    return {
        naming.TAG_ENVIRONMENT: target.stack,
        naming.TAG_TIER: naming.TIER_EXPERIMENT,
        naming.TAG_EXPERIMENT_ID: target.experiment_id,
    }


def make_bucket(s3: Any, name: str, tags: dict[str, str] | None = None) -> None:
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    if tags:
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_list(tags)})


def make_instance(aws: Aws, ident: str, key: str | None = None, **tags: str) -> None:
    extra: dict[str, Any] = {"StorageEncrypted": True, "KmsKeyId": key} if key else {}
    aws.client("rds").create_db_instance(
        DBInstanceIdentifier=ident,
        Engine="postgres",
        DBInstanceClass="db.t4g.small",
        AllocatedStorage=20,
        MasterUsername="envfence_admin",
        MasterUserPassword="not-a-secret-1",
        CopyTagsToSnapshot=True,
        Tags=tag_list(tags),
        **extra,
    )


def drop_instance(aws: Aws, ident: str) -> None:
    """Delete an instance and the automated snapshot moto (like RDS) took of it."""
    rds = aws.client("rds")
    rds.delete_db_instance(DBInstanceIdentifier=ident, SkipFinalSnapshot=True)
    snaps = rds.describe_db_snapshots(DBInstanceIdentifier=ident, SnapshotType="automated")
    for snap in snaps["DBSnapshots"]:
        rds.delete_db_snapshot(DBSnapshotIdentifier=snap["DBSnapshotIdentifier"])


class Spy:
    """A client that counts calls and can fail one operation after n successful calls."""

    def __init__(self, client: Any, fail: str | None = None, after: int = 0) -> None:
        self._client = client
        self._fail, self._after = fail, after
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name in ("get_paginator", "get_waiter"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name == self._fail and self.calls[name] > self._after:
                raise EndpointConnectionError(endpoint_url="https://s3.eu-west-1.amazonaws.com")
            return attr(*args, **kwargs)

        return call


class AppConfigStub:
    """ListApplications, which moto does not implement; the code's call path is unchanged."""

    def __init__(self) -> None:
        self.apps: list[dict[str, str]] = []

    def get_paginator(self, operation: str) -> AppConfigStub:
        assert operation == "list_applications"
        return self

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        return [{"Items": list(self.apps)}]


RESIDUE_SERVICES = (
    "resourcegroupstaggingapi",
    "s3",
    "rds",
    "sqs",
    "logs",
    "kms",
    "ecr",
    "iam",
    "ecs",
    "cloudtrail",
    "sns",
    "scheduler",
)


@dataclass(frozen=True)
class Archive:
    bucket: str
    key: str


@dataclass
class Experiment:
    aws: Aws
    target: Target
    experiment_key: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # key -> current version id
    appconfig: AppConfigStub = field(default_factory=AppConfigStub)

    def client(self, name: str) -> Any:
        return self.aws.client(name)

    def clients(self) -> dict[str, Any]:
        made: dict[str, Any] = {name: self.aws.client(name) for name in RESIDUE_SERVICES}
        made["appconfig"] = self.appconfig
        return made

    def archived(self) -> dict[str, bytes]:
        s3, t = self.client("s3"), self.target
        listed = s3.list_objects_v2(Bucket=t.archive_bucket, Prefix=t.results_prefix)
        keys = [o["Key"] for o in listed.get("Contents", [])]
        return {k: s3.get_object(Bucket=t.archive_bucket, Key=k)["Body"].read() for k in keys}

    def manifest(self) -> dict[str, Any]:
        t = self.target
        body = self.client("s3").get_object(Bucket=t.archive_bucket, Key=t.manifest_key)["Body"]
        data: dict[str, Any] = json.loads(body.read())
        return data


@pytest.fixture(scope="module")
def archive(moto_account: Aws) -> Archive:
    """The account's archive: a bucket and a key of another stack, shared by every experiment."""
    bucket = f"envfence-archive-{moto_account.account}"
    make_bucket(moto_account.client("s3"), bucket, {naming.TAG_ENVIRONMENT: "archive"})
    key = moto_account.client("kms").create_key(Description="archive")["KeyMetadata"]["Arn"]
    return Archive(bucket, str(key))


def new_experiment(aws: Aws, archive: Archive, *, with_key: bool = True) -> Experiment:
    target = Target.for_experiment(
        PROJECT,
        f"t{next(_ids)}",
        aws.account,
        aws.region,
        archive_bucket=archive.bucket,
        archive_key_arn=archive.key if with_key else None,
    )
    return Experiment(aws, target)


def add_results(exp: Experiment) -> None:
    s3, t = exp.client("s3"), exp.target
    make_bucket(s3, t.results_bucket, exp_tags(t))
    s3.put_bucket_versioning(Bucket=t.results_bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=t.results_bucket, Key=OVERWRITTEN, Body=b"old,stale\n")
    s3.put_object(Bucket=t.results_bucket, Key=DELETED, Body=b"scratch")
    s3.delete_object(Bucket=t.results_bucket, Key=DELETED)
    for k, body in OBJECTS.items():
        exp.versions[k] = s3.put_object(Bucket=t.results_bucket, Key=k, Body=body)["VersionId"]


def add_database(exp: Experiment) -> None:
    kms, t = exp.client("kms"), exp.target
    key = kms.create_key(
        Description=f"envfence {t.stack}",
        Tags=[{"TagKey": k, "TagValue": v} for k, v in exp_tags(t).items()],
    )["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=naming.key_alias(PROJECT, t.stack), TargetKeyId=key)
    exp.experiment_key = str(key)
    make_instance(exp.aws, t.db_instance_identifier, key, **exp_tags(t))


def add_pipeline(exp: Experiment) -> None:
    t = exp.target
    for purpose in ("ingest", "ingest-dlq"):
        exp.client("sqs").create_queue(
            QueueName=naming.queue_name(PROJECT, t.stack, purpose), tags=exp_tags(t)
        )
    exp.client("logs").create_log_group(
        logGroupName=naming.log_group_name(PROJECT, t.stack, "worker"), tags=exp_tags(t)
    )


@pytest.fixture
def results_exp(aws: Aws, archive: Archive) -> Experiment:
    exp = new_experiment(aws, archive)
    add_results(exp)
    return exp


@pytest.fixture
def db_exp(aws: Aws, archive: Archive) -> Experiment:
    exp = new_experiment(aws, archive)
    add_database(exp)
    return exp


def full_experiment(aws: Aws, archive: Archive) -> Experiment:
    exp = new_experiment(aws, archive)
    add_results(exp)
    add_database(exp)
    add_pipeline(exp)
    return exp


# --- Target --------------------------------------------------------------------------------------


def test_target_names_come_from_naming() -> None:
    t = Target.for_experiment(
        PROJECT, "abc", "111122223333", "eu-west-1", archive_bucket="envfence-archive-x"
    )
    assert t.stack == "experiment-abc"
    assert t.db_instance_identifier == naming.db_identifier(PROJECT, "experiment-abc")
    assert t.results_bucket == "envfence-experiment-abc-results-111122223333"
    assert t.archive_prefix == "abc/"
    assert t.results_prefix == "abc/results/"
    assert t.manifest_key == "abc/MANIFEST.json"
    assert t.snapshot_id == "envfence-experiment-abc-final"
    assert t.snapshot_arn == (
        "arn:aws:rds:eu-west-1:111122223333:snapshot:envfence-experiment-abc-final"
    )
    with pytest.raises(ValueError, match="not the stack of experiment"):
        Target(PROJECT, "prod", "abc", "111122223333", "eu-west-1", "db", "b", "a")
    with pytest.raises(ValueError, match="own results bucket"):
        Target.for_experiment(
            PROJECT, "abc", "111122223333", "eu-west-1", archive_bucket=t.results_bucket
        )


# --- archive_results -----------------------------------------------------------------------------


def archive_objects(exp: Experiment, s3: Any = None, **kwargs: Any) -> StepResult:
    return lifecycle.archive_results(
        s3 or exp.client("s3"), exp.target, expire_after_days=DAYS, today=TODAY, **kwargs
    )


def test_results_archived_with_metadata_tags_and_manifest(results_exp: Experiment) -> None:
    exp, t = results_exp, results_exp.target
    result = archive_objects(exp)

    assert result.status == "done", result.detail
    assert "4 copied, 0 already archived" in result.detail
    assert exp.archived() == {f"{t.experiment_id}/results/{k}": b for k, b in OBJECTS.items()}
    s3 = exp.client("s3")
    for key, version in exp.versions.items():
        archived = f"{t.experiment_id}/results/{key}"
        meta = s3.head_object(Bucket=t.archive_bucket, Key=archived)["Metadata"]
        assert meta["source-bucket"] == t.results_bucket
        assert meta["source-key"] == key.replace(" ", "%20")
        assert meta["source-version-id"] == version
        assert meta["archive-expires-on"] == EXPIRES
        assert meta["archived-at"].endswith("+00:00")
        tags = s3.get_object_tagging(Bucket=t.archive_bucket, Key=archived)["TagSet"]
        assert {x["Key"]: x["Value"] for x in tags} == {
            "experiment-id": t.experiment_id,
            "environment": t.stack,
            "archive-expires-on": EXPIRES,
        }
    manifest = exp.manifest()
    assert manifest["object_count"] == 4
    assert manifest["total_bytes"] == sum(len(b) for b in OBJECTS.values())
    assert manifest["source_bucket"] == t.results_bucket
    by_key = {o["key"]: o for o in manifest["objects"]}
    assert set(by_key) == set(OBJECTS)
    for key, version in exp.versions.items():
        entry = by_key[key]
        assert entry["source_version_id"] == version
        assert entry["size"] == len(OBJECTS[key])
        assert entry["archive_key"] == f"{t.experiment_id}/results/{key}"
        assert entry["expires_on"] == EXPIRES
        assert entry["etag"] == s3.head_object(Bucket=t.results_bucket, Key=key)["ETag"].strip('"')


def test_system_metadata_survives_the_copy(results_exp: Experiment) -> None:
    """MetadataDirective REPLACE drops system metadata unless it is given again."""
    exp, t = results_exp, results_exp.target
    s3 = exp.client("s3")
    s3.put_object(
        Bucket=t.results_bucket,
        Key="run-2/rows.csv.gz",
        Body=b"\x1f\x8b",
        ContentType="text/csv",
        ContentEncoding="gzip",
        CacheControl="no-store",
    )
    assert archive_objects(exp).ok
    head = s3.head_object(
        Bucket=t.archive_bucket, Key=f"{t.experiment_id}/results/run-2/rows.csv.gz"
    )
    assert (head["ContentType"], head["ContentEncoding"], head["CacheControl"]) == (
        "text/csv",
        "gzip",
        "no-store",
    )


def test_second_run_copies_nothing(results_exp: Experiment) -> None:
    assert archive_objects(results_exp).status == "done"
    manifest = results_exp.manifest()
    spy = Spy(results_exp.client("s3"))

    again = archive_objects(results_exp, spy)

    assert again.status == "already done", again.detail
    assert "0 copied, 4 already archived" in again.detail
    assert "unchanged" in again.detail
    assert spy.calls.get("copy_object", 0) == 0
    assert spy.calls.get("put_object", 0) == 0
    assert results_exp.manifest() == manifest


def test_interrupted_run_finishes_the_rest(results_exp: Experiment) -> None:
    exp = results_exp
    broken = Spy(exp.client("s3"), fail="copy_object", after=2)

    first = archive_objects(exp, broken)

    assert first.status == "failed"
    assert "2 of 4 objects" in first.detail and "2 copied" in first.detail
    assert "manifest not written" in first.detail
    assert "EndpointConnectionError" in first.detail
    assert len(exp.archived()) == 2
    with pytest.raises(exp.client("s3").exceptions.NoSuchKey):
        exp.manifest()

    spy = Spy(exp.client("s3"))
    second = archive_objects(exp, spy)

    assert second.status == "done", second.detail
    assert "2 copied, 2 already archived" in second.detail
    assert spy.calls["copy_object"] == 2
    prefix = exp.target.results_prefix
    assert exp.archived() == {f"{prefix}{k}": body for k, body in OBJECTS.items()}
    assert exp.manifest()["object_count"] == 4


def test_pre_copied_objects_are_kept_or_copied_again(results_exp: Experiment) -> None:
    """Archive objects left by an earlier run: one with the current version id (kept, its
    archive time and expiry go into the manifest), one of the same size whose recorded version
    is an older one (copied again)."""
    exp, t = results_exp, results_exp.target
    s3 = exp.client("s3")
    current = "summary.json"
    s3.put_object(
        Bucket=t.archive_bucket,
        Key=f"{t.results_prefix}{current}",
        Body=OBJECTS[current],
        Metadata={
            "source-version-id": exp.versions[current],
            "archived-at": "2026-01-01T00:00:00+00:00",
            "archive-expires-on": "2026-01-31",
        },
    )
    stale = "runs/2026/01/b.csv"
    s3.put_object(
        Bucket=t.archive_bucket,
        Key=f"{t.results_prefix}{stale}",
        Body=b"x" * len(OBJECTS[stale]),
        Metadata={"source-version-id": "an-older-version"},
    )
    spy = Spy(s3)

    result = archive_objects(exp, spy)

    assert result.status == "done", result.detail
    assert "3 copied, 1 already archived" in result.detail
    assert spy.calls["copy_object"] == 3
    assert exp.archived()[f"{t.results_prefix}{stale}"] == OBJECTS[stale]
    entry = {o["key"]: o for o in exp.manifest()["objects"]}[current]
    assert entry["archived_at"] == "2026-01-01T00:00:00+00:00"
    assert entry["expires_on"] == "2026-01-31"


def test_empty_results_bucket(aws: Aws, archive: Archive) -> None:
    exp = new_experiment(aws, archive)
    make_bucket(exp.client("s3"), exp.target.results_bucket)

    result = archive_objects(exp)

    assert result.status == "done"
    assert result.detail.startswith("0 objects")
    assert exp.manifest()["objects"] == []
    assert exp.manifest()["object_count"] == 0
    assert archive_objects(exp).status == "already done"


def test_large_objects_are_copied_in_parts(results_exp: Experiment) -> None:
    exp, t = results_exp, results_exp.target
    s3 = exp.client("s3")
    big = bytes(range(256)) * (5 * 4096 + 1)  # 5 MiB + 256 bytes: two parts of 5 MiB at most
    version = s3.put_object(Bucket=t.results_bucket, Key="big/model.bin", Body=big)["VersionId"]
    spy = Spy(s3)

    result = archive_objects(exp, spy, copy_object_limit=1024 * 1024, part_size=5 * 1024 * 1024)

    assert result.status == "done", result.detail
    assert spy.calls["copy_object"] == 4  # the four small ones
    assert spy.calls["upload_part_copy"] == 2
    assert spy.calls["complete_multipart_upload"] == 1
    archived = f"{t.results_prefix}big/model.bin"
    assert exp.archived()[archived] == big
    head = s3.head_object(Bucket=t.archive_bucket, Key=archived)
    assert head["Metadata"]["source-version-id"] == version
    tags = s3.get_object_tagging(Bucket=t.archive_bucket, Key=archived)["TagSet"]
    assert {x["Key"]: x["Value"] for x in tags}["experiment-id"] == t.experiment_id
    uploads = s3.list_multipart_uploads(Bucket=t.archive_bucket, Prefix=t.archive_prefix)
    assert uploads.get("Uploads", []) == []
    assert archive_objects(exp).status == "already done"


def test_results_bucket_gone(aws: Aws, archive: Archive) -> None:
    exp = new_experiment(aws, archive)

    result = archive_objects(exp)

    assert result.status == "failed"
    assert exp.target.results_bucket in result.detail and "does not exist" in result.detail

    t = exp.target
    exp.client("s3").put_object(Bucket=t.archive_bucket, Key=t.manifest_key, Body=b"{}")
    again = archive_objects(exp)
    assert again.status == "already done"
    assert "archive is complete" in again.detail


def test_aws_errors_become_failed_results(aws: Aws, archive: Archive) -> None:
    target = new_experiment(aws, archive).target
    nowhere = dataclasses.replace(aws, endpoint="http://127.0.0.1:9")  # the discard port

    snap = lifecycle.archive_snapshot(
        nowhere.client("rds"), target, expire_after_days=DAYS, today=TODAY, **FAST
    )
    results = lifecycle.archive_results(
        nowhere.client("s3"), target, expire_after_days=DAYS, today=TODAY
    )

    assert snap.status == "failed"
    assert target.snapshot_id in snap.detail and "EndpointConnectionError" in snap.detail
    assert results.status == "failed"
    assert target.results_bucket in results.detail
    assert "EndpointConnectionError" in results.detail


# --- archive_snapshot ----------------------------------------------------------------------------


def snapshot(exp: Experiment, snapshot_id: str) -> dict[str, Any] | None:
    rds = exp.client("rds")
    try:
        found = rds.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)
    except rds.exceptions.DBSnapshotNotFoundFault:
        return None
    return dict(found["DBSnapshots"][0])


def archive_db(exp: Experiment, target: Target | None = None, rds: Any = None) -> StepResult:
    return lifecycle.archive_snapshot(
        rds or exp.client("rds"),
        target or exp.target,
        expire_after_days=DAYS,
        today=TODAY,
        **FAST,
    )


def test_snapshot_archived_under_the_archive_key_and_tagged(
    db_exp: Experiment, archive: Archive
) -> None:
    exp, t = db_exp, db_exp.target
    result = archive_db(exp)

    assert result.status == "done", result.detail
    final = snapshot(exp, f"envfence-{t.stack}-final")
    assert final is not None
    assert final["Status"] == "available"
    assert final["Encrypted"] is True
    assert final["KmsKeyId"] == archive.key
    assert final["DBSnapshotArn"] == t.snapshot_arn
    tags = exp.client("rds").list_tags_for_resource(ResourceName=final["DBSnapshotArn"])
    assert {x["Key"]: x["Value"] for x in tags["TagList"]} == {
        "environment": t.stack,
        "tier": "experiment",
        "experiment-id": t.experiment_id,
        "data-classification": "experimental",
        "archived-by": "envfence",
        "archive-expires-on": EXPIRES,
    }
    assert snapshot(exp, t.staging_snapshot_id) is None

    spy = Spy(exp.client("rds"))
    again = archive_db(exp, rds=spy)
    assert again.status == "already done", again.detail
    assert t.snapshot_id in again.detail
    assert spy.calls.get("create_db_snapshot", 0) == spy.calls.get("copy_db_snapshot", 0) == 0


def test_snapshot_resumes_after_the_staging_snapshot(db_exp: Experiment, archive: Archive) -> None:
    """Interrupted after CreateDBSnapshot: the staging snapshot exists, the copy does not."""
    exp, t = db_exp, db_exp.target
    exp.client("rds").create_db_snapshot(
        DBSnapshotIdentifier=t.staging_snapshot_id, DBInstanceIdentifier=t.db_instance_identifier
    )
    spy = Spy(exp.client("rds"))

    result = archive_db(exp, rds=spy)

    assert result.status == "done", result.detail
    assert spy.calls.get("create_db_snapshot", 0) == 0
    assert spy.calls["copy_db_snapshot"] == 1
    final = snapshot(exp, t.snapshot_id)
    assert final is not None and final["KmsKeyId"] == archive.key
    assert snapshot(exp, t.staging_snapshot_id) is None


def test_leftover_staging_snapshot_is_removed_on_rerun(db_exp: Experiment) -> None:
    exp, t = db_exp, db_exp.target
    assert archive_db(exp).status == "done"
    exp.client("rds").create_db_snapshot(
        DBSnapshotIdentifier=t.staging_snapshot_id, DBInstanceIdentifier=t.db_instance_identifier
    )

    result = archive_db(exp)

    assert result.status == "done"
    assert f"deleted the staging snapshot {t.staging_snapshot_id}" in result.detail
    assert snapshot(exp, t.staging_snapshot_id) is None


def test_missing_instance_and_no_snapshot(db_exp: Experiment) -> None:
    exp, t = db_exp, db_exp.target
    drop_instance(exp.aws, t.db_instance_identifier)

    result = archive_db(exp)

    assert result.status == "failed"
    assert "nothing to archive" in result.detail
    assert t.db_instance_identifier in result.detail
    assert "already destroyed" in result.detail


def test_archived_snapshot_survives_the_instance(db_exp: Experiment) -> None:
    assert archive_db(db_exp).status == "done"
    drop_instance(db_exp.aws, db_exp.target.db_instance_identifier)

    assert archive_db(db_exp).status == "already done"


def test_encrypted_instance_without_archive_key_is_refused(db_exp: Experiment) -> None:
    exp, t = db_exp, db_exp.target
    no_key = dataclasses.replace(t, archive_key_arn=None)

    result = archive_db(exp, no_key)

    assert result.status == "failed"
    assert "Pass an archive key" in result.detail
    assert exp.experiment_key in result.detail
    assert snapshot(exp, t.snapshot_id) is None


def test_snapshot_under_another_key_is_not_accepted(db_exp: Experiment, archive: Archive) -> None:
    exp, t = db_exp, db_exp.target
    exp.client("rds").create_db_snapshot(
        DBSnapshotIdentifier=t.snapshot_id, DBInstanceIdentifier=t.db_instance_identifier
    )

    result = archive_db(exp)

    assert result.status == "failed"
    assert exp.experiment_key in result.detail and archive.key in result.detail


def test_unencrypted_instance_without_archive_key(aws: Aws, archive: Archive) -> None:
    exp = new_experiment(aws, archive, with_key=False)
    t = exp.target
    make_instance(aws, t.db_instance_identifier)

    result = lifecycle.archive_snapshot(
        exp.client("rds"), t, expire_after_days=7, today=TODAY, **FAST
    )

    assert result.status == "done", result.detail
    assert "kept until 2026-01-22" in result.detail
    final = snapshot(exp, t.snapshot_id)
    assert final is not None and final["Encrypted"] is False
    again = lifecycle.archive_snapshot(
        exp.client("rds"), t, expire_after_days=7, today=TODAY, **FAST
    )
    assert again.status == "already done"


# --- residue -------------------------------------------------------------------------------------


def destroy(exp: Experiment) -> None:
    """Steps 2, then what a complete `pulumi destroy` leaves: the archived snapshot (tagged
    experiment-id, kept), the archive's objects, the key pending deletion (and, to be strict,
    its alias still pointing at it)."""
    assert archive_objects(exp).status == "done"
    assert archive_db(exp).status == "done"
    s3, t = exp.client("s3"), exp.target
    versions = s3.list_object_versions(Bucket=t.results_bucket)
    for v in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
        s3.delete_object(Bucket=t.results_bucket, Key=v["Key"], VersionId=v["VersionId"])
    s3.delete_bucket(Bucket=t.results_bucket)
    drop_instance(exp.aws, t.db_instance_identifier)
    sqs = exp.client("sqs")
    for url in sqs.list_queues(QueueNamePrefix=t.prefix).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    exp.client("logs").delete_log_group(
        logGroupName=naming.log_group_name(PROJECT, t.stack, "worker")
    )
    # by key id: moto 5.2's ScheduleKeyDeletion does not resolve a key ARN
    key_id = exp.experiment_key.rsplit("/", 1)[-1]
    exp.client("kms").schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)


@pytest.fixture(scope="module")
def destroyed(moto_account: Aws, archive: Archive) -> Experiment:
    """One concluded experiment for the residue tests; each test that adds a leftover removes
    it again (so this state is shared, not rebuilt: the tests stay fast)."""
    exp = full_experiment(moto_account, archive)
    destroy(exp)
    return exp


def check(exp: Experiment) -> list[ResidueItem]:
    return lifecycle.residue(exp.clients(), exp.target, keep_arns={exp.target.snapshot_arn})


def test_residue_quiet_when_only_the_archive_remains(destroyed: Experiment) -> None:
    exp, t = destroyed, destroyed.target

    items = check(exp)

    assert items == []
    result = lifecycle.residue_result(items, t)
    assert result.status == "done"
    assert f"nothing of {t.stack} remains" in result.detail
    # quiet because the archive is excluded, not because it is missing
    assert len(exp.archived()) == 4
    assert snapshot(exp, t.snapshot_id) is not None
    key = exp.client("kms").describe_key(KeyId=exp.experiment_key.rsplit("/", 1)[-1])
    assert key["KeyMetadata"]["KeyState"] == "PendingDeletion"
    # and without keep_arns, the archived snapshot is reported
    unkept = lifecycle.residue(exp.clients(), t)
    assert [i.resource for i in unkept] == [t.snapshot_arn]


def test_residue_fires_before_destroy(aws: Aws, archive: Archive) -> None:
    exp = full_experiment(aws, archive)
    t, acct = exp.target, aws.account

    items = check(exp)

    resources = {i.resource for i in items}
    assert f"arn:aws:s3:::{t.results_bucket}" in resources
    assert f"arn:aws:rds:eu-west-1:{acct}:db:{t.db_instance_identifier}" in resources
    assert f"arn:aws:sqs:eu-west-1:{acct}:{t.prefix}-ingest" in resources
    assert f"arn:aws:sqs:eu-west-1:{acct}:{t.prefix}-ingest-dlq" in resources
    assert f"arn:aws:logs:eu-west-1:{acct}:log-group:/envfence/{t.stack}/worker" in resources
    assert exp.experiment_key in resources
    assert f"arn:aws:kms:eu-west-1:{acct}:alias/envfence/{t.stack}" in resources
    # found by the Tagging API and by its name: one item, both reasons
    queue = next(i for i in items if i.resource.endswith(f"{t.prefix}-ingest"))
    assert f"tagged experiment-id={t.experiment_id}" in queue.why
    assert "queue name matches" in queue.why
    assert lifecycle.residue_result(items, t).status == "failed"


# Each leftover: make it, return its ARN and how to remove it again.
Leftover = Callable[[Experiment], tuple[str, Callable[[], None]]]


def _bucket(exp: Experiment) -> tuple[str, Callable[[], None]]:
    name = naming.bucket_name(PROJECT, exp.target.stack, "raw", exp.aws.account)
    make_bucket(exp.client("s3"), name)  # untagged: only its name gives it away
    return f"arn:aws:s3:::{name}", lambda: exp.client("s3").delete_bucket(Bucket=name)


def _tagged_bucket(exp: Experiment) -> tuple[str, Callable[[], None]]:
    name = f"unrelated-name-{exp.target.experiment_id}"
    make_bucket(exp.client("s3"), name, {naming.TAG_EXPERIMENT_ID: exp.target.experiment_id})
    return f"arn:aws:s3:::{name}", lambda: exp.client("s3").delete_bucket(Bucket=name)


def _queue(exp: Experiment) -> tuple[str, Callable[[], None]]:
    name = naming.queue_name(PROJECT, exp.target.stack, "ingest-dlq")
    url = exp.client("sqs").create_queue(QueueName=name)["QueueUrl"]
    arn = f"arn:aws:sqs:eu-west-1:{exp.aws.account}:{name}"
    return arn, lambda: exp.client("sqs").delete_queue(QueueUrl=url)


def _log_group(name: str) -> Callable[[Experiment], tuple[str, Callable[[], None]]]:
    def make(exp: Experiment) -> tuple[str, Callable[[], None]]:
        group = name.format(stack=exp.target.stack)
        exp.client("logs").create_log_group(logGroupName=group)
        arn = f"arn:aws:logs:eu-west-1:{exp.aws.account}:log-group:{group}"
        return arn, lambda: exp.client("logs").delete_log_group(logGroupName=group)

    return make


def _db_instance(exp: Experiment) -> tuple[str, Callable[[], None]]:
    ident = exp.target.db_instance_identifier
    make_instance(exp.aws, ident)
    rds = exp.client("rds")
    # moto snapshots a new instance, as RDS does: drop it, so the instance is the one leftover
    for snap in rds.describe_db_snapshots(DBInstanceIdentifier=ident, SnapshotType="automated")[
        "DBSnapshots"
    ]:
        rds.delete_db_snapshot(DBSnapshotIdentifier=snap["DBSnapshotIdentifier"])
    arn = f"arn:aws:rds:eu-west-1:{exp.aws.account}:db:{ident}"
    return arn, lambda: drop_instance(exp.aws, ident)


def _staging_snapshot(exp: Experiment) -> tuple[str, Callable[[], None]]:
    """A snapshot of the instance other than the archive, left after the instance is gone."""
    t, rds = exp.target, exp.client("rds")
    make_instance(exp.aws, t.db_instance_identifier)
    rds.create_db_snapshot(
        DBSnapshotIdentifier=t.staging_snapshot_id, DBInstanceIdentifier=t.db_instance_identifier
    )
    drop_instance(exp.aws, t.db_instance_identifier)
    arn = f"arn:aws:rds:eu-west-1:{exp.aws.account}:snapshot:{t.staging_snapshot_id}"
    return arn, lambda: rds.delete_db_snapshot(DBSnapshotIdentifier=t.staging_snapshot_id)


def _alias_with_enabled_key(exp: Experiment) -> tuple[str, Callable[[], None]]:
    kms = exp.client("kms")
    alias = naming.key_alias(PROJECT, exp.target.stack)
    pending = exp.experiment_key.rsplit("/", 1)[-1]
    kms.update_alias(AliasName=alias, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    arn = f"arn:aws:kms:eu-west-1:{exp.aws.account}:{alias}"
    return arn, lambda: kms.update_alias(AliasName=alias, TargetKeyId=pending)


def _tagged_enabled_key(exp: Experiment) -> tuple[str, Callable[[], None]]:
    kms = exp.client("kms")
    tags = [{"TagKey": naming.TAG_EXPERIMENT_ID, "TagValue": exp.target.experiment_id}]
    meta = kms.create_key(Tags=tags)["KeyMetadata"]
    undo = lambda: kms.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)  # noqa: E731
    return str(meta["Arn"]), undo


def _role(exp: Experiment) -> tuple[str, Callable[[], None]]:
    name = naming.role_name(PROJECT, exp.target.stack, "pipeline")
    iam = exp.client("iam")
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    return str(arn), lambda: iam.delete_role(RoleName=name)


def _repository(exp: Experiment) -> tuple[str, Callable[[], None]]:
    name, ecr = naming.repository_name(PROJECT, exp.target.stack), exp.client("ecr")
    arn = ecr.create_repository(repositoryName=name)["repository"]["repositoryArn"]
    return str(arn), lambda: ecr.delete_repository(repositoryName=name)


def _cluster(exp: Experiment) -> tuple[str, Callable[[], None]]:
    ecs = exp.client("ecs")
    arn = ecs.create_cluster(clusterName=exp.target.prefix)["cluster"]["clusterArn"]
    return str(arn), lambda: ecs.delete_cluster(cluster=exp.target.prefix)  # INACTIVE, listed


def _schedule(exp: Experiment) -> tuple[str, Callable[[], None]]:
    scheduler, name = exp.client("scheduler"), f"{exp.target.prefix}-retention"
    made = scheduler.create_schedule(
        Name=name,
        ScheduleExpression="rate(1 day)",
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={
            "Arn": f"arn:aws:ecs:eu-west-1:{exp.aws.account}:cluster/{exp.target.prefix}",
            "RoleArn": f"arn:aws:iam::{exp.aws.account}:role/{exp.target.prefix}-scheduler",
        },
    )
    return str(made["ScheduleArn"]), lambda: scheduler.delete_schedule(Name=name)


def _application(exp: Experiment) -> tuple[str, Callable[[], None]]:
    exp.appconfig.apps.append({"Id": "a1b2c3", "Name": exp.target.prefix})
    arn = f"arn:aws:appconfig:eu-west-1:{exp.aws.account}:application/a1b2c3"
    return arn, exp.appconfig.apps.clear


LEFTOVERS: dict[str, Leftover] = {
    "bucket": _bucket,
    "tagged bucket": _tagged_bucket,
    "queue": _queue,
    "log group": _log_group("/envfence/{stack}/db-tasks"),
    "rds log group": _log_group("/aws/rds/instance/envfence-{stack}/postgresql"),
    "db instance": _db_instance,
    "staging snapshot": _staging_snapshot,
    "alias with enabled key": _alias_with_enabled_key,
    "tagged enabled key": _tagged_enabled_key,
    "role": _role,
    "repository": _repository,
    "cluster": _cluster,
    "schedule": _schedule,
    "appconfig application": _application,
    "active task definition": lambda exp: _task_definition(exp),
}


def _retained_backups(exp: Experiment) -> tuple[str, Callable[[], None]]:
    """An instance deleted keeping its automated backups: they are residue (status retained)."""
    ident = exp.target.db_instance_identifier
    make_instance(exp.aws, ident)
    rds = exp.client("rds")
    rds.delete_db_instance(
        DBInstanceIdentifier=ident, SkipFinalSnapshot=True, DeleteAutomatedBackups=False
    )
    [backup] = [
        b
        for b in rds.describe_db_instance_automated_backups()["DBInstanceAutomatedBackups"]
        if b["DBInstanceIdentifier"] == ident
    ]
    assert backup["Status"] == "retained"
    arn = backup.get("DBInstanceAutomatedBackupsArn", f"automated-backups:{ident}")

    def remove() -> None:
        for snap in rds.describe_db_snapshots(SnapshotType="automated")["DBSnapshots"]:
            if snap["DBInstanceIdentifier"] == ident:
                rds.delete_db_snapshot(DBSnapshotIdentifier=snap["DBSnapshotIdentifier"])

    return arn, remove


def _task_definition(exp: Experiment) -> tuple[str, Callable[[], None]]:
    """A registered (ACTIVE) task definition tagged with the experiment id is residue; once
    deregistered (INACTIVE, which AWS keeps with its tags) it is not."""
    ecs = exp.client("ecs")
    arn = ecs.register_task_definition(
        family=f"{exp.target.prefix}-worker",
        containerDefinitions=[{"name": "worker", "image": "x", "memory": 512}],
        tags=[{"key": k, "value": v} for k, v in exp_tags(exp.target).items()],
    )["taskDefinition"]["taskDefinitionArn"]
    return arn, lambda: ecs.deregister_task_definition(taskDefinition=arn)


@pytest.mark.parametrize("kind", list(LEFTOVERS))
def test_residue_fires_for_each_leftover_and_is_quiet_once_it_is_gone(
    destroyed: Experiment, kind: str
) -> None:
    arn, remove = LEFTOVERS[kind](destroyed)
    try:
        items = check(destroyed)
    finally:
        remove()

    assert [i.resource for i in items] == [arn], items
    result = lifecycle.residue_result(items, destroyed.target)
    assert result.status == "failed"
    assert arn in result.detail
    assert check(destroyed) == []


def test_retained_automated_backups_are_residue_and_deleted_ones_are_not(
    destroyed: Experiment,
) -> None:
    """After a destroy that kept its automated backups they fire (moto also lists their
    snapshots); after one that deleted them (the provider's default) nothing is left."""
    arn, remove = _retained_backups(destroyed)
    try:
        items = check(destroyed)
    finally:
        remove()
    assert arn in [i.resource for i in items], items
    assert check(destroyed) == []


def test_residue_ignores_a_stack_whose_name_extends_this_one(destroyed: Experiment) -> None:
    exp = destroyed
    other = f"{exp.target.stack}-v2"
    make_bucket(exp.client("s3"), naming.bucket_name(PROJECT, other, "raw", exp.aws.account))
    exp.client("sqs").create_queue(QueueName=naming.queue_name(PROJECT, other, "ingest-dlq"))
    exp.client("logs").create_log_group(logGroupName=naming.log_group_name(PROJECT, other, "w"))
    exp.client("iam").create_role(
        RoleName=naming.role_name(PROJECT, other, "service"), AssumeRolePolicyDocument="{}"
    )
    exp.client("ecr").create_repository(repositoryName=naming.repository_name(PROJECT, other))
    exp.client("ecs").create_cluster(clusterName=naming.prefix(PROJECT, other))

    assert check(exp) == []


def test_residue_through_a_session_fails_closed_where_it_cannot_look(
    aws: Aws, destroyed: Experiment
) -> None:
    """A boto3 Session works as `clients`; moto has no ListApplications, so that check cannot
    run, and an unchecked service is reported, never taken for silence."""
    items = lifecycle.residue(
        aws.session(), destroyed.target, keep_arns={destroyed.target.snapshot_arn}
    )

    assert [(i.service, i.resource) for i in items] == [("error", "appconfig:ListApplications")]
    assert "could not check" in items[0].why


# --- remove_stack_file ---------------------------------------------------------------------------


def test_remove_stack_file_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.experiment-abc.yaml"
    path.write_text("config: {}\n")

    first = lifecycle.remove_stack_file(path)
    second = lifecycle.remove_stack_file(path)

    assert (first.step, first.status) == ("remove-stack-file", "done")
    assert not path.exists()
    assert second.status == "already done"
    assert str(path) in second.detail


@pytest.mark.parametrize("name", ["Pulumi.experiment.yaml", "Pulumi.prod.yaml", "Pulumi.yaml"])
def test_remove_stack_file_refuses_other_stacks(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("config: {}\n")

    result = lifecycle.remove_stack_file(path)

    assert result.status == "failed"
    assert path.exists()
