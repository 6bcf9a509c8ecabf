"""`envfence experiment conclude <id>` end to end, against a moto server on 127.0.0.1.

The experiment account (210987654321) is reached by assuming a role into it, as the deployer
would; its resources are made here the way the stack declares them (names from `envfence.naming`).
The Pulumi CLI is absent, as it is here: step 3 prints the destroy command and stops, the test
then destroys what the stack would have, and a second run finishes (steps 2, 4 and 5). moto is a
fake AWS API for listing and copying; nothing here judges a permission.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import envfence.cli as cli_module
import envfence.experiments as experiments_module
from envfence import experiments, lifecycle, naming
from envfence.cli import main as cli_main
from envfence.project import Project
from tests.test_lifecycle import AppConfigStub

pytest_plugins = ("tests.moto_server",)

EXP_ACCOUNT = "210987654321"
PROJECT_NAME = "envfence"
OBJECTS = {"run-1/summary.json": b'{"lift": 0.03}', "run-1/rows.csv": b"a,b\n1,2\n"}


@pytest.fixture
def account(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Credentials of the experiment account (moto maps assumed-role credentials to the role's
    account), in the environment, as `--profile` of the deployer would give them."""
    creds = aws.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{EXP_ACCOUNT}:role/envfence-deployer", RoleSessionName="conclude"
    )["Credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])
    session = aws.session()
    assert session.client("sts").get_caller_identity()["Account"] == EXP_ACCOUNT
    return session


def _tags(stack: str, ident: str) -> list[dict[str, str]]:
    return [
        {"Key": "environment", "Value": stack},
        {"Key": "experiment-id", "Value": ident},
    ]


def _deploy(session: Any, ident: str) -> dict[str, str]:
    """What the baseline (archive key and bucket) and the experiment stack would have made."""
    stack = f"experiment-{ident}"
    kms, s3, rds, sqs = (session.client(n) for n in ("kms", "s3", "rds", "sqs"))
    names = {
        "archive": naming.archive_bucket_name(PROJECT_NAME, "experiment", EXP_ACCOUNT),
        "results": naming.bucket_name(PROJECT_NAME, stack, "results", EXP_ACCOUNT),
        "db": naming.db_identifier(PROJECT_NAME, stack),
        "queue": naming.queue_name(PROJECT_NAME, stack, "ingest"),
    }
    archive_alias = naming.archive_key_alias(PROJECT_NAME, "experiment")
    aliases = {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    if archive_alias not in aliases:
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=archive_alias, TargetKeyId=key)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if names["archive"] not in existing:
        s3.create_bucket(
            Bucket=names["archive"],
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        )
    own_key = kms.create_key(Tags=[{"TagKey": "experiment-id", "TagValue": ident}])
    names["key"] = own_key["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=naming.key_alias(PROJECT_NAME, stack), TargetKeyId=names["key"])
    s3.create_bucket(
        Bucket=names["results"], CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    s3.put_bucket_versioning(Bucket=names["results"], VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_tagging(
        Bucket=names["results"],
        Tagging={"TagSet": _tags(stack, ident)},
    )
    for key, body in OBJECTS.items():
        s3.put_object(Bucket=names["results"], Key=key, Body=body)
    rds.create_db_instance(
        DBInstanceIdentifier=names["db"],
        Engine="postgres",
        DBInstanceClass="db.t4g.small",
        AllocatedStorage=20,
        MasterUsername="envfence_admin",
        MasterUserPassword="not-a-real-password",
        StorageEncrypted=True,
        KmsKeyId=names["key"],
        Tags=_tags(stack, ident),
    )
    names["queue_url"] = sqs.create_queue(
        QueueName=names["queue"], tags={"environment": stack, "experiment-id": ident}
    )["QueueUrl"]
    return names


def _destroy(session: Any, names: dict[str, str], *, keep_queue: bool = False) -> None:
    """What `pulumi destroy --stack experiment-<id>` removes."""
    s3, rds, sqs, kms = (session.client(n) for n in ("s3", "rds", "sqs", "kms"))
    versions = s3.list_object_versions(Bucket=names["results"]).get("Versions", [])
    for v in versions:
        s3.delete_object(Bucket=names["results"], Key=v["Key"], VersionId=v["VersionId"])
    s3.delete_bucket(Bucket=names["results"])
    rds.delete_db_instance(DBInstanceIdentifier=names["db"], SkipFinalSnapshot=True)
    if not keep_queue:
        sqs.delete_queue(QueueUrl=names["queue_url"])
    stack_alias = [
        a["AliasName"]
        for a in kms.list_aliases()["Aliases"]
        if a.get("TargetKeyId") == names["key"]
    ]
    for alias in stack_alias:
        kms.delete_alias(AliasName=alias)
    kms.schedule_key_deletion(KeyId=names["key"], PendingWindowInDays=7)


class _AppConfigStubbed:
    """The session `conclude` makes, with AppConfig's ListApplications (which moto does not
    implement) answered by a stub that finds nothing; every other client is moto's."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def client(self, name: str, **kwargs: Any) -> Any:
        return AppConfigStub() if name == "appconfig" else self.session.client(name, **kwargs)


def _conclude(repo: Project, monkeypatch: pytest.MonkeyPatch, ident: str, *extra: str) -> int:
    real = lifecycle.residue
    monkeypatch.setattr(
        lifecycle, "residue", lambda clients, *a, **k: real(_AppConfigStubbed(clients), *a, **k)
    )
    monkeypatch.setattr(cli_module, "_repository", lambda: repo)
    monkeypatch.setattr(experiments_module.shutil, "which", lambda name: None)  # no Pulumi CLI
    return cli_main(["experiment", "conclude", ident, "--yes", "--wait-delay", "0", *extra])


def test_conclude_archives_stops_for_the_destroy_then_finishes(
    repo: Project,
    account: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    experiments.new(repo, "done1", owner="ab@example.com", expires="2099-01-01")
    names = _deploy(account, "done1")
    stack_file = repo.stack_file("experiment-done1")

    # First run: archive (steps 1-2), then no CLI: the destroy command, and a stop.
    assert _conclude(repo, monkeypatch, "done1") == 1
    out = capsys.readouterr().out
    assert "archive-snapshot: done" in out
    assert "archive-results: done" in out
    assert f"pulumi destroy --stack experiment-done1 --yes --cwd {repo.root}" in out
    assert stack_file.exists()
    s3 = account.client("s3")
    archived = {
        o["Key"]: o["Size"]
        for o in s3.list_objects_v2(Bucket=names["archive"], Prefix="done1/")["Contents"]
    }
    assert archived == {
        "done1/results/run-1/summary.json": len(OBJECTS["run-1/summary.json"]),
        "done1/results/run-1/rows.csv": len(OBJECTS["run-1/rows.csv"]),
        "done1/MANIFEST.json": archived["done1/MANIFEST.json"],
    }
    manifest = json.loads(
        s3.get_object(Bucket=names["archive"], Key="done1/MANIFEST.json")["Body"].read()
    )
    assert "run-1/summary.json" in json.dumps(manifest)
    rds = account.client("rds")
    [snap] = rds.describe_db_snapshots(DBSnapshotIdentifier=f"{names['db']}-final")["DBSnapshots"]
    tags = {
        t["Key"]: t["Value"]
        for t in rds.list_tags_for_resource(ResourceName=snap["DBSnapshotArn"])["TagList"]
    }
    assert tags["experiment-id"] == "done1"
    assert "archive-expires-on" in tags

    # The destroy, by hand; then the second run finishes: nothing new archived, no residue,
    # the stack file gone.
    _destroy(account, names)
    assert _conclude(repo, monkeypatch, "done1", "--skip-destroy") == 0
    out = capsys.readouterr().out
    assert "already done" in out
    assert "concluded experiment-done1" in out
    assert not stack_file.exists()
    after = s3.list_objects_v2(Bucket=names["archive"], Prefix="done1/")["Contents"]
    assert {o["Key"] for o in after} == set(archived)


def test_conclude_stops_on_residue_and_keeps_the_stack_file(
    repo: Project,
    account: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    experiments.new(repo, "left1", owner="ab@example.com", expires="2099-01-01")
    names = _deploy(account, "left1")
    _conclude(repo, monkeypatch, "left1")
    capsys.readouterr()
    _destroy(account, names, keep_queue=True)
    assert _conclude(repo, monkeypatch, "left1", "--skip-destroy") == 1
    out = capsys.readouterr().out
    assert names["queue"] in out
    assert "the stack file stays" in out
    assert repo.stack_file("experiment-left1").exists()


@pytest.mark.parametrize(
    ("ident", "message"),
    [
        ("prod", "stack 'prod' is registered as production"),
        ("experiment", "is the baseline of account 210987654321"),
        ("nothere", "no Pulumi.experiment-nothere.yaml: nothing to conclude"),
        ("Bad_Id", "experiment id 'Bad_Id' is not allowed"),
    ],
)
def test_conclude_refuses_what_is_not_a_live_experiment(
    repo: Project,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ident: str,
    message: str,
) -> None:
    assert _conclude(repo, monkeypatch, ident) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_conclude_refuses_credentials_of_another_account(
    repo: Project, aws: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    experiments.new(repo, "wrong1", owner="ab@example.com", expires="2099-01-01")
    assert _conclude(repo, monkeypatch, "wrong1") == 2  # moto's default account: 123456789012
    err = capsys.readouterr().err
    assert "the credentials are of account 123456789012, not 210987654321" in err
    assert repo.stack_file("experiment-wrong1").exists()
