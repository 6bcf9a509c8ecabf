"""The worker: the pure pipeline, feature flags, configuration, and the whole message path with
fake SQS/S3/AppConfig clients against a real PostgreSQL.

The fakes validate every call against botocore's service model, so a misspelt parameter fails
here rather than in AWS.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.validate import validate_parameters

from app.worker import db as worker_db
from app.worker import pipeline
from app.worker.__main__ import main
from app.worker.config import ConfigError, load_config
from app.worker.flags import FlagDocumentError, Flags, parse_flags
from app.worker.loop import Worker
from tests.flagsets import CURATE_OFF, CURATE_ON, document, flag_set, live_experiment

if TYPE_CHECKING:  # imported by pytest as a plugin; importing it here first would skip rewriting
    from tests.pg import Database

pytest_plugins = ("tests.pg",)

MakeDb = Callable[..., "Database"]
APP = Path(__file__).resolve().parent.parent / "app"

PROD = pipeline.Identity("prod", "production", None)
EXP = pipeline.Identity("experiment-ab12", "experiment", "ab12")
SENT_MS = "1709640000000"  # 2024-03-05T12:00:00Z
SENT = dt.datetime(2024, 3, 5, 12, 0, tzinfo=dt.UTC)
MID = "5fea7756-0ea4-451a-a703-a558b933e274"
BODY = '{"temperature": 21.50, "count": 3, "ok": true, "Cpu": {"User": 0.25, "sys": 1}}'

OFF = flag_set(CURATE_OFF)

# -- fakes ----------------------------------------------------------------------------------------

_BOTOCORE = botocore.session.get_session()


def check_call(service: str, operation: str, params: dict[str, Any]) -> None:
    model = _BOTOCORE.get_service_model(service).operation_model(operation)
    validate_parameters(params, model.input_shape)


class FakeSQS:
    def __init__(self, bodies: list[str]):
        self.queue = [self._message(f"{MID[:-1]}{i}", b) for i, b in enumerate(bodies)]
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.receives: list[dict[str, Any]] = []
        self._handles = 0

    @staticmethod
    def _message(message_id: str, body: str) -> dict[str, Any]:
        return {"MessageId": message_id, "Body": body, "Attributes": {"SentTimestamp": SENT_MS}}

    def receive_message(self, **params: Any) -> dict[str, Any]:
        check_call("sqs", "ReceiveMessage", params)
        self.receives.append(params)
        count = params["MaxNumberOfMessages"]
        batch, self.queue = self.queue[:count], self.queue[count:]
        out = []
        for message in batch:
            self._handles += 1
            handle = f"receipt-{self._handles}"
            self.in_flight[handle] = message
            out.append({**message, "ReceiptHandle": handle})
        return {"Messages": out} if out else {}

    def delete_message(self, **params: Any) -> None:
        check_call("sqs", "DeleteMessage", params)
        message = self.in_flight.pop(params["ReceiptHandle"])
        self.deleted.append(message["MessageId"])

    def visibility_timeout(self) -> None:
        """Messages received but not deleted become visible again."""
        self.queue += self.in_flight.values()
        self.in_flight = {}


class FakeS3:
    def __init__(self, sse: str | None = "aws:kms", error: str | None = None):
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.sse = sse
        self.error = error

    def put_object(self, **params: Any) -> dict[str, Any]:
        check_call("s3", "PutObject", params)
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "PutObject")
        self.objects[(params["Bucket"], params["Key"])] = params
        return {"ETag": '"etag"', "ServerSideEncryption": self.sse} if self.sse else {}


class FakeAppConfig:
    def __init__(self, *documents: bytes, interval: int = 60):
        self.documents = list(documents)  # one per GetLatestConfiguration; b"" = unchanged
        self.interval = interval
        self.sessions: list[dict[str, Any]] = []
        self.fetches = 0
        self.fail = False

    def start_configuration_session(self, **params: Any) -> dict[str, Any]:
        check_call("appconfigdata", "StartConfigurationSession", params)
        self.sessions.append(params)
        return {"InitialConfigurationToken": f"token-{len(self.sessions)}-0"}

    def get_latest_configuration(self, **params: Any) -> dict[str, Any]:
        check_call("appconfigdata", "GetLatestConfiguration", params)
        if self.fail:
            raise ClientError({"Error": {"Code": "InternalServerException"}}, "GetLatest")
        self.fetches += 1
        data = self.documents.pop(0) if self.documents else b""
        return {
            "NextPollConfigurationToken": f"token-{len(self.sessions)}-{self.fetches}",
            "NextPollIntervalInSeconds": self.interval,
            "ContentType": "application/json",
            "Configuration": StreamingBody(io.BytesIO(data), len(data)),
            "VersionLabel": f"v{self.fetches}",
        }


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeRDS:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def generate_db_auth_token(self, **params: Any) -> str:
        self.calls.append(params)
        return "iam-token"


def environ(identity: pipeline.Identity = EXP, **override: str | None) -> dict[str, str]:
    env: dict[str, str | None] = {
        "ENVFENCE_ENVIRONMENT": identity.environment,
        "ENVFENCE_TIER": identity.tier,
        "ENVFENCE_EXPERIMENT_ID": identity.experiment_id,
        "QUEUE_URL": f"https://sqs.eu-west-1.amazonaws.com/210987654321/envfence-{identity.environment}-ingest",
        "RAW_BUCKET": f"envfence-{identity.environment}-raw-210987654321",
        "DB_HOST": "envfence.cluster.eu-west-1.rds.amazonaws.com",
        "DB_NAME": "envfence",
        "AWS_REGION": "eu-west-1",
        "APPCONFIG_APPLICATION": "envfence",
        "APPCONFIG_ENVIRONMENT": identity.environment,
        "APPCONFIG_PROFILE": "flags",
        "FLAG_SET": document(CURATE_OFF)[0],
        "FLAG_SET_VERSION": document(CURATE_OFF)[1],
        **override,
    }
    return {k: v for k, v in env.items() if v is not None}


# -- the pure pipeline ----------------------------------------------------------------------------


def test_production_record_becomes_a_production_plan() -> None:
    plan = pipeline.process(pipeline.Record(MID, BODY, SENT), pipeline.Context(PROD, OFF))
    assert plan.raw.key == f"raw/prod/2024/03/05/{MID}.json"
    assert plan.raw.body == BODY.encode()
    assert plan.raw.tags == plan.raw.metadata == {"environment": "prod"}
    stamp = pipeline.Stamp(OFF.version, OFF.assign({}))
    assert plan.event == pipeline.EventRow(MID, BODY, "production", None, "prod", stamp)
    assert stamp.variants_json() == (
        '{"curate_v2": {"variant": "default", "enabled": false, "default": true, '
        '"experimental": false}}'
    )
    assert not stamp.experimental
    assert plan.curation == "v1"
    assert [(c.key, c.value) for c in plan.curated] == [
        ("count", Decimal(3)),
        ("temperature", Decimal("21.50")),
    ]
    assert {(c.source, c.experiment_id, c.environment) for c in plan.curated} == {
        ("production", None, "prod")
    }


def test_experiment_record_carries_the_experiment_id() -> None:
    late = dt.datetime(2024, 3, 5, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    plan = pipeline.process(pipeline.Record(MID, BODY, late), pipeline.Context(EXP, OFF))
    assert plan.raw.key == f"raw/experiment-ab12/2024/03/06/{MID}.json"  # the UTC day
    assert plan.raw.tags == {"environment": "experiment-ab12", "experiment-id": "ab12"}
    assert plan.event.source == "experiment"
    assert plan.event.experiment_id == "ab12"
    assert {(c.source, c.experiment_id, c.environment) for c in plan.curated} == {
        ("experiment", "ab12", "experiment-ab12")
    }


def test_curate_v2_flattens_and_lowercases() -> None:
    ctx = pipeline.Context(EXP, flag_set(CURATE_ON))
    plan = pipeline.process(pipeline.Record(MID, BODY, SENT), ctx)
    assert plan.curation == "v2"
    assert [(c.key, str(c.value)) for c in plan.curated] == [
        ("count", "3"),
        ("cpu.sys", "1"),
        ("cpu.user", "0.25"),
        ("temperature", "21.50"),
    ]
    with pytest.raises(pipeline.InvalidRecord, match="two fields curate to the key 'a'"):
        pipeline.process(pipeline.Record(MID, '{"a": 1, "A": 2}', SENT), ctx)


def test_process_is_pure() -> None:
    record, ctx = pipeline.Record(MID, BODY, SENT), pipeline.Context(EXP, OFF)
    assert pipeline.process(record, ctx) == pipeline.process(record, ctx)


@pytest.mark.parametrize(
    ("message_id", "body", "problem"),
    [
        (MID, "not json", "not JSON"),
        (MID, "[1, 2]", "must be a JSON object, got list"),
        (MID, '{"x": NaN}', "NaN, which is not valid JSON"),
        (MID, '{"": 1}', "key is empty"),
        ("../../prod/x", "{}", "not a safe object name"),
        ("", "{}", "not a safe object name"),
    ],
)
def test_invalid_records_are_refused(message_id: str, body: str, problem: str) -> None:
    with pytest.raises(pipeline.InvalidRecord, match=problem):
        pipeline.process(pipeline.Record(message_id, body, SENT), pipeline.Context(PROD, OFF))


# -- feature flags --------------------------------------------------------------------------------


def test_flag_documents() -> None:
    assert parse_flags(b'{"curate_v2": {"enabled": true}, "x": {"enabled": false}}') == {
        "curate_v2": True,
        "x": False,
    }
    assert parse_flags('{"curate_v2": true}') == {"curate_v2": True}
    assert parse_flags(b"") == {}
    for bad in (b"[]", b"{", b'{"curate_v2": "yes"}'):
        with pytest.raises(FlagDocumentError):
            parse_flags(bad)


def make_flags(client: FakeAppConfig, clock: Clock, poll: int = 30) -> Flags:
    return Flags(
        client,
        application="envfence",
        environment="prod",
        profile="flags",
        poll_seconds=poll,
        clock=clock,
    )


def test_flags_are_cached_for_the_poll_interval() -> None:
    client = FakeAppConfig(b'{"curate_v2": {"enabled": true}}', b"", b'{"curate_v2": false}')
    clock = Clock()
    flags = make_flags(client, clock, poll=30)
    assert flags.current() == {"curate_v2": True}
    assert client.sessions[0]["RequiredMinimumPollIntervalInSeconds"] == 30
    clock.t += 59  # AppConfig asked for 60 s, more than our 30
    assert flags.current() == {"curate_v2": True}
    assert client.fetches == 1
    clock.t += 1
    assert flags.current() == {"curate_v2": True}  # empty answer: unchanged
    assert client.fetches == 2
    clock.t += 60
    assert flags.current() == {"curate_v2": False}
    assert client.fetches == 3
    assert len(client.sessions) == 1
    assert flags.version == "v3"


def test_flags_survive_an_appconfig_outage() -> None:
    client = FakeAppConfig(b'{"curate_v2": true}', b'{"curate_v2": false}', interval=15)
    clock = Clock()
    flags = make_flags(client, clock, poll=15)
    assert flags.current() == {"curate_v2": True}
    client.fail = True
    clock.t += 15
    assert flags.current() == {"curate_v2": True}  # last known
    client.fail = False
    clock.t += 15
    assert flags.current() == {"curate_v2": False}
    assert len(client.sessions) == 2  # the session was started again after the failure


def test_flags_default_off_until_appconfig_answers() -> None:
    client = FakeAppConfig()
    client.fail = True
    assert make_flags(client, Clock()).current() == {"curate_v2": False}


# -- configuration --------------------------------------------------------------------------------


def test_config_from_environment() -> None:
    config = load_config(environ(PROD, DB_PORT="6432"))
    assert config.identity == PROD
    assert config.db_port == 6432
    assert config.db_user == "worker"
    assert config.db_sslmode == "verify-full"
    assert config.db_password is None
    assert config.raw_bucket == "envfence-prod-raw-210987654321"
    assert load_config(environ(EXP)).identity == EXP


@pytest.mark.parametrize(
    ("override", "variable", "problem"),
    [
        ({"QUEUE_URL": None}, "QUEUE_URL", "is not set"),
        ({"DB_HOST": "  "}, "DB_HOST", "is not set"),
        ({"ENVFENCE_TIER": "staging"}, "ENVFENCE_TIER", "must be one of production, experiment"),
        (
            {"ENVFENCE_EXPERIMENT_ID": None},
            "ENVFENCE_EXPERIMENT_ID",
            "required for tier experiment",
        ),
        ({"ENVFENCE_EXPERIMENT_ID": "cd34"}, "ENVFENCE_EXPERIMENT_ID", "must be 'ab12'"),
        ({"ENVFENCE_ENVIRONMENT": "Prod!"}, "ENVFENCE_ENVIRONMENT", "must be a stack name"),
        ({"DB_PORT": "54x"}, "DB_PORT", "integer from 1 to 65535"),
        ({"DB_SSLMODE": "sometimes"}, "DB_SSLMODE", "must be one of disable"),
        ({"RAW_BUCKET": "Not_A_Bucket"}, "RAW_BUCKET", "must be an S3 bucket name"),
        ({"POLL_WAIT_SECONDS": "30"}, "POLL_WAIT_SECONDS", "from 0 to 20"),
    ],
)
def test_config_errors_name_the_variable(
    override: dict[str, str | None], variable: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(environ(EXP, **override))
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable)


def test_production_must_not_name_an_experiment() -> None:
    with pytest.raises(ConfigError, match="must not be set for the production tier"):
        load_config(environ(PROD, ENVFENCE_EXPERIMENT_ID="ab12"))


def test_main_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(environ(PROD, AWS_REGION=None)) == 2
    err = capsys.readouterr().err
    assert err == "envfence-worker: configuration error: AWS_REGION is not set\n"


def test_python_m_worker_exits_2_on_a_missing_variable() -> None:
    env = {**environ(PROD, RAW_BUCKET=None), "PATH": os.environ.get("PATH", "/usr/bin")}
    proc = subprocess.run(
        [sys.executable, "-m", "worker"],
        cwd=APP,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr == "envfence-worker: configuration error: RAW_BUCKET is not set\n"


def test_database_auth_uses_an_iam_token_unless_a_password_is_set() -> None:
    config = load_config(environ(PROD))
    rds = FakeRDS()
    info = worker_db.conninfo(config, rds)
    assert "password=iam-token" in info
    assert "sslmode=verify-full" in info
    assert "sslrootcert=/etc/ssl/certs/rds-global-bundle.pem" in info
    assert rds.calls == [
        {"DBHostname": config.db_host, "Port": 5432, "DBUsername": "worker", "Region": "eu-west-1"}
    ]
    local = load_config(environ(PROD, DB_PASSWORD="secret", DB_SSLMODE="disable"))
    info = worker_db.conninfo(local, None)
    assert "password=secret" in info
    assert "sslrootcert" not in info


# -- the whole message path against PostgreSQL ----------------------------------------------------


def make_worker(
    database: Database,
    sqs: FakeSQS,
    s3: FakeS3,
    *,
    identity: pipeline.Identity = EXP,
    appconfig: FakeAppConfig | None = None,
    rds: Any = None,
    port: int | None = None,
    flags: tuple[str, str] | None = None,
) -> Worker:
    flag_env = {} if flags is None else {"FLAG_SET": flags[0], "FLAG_SET_VERSION": flags[1]}
    config = load_config(
        environ(
            identity,
            **flag_env,
            DB_HOST=database.host,
            DB_PORT=str(port or database.port),
            DB_NAME=database.name,
            DB_SSLMODE="disable",
            POLL_WAIT_SECONDS="0",
        )
    )
    flags = make_flags(appconfig or FakeAppConfig(b"{}"), Clock())
    connect = functools.partial(worker_db.connect, config, rds or FakeRDS())
    return Worker(config, sqs=sqs, s3=s3, flags=flags, connect=connect, now=lambda: SENT)


def stored(database: Database) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with database.connect() as conn:
        events = conn.execute(
            "SELECT id, message_id, source, experiment_id, environment FROM envfence.events"
        ).fetchall()
        curated = conn.execute(
            "SELECT event_id, key, value::text, source, experiment_id, environment"
            " FROM envfence.curated ORDER BY event_id, key"
        ).fetchall()
    return events, curated


def test_message_is_written_to_s3_and_postgres_then_deleted(envfence_db: MakeDb) -> None:
    database = envfence_db("experiment-ab12", "experiment", "ab12")
    sqs, s3 = FakeSQS([BODY]), FakeS3()
    # A real boto3 RDS client: the IAM token is signed locally (trust auth ignores it).
    rds = boto3.client(
        "rds",
        region_name="eu-west-1",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="example",
    )
    worker = make_worker(database, sqs, s3, rds=rds)
    try:
        assert worker.poll_once() == (1, 1)
    finally:
        worker.close()

    assert sqs.receives[0]["WaitTimeSeconds"] == 0
    assert "SentTimestamp" in sqs.receives[0]["MessageSystemAttributeNames"]
    message_id = f"{MID[:-1]}0"
    assert sqs.deleted == [message_id]
    bucket = "envfence-experiment-ab12-raw-210987654321"
    put = s3.objects[(bucket, f"raw/experiment-ab12/2024/03/05/{message_id}.json")]
    assert put["Body"] == BODY.encode()
    assert "ServerSideEncryption" not in put  # the bucket's default KMS key applies
    assert dict(parse_qsl(put["Tagging"])) == {
        "environment": "experiment-ab12",
        "experiment-id": "ab12",
    }
    assert put["Metadata"] == {"environment": "experiment-ab12", "experiment-id": "ab12"}

    events, curated = stored(database)
    provenance = ("experiment", "ab12", "experiment-ab12")
    assert [e[1:] for e in events] == [(message_id, *provenance)]
    event_id = events[0][0]
    assert curated == [
        (event_id, "count", "3", *provenance),
        (event_id, "temperature", "21.50", *provenance),
    ]


def test_production_worker_runs_a_live_experiment(envfence_db: MakeDb) -> None:
    """Production's `curate_v2` experiment: the internal group gets v2, everyone else v1; the
    rows say which variant produced them, and the internal group's are marked experimental."""
    database = envfence_db("prod", "production")
    internal = '{"user_id": "u-1", "group": "internal", "n": 1, "a": {"b": 2}}'
    outside = '{"user_id": "u-2", "group": "customers", "n": 1, "a": {"b": 2}}'
    sqs, s3 = FakeSQS([BODY, internal, outside]), FakeS3()
    flags = document(live_experiment(percent=0))
    appconfig = FakeAppConfig(b'{"curate_v2": {"enabled": false}}')
    worker = make_worker(database, sqs, s3, identity=PROD, appconfig=appconfig, flags=flags)
    try:
        assert worker.poll_once() == (3, 3)
    finally:
        worker.close()
    assert appconfig.fetches == 1  # cached across the batch
    events, curated = stored(database)
    assert {e[2:] for e in events} == {("production", None, "prod")}
    assert {c[3:] for c in curated} == {("production", None, "prod")}
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT e.message_id, c.key, c.flag_set_version, c.variants -> 'curate_v2' ->> "
            "'variant', c.experimental FROM envfence.curated c JOIN envfence.events e "
            "ON e.id = c.event_id ORDER BY e.id, c.key"
        ).fetchall()
    version = flags[1]
    assert (
        rows
        == [
            (f"{MID[:-1]}0", "count", version, "default", False),
            (f"{MID[:-1]}0", "temperature", version, "default", False),
            (f"{MID[:-1]}1", "a.b", version, "internal", True),  # v2 curation: flattened
            (f"{MID[:-1]}1", "n", version, "internal", True),
            (f"{MID[:-1]}2", "n", version, "default", False),  # v1: top-level numbers only
        ]
    )
    assert {tuple(parse_qsl(o["Tagging"])) for o in s3.objects.values()} == {
        (("environment", "prod"),)
    }


def test_database_down_leaves_the_message_for_a_retry(envfence_db: MakeDb) -> None:
    database = envfence_db("experiment-ab12", "experiment", "ab12")
    sqs, s3 = FakeSQS([BODY]), FakeS3()
    unreachable = make_worker(database, sqs, s3, port=1)  # nothing listens on port 1
    assert unreachable.poll_once() == (1, 0)
    assert sqs.deleted == []
    assert s3.objects == {}  # no database, no writes at all
    assert stored(database) == ([], [])

    sqs.visibility_timeout()
    worker = make_worker(database, sqs, s3)
    try:
        assert worker.poll_once() == (1, 1)
        assert sqs.deleted == [f"{MID[:-1]}0"]
        # Redelivered once more (say the delete was lost): stored once, deleted again.
        sqs.queue.append(FakeSQS._message(f"{MID[:-1]}0", BODY))
        assert worker.poll_once() == (1, 1)
    finally:
        worker.close()
    events, curated = stored(database)
    assert len(events) == 1
    assert len(curated) == 2


def test_failed_transaction_writes_nothing_and_leaves_the_message(envfence_db: MakeDb) -> None:
    database = envfence_db("experiment-ab12", "experiment", "ab12")
    with database.connect() as conn:  # the event insert succeeds, the curated insert fails
        conn.execute("REVOKE INSERT ON envfence.curated FROM envfence_writer")
    sqs, s3 = FakeSQS([BODY]), FakeS3()
    worker = make_worker(database, sqs, s3)
    try:
        assert worker.poll_once() == (1, 0)
    finally:
        worker.close()
    assert sqs.deleted == []
    assert stored(database) == ([], [])


@pytest.mark.parametrize(
    ("s3", "problem"),
    [(FakeS3(error="AccessDenied"), "AccessDenied"), (FakeS3(sse="AES256"), "not aws:kms")],
    ids=["denied", "not-kms"],
)
def test_s3_failure_leaves_the_message_and_no_rows(
    envfence_db: MakeDb, s3: FakeS3, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = envfence_db("experiment-ab12", "experiment", "ab12")
    sqs = FakeSQS([BODY])
    worker = make_worker(database, sqs, s3)
    try:
        assert worker.poll_once() == (1, 0)
    finally:
        worker.close()
    assert sqs.deleted == []
    assert stored(database) == ([], [])
    assert problem in caplog.text


def test_invalid_message_is_left_for_the_dlq(envfence_db: MakeDb) -> None:
    database = envfence_db("experiment-ab12", "experiment", "ab12")
    sqs, s3 = FakeSQS(["not json", BODY]), FakeS3()
    worker = make_worker(database, sqs, s3)
    try:
        assert worker.poll_once() == (2, 1)
    finally:
        worker.close()
    assert sqs.deleted == [f"{MID[:-1]}1"]
    assert len(s3.objects) == 1
    assert len(stored(database)[0]) == 1


def test_worker_refuses_another_environments_database(envfence_db: MakeDb) -> None:
    prod = envfence_db("prod", "production")
    sqs, s3 = FakeSQS([BODY]), FakeS3()
    worker = make_worker(prod, sqs, s3, identity=EXP)  # misconfigured: prod's DB
    with pytest.raises(
        worker_db.WrongDatabase,
        match=r"belongs to prod \(production\), not to this worker's experiment-ab12 ",
    ):
        worker.connection()
    assert worker.poll_once() == (1, 0)
    assert sqs.deleted == []
    assert s3.objects == {}
    assert stored(prod) == ([], [])


def test_worker_says_when_appconfig_serves_another_flag_set(
    envfence_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    """AppConfig's deployed version label is not the worker's FLAG_SET_VERSION (flags changed
    outside `pulumi up`): one warning, and rows still name the flag set really evaluated."""
    database = envfence_db("experiment-ab12", "experiment", "ab12")
    sqs, s3 = FakeSQS([BODY, BODY.replace("21.50", "3")]), FakeS3()
    worker = make_worker(database, sqs, s3, appconfig=FakeAppConfig(b'{"curate_v2": true}'))
    caplog.set_level("WARNING")
    try:
        assert worker.poll_once() == (2, 2)
    finally:
        worker.close()
    drift = [r for r in caplog.records if "AppConfig serves flag set v1" in r.getMessage()]
    assert len(drift) == 1
    with database.connect() as conn:
        versions = conn.execute("SELECT DISTINCT flag_set_version FROM envfence.events").fetchall()
    assert versions == [(OFF.version,)]
