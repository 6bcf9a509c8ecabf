"""A pipeline run: an analysis of a dataset, with a manifest that makes it reproducible.

    python -m worker.run --input <prefix> [--run-id <id>]   # analyse the objects under prefix
    python -m worker.run --replay <run-id>                 # recompute a run from its manifest

It runs as the environment's `pipeline` role (the `pipeline-task` task definition; the stack output
`pipelineRunCommand` starts it). It reads every object under the prefix of the environment's
input store (`INPUT_BUCKET`, the `curated` store), each a file of JSON records, one per line;
evaluates the environment's flag set for each record (`flagset.py`, the same variants the worker
stamps rows with); and writes to the `results` store (`RESULTS_BUCKET`), under `runs/<run-id>/`:

* `results.json`: per flag and variant (arm `control` for the default variant, else `variant`),
  the number of records and the exact sum of every top-level numeric field;
* `flag-set.json`: the flag set document evaluated (its label is the run's flag set version);
* `manifest.json`, written last (a run without it is incomplete): the input objects with
  their S3 version ids, sizes and SHA-256, the flag set version, the code image
  (`ENVFENCE_IMAGE`, the task's image: by digest when the stack builds it), and the outputs
  with their version ids and SHA-256.

All three are written with `If-None-Match: *`: a run id is used once, and nothing of an earlier
run is ever replaced.

The stores are versioned (EF205), so `--replay` reads each input at its recorded version, checks
its SHA-256, evaluates the recorded flag set, and compares what it computes with the recorded
results: the run is reproducible exactly when they are byte for byte the same (exit 0, else 1).
`envfence experiment conclude` archives the whole `results` store, manifests included.

The requests, as S3 receives them (https://docs.aws.amazon.com/AmazonS3/latest/API/):
ListObjectsV2 (`s3:ListBucket`), GetObject (`s3:GetObject`; with a versionId,
`s3:GetObjectVersion`), PutObject without SSE headers (the bucket's default SSE-KMS with the
environment key applies; `kms:GenerateDataKey`) and without `Tagging` (that would need
`s3:PutObjectTagging`, API_PutObject.html): provenance goes into object metadata instead.
Conditional writes (`If-None-Match`) need nothing beyond `s3:PutObject`
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html).

Exit status: 0 done (replay: reproducible), 1 failed (replay: not reproducible), 2 configuration
or usage error (one line naming the variable or argument).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .config import (
    BUCKET_RE,
    EXPERIMENT_ID_RE,
    REGION_RE,
    STACK_RE,
    TIERS,
    ConfigError,
)
from .flagset import FlagSet, FlagSetError, record_context
from .pipeline import InvalidRecord, curate_v1, parse_payload

FORMAT = "envfence-run/1"
RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,512}$")
MAX_OBJECT_BYTES = 256 * 1024 * 1024
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class RunError(RuntimeError):
    """The run cannot complete (an input is not versioned, a record is not JSON, ...)."""


@dataclass(frozen=True)
class RunConfig:
    environment: str
    tier: str
    experiment_id: str | None
    input_bucket: str
    results_bucket: str
    image: str
    flag_set: FlagSet
    flag_set_document: str


def load_run_config(environ: Mapping[str, str]) -> RunConfig:
    """The run's configuration; ConfigError names the first bad variable."""

    def get(name: str) -> str:
        value = environ.get(name, "").strip()
        if not value:
            raise ConfigError(name, "is not set")
        return value

    def matching(name: str, pattern: re.Pattern[str], what: str) -> str:
        value = get(name)
        if not pattern.match(value):
            raise ConfigError(name, f"must be {what}, got {value!r}")
        return value

    environment = matching("ENVFENCE_ENVIRONMENT", STACK_RE, "a stack name")
    tier = get("ENVFENCE_TIER")
    if tier not in TIERS:
        raise ConfigError("ENVFENCE_TIER", f"must be one of {', '.join(TIERS)}, got {tier!r}")
    experiment_id = environ.get("ENVFENCE_EXPERIMENT_ID", "").strip() or None
    if (tier == "experiment") != (experiment_id is not None):
        raise ConfigError("ENVFENCE_EXPERIMENT_ID", "is set exactly for the experiment tier")
    if experiment_id is not None and not EXPERIMENT_ID_RE.match(experiment_id):
        raise ConfigError("ENVFENCE_EXPERIMENT_ID", f"is not an experiment id: {experiment_id!r}")
    matching("AWS_REGION", REGION_RE, "an AWS region such as eu-west-1")
    document = get("FLAG_SET")
    try:
        flag_set = FlagSet.load(document, get("FLAG_SET_VERSION"))
    except FlagSetError as exc:
        raise ConfigError("FLAG_SET", f"is not a usable flag set: {exc}") from None
    return RunConfig(
        environment=environment,
        tier=tier,
        experiment_id=experiment_id,
        input_bucket=matching("INPUT_BUCKET", BUCKET_RE, "an S3 bucket name"),
        results_bucket=matching("RESULTS_BUCKET", BUCKET_RE, "an S3 bucket name"),
        image=get("ENVFENCE_IMAGE"),
        flag_set=flag_set,
        flag_set_document=document,
    )


# -- the analysis (pure) --------------------------------------------------------------------------


def records(key: str, body: bytes) -> Iterator[dict[str, Any]]:
    """The JSON records of one input object, one per non-empty line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RunError(f"{key}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield parse_payload(line)
            except InvalidRecord as exc:
                raise RunError(f"{key}, line {number}: {exc}") from None


def analyse(inputs: Sequence[tuple[str, bytes]], flag_set: FlagSet) -> bytes:
    """The results document: per flag and variant, records and exact sums. Deterministic."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for key, body in inputs:
        for record in records(key, body):
            values = curate_v1(record)
            for flag, a in flag_set.assign(record_context(record)).items():
                g = groups.setdefault(
                    (flag, a.variant),
                    {
                        "flag": flag,
                        "variant": a.variant,
                        "arm": "control" if a.default else "variant",
                        "experimental": a.experimental,
                        "records": 0,
                        "sums": {},
                    },
                )
                g["records"] += 1
                for name, value in values.items():
                    g["sums"][name] = g["sums"].get(name, Decimal(0)) + value
    out = []
    for _, g in sorted(groups.items()):
        out.append({**g, "sums": {k: str(v) for k, v in sorted(g["sums"].items())}})
    document = {"format": FORMAT, "flag_set_version": flag_set.version, "groups": out}
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- S3 -------------------------------------------------------------------------------------------


def _version_of(resp: Mapping[str, Any], where: str) -> str:
    version = resp.get("VersionId")
    if not version or version == "null":
        raise RunError(
            f"{where} has no version id: the store is not versioned, so the run could not be "
            "reproduced"
        )
    return str(version)


def _read(s3: Any, bucket: str, key: str, version: str | None = None) -> tuple[bytes, str]:
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version is not None:
        params["VersionId"] = version
    resp = s3.get_object(**params)
    if int(resp.get("ContentLength") or 0) > MAX_OBJECT_BYTES:
        raise RunError(f"s3://{bucket}/{key} is larger than {MAX_OBJECT_BYTES} bytes")
    body = resp["Body"].read()
    return body, _version_of(resp, f"s3://{bucket}/{key}")


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            params["ContinuationToken"] = token
        resp = s3.list_objects_v2(**params)
        keys += [o["Key"] for o in resp.get("Contents") or [] if not o["Key"].endswith("/")]
        token = resp.get("NextContinuationToken")
        if not resp.get("IsTruncated") or not token:
            return sorted(keys)


def _put(
    s3: Any, cfg: RunConfig, key: str, body: bytes, *, create_only: bool = False
) -> dict[str, Any]:
    metadata = {"environment": cfg.environment, "flag-set-version": cfg.flag_set.version}
    if cfg.experiment_id is not None:
        metadata["experiment-id"] = cfg.experiment_id
    params: dict[str, Any] = {
        "Bucket": cfg.results_bucket,
        "Key": key,
        "Body": body,
        "ContentType": "application/json",
        "Metadata": metadata,
    }
    if create_only:
        params["IfNoneMatch"] = "*"
    resp = s3.put_object(**params)
    return {
        "bucket": cfg.results_bucket,
        "key": key,
        "version_id": _version_of(resp, f"s3://{cfg.results_bucket}/{key}"),
        "sha256": sha256(body),
        "size": len(body),
    }


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def run(
    s3: Any,
    cfg: RunConfig,
    *,
    input_prefix: str,
    run_id: str,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> dict[str, Any]:
    """Analyse the input store's objects under `input_prefix`; returns the manifest written."""
    started = now()
    keys = _keys(s3, cfg.input_bucket, input_prefix)
    if not keys:
        raise RunError(f"no object under s3://{cfg.input_bucket}/{input_prefix}")
    inputs, entries = [], []
    for key in keys:
        body, version = _read(s3, cfg.input_bucket, key)
        inputs.append((key, body))
        entries.append(
            {
                "bucket": cfg.input_bucket,
                "key": key,
                "version_id": version,
                "sha256": sha256(body),
                "size": len(body),
            }
        )
    results = analyse(inputs, cfg.flag_set)
    base = run_prefix(run_id)
    # Every object of a run is written once: a run id used before fails (412) before anything
    # of the earlier run is replaced.
    outputs = [
        _put(
            s3, cfg, base + "flag-set.json", cfg.flag_set_document.encode("utf-8"), create_only=True
        ),
        _put(s3, cfg, base + "results.json", results, create_only=True),
    ]
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "environment": cfg.environment,
        "tier": cfg.tier,
        "experiment_id": cfg.experiment_id,
        "started_at": started.isoformat(),
        "finished_at": now().isoformat(),
        "code_image": cfg.image,
        "flag_set_version": cfg.flag_set.version,
        "input_prefix": input_prefix,
        "inputs": entries,
        "outputs": outputs,
    }
    body = (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode("utf-8")
    _put(s3, cfg, base + "manifest.json", body, create_only=True)
    return manifest


@dataclass(frozen=True)
class Replay:
    reproducible: bool
    problems: tuple[str, ...]


def replay(s3: Any, cfg: RunConfig, run_id: str) -> Replay:
    """Recompute run `run_id` from its manifest: inputs at their versions, its flag set."""
    body, _ = _read(s3, cfg.results_bucket, run_prefix(run_id) + "manifest.json")
    manifest = json.loads(body)
    if manifest.get("format") != FORMAT:
        raise RunError(f"run {run_id}: not a {FORMAT} manifest")
    problems: list[str] = []
    inputs = []
    for entry in manifest["inputs"]:
        data, _ = _read(s3, entry["bucket"], entry["key"], entry["version_id"])
        if sha256(data) != entry["sha256"]:
            problems.append(f"input {entry['key']} version {entry['version_id']} changed")
        inputs.append((entry["key"], data))
    outputs = {o["key"].rsplit("/", 1)[-1]: o for o in manifest["outputs"]}
    flag_doc, _ = _read(
        s3,
        cfg.results_bucket,
        outputs["flag-set.json"]["key"],
        outputs["flag-set.json"]["version_id"],
    )
    try:
        flag_set = FlagSet.load(flag_doc.decode("utf-8"), manifest["flag_set_version"])
    except FlagSetError as exc:
        raise RunError(f"run {run_id}: its flag set: {exc}") from None
    if sha256(analyse(inputs, flag_set)) != outputs["results.json"]["sha256"]:
        problems.append("the results computed again differ from the recorded results")
    if manifest.get("code_image") != cfg.image:
        # Not a failure: the same inputs and flags give the same results with newer code too,
        # which is what the comparison above checks; but say so.
        print(
            f"note: run {run_id} ran {manifest.get('code_image')}, this replay runs {cfg.image}",
            file=sys.stderr,
        )
    return Replay(not problems, tuple(problems))


# -- command line ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.run", description=__doc__.split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", help="prefix of the input store's objects to analyse")
    mode.add_argument("--replay", metavar="RUN_ID", help="recompute a run from its manifest")
    parser.add_argument("--run-id", help="the run's id (default: the UTC time, to the second)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        cfg = load_run_config(os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"envfence-run: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    run_id = args.replay or args.run_id or dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%Sz")
    if not RUN_ID_RE.match(run_id):
        print(f"envfence-run: run id {run_id!r}: 1-63 of a-z, 0-9 and '-'", file=sys.stderr)
        return EXIT_USAGE
    if args.input is not None and not PREFIX_RE.match(args.input):
        print(f"envfence-run: --input {args.input!r} is not an object key prefix", file=sys.stderr)
        return EXIT_USAGE

    import boto3  # only here: the analysis and its tests need no AWS SDK
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.session.Session().client("s3")
    try:
        if args.replay:
            result = replay(s3, cfg, run_id)
            for problem in result.problems:
                print(f"envfence-run: run {run_id}: {problem}", file=sys.stderr)
            print(f"run {run_id}: {'reproducible' if result.reproducible else 'NOT reproducible'}")
            return EXIT_OK if result.reproducible else EXIT_FAILED
        manifest = run(s3, cfg, input_prefix=args.input, run_id=run_id)
    except RunError as exc:
        print(f"envfence-run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "PreconditionFailed":
            print(f"envfence-run: run {run_id} exists already (its manifest)", file=sys.stderr)
        else:
            print(f"envfence-run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BotoCoreError as exc:
        print(f"envfence-run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"run {run_id}: {len(manifest['inputs'])} input object(s), flag set "
        f"{manifest['flag_set_version']}: s3://{cfg.results_bucket}/{run_prefix(run_id)}manifest.json"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
