"""A moto server on 127.0.0.1 for the tests of `envfence.lifecycle`.

Test modules load it with `pytest_plugins = ("tests.moto_server",)`, which provides:

* `moto_server` (session): a `ThreadedMotoServer` bound to 127.0.0.1 on a port the OS picks
  (port 0), started once per test process (each xdist worker has its own) and stopped at the
  end. Its endpoint URL.
* `moto_account` (session): an `Aws` handle on the server: `client("s3")` is a boto3 client
  with dummy credentials, region eu-west-1 and the server as endpoint, made from a boto3 session
  whose config and credentials files point at nothing, so it never reads ~/.aws and never asks
  instance metadata (the credentials are explicit).
* `aws` (function): the same handle, and for the test's duration the AWS_* variables replaced
  (monkeypatch): dummy credentials, the server as AWS_ENDPOINT_URL, config and credentials files
  pointing at nothing, instance metadata disabled. So a client the code under test makes itself
  (`aws.session().client(...)`) reaches the server and nothing else.

The server is not reset between tests: resetting it makes every service rebuild its backend on
first use (hundreds of milliseconds for RDS), so tests keep apart by naming their resources
uniquely instead (`Aws.reset` is there for a module that wants a clean account).

moto is a fake of the AWS APIs, good for listing, tagging and copying; it evaluates no IAM,
key or bucket policy, so these tests never judge permissions.
"""

from __future__ import annotations

import functools
import logging
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

REGION = "eu-west-1"
# moto's default account: the ARNs the server makes carry it.
ACCOUNT = "123456789012"
_DUMMY_KEY = "testing"

# Fail fast: nothing retries, nothing waits long.
_CONFIG = Config(
    region_name=REGION,
    retries={"max_attempts": 1, "mode": "standard"},
    connect_timeout=5,
    read_timeout=30,
)


@functools.cache
def _isolated_session() -> Any:
    """A boto3 session that reads no file of ~/.aws and needs no credential provider (one per
    process: its loader caches the service models every client needs)."""
    core = botocore.session.Session()
    core.set_config_variable("config_file", os.devnull)
    core.set_config_variable("credentials_file", os.devnull)
    core.set_credentials(_DUMMY_KEY, _DUMMY_KEY)
    return boto3.session.Session(botocore_session=core, region_name=REGION)


@functools.cache
def _client(endpoint: str, service_name: str, region_name: str) -> Any:
    # One per endpoint, service and region: a boto3 client costs tens of milliseconds to build.
    return _isolated_session().client(
        service_name, region_name=region_name, endpoint_url=endpoint, config=_CONFIG
    )


@dataclass(frozen=True)
class Aws:
    """Clients of the moto server."""

    endpoint: str
    region: str = REGION
    account: str = ACCOUNT

    def client(self, service_name: str, region_name: str | None = None) -> Any:
        return _client(self.endpoint, service_name, region_name or self.region)

    def session(self) -> Any:
        """A plain boto3 Session, as a CLI would make one: its clients find the server through
        AWS_ENDPOINT_URL and the dummy credentials in the environment (both set by `aws`)."""
        return boto3.session.Session(region_name=self.region)

    def reset(self) -> None:
        """Forget every resource of every service (moto's reset endpoint)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """The endpoint URL of a moto server on 127.0.0.1 (a free port), for the whole session."""
    # werkzeug logs every request at INFO; keep warnings and errors (a 500 names its cause).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_account(moto_server: str) -> Aws:
    return Aws(endpoint=moto_server)


@pytest.fixture
def aws(moto_account: Aws, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """The moto account, and an environment in which AWS means the moto server."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", _DUMMY_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", _DUMMY_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_account.endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return moto_account
