"""The retention job for experiment databases, on a real PostgreSQL: migration 0004's
envfence.expire_experiment_rows and the `python -m db.retention` command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import errors

from db.migrate import MIGRATIONS_DIR, migrate
from db.retention import main

if TYPE_CHECKING:  # imported by pytest as a plugin; importing it here first would skip rewriting
    from tests.pg import Database

pytest_plugins = ("tests.pg",)

MakeDb = Callable[..., "Database"]
ROOT = Path(__file__).resolve().parent.parent

PROD = {"environment": "prod", "tier": "production", "experiment_id": None}
EXP = {"environment": "experiment-ab12", "tier": "experiment", "experiment_id": "ab12"}
SHARED = {"environment": "experiment", "tier": "experiment", "experiment_id": "shared"}

EXP_ARGS = ["--environment", "experiment-ab12", "--tier", "experiment", "--experiment-id", "ab12"]
EXPIRE = "SELECT events_deleted, curated_deleted FROM envfence.expire_experiment_rows(%s::interval)"


def provenance(identity: dict[str, Any]) -> tuple[str, str | None, str]:
    return (identity["tier"], identity["experiment_id"], identity["environment"])


def add_event(
    conn: psycopg.Connection,
    identity: dict[str, Any],
    *,
    age_days: int = 0,
    curated: dict[str, int] | None = None,
) -> int:
    """An event (and its curated rows) as the worker writes them, then aged by the superuser."""
    row = conn.execute(
        "INSERT INTO envfence.events (payload, source, experiment_id, environment,"
        " flag_set_version, variants) VALUES ('{}', %s, %s, %s, 'fs-test', '{}') RETURNING id",
        provenance(identity),
    ).fetchone()
    assert row is not None
    event_id: int = row[0]
    for key, days in (curated or {}).items():
        add_curated(conn, identity, event_id, key, age_days=days)
    if age_days:
        # 0002's BEFORE UPDATE trigger checks only the provenance columns, which stay the same.
        conn.execute(
            "UPDATE envfence.events SET received_at = now() - make_interval(days => %s)"
            " WHERE id = %s",
            (age_days, event_id),
        )
    return event_id


def add_curated(
    conn: psycopg.Connection, identity: dict[str, Any], event_id: int, key: str, *, age_days: int
) -> None:
    conn.execute(
        "INSERT INTO envfence.curated"
        " (event_id, key, value, source, experiment_id, environment, created_at,"
        " flag_set_version, variants)"
        " VALUES (%s, %s, 1, %s, %s, %s, now() - make_interval(days => %s), 'fs-test', '{}')",
        (event_id, key, *provenance(identity), age_days),
    )


def rows(conn: psycopg.Connection) -> tuple[list[int], list[tuple[int, str]]]:
    events = [r[0] for r in conn.execute("SELECT id FROM envfence.events ORDER BY id")]
    curated = [
        (r[0], r[1])
        for r in conn.execute("SELECT event_id, key FROM envfence.curated ORDER BY event_id, key")
    ]
    return events, curated


def populate(conn: psycopg.Connection, identity: dict[str, Any]) -> dict[str, int]:
    """Old and recent rows; with a 30-day retention, `old` and `older` go, with their curated
    rows, and so does the old curated row of the recent event `fresh`."""
    return {
        "older": add_event(conn, identity, age_days=400, curated={"a": 400, "b": 399}),
        "old": add_event(conn, identity, age_days=31),
        "edge": add_event(conn, identity, age_days=29, curated={"a": 29}),
        "fresh": add_event(conn, identity, curated={"a": 0, "stale": 45}),
    }


def pg_env(db: Database, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Connection by libpq variables only, as the ECS scheduled task gives it."""
    env = {
        "PGHOST": db.host,
        "PGPORT": str(db.port),
        "PGDATABASE": db.name,
        "PGUSER": "postgres",
        "PGSSLMODE": "disable",
    }
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# -- the SQL function -----------------------------------------------------------------------------


def test_old_experiment_rows_are_deleted_and_recent_rows_stay(envfence_db: MakeDb) -> None:
    db = envfence_db(**EXP)
    with db.connect() as conn:
        ids = populate(conn, EXP)
        assert conn.execute(EXPIRE, ("30 days",)).fetchall() == [(2, 3)]
        assert rows(conn) == (
            [ids["edge"], ids["fresh"]],
            [(ids["edge"], "a"), (ids["fresh"], "a")],
        )
        assert conn.execute(EXPIRE, ("30 days",)).fetchall() == [(0, 0)]
        assert conn.execute(EXPIRE, ("1 day",)).fetchall() == [(1, 1)]
        assert rows(conn) == ([ids["fresh"]], [(ids["fresh"], "a")])


def test_the_production_database_refuses(envfence_db: MakeDb) -> None:
    db = envfence_db(**PROD)
    with db.connect() as conn:
        populate(conn, PROD)
        before = rows(conn)
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(EXPIRE, ("30 days",))
        message = str(caught.value)
        assert message.startswith("envfence: production rows are never expired by this job")
        assert "environment prod, tier production" in message
        assert rows(conn) == before


@pytest.mark.parametrize("max_age", ["23 hours 59 minutes", "0", "-30 days", None])
def test_a_max_age_below_one_day_is_refused(envfence_db: MakeDb, max_age: str | None) -> None:
    db = envfence_db(**EXP)
    with db.connect() as conn:
        add_event(conn, EXP, curated={"a": 0})
        with pytest.raises(errors.InvalidParameterValue, match="max_age must be at least 1 day"):
            conn.execute(EXPIRE, (max_age,))
        assert conn.execute(EXPIRE, ("1 day",)).fetchall() == [(0, 0)]
        assert rows(conn)[0] != []


@pytest.mark.parametrize("role", ["worker", "analyst"])
def test_only_the_owner_may_expire_rows(envfence_db: MakeDb, role: str) -> None:
    db = envfence_db(**EXP)
    with db.connect() as conn:
        add_event(conn, EXP, age_days=100)
        owner, acl = conn.execute(
            "SELECT proowner::regrole::text, proacl::text FROM pg_proc"
            " WHERE oid = 'envfence.expire_experiment_rows(interval)'::regprocedure"
        ).fetchone()  # type: ignore[misc]
        assert owner == "postgres"  # the migrating user
        assert acl == "{postgres=X/postgres}"  # nobody else, PUBLIC included
        for grantee in ("public", "worker", "analyst", "envfence_writer", "envfence_analyst"):
            (allowed,) = conn.execute(
                "SELECT has_function_privilege(%s, 'envfence.expire_experiment_rows(interval)',"
                " 'EXECUTE')",
                (grantee,),
            ).fetchone()  # type: ignore[misc]
            assert allowed is False, grantee
    denied = pytest.raises(errors.InsufficientPrivilege, match="permission denied for function")
    with db.connect(role) as conn, denied:
        conn.execute(EXPIRE, ("30 days",))
    with db.connect() as conn:
        assert len(rows(conn)[0]) == 1


# -- the command line -----------------------------------------------------------------------------


def test_command_line_deletes_old_rows(
    envfence_db: MakeDb, capsys: pytest.CaptureFixture[str]
) -> None:
    db = envfence_db(**EXP)
    with db.connect() as conn:
        ids = populate(conn, EXP)
    args = [*EXP_ARGS, "--older-than-days", "30", "--dsn", db.conninfo()]
    assert main(args) == 0
    assert capsys.readouterr() == (
        "db.retention: deleted 2 event(s) and 3 curated row(s) older than 30 day(s)"
        " from experiment-ab12\n",
        "",
    )
    assert main(args) == 0
    assert capsys.readouterr().out == (
        "db.retention: deleted 0 event(s) and 0 curated row(s) older than 30 day(s)"
        " from experiment-ab12\n"
    )
    with db.connect() as conn:
        assert rows(conn)[0] == [ids["edge"], ids["fresh"]]


def test_the_scheduled_task_command_with_libpq_variables(
    envfence_db: MakeDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = envfence_db(**SHARED)
    with db.connect() as conn:
        ids = populate(conn, SHARED)
    env = {**os.environ, **pg_env(db, monkeypatch)}
    command = [
        *("-m", "db.retention", "--environment", "experiment", "--tier", "experiment"),
        *("--experiment-id", "shared", "--older-than-days", "30"),
    ]
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "db.retention: deleted 2 event(s) and 3 curated row(s) older than 30 day(s)"
        " from experiment\n"
    )
    with db.connect() as conn:
        assert rows(conn)[0] == [ids["edge"], ids["fresh"]]


def test_command_line_refuses_tier_production_without_connecting(
    envfence_db: MakeDb, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = envfence_db(**PROD)
    with db.connect() as conn:
        populate(conn, PROD)
        before = rows(conn)

    def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("db.retention connected for --tier production")

    monkeypatch.setattr(psycopg, "connect", no_connection)
    args = ["--environment", "prod", "--tier", "production", "--older-than-days", "30"]
    assert main([*args, "--dsn", db.conninfo()]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "db.retention: --tier production is refused: only --tier experiment is allowed"
        " (production rows are never expired by this job)\n"
    )
    monkeypatch.undo()
    with db.connect() as conn:
        assert rows(conn) == before


@pytest.mark.parametrize(
    ("identity", "belongs_to"),
    [
        (
            {"environment": "experiment-cd34", "tier": "experiment", "experiment_id": "cd34"},
            "experiment-cd34 (experiment, experiment cd34)",
        ),
        (SHARED, "experiment (experiment, experiment shared)"),
        (PROD, "prod (production)"),
    ],
    ids=["experiment-cd34", "experiment", "prod"],
)
def test_command_line_refuses_a_database_of_another_environment(
    envfence_db: MakeDb,
    capsys: pytest.CaptureFixture[str],
    identity: dict[str, Any],
    belongs_to: str,
) -> None:
    db = envfence_db(**identity)
    with db.connect() as conn:
        populate(conn, identity)
        before = rows(conn)
    assert main([*EXP_ARGS, "--older-than-days", "30", "--dsn", db.conninfo()]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"db.retention: this database belongs to {belongs_to}, not experiment-ab12"
        " (experiment, experiment ab12): refusing to delete anything\n"
    )
    with db.connect() as conn:
        assert rows(conn) == before


def test_command_line_needs_a_migrated_database(
    pg: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*EXP_ARGS, "--older-than-days", "30", "--dsn", pg.conninfo()]
    assert main(args) == 1
    assert capsys.readouterr().err == (
        "db.retention: envfence.environment_identity does not exist:"
        " this is not a migrated envfence database\n"
    )
    before_retention = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, before_retention)
    (before_retention / "0004_retention.sql").unlink()
    with pg.connect() as conn:
        migrate(conn, **EXP, directory=before_retention)
    assert main(args) == 1
    assert capsys.readouterr().err == (
        "db.retention: envfence.expire_experiment_rows(interval) does not exist:"
        " run python -m db.migrate first\n"
    )


def test_database_errors_are_one_line(
    postgres_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = postgres_server.conninfo("no_such_database")
    assert main([*EXP_ARGS, "--older-than-days", "30", "--dsn", dsn]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("db.retention: database error: ")
    assert 'database "no_such_database" does not exist' in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("days", ["0", "3651", "-1", "1.5", "thirty", ""])
def test_older_than_days_is_a_whole_number_of_days_up_to_ten_years(
    days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*EXP_ARGS, "--older-than-days", days, "--dsn", "host=/nonexistent"])
    assert caught.value.code == 2
    assert "argument --older-than-days: must be a whole number of days from 1 to 3650" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--environment", "experiment", "--tier", "experiment"], "experiment_id None"),
        ([*EXP_ARGS[:-1], "cd34"], "names experiment 'ab12', not 'cd34'"),
        (["--environment", "Exp", "--tier", "experiment", "--experiment-id", "x1"], "stack name"),
    ],
)
def test_the_identity_is_validated_before_connecting(
    args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--older-than-days", "30", "--dsn", "host=/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("db.retention: ")
    assert problem in err
    assert err.count("\n") == 1
