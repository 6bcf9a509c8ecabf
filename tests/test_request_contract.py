"""The worker's request contract (app/request-contract.json) is what the worker really calls.

The worker runs its whole message path (poll, flags, database connection with an IAM token,
raw object, rows, delete) with real boto3 clients, answered by botocore's Stubber (no network),
against the suite's real PostgreSQL. A botocore event hook records every call; the normalised
recording must equal the committed contract. When the worker changes what it calls, this test
fails until the contract is re-recorded (`make contract`, which sets ENVFENCE_RECORD_CONTRACT=1)
and the proofs check the new requests.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from app.worker import db as worker_db
from app.worker import pipeline
from app.worker.config import load_config
from app.worker.flags import Flags
from app.worker.loop import Worker
from envfence.prove import contract, translate
from envfence.prove.contract import Contract, Recorder
from tests.flagsets import CURATE_OFF, document

FLAG_SET, FLAG_SET_VERSION = document(CURATE_OFF)

if TYPE_CHECKING:
    from tests.pg import Database

pytest_plugins = ("tests.pg",)

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / contract.CONTRACT_FILE
MID = "5fea7756-0ea4-451a-a703-a558b933e274"
SCENARIOS = {
    "production": pipeline.Identity("prod", "production", None),
    "experiment": pipeline.Identity("experiment-ab12", "experiment", "ab12"),
}


def _client(service: str, recorder: Recorder) -> Any:
    client = boto3.client(
        service,
        region_name="eu-west-1",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="example",
    )
    return recorder.attach(client)


def record(identity: pipeline.Identity, database: Database) -> tuple[list[translate.Call], Any]:
    """One message through the worker as `python -m worker` wires it (app/worker/__main__.py)."""
    environ = {
        "ENVFENCE_ENVIRONMENT": identity.environment,
        "ENVFENCE_TIER": identity.tier,
        "QUEUE_URL": f"https://sqs.eu-west-1.amazonaws.com/210987654321/q-{identity.environment}",
        "RAW_BUCKET": f"bucket-{identity.environment}",
        "DB_HOST": database.host,
        "DB_PORT": str(database.port),
        "DB_NAME": database.name,
        "DB_SSLMODE": "disable",
        "AWS_REGION": "eu-west-1",
        "APPCONFIG_APPLICATION": "app0001",
        "APPCONFIG_ENVIRONMENT": "env0001",
        "APPCONFIG_PROFILE": "prf0001",
        "FLAG_SET": FLAG_SET,
        "FLAG_SET_VERSION": FLAG_SET_VERSION,
    }
    if identity.experiment_id:
        environ["ENVFENCE_EXPERIMENT_ID"] = identity.experiment_id
    config = load_config(environ)
    recorder = Recorder()
    sqs, s3 = _client("sqs", recorder), _client("s3", recorder)
    rds, appconfig = _client("rds", recorder), _client("appconfigdata", recorder)
    stubs = [Stubber(c) for c in (sqs, s3, appconfig)]
    sqs_stub, s3_stub, appconfig_stub = stubs
    sqs_stub.add_response(
        "receive_message",
        {
            "Messages": [
                {
                    "MessageId": MID,
                    "ReceiptHandle": "receipt-1",
                    "Body": '{"temperature": 21.5}',
                    "Attributes": {"SentTimestamp": "1709640000000"},
                }
            ]
        },
    )
    sqs_stub.add_response("delete_message", {})
    s3_stub.add_response("put_object", {"ETag": '"e"', "ServerSideEncryption": "aws:kms"})
    appconfig_stub.add_response(
        "start_configuration_session", {"InitialConfigurationToken": "token-1"}
    )
    body = b'{"curate_v2": {"enabled": true}}'
    appconfig_stub.add_response(
        "get_latest_configuration",
        {
            "NextPollConfigurationToken": "token-2",
            "NextPollIntervalInSeconds": 60,
            "ContentType": "application/json",
            "Configuration": StreamingBody(__import__("io").BytesIO(body), len(body)),
            "VersionLabel": "v1",
        },
    )
    for stub in stubs:
        stub.activate()
    flags = Flags(
        appconfig,
        application=config.appconfig_application,
        environment=config.appconfig_environment,
        profile=config.appconfig_profile,
        poll_seconds=config.flags_poll_seconds,
    )
    connect = functools.partial(worker_db.connect, config, rds)
    worker = Worker(config, sqs=sqs, s3=s3, flags=flags, connect=connect)
    try:
        assert worker.poll_once() == (1, 1)
    finally:
        worker.close()
    for stub in stubs:
        stub.assert_no_pending_responses()
    return recorder.calls, config


@pytest.fixture(scope="module")
def recorded(
    postgres_server: Any,
) -> Contract:
    from db.migrate import migrate

    scenarios: dict[str, list[dict[str, Any]]] = {}
    for tier, identity in SCENARIOS.items():
        database = postgres_server.create_database()
        try:
            with database.connect() as conn:
                migrate(
                    conn,
                    environment=identity.environment,
                    tier=identity.tier,
                    experiment_id=identity.experiment_id,
                )
            calls, config = record(identity, database)
        finally:
            postgres_server.drop_database(database.name)
        scenarios[tier] = contract.normalise(calls, config.variables())
    found = Contract(contract.ROLE, scenarios)
    if os.environ.get("ENVFENCE_RECORD_CONTRACT") == "1":
        CONTRACT.write_text(contract.dump(found))
    return found


def test_the_contract_is_what_the_worker_calls(recorded: Contract) -> None:
    committed = contract.load(CONTRACT)
    assert committed.to_json() == recorded.to_json(), (
        "the worker's AWS calls changed: run `make contract` and review the diff of "
        f"{contract.CONTRACT_FILE}"
    )


def test_the_recording_sees_every_kind_of_call(recorded: Contract) -> None:
    """The hook catches API calls and the locally signed database token alike."""
    for tier in SCENARIOS:
        names = [f"{e['service']}.{e['operation']}" for e in recorded.scenarios[tier]]
        assert names == [
            "sqs.ReceiveMessage",
            "appconfigdata.StartConfigurationSession",
            "appconfigdata.GetLatestConfiguration",
            "rds-db.connect",
            "s3.PutObject",
            "sqs.DeleteMessage",
        ], names


def test_configuration_values_become_placeholders(recorded: Contract) -> None:
    put = next(e for e in recorded.scenarios["experiment"] if e["operation"] == "PutObject")
    assert put["params"]["Bucket"] == "${RAW_BUCKET}"
    assert put["params"]["Tagging"] == (
        "environment=${ENVFENCE_ENVIRONMENT}&experiment-id=${ENVFENCE_EXPERIMENT_ID}"
    )
    assert put["params"]["Body"] == "<bytes>"
    assert "ServerSideEncryption" not in put["params"]
    token = next(e for e in recorded.scenarios["production"] if e["service"] == "rds-db")
    assert token["params"] == {
        "DBHostname": "${DB_HOST}",
        "DBUsername": "${DB_USER}",
        "Port": "${DB_PORT}",
    }


def test_every_contract_call_has_a_translation() -> None:
    committed = contract.load(CONTRACT)
    for entries in committed.scenarios.values():
        for e in entries:
            assert (e["service"], e["operation"]) in translate.TABLE, e


def test_a_call_without_a_row_is_an_error_not_a_skip() -> None:
    site = translate.Site("prod", "eu-west-1", "123456789012", "arn:aws:iam::1:role/r")
    with pytest.raises(translate.Untranslated, match=r"s3\.DeleteObject"):
        translate.translate([translate.Call("s3", "DeleteObject", {})], site)


def test_a_name_the_stack_does_not_declare_is_unresolved() -> None:
    site = translate.Site("prod", "eu-west-1", "123456789012", "arn:aws:iam::1:role/r")
    with pytest.raises(translate.Unresolved, match="bucket 'nope'"):
        translate.translate([translate.Call("s3", "PutObject", {"Bucket": "nope"})], site)
    with pytest.raises(translate.Unresolved, match="no QUEUE_URL"):
        contract.instantiate(
            [{"service": "sqs", "operation": "X", "params": {"QueueUrl": "${QUEUE_URL}"}}], {}
        )


@pytest.mark.parametrize(
    "text,problem",
    [
        ("", "not a JSON"),
        ("[]", "expected an object"),
        ('{"scenarios": {"x": [1]}}', "scenarios.x"),
    ],
)
def test_a_malformed_contract_is_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(contract.ContractError, match=problem):
        contract.load(path)


MakeDb = Callable[..., "Database"]
