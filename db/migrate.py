"""Apply the SQL migrations in `db/migrations/` to one environment's database.

    python -m db.migrate --environment prod --tier production
    python -m db.migrate --environment experiment-ab12 --tier experiment --experiment-id ab12

Connection: `--dsn`, else `DATABASE_URL`, else libpq's own variables (PGHOST, PGPORT, PGDATABASE,
PGUSER, PGPASSWORD, PGSSLMODE, PGSSLROOTCERT). Run it as the database owner (the RDS master user),
not as `worker`.

Migrations are `NNNN_name.sql` files applied in order, each in its own transaction together with
its row in `envfence.schema_migrations` (version, name, sha256). Running again applies nothing;
an applied file whose content changed, or a recorded version with no file, stops the run.

The schema depends on the environment's identity (`environment`, `tier`, `experiment_id`): the
runner hands it to each migration as the transaction settings `envfence.environment`,
`envfence.tier` and `envfence.experiment_id` ('' for production). The first migration records it
in `envfence.environment_identity`; afterwards, migrating with any other identity is refused
before anything is applied: a database belongs to exactly one environment.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # psycopg is imported where a connection is made
    import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# The same rules as envfence/settings.py (this module must run without the Pulumi program).
TIERS = ("production", "experiment")
STACK_RE = re.compile(r"^[a-z][a-z0-9-]{0,26}[a-z0-9]$")
EXPERIMENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,14}[a-z0-9]$")

# pg_advisory_lock key: two runners never interleave on one database.
LOCK_KEY = 0x656E_7666_656E_6365  # "envfence"

BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS envfence;
CREATE TABLE IF NOT EXISTS envfence.schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(Exception):
    """The migrations cannot be applied. The message says why and what to do."""


class IdentityMismatch(MigrationError):
    """The database belongs to another environment than the one being migrated."""


@dataclass(frozen=True)
class Identity:
    environment: str
    tier: str
    experiment_id: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.environment, str) or not STACK_RE.match(self.environment):
            raise MigrationError(
                f"environment {self.environment!r} is not a stack name "
                "(2-28 lowercase letters, digits and '-', starting with a letter)"
            )
        if self.tier not in TIERS:
            raise MigrationError(f"tier {self.tier!r} is not one of {', '.join(TIERS)}")
        if self.tier == "production":
            if self.experiment_id is not None:
                raise MigrationError(
                    "experiment_id must be None for the production tier, "
                    f"got {self.experiment_id!r}"
                )
        elif not isinstance(self.experiment_id, str) or not EXPERIMENT_ID_RE.match(
            self.experiment_id
        ):
            raise MigrationError(
                f"experiment_id {self.experiment_id!r} is not valid for the experiment tier "
                "(2-16 lowercase letters, digits and '-')"
            )
        if self.environment.startswith("experiment-") and (
            self.experiment_id != self.environment[len("experiment-") :]
        ):
            raise MigrationError(
                f"environment {self.environment!r} names experiment "
                f"{self.environment[len('experiment-') :]!r}, not {self.experiment_id!r}"
            )

    def describe(self) -> str:
        extra = f", experiment {self.experiment_id}" if self.experiment_id else ""
        return f"{self.environment} ({self.tier}{extra})"


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in `directory`, in order. Any other `.sql` file there is an error."""
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version, name = match.groups()
        if version in found:
            raise MigrationError(
                f"{path.name}: version {version} is also {found[version].label}.sql"
            )
        found[version] = Migration(version, name, path.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migrations in {directory}")
    return [found[v] for v in sorted(found)]


def migrate(
    conn: psycopg.Connection,
    *,
    environment: str,
    tier: str,
    experiment_id: str | None,
    directory: Path = MIGRATIONS_DIR,
) -> list[str]:
    """Apply pending migrations for this environment; return the labels applied (maybe none).

    `conn` must be idle (not inside a transaction); it is used in autocommit mode and left so.
    """
    identity = Identity(environment, tier, experiment_id)
    migrations = discover(directory)
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        with conn.transaction():
            conn.execute(BOOTSTRAP)
        _check_identity(conn, identity, fresh_ok=True)
        applied = dict(
            conn.execute("SELECT version, checksum FROM envfence.schema_migrations").fetchall()
        )
        known = {m.version for m in migrations}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"the database has migration(s) {', '.join(unknown)} that {directory} does not: "
                "it was migrated by newer code"
            )
        done: list[str] = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise MigrationError(
                        f"{m.label}.sql changed after it was applied (sha256 differs): "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('envfence.environment', %s, true),"
                    " set_config('envfence.tier', %s, true),"
                    " set_config('envfence.experiment_id', %s, true)",
                    (identity.environment, identity.tier, identity.experiment_id or ""),
                )
                conn.execute(m.sql)
                conn.execute(
                    "INSERT INTO envfence.schema_migrations (version, name, checksum)"
                    " VALUES (%s, %s, %s)",
                    (m.version, m.name, m.checksum),
                )
            done.append(m.label)
        _check_identity(conn, identity, fresh_ok=False)
        return done
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def recorded_identity(conn: psycopg.Connection) -> Identity | None:
    """The identity the database recorded at its first migration; None before it has one."""
    (table,) = conn.execute(
        "SELECT to_regclass('envfence.environment_identity')::text"
    ).fetchone() or (None,)
    if table is None:
        return None
    row = conn.execute(
        "SELECT environment, tier, experiment_id FROM envfence.environment_identity"
    ).fetchone()
    if row is None:
        raise MigrationError("envfence.environment_identity is empty: the database is damaged")
    return Identity(*row)


def _check_identity(conn: psycopg.Connection, identity: Identity, *, fresh_ok: bool) -> None:
    existing = recorded_identity(conn)
    if existing is None:
        if fresh_ok:
            return
        raise MigrationError("the migrations did not record the environment identity")
    if existing != identity:
        raise IdentityMismatch(
            f"this database belongs to {existing.describe()}, not {identity.describe()}: "
            "refusing to migrate it"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m db.migrate",
        description="Apply envfence's SQL migrations to one environment's database.",
    )
    parser.add_argument("--environment", required=True, help="stack name: prod, experiment-ab12")
    parser.add_argument("--tier", required=True, choices=TIERS)
    parser.add_argument("--experiment-id", default=None, help="required for tier experiment")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL", ""),
        help="libpq connection string (default: $DATABASE_URL, else the PG* variables)",
    )
    args = parser.parse_args(argv)

    import psycopg

    try:
        Identity(args.environment, args.tier, args.experiment_id)
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            done = migrate(
                conn,
                environment=args.environment,
                tier=args.tier,
                experiment_id=args.experiment_id,
            )
    except MigrationError as exc:
        print(f"db.migrate: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"db.migrate: database error: {exc}".rstrip(), file=sys.stderr)
        return 1
    print(f"db.migrate: applied {', '.join(done)}" if done else "db.migrate: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
