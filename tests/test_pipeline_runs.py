"""Which data version an experiment used (strategy 7): pipeline runs and their manifests, against
the moto server (tests/moto_server.py; S3 only, as a fake API), and `experiment conclude`
archiving them with the results."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
from typing import TYPE_CHECKING, Any

import pytest

from app.worker import run as runs
from envfence import lifecycle
from tests.flagsets import document, live_experiment

if TYPE_CHECKING:
    from tests.moto_server import Aws

pytest_plugins = ("tests.moto_server",)

_ids = itertools.count(1)
IMAGE = "210987654321.dkr.ecr.eu-west-1.amazonaws.com/envfence-experiment-ab12-worker@sha256:" + (
    "ab" * 32
)
CLOCK = iter(dt.datetime(2026, 12, 2, 10, 0, s, tzinfo=dt.UTC) for s in itertools.count())


def lines(*records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def make_bucket(s3: Any, name: str, versioned: bool = True) -> None:
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def environ(stack: str, **extra: str) -> dict[str, str]:
    text, label = document(live_experiment(percent=50))
    return {
        "ENVFENCE_ENVIRONMENT": stack,
        "ENVFENCE_TIER": "experiment",
        "ENVFENCE_EXPERIMENT_ID": stack.removeprefix("experiment-"),
        "AWS_REGION": "eu-west-1",
        "FLAG_SET": text,
        "FLAG_SET_VERSION": label,
        "INPUT_BUCKET": f"envfence-{stack}-curated-123456789012",
        "RESULTS_BUCKET": f"envfence-{stack}-results-123456789012",
        "ENVFENCE_IMAGE": IMAGE,
        **extra,
    }


@pytest.fixture
def stores(aws: Aws) -> tuple[Any, runs.RunConfig]:
    stack = f"experiment-r{next(_ids)}"
    cfg = runs.load_run_config(environ(stack))
    s3 = aws.client("s3")
    make_bucket(s3, cfg.input_bucket)
    make_bucket(s3, cfg.results_bucket)
    s3.put_object(
        Bucket=cfg.input_bucket,
        Key="datasets/v1/part-1.jsonl",
        Body=lines(
            {"user_id": "u1", "group": "internal", "n": 1, "latency": 0.25},
            {"user_id": "u2", "group": "customers", "n": 2, "latency": 1.5},
        ),
    )
    s3.put_object(
        Bucket=cfg.input_bucket,
        Key="datasets/v1/part-2.jsonl",
        Body=lines(*({"user_id": f"u{i}", "n": i} for i in range(3, 40))),
    )
    s3.put_object(Bucket=cfg.input_bucket, Key="other/ignored.jsonl", Body=b"not json\n")
    return s3, cfg


def test_a_run_writes_its_manifest_next_to_its_results(stores: tuple[Any, runs.RunConfig]) -> None:
    s3, cfg = stores
    manifest = runs.run(s3, cfg, input_prefix="datasets/v1/", run_id="r1", now=lambda: next(CLOCK))
    assert [i["key"] for i in manifest["inputs"]] == [
        "datasets/v1/part-1.jsonl",
        "datasets/v1/part-2.jsonl",
    ]
    for entry in manifest["inputs"]:
        obj = s3.get_object(Bucket=entry["bucket"], Key=entry["key"])
        assert entry["version_id"] == obj["VersionId"]
        assert entry["sha256"] == runs.sha256(obj["Body"].read())
    assert manifest["flag_set_version"] == cfg.flag_set.version
    assert manifest["code_image"] == IMAGE
    listed = s3.list_objects_v2(Bucket=cfg.results_bucket, Prefix="runs/r1/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "runs/r1/flag-set.json",
        "runs/r1/manifest.json",
        "runs/r1/results.json",
    ]
    stored = json.loads(
        s3.get_object(Bucket=cfg.results_bucket, Key="runs/r1/manifest.json")["Body"].read()
    )
    assert stored == manifest
    head = s3.head_object(Bucket=cfg.results_bucket, Key="runs/r1/results.json")
    assert head["Metadata"]["experiment-id"] == cfg.experiment_id
    results = json.loads(
        s3.get_object(Bucket=cfg.results_bucket, Key="runs/r1/results.json")["Body"].read()
    )
    groups = {(g["variant"], g["arm"]): g for g in results["groups"]}
    assert groups[("internal", "variant")]["records"] == 1
    assert groups[("internal", "variant")]["sums"] == {"latency": "0.25", "n": "1"}
    assert sum(g["records"] for g in results["groups"]) == 39
    assert {arm for _, arm in groups} == {"control", "variant"}


def test_a_run_is_reproducible_from_its_manifest(
    stores: tuple[Any, runs.RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, cfg = stores
    runs.run(s3, cfg, input_prefix="datasets/v1/", run_id="r2")
    # The dataset moves on: a new version of an input, and the flags change.
    s3.put_object(Bucket=cfg.input_bucket, Key="datasets/v1/part-1.jsonl", Body=lines({"n": 99}))
    text, label = document(live_experiment(percent=5))
    newer = runs.load_run_config(
        environ(cfg.environment, FLAG_SET=text, FLAG_SET_VERSION=label, ENVFENCE_IMAGE="img@x")
    )
    assert runs.replay(s3, newer, "r2") == runs.Replay(True, ())
    # Code that computes something else is caught: the run is not reproducible with it.
    original = runs.analyse
    monkeypatch.setattr(runs, "analyse", lambda i, f: original(i[:1], f))
    result = runs.replay(s3, newer, "r2")
    assert not result.reproducible
    assert result.problems == ("the results computed again differ from the recorded results",)


def test_a_run_id_is_never_written_twice(stores: tuple[Any, runs.RunConfig]) -> None:
    from botocore.exceptions import ClientError

    s3, cfg = stores
    runs.run(s3, cfg, input_prefix="datasets/v1/", run_id="r3")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        runs.run(s3, cfg, input_prefix="datasets/v1/", run_id="r3")


def test_an_unversioned_store_is_refused(aws: Aws) -> None:
    stack = f"experiment-u{next(_ids)}"
    cfg = runs.load_run_config(environ(stack))
    s3 = aws.client("s3")
    make_bucket(s3, cfg.input_bucket, versioned=False)
    make_bucket(s3, cfg.results_bucket)
    s3.put_object(Bucket=cfg.input_bucket, Key="d/a.jsonl", Body=lines({"n": 1}))
    with pytest.raises(runs.RunError, match="not versioned, so the run could not be reproduced"):
        runs.run(s3, cfg, input_prefix="d/", run_id="u1")


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b'{"n": 1}\nnot json\n', "line 2: body is not JSON"), (b"\xff\n", "not UTF-8")],
)
def test_a_bad_input_names_its_object_and_line(body: bytes, problem: str) -> None:
    with pytest.raises(runs.RunError, match=problem):
        list(runs.records("d/a.jsonl", body))


def test_the_command_line(
    stores: tuple[Any, runs.RunConfig], aws: Aws, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg = stores
    env = environ(cfg.environment)
    assert runs.main(["--input", "datasets/v1/", "--run-id", "c1"], env) == 0
    assert "run c1: 2 input object(s)" in capsys.readouterr().out
    assert runs.main(["--input", "datasets/v1/", "--run-id", "c1"], env) == 1
    assert "run c1 exists already" in capsys.readouterr().err
    assert runs.main(["--replay", "c1"], env) == 0
    assert "run c1: reproducible" in capsys.readouterr().out
    assert runs.main(["--input", "nothing/", "--run-id", "c2"], env) == 1
    assert "no object under" in capsys.readouterr().err
    assert runs.main(["--input", "x", "--run-id", "Bad_Id"], env) == 2
    env.pop("RESULTS_BUCKET")
    assert runs.main(["--input", "x"], env) == 2
    assert capsys.readouterr().err.endswith("RESULTS_BUCKET is not set\n")


def test_conclude_archives_the_run_manifests_with_the_results(
    stores: tuple[Any, runs.RunConfig], aws: Aws
) -> None:
    s3, cfg = stores
    runs.run(s3, cfg, input_prefix="datasets/v1/", run_id="r4")
    runs.run(s3, cfg, input_prefix="datasets/v1/part-2", run_id="r5")
    # r5's results are overwritten afterwards: its recorded version is no longer current.
    s3.put_object(Bucket=cfg.results_bucket, Key="runs/r5/results.json", Body=b"{}")
    archive = f"envfence-archive-{next(_ids)}-123456789012"
    make_bucket(s3, archive)
    target = lifecycle.Target(
        project="envfence",
        stack=cfg.environment,
        experiment_id=str(cfg.experiment_id),
        account=aws.account,
        region=aws.region,
        db_instance_identifier=f"envfence-{cfg.environment}",
        results_bucket=cfg.results_bucket,
        archive_bucket=archive,
        archive_key_arn=None,
    )
    step = lifecycle.archive_results(s3, target, expire_after_days=30)
    assert step.status == "done", step.detail
    assert (
        "2 pipeline run manifest(s), of which 1 name outputs that are no longer current (r5)"
        in (step.detail)
    )
    manifest = json.loads(s3.get_object(Bucket=archive, Key=target.manifest_key)["Body"].read())
    by_id = {r["run_id"]: r for r in manifest["runs"]}
    assert by_id["r4"]["outputs_archived"] is True
    assert by_id["r5"]["outputs_archived"] is False
    assert by_id["r4"]["flag_set_version"] == cfg.flag_set.version
    archived = s3.get_object(Bucket=archive, Key=by_id["r4"]["manifest_key"])["Body"].read()
    original = s3.get_object(Bucket=cfg.results_bucket, Key="runs/r4/manifest.json")["Body"]
    assert archived == original.read()
    assert io.BytesIO(archived).read()  # not empty


def test_replay_checks_every_input_against_its_recorded_checksum(
    stores: tuple[Any, runs.RunConfig],
) -> None:
    s3, cfg = stores
    manifest = runs.run(s3, cfg, input_prefix="datasets/v1/", run_id="r6")
    # A manifest that records another checksum for an input than the version holds (a manifest
    # edited by hand, or an input version that is not what the run read) is not reproducible.
    manifest["inputs"][0]["sha256"] = "0" * 64
    body = json.dumps(manifest).encode()
    s3.put_object(Bucket=cfg.results_bucket, Key="runs/r7/manifest.json", Body=body)
    result = runs.replay(s3, cfg, "r7")
    assert not result.reproducible
    assert result.problems == (
        f"input datasets/v1/part-1.jsonl version {manifest['inputs'][0]['version_id']} changed",
    )


# Request parameters that change how IAM decides an S3 call (envfence/prove/translate.py).
DECIDING = {
    "VersionId",
    "IfNoneMatch",
    "Tagging",
    "ServerSideEncryption",
    "SSEKMSKeyId",
    "ACL",
    "StorageClass",
    "ObjectLockMode",
    "Prefix",
}


def test_the_proofs_controls_are_the_runs_real_calls(stores: tuple[Any, runs.RunConfig]) -> None:
    """Every S3 call a run and its replay really make (recorded from the code, as the worker's
    request contract is) has a control of the same operation, store and deciding parameters
    in `envfence prove` (`controls.pipeline_run_calls`), and every control is a call a run makes."""
    from envfence.prove import contract, controls

    s3, cfg = stores
    recorder = contract.Recorder()
    recorder.attach(s3)
    try:
        runs.run(s3, cfg, input_prefix="datasets/v1/", run_id="p1")
        runs.replay(s3, cfg, "p1")
    finally:
        s3.meta.events.unregister("provide-client-params.*.*", recorder._api_call)
        s3.meta.events.unregister("before-sign.rds.connect", recorder._db_token)
    store = {cfg.input_bucket: "curated", cfg.results_bucket: "results"}

    def shape(call: Any) -> tuple[str, str, frozenset[str]]:
        return (
            call.operation,
            store[call.params["Bucket"]],
            frozenset(k for k in call.params if k in DECIDING),
        )

    real = {shape(c) for c in recorder.calls}
    modelled = {
        shape(c) for c in controls.pipeline_run_calls(cfg.input_bucket, cfg.results_bucket, "x")
    }
    assert real == modelled
