"""DVC remotes on an environment's `curated` store: a real `dvc push` / `dvc pull` round trip
against the suite's moto server on 127.0.0.1, and the S3 requests DVC sends, decided on the
policies the stacks really declare.

The remote is configured with the commands the README documents (`dvc remote add -d curated
s3://<curated-bucket>/dvc`), plus `endpointurl` for the test only. DVC runs as a subprocess
(`python -m dvc`) with an environment passed explicitly: the `aws` fixture's dummy credentials
and endpoint, AWS config and credentials files that are empty files of the test (DVC reads
AWS_CONFIG_FILE itself and fails on /dev/null, "could not be found"), HOME, XDG and DVC's global,
system and site directories in tmp, analytics and update checks off (DVC_NO_ANALYTICS and a
global config of the test), Studio offline, and a proxy that does not exist for every host but
127.0.0.1: a request to anywhere else fails instead of leaving the machine.

The moto server's request log (werkzeug, one line per request) is what DVC really sent: each line
is classified into its S3 operation, and the operations must stay within what the roles are
granted. moto judges no permission, so the last tests decide those operations with envfence's IAM
evaluator on the evaluated stacks (identity policy, boundary, bucket policy, S3 endpoint policy,
key policy): what `dvc push` needs is allowed to the pipeline role, what `dvc pull` needs to the
analyst role, and the SSE options a user could set are allowed or denied as the README says.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from envfence import naming
from envfence.model import StackState
from envfence.project import Project
from envfence.prove import controls, translate
from envfence.prove.requests import RealRequest, decide
from envfence.prove.translate import Call, Site
from envfence.prove.world import World, build_world
from envfence.rules import classify
from envfence.rules.context import build_context
from envfence.rules.providers import aws as aws_types

if TYPE_CHECKING:
    from tests.moto_server import Aws

pytest_plugins = ("tests.moto_server",)

REMOTE = "curated"
PREFIX = "dvc"  # the remote is s3://<curated-bucket>/dvc: DVC writes <prefix>/files/md5/..
DATASET = {
    "data/customers.csv": b"id,segment\n1,a\n2,b\n3,a\n",
    "images/cat.bin": bytes(range(256)) * 40,
    "images/nested/dog.bin": b"\x00\xff" * 5000,
    "images/empty.txt": b"",
}
TRACKED = ("data/customers.csv", "images")  # one file, one directory

# The S3 operations DVC (3.67, dvc-s3 3.3, s3fs 2026.9) sends, measured on the moto server's log.
# `dvc push` lists the remote (ListObjectsV2 under <prefix>/files/md5/), checks objects
# (HeadObject), uploads with PutObject, and on a later push reads back a directory's listing it
# pushed before (GetObject of <md5>.dir); s3fs uploads a file of 100 MiB or more in 50 MiB parts
# (multipart: measured once with a 101 MiB file, too slow for the suite). `dvc pull` lists,
# heads and gets.
PUSH_OPERATIONS = frozenset(
    {
        "ListObjectsV2",
        "HeadObject",
        "GetObject",
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
    }
)
PULL_OPERATIONS = frozenset({"ListObjectsV2", "HeadObject", "GetObject"})

# The IAM action each operation is authorized as (the API reference's "Permissions" section of
# each operation; multipart: "Multipart upload API and permissions", S3 User Guide).
IAM_ACTION = {
    "ListObjectsV2": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "GetBucketLocation": "s3:GetBucketLocation",
    "ListObjectVersions": "s3:ListBucketVersions",
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
}


def unique_bucket() -> str:
    """A bucket named like an envfence curated store (`<project>-<stack>-curated-<account>`),
    unique on the shared server."""
    return f"envfence-prod-curated-{uuid.uuid4().hex[:12]}"


def md5_key(data: bytes) -> str:
    digest = hashlib.md5(data).hexdigest()
    return f"{PREFIX}/files/md5/{digest[:2]}/{digest[2:]}"


# -- the moto server's request log ----------------------------------------------------------------

_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class S3Request:
    method: str
    bucket: str
    key: str
    query: Mapping[str, list[str]]
    status: int

    @property
    def operation(self) -> str:
        """The S3 operation of a path-style request (the REST API's method, path and
        subresource; a CopyObject would read as PutObject: no request here copies)."""
        q, m, obj = self.query, self.method, bool(self.key)
        if not obj:
            if m == "HEAD":
                return "HeadBucket"
            if m == "GET":
                for sub, op in (
                    ("location", "GetBucketLocation"),
                    ("versions", "ListObjectVersions"),
                    ("uploads", "ListMultipartUploads"),
                ):
                    if sub in q:
                        return op
                return "ListObjectsV2" if q.get("list-type") == ["2"] else "ListObjects"
            if m == "POST" and "delete" in q:
                return "DeleteObjects"
        else:
            if m == "HEAD":
                return "HeadObject"
            if m == "GET":
                return "ListParts" if "uploadId" in q else "GetObject"
            if m == "PUT":
                if "partNumber" in q:
                    return "UploadPart"
                return "PutObjectTagging" if "tagging" in q else "PutObject"
            if m == "POST":
                if "uploads" in q:
                    return "CreateMultipartUpload"
                if "uploadId" in q:
                    return "CompleteMultipartUpload"
            if m == "DELETE":
                return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        return f"unknown: {m} /{self.bucket}/{self.key}?{dict(q)}"

    def names_the_prefix(self) -> bool:
        """Whether the request stays under the remote's prefix: its key, or its list prefix."""
        if self.key:
            return self.key.startswith(f"{PREFIX}/")
        return any(p.startswith(f"{PREFIX}/") for p in self.query.get("prefix", []))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(_ANSI.sub("", record.getMessage()))


@contextmanager
def server_log() -> Iterator[list[str]]:
    """The moto server's request lines while the block runs (werkzeug logs each request at INFO;
    the `moto_server` fixture keeps the logger at WARNING otherwise)."""
    logger = logging.getLogger("werkzeug")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def s3_requests(lines: list[str], bucket: str) -> list[S3Request]:
    """The requests of `lines` that name `bucket` (path style: the server is an IP address)."""
    out = []
    for line in lines:
        m = _LINE.search(line)
        if not m:
            continue
        url = urlsplit(m["target"])
        name, _, key = url.path.lstrip("/").partition("/")
        if name != bucket:
            continue
        query = parse_qs(url.query, keep_blank_values=True)
        out.append(S3Request(m["method"], name, key, query, int(m["status"])))
    return out


def operations(requests: list[S3Request]) -> set[str]:
    return {r.operation for r in requests}


# -- DVC as a subprocess ---------------------------------------------------------------------------

# What the `aws` fixture sets and DVC needs: dummy credentials, the region, the server.
_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_MAX_ATTEMPTS",
)
# No proxy listens on port 9 (discard): whatever is not 127.0.0.1 fails to connect.
_NOWHERE = "http://127.0.0.1:9"


def dvc_env(home: Path, aws_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a DVC subprocess: nothing of the developer's HOME, ~/.aws or
    ~/.config/dvc, no analytics, no update check, no Studio, no network but 127.0.0.1."""
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_DATA_HOME": home / ".local" / "share",
        "DVC_GLOBAL_CONFIG_DIR": home / "dvc-global",
        "DVC_SYSTEM_CONFIG_DIR": home / "dvc-system",
        "DVC_SITE_CACHE_DIR": home / "dvc-site-cache",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    # The global config of the test (not of the developer): `dvc config --global` would write
    # the same file.
    (home / "dvc-global" / "config").write_text(
        "[core]\n    analytics = false\n    check_update = false\n"
    )
    empty = home / "aws-empty"
    empty.write_text("")
    env = {name: str(path) for name, path in dirs.items()}
    env.update(
        PATH=os.environ.get("PATH", os.defpath),
        DVC_NO_ANALYTICS="1",
        DVC_STUDIO_OFFLINE="1",
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        HTTP_PROXY=_NOWHERE,
        HTTPS_PROXY=_NOWHERE,
        http_proxy=_NOWHERE,
        https_proxy=_NOWHERE,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(aws_env or {})
    return env


def dvc(
    repo: Path, env: Mapping[str, str], *args: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if ok:
        assert proc.returncode == 0, (
            f"dvc {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC project with the dataset added (local only: `dvc init`, `dvc add`), made once;
    each test works on a copy."""
    root = tmp_path_factory.mktemp("dvc-tracked")
    repo = root / "repo"
    repo.mkdir()
    env = dvc_env(root / "home")
    dvc(repo, env, "init", "--no-scm")
    for rel, data in DATASET.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    dvc(repo, env, "add", *TRACKED)
    return repo


@dataclass
class DvcProject:
    repo: Path
    env: dict[str, str]

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return dvc(self.repo, self.env, *args, ok=ok)

    def add_remote(self, bucket: str, endpoint: str) -> None:
        """As the README says, and the endpoint of the test's server."""
        self.run("remote", "add", "-d", REMOTE, f"s3://{bucket}/{PREFIX}")
        self.run("remote", "modify", REMOTE, "endpointurl", endpoint)


@pytest.fixture
def project_copy(tracked: Path, tmp_path: Path, aws: Aws) -> DvcProject:
    repo = tmp_path / "repo"
    shutil.copytree(tracked, repo, symlinks=True)
    return DvcProject(repo, dvc_env(tmp_path / "home", {k: os.environ[k] for k in _AWS_VARS}))


def create_bucket(aws: Aws, name: str) -> None:
    aws.client("s3").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": aws.region}
    )


def bucket_keys(aws: Aws, name: str) -> set[str]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=name)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def expected_keys(repo: Path) -> set[str]:
    """Every object a push of TRACKED writes: one per file (by the md5 of its bytes) and the
    directory's listing (`<md5>.dir`, the md5 its .dvc file records)."""
    keys = {md5_key(data) for data in DATASET.values()}
    for target in TRACKED:
        out = yaml.safe_load((repo / f"{target}.dvc").read_text())["outs"][0]
        if str(out["md5"]).endswith(".dir"):
            digest = str(out["md5"])
            keys.add(f"{PREFIX}/files/md5/{digest[:2]}/{digest[2:]}")
    return keys


# -- the round trip --------------------------------------------------------------------------------


def test_push_then_pull_restores_the_bytes(project_copy: DvcProject, aws: Aws) -> None:
    p, bucket = project_copy, unique_bucket()
    create_bucket(aws, bucket)
    p.add_remote(bucket, aws.endpoint)
    config = (p.repo / ".dvc" / "config").read_text()
    assert f"url = s3://{bucket}/{PREFIX}" in config and f"remote = {REMOTE}" in config

    with server_log() as lines:
        pushed = p.run("push")
    push = s3_requests(lines, bucket)
    expected = expected_keys(p.repo)
    assert f"{len(expected)} files pushed" in pushed.stdout, pushed.stdout

    # Everything landed under the remote's prefix, nothing beside it.
    assert bucket_keys(aws, bucket) == expected

    # No cache, no workspace copy: only the .dvc files remain.
    shutil.rmtree(p.repo / ".dvc" / "cache")
    (p.repo / "data" / "customers.csv").unlink()
    shutil.rmtree(p.repo / "images")
    with server_log() as lines:
        p.run("pull")
    pull = s3_requests(lines, bucket)
    for rel, data in DATASET.items():
        assert (p.repo / rel).read_bytes() == data, rel

    assert push and pull
    assert [r for r in push + pull if not r.names_the_prefix()] == []
    assert "PutObject" in operations(push) and operations(push) <= PUSH_OPERATIONS
    assert "GetObject" in operations(pull) and operations(pull) <= PULL_OPERATIONS
    # Not one write, delete or configuration call while pulling.
    assert {r.method for r in pull} <= {"GET", "HEAD"}


def test_push_with_the_environment_key_sends_both_encryption_headers(
    project_copy: DvcProject, aws: Aws
) -> None:
    """`sse aws:kms` with `sse_kms_key_id <keyArn>`: every object is written under that key
    (moto keeps the headers of the PutObject it received)."""
    p, bucket = project_copy, unique_bucket()
    create_bucket(aws, bucket)
    key_arn = aws.client("kms").create_key(Description="envfence prod")["KeyMetadata"]["Arn"]
    p.add_remote(bucket, aws.endpoint)
    p.run("remote", "modify", REMOTE, "sse", "aws:kms")
    p.run("remote", "modify", REMOTE, "sse_kms_key_id", key_arn)
    p.run("push")
    s3 = aws.client("s3")
    keys = bucket_keys(aws, bucket)
    assert keys == expected_keys(p.repo)
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn), key


def test_push_to_a_missing_bucket_fails_and_creates_nothing(
    project_copy: DvcProject, aws: Aws
) -> None:
    p, bucket = project_copy, unique_bucket()
    p.add_remote(bucket, aws.endpoint)
    with server_log() as lines:
        failed = p.run("push", ok=False)
    assert failed.returncode != 0
    assert "NoSuchBucket" in failed.stderr or "does not exist" in failed.stderr, failed.stderr
    assert bucket not in {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
    assert operations(s3_requests(lines, bucket)) <= PUSH_OPERATIONS - {"PutObject"}


# -- the same operations, decided on the stacks' policies ------------------------------------------

LIST_SOURCE = "https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html"
HEAD_SOURCE = "https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html"
OBJECT_KEY = f"{PREFIX}/files/md5/3f/0c8d1c1b7b7a2d5f8e4c6b1a9d0e2f31"


@dataclass(frozen=True)
class Curated:
    view: controls.StackView
    bucket: str
    bucket_arn: str
    key_arn: str

    def site(self, role: str) -> Site:
        """The pipeline runs in the environment's VPC (its S3 endpoint on the way); analysts
        work from outside it."""
        state = self.view.state
        arn = self.view.role(naming.role_arn(state.project, state.stack, role, self.view.account))
        return self.view.site(arn, in_vpc=role == "pipeline")


@pytest.fixture(scope="module")
def world(stacks: dict[str, StackState], project: Project) -> World:
    ctx = build_context(stacks.values(), project)
    return build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})


def curated(stacks: dict[str, StackState], world: World, stack: str) -> Curated:
    view = controls.StackView(stacks[stack], world)
    bucket = view.one(classify.token(aws_types.s3.Bucket), "store-curated")
    key = view.one(classify.token(aws_types.kms.Key), "key")
    return Curated(view, str(bucket.get("bucket")), str(bucket.get("arn")), str(key.get("arn")))


def iam_requests(
    site: Site, c: Curated, operation: str, sse: Mapping[str, str] | None = None
) -> list[RealRequest]:
    """The IAM requests AWS evaluates for one S3 operation of DVC on the curated store, with the
    KMS calls S3 makes for the caller (envfence.prove.translate for PutObject and GetObject)."""
    context, endpoint = translate.network_context(site, "s3")
    obj = f"{c.bucket_arn}/{OBJECT_KEY}"

    def s3(action: str, resource: str, extra: Mapping[str, Any], source: str) -> RealRequest:
        return RealRequest(
            f"{operation} -> {action}",
            site.principal,
            action,
            resource,
            {**context, **extra},
            source,
            endpoint,
        )

    def call(op: str, **params: str) -> list[RealRequest]:
        return translate.translate(
            [Call("s3", op, {"Bucket": c.bucket, "Key": OBJECT_KEY, **params})], site
        )

    if operation == "ListObjectsV2":
        listing = {"s3:prefix": f"{PREFIX}/files/md5/", "s3:delimiter": "/"}
        return [s3("s3:ListBucket", c.bucket_arn, listing, LIST_SOURCE)]
    if operation == "HeadObject":  # authorized as s3:GetObject; returns metadata, decrypts nothing
        return [s3("s3:GetObject", obj, {}, HEAD_SOURCE)]
    if operation == "GetObject":
        return call("GetObject")
    if operation in ("PutObject", "CreateMultipartUpload"):  # the SSE headers go here
        return call("PutObject", **(sse or {}))
    if operation in ("UploadPart", "CompleteMultipartUpload"):
        # s3:PutObject with no SSE header, and S3 decrypts the upload's data key for the caller
        # (kms:Decrypt, same encryption context as a read).
        put = call("PutObject")[0]
        decrypt = [r for r in call("GetObject") if r.action == "kms:Decrypt"]
        return [put, *decrypt]
    raise AssertionError(f"no IAM translation for {operation}")


def outcomes(world: World, requests: list[RealRequest]) -> list[tuple[str, bool, str]]:
    out = []
    for r in requests:
        o = decide(world, r)
        out.append((r.what, o.allowed, o.reason))
    return out


STACKS = ("prod", "experiment")


@pytest.mark.parametrize("stack", STACKS)
def test_the_pipeline_role_may_push_and_the_analyst_role_may_pull(
    stacks: dict[str, StackState], world: World, stack: str
) -> None:
    c = curated(stacks, world, stack)
    pipeline, analyst = c.site("pipeline"), c.site("analyst")
    with_key = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": c.key_arn}
    for sse in ({}, with_key):
        push = [r for op in sorted(PUSH_OPERATIONS) for r in iam_requests(pipeline, c, op, sse)]
        assert [o for o in outcomes(world, push) if not o[1]] == [], sse
    pull = [r for op in sorted(PULL_OPERATIONS) for r in iam_requests(analyst, c, op)]
    assert [o for o in outcomes(world, pull) if not o[1]] == []
    # Analysts read; they never write the store.
    (_, allowed, _), *_ = outcomes(world, iam_requests(analyst, c, "PutObject"))
    assert not allowed


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize(
    ("sse", "denied_by"),
    [
        ({"ServerSideEncryption": "aws:kms"}, "DenyEncryptionHeaderWithoutThisKey"),
        ({"ServerSideEncryption": "AES256"}, "DenyEncryptionHeaderWithoutThisKey"),
        ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "key-id"}, "DenyOtherEncryptionKeys"),
    ],
    ids=["sse-aws-kms-alone", "sse-AES256", "sse-key-id-not-arn"],
)
def test_encryption_options_other_than_the_key_arn_are_denied(
    stacks: dict[str, StackState], world: World, stack: str, sse: dict[str, str], denied_by: str
) -> None:
    """`sse` without `sse_kms_key_id`, or a key id instead of the key's ARN: the bucket policy
    denies the PutObject (the KMS call is never reached)."""
    c = curated(stacks, world, stack)
    if sse.get("SSEKMSKeyId") == "key-id":
        sse = {**sse, "SSEKMSKeyId": c.key_arn.rsplit("/", 1)[-1]}
    put = iam_requests(c.site("pipeline"), c, "PutObject", sse)[0]
    o = decide(world, put)
    assert not o.allowed and f"store-curated-policy#{denied_by}" in o.reason, o.reason


@pytest.mark.parametrize("stack", STACKS)
def test_documented_limits(stacks: dict[str, StackState], world: World, stack: str) -> None:
    """What the README tells DVC users not to rely on: `dvc gc --cloud` (DeleteObject), a
    version-aware remote (ListObjectVersions) and aborting a failed multipart upload are
    granted to no role; the store's lifecycle rule aborts incomplete uploads."""
    c = curated(stacks, world, stack)
    site = c.site("pipeline")
    context, endpoint = translate.network_context(site, "s3")
    obj = f"{c.bucket_arn}/{OBJECT_KEY}"
    for action, resource in (
        (IAM_ACTION["DeleteObject"], obj),
        (IAM_ACTION["ListObjectVersions"], c.bucket_arn),
        (IAM_ACTION["AbortMultipartUpload"], obj),
    ):
        request = RealRequest(action, site.principal, action, resource, context, "", endpoint)
        assert not decide(world, request).allowed, action
