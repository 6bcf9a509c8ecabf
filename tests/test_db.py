"""The database fence, on a real PostgreSQL: migrations, provenance constraints and roles."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import errors, sql

from app.worker import pipeline
from app.worker.store import write_rows
from db.migrate import MIGRATIONS_DIR, Identity, IdentityMismatch, MigrationError, main, migrate
from tests.flagsets import CURATE_OFF, flag_set

if TYPE_CHECKING:  # imported by pytest as a plugin; importing it here first would skip rewriting
    from tests.pg import Database

pytest_plugins = ("tests.pg",)

MakeDb = Callable[..., "Database"]

PROD = {"environment": "prod", "tier": "production", "experiment_id": None}
EXP = {"environment": "experiment-ab12", "tier": "experiment", "experiment_id": "ab12"}

# Every row carries the flag variants that produced it (0005): here a flag set without flags.
STAMP_COLUMNS = ", flag_set_version, variants"
STAMP_VALUES = ", 'fs-test', '{}'"
INSERT_EVENT = (
    f"INSERT INTO envfence.events (payload, source, experiment_id, environment{STAMP_COLUMNS})"
    f" VALUES ('{{\"n\": 1}}', %s, %s, %s{STAMP_VALUES}) RETURNING id"
)


def as_role(conn: psycopg.Connection, role: str) -> psycopg.Connection:
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    return conn


def count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM envfence.{table}").fetchone()[0]


# -- migrations -----------------------------------------------------------------------------------


def test_migrations_apply_in_order_and_are_idempotent(pg: Database) -> None:
    with pg.connect() as conn:
        assert migrate(conn, **PROD) == [
            "0001_schema",
            "0002_provenance_fence",
            "0003_roles",
            "0004_retention",
            "0005_flag_variants",
        ]
        assert migrate(conn, **PROD) == []
        rows = conn.execute(
            "SELECT version, name FROM envfence.schema_migrations ORDER BY version"
        ).fetchall()
        assert rows == [
            ("0001", "schema"),
            ("0002", "provenance_fence"),
            ("0003", "roles"),
            ("0004", "retention"),
            ("0005", "flag_variants"),
        ]
        identity = conn.execute(
            "SELECT environment, tier, experiment_id FROM envfence.environment_identity"
        ).fetchall()
        assert identity == [("prod", "production", None)]


def test_a_database_cannot_be_migrated_as_another_environment(pg: Database) -> None:
    with pg.connect() as conn:
        migrate(conn, **EXP)
        with pytest.raises(IdentityMismatch, match=r"belongs to experiment-ab12 .*not prod"):
            migrate(conn, **PROD)
        with pytest.raises(IdentityMismatch):
            migrate(conn, environment="experiment-cd34", tier="experiment", experiment_id="cd34")


def test_an_edited_or_unknown_migration_stops_the_run(pg: Database, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    with pg.connect() as conn:
        migrate(conn, **PROD, directory=migrations)
        roles = migrations / "0003_roles.sql"
        roles.write_text(roles.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match=r"0003_roles\.sql changed after it was applied"):
            migrate(conn, **PROD, directory=migrations)
        roles.unlink()
        with pytest.raises(MigrationError, match=r"has migration.* 0003 .*newer code"):
            migrate(conn, **PROD, directory=migrations)


def test_command_line(pg: Database, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--dsn", pg.conninfo(), "--environment", "experiment", "--tier", "experiment"]
    assert main(args) == 1
    assert "experiment_id None is not valid" in capsys.readouterr().err
    args += ["--experiment-id", "shared"]
    assert main(args) == 0
    assert capsys.readouterr().out == (
        "db.migrate: applied 0001_schema, 0002_provenance_fence, 0003_roles, 0004_retention, "
        "0005_flag_variants\n"
    )
    assert main(args) == 0
    assert capsys.readouterr().out == "db.migrate: up to date\n"
    assert main(["--dsn", pg.conninfo(), "--environment", "prod", "--tier", "production"]) == 1
    assert "belongs to experiment (experiment, experiment shared), not prod" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("environment", "tier", "experiment_id", "problem"),
    [
        ("prod", "production", "ab12", "must be None for the production tier"),
        ("experiment", "experiment", None, "not valid for the experiment tier"),
        ("experiment-ab12", "experiment", "cd34", "names experiment 'ab12'"),
        ("prod", "staging", None, "tier 'staging'"),
        ("Prod", "production", None, "not a stack name"),
    ],
)
def test_migration_parameters_are_checked(
    environment: str, tier: str, experiment_id: str | None, problem: str
) -> None:
    with pytest.raises(MigrationError, match=problem):
        Identity(environment, tier, experiment_id)


# -- the provenance fence -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (("experiment", "ab12", "prod"), "source must be 'production', got 'experiment'"),
        (("production", "ab12", "prod"), "experiment_id must be NULL, got 'ab12'"),
        (("production", None, "experiment"), "environment must be 'prod', got 'experiment'"),
        (("experiment", None, "prod"), "source must be 'production'"),
    ],
)
def test_production_database_rejects_foreign_rows(
    envfence_db: MakeDb, row: tuple[str, str | None, str], problem: str
) -> None:
    db = envfence_db(**PROD)
    with db.connect("worker") as conn:
        with pytest.raises(errors.CheckViolation, match=problem) as caught:
            conn.execute(INSERT_EVENT, row)
        assert "rejected by the production database of environment prod" in str(caught.value)
        conn.execute(INSERT_EVENT, ("production", None, "prod"))
        assert count(conn, "events") == 1


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (("production", None, "experiment-ab12"), "source must be 'experiment', got 'production'"),
        (("experiment", "cd34", "experiment-ab12"), "experiment_id must be 'ab12', got 'cd34'"),
        (("experiment", None, "experiment-ab12"), "experiment_id must be 'ab12', got NULL"),
        (("experiment", "ab12", "experiment-cd34"), "environment must be 'experiment-ab12'"),
        (("experiment", "ab12", "prod"), "environment must be 'experiment-ab12', got 'prod'"),
    ],
)
def test_experiment_database_rejects_foreign_rows(
    envfence_db: MakeDb, row: tuple[str, str | None, str], problem: str
) -> None:
    db = envfence_db(**EXP)
    with db.connect("worker") as conn:
        with pytest.raises(errors.CheckViolation, match=problem):
            conn.execute(INSERT_EVENT, row)
        conn.execute(INSERT_EVENT, ("experiment", "ab12", "experiment-ab12"))
        assert count(conn, "events") == 1


def test_curated_rows_are_fenced_too(envfence_db: MakeDb) -> None:
    db = envfence_db(**EXP)
    with db.connect("worker") as conn:
        (event_id,) = conn.execute(
            INSERT_EVENT, ("experiment", "ab12", "experiment-ab12")
        ).fetchone()
        insert = (
            "INSERT INTO envfence.curated"
            f" (event_id, key, value, source, experiment_id, environment{STAMP_COLUMNS})"
            f" VALUES (%s, 'n', 1, %s, %s, %s{STAMP_VALUES})"
        )
        with pytest.raises(errors.CheckViolation, match="source must be 'experiment'"):
            conn.execute(insert, (event_id, "production", None, "prod"))
        with pytest.raises(errors.CheckViolation, match="experiment_id must be 'ab12'"):
            conn.execute(insert, (event_id, "experiment", "zz99", "experiment-ab12"))
        conn.execute(insert, (event_id, "experiment", "ab12", "experiment-ab12"))
        assert count(conn, "curated") == 1


def test_check_constraints_hold_where_triggers_do_not_fire(envfence_db: MakeDb) -> None:
    db = envfence_db(**PROD)
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")  # disables ordinary triggers
        with pytest.raises(errors.CheckViolation) as caught:
            conn.execute(INSERT_EVENT, ("experiment", "ab12", "prod"))
        assert caught.value.diag.constraint_name == "events_belongs_to_environment"


def test_the_environment_identity_cannot_be_changed(envfence_db: MakeDb) -> None:
    db = envfence_db(**PROD)
    with db.connect() as conn:
        with pytest.raises(errors.InsufficientPrivilege, match=r"identity .* is fixed"):
            conn.execute("UPDATE envfence.environment_identity SET environment = 'experiment'")
        with pytest.raises(errors.InsufficientPrivilege, match="is fixed"):
            conn.execute("DELETE FROM envfence.environment_identity")
        with pytest.raises(errors.InsufficientPrivilege, match="is fixed"):
            conn.execute("TRUNCATE envfence.environment_identity")


# -- roles ----------------------------------------------------------------------------------------


def test_roles_and_iam_logins(envfence_db: MakeDb) -> None:
    db = envfence_db(**PROD)
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb,"
            "       pg_has_role(rolname, 'rds_iam', 'MEMBER')"
            " FROM pg_roles"
            " WHERE rolname IN ('worker', 'analyst', 'envfence_writer', 'envfence_analyst')"
            " ORDER BY rolname"
        ).fetchall()
        assert rows == [
            ("analyst", True, False, False, False, True),
            ("envfence_analyst", False, False, False, False, False),
            ("envfence_writer", False, False, False, False, False),
            ("worker", True, False, False, False, True),
        ]
        (public_create,) = conn.execute(
            "SELECT has_schema_privilege('public', 'public', 'CREATE')"
        ).fetchone()
        assert public_create is False


def test_analyst_can_read_but_not_write(envfence_db: MakeDb) -> None:
    db = envfence_db(**PROD)
    with db.connect() as conn:
        conn.execute(INSERT_EVENT, ("production", None, "prod"))
        as_role(conn, "analyst")
        assert count(conn, "events") == 1
        assert count(conn, "curated") == 0
        statements = [
            "INSERT INTO envfence.events (payload, source, environment)"
            " VALUES ('{}', 'production', 'prod')",
            "UPDATE envfence.events SET payload = '{}'",
            "DELETE FROM envfence.events",
            "TRUNCATE envfence.events",
            "INSERT INTO envfence.curated (event_id, key, value, source, environment)"
            " VALUES (1, 'k', 1, 'production', 'prod')",
            "DELETE FROM envfence.curated",
        ]
        for statement in statements:
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)


def test_writer_can_insert_but_not_rewrite(envfence_db: MakeDb) -> None:
    db = envfence_db(**EXP)
    with db.connect() as conn:
        as_role(conn, "worker")
        conn.execute(INSERT_EVENT, ("experiment", "ab12", "experiment-ab12"))
        assert count(conn, "events") == 1
        statements = [
            "UPDATE envfence.events SET source = 'production', experiment_id = NULL",
            "UPDATE envfence.curated SET value = 0",
            "DELETE FROM envfence.events",
            "DELETE FROM envfence.curated",
            "TRUNCATE envfence.events CASCADE",
            "CREATE TABLE public.sneaky (id int)",
            "CREATE TABLE envfence.sneaky (id int)",
        ]
        for statement in statements:
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)


# -- the worker's write path ----------------------------------------------------------------------


@pytest.mark.parametrize("identity", [PROD, EXP], ids=["prod", "experiment-ab12"])
def test_rows_written_by_the_worker_carry_provenance(
    envfence_db: MakeDb, identity: dict[str, str | None]
) -> None:
    db = envfence_db(**identity)
    ctx = pipeline.Context(pipeline.Identity(**identity), flag_set(CURATE_OFF))  # type: ignore[arg-type]
    record = pipeline.Record(
        message_id="0f8e8a2c-1111-4d2e-9f00-000000000001",
        body='{"temperature": 21.5, "count": 3, "label": "x", "nested": {"a": 1}}',
        sent_at=dt.datetime(2024, 3, 5, 12, 0, tzinfo=dt.UTC),
    )
    plan = pipeline.process(record, ctx)
    with db.connect("worker") as conn:
        event_id = write_rows(conn, plan)
        assert event_id is not None
        assert write_rows(conn, plan) is None  # redelivered: stored once
    with db.connect("analyst") as conn:
        events = conn.execute(
            "SELECT message_id, payload, source, experiment_id, environment FROM envfence.events"
        ).fetchall()
        curated = conn.execute(
            "SELECT event_id, key, value::text, source, experiment_id, environment"
            " FROM envfence.curated ORDER BY key"
        ).fetchall()
    provenance = (
        "experiment" if identity["tier"] == "experiment" else "production",
        identity["experiment_id"],
        identity["environment"],
    )
    assert events == [
        (
            record.message_id,
            {"temperature": 21.5, "count": 3, "label": "x", "nested": {"a": 1}},
            *provenance,
        )
    ]
    assert curated == [
        (event_id, "count", "3", *provenance),
        (event_id, "temperature", "21.5", *provenance),
    ]
