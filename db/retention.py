"""Delete an experiment database's rows that are older than its retention period.

    python -m db.retention --environment experiment --tier experiment --experiment-id shared \\
        --older-than-days 30

Connection: `--dsn`, else `DATABASE_URL`, else libpq's own variables (PGHOST, PGPORT, PGDATABASE,
PGUSER, PGPASSWORD, PGSSLMODE, PGSSLROOTCERT). Run it as the database owner (the RDS master user),
like db.migrate: `worker` and `analyst` may not run it.

The S3 objects of an experiment stack expire after `retention.expireAfterDays`; this job does the
same for its database, e.g. once a day with `--older-than-days` set to that value. It calls
`envfence.expire_experiment_rows` (migration 0004), which deletes, in one transaction, the
`curated` rows of events received more than N days ago (and curated rows created that long ago),
then those `events`, and prints how many it deleted. Running it again deletes nothing new.

Production data is never deleted by envfence: `--tier production` is refused before connecting,
and the SQL function itself refuses a database whose recorded tier is production. The identity
given (`environment`, `tier`, `experiment_id`) is validated like db.migrate's and must equal the
one recorded in the database, so a DSN pointing at another environment's database deletes nothing.

Exit status: 0 done (maybe nothing to delete); 1 database error or the database belongs to
another environment; 2 bad arguments, including `--tier production`. Errors are one line on
stderr, starting with `db.retention:`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from db.migrate import TIERS, Identity, MigrationError, recorded_identity

if TYPE_CHECKING:  # psycopg is imported where a connection is made
    import psycopg

MIN_DAYS = 1
MAX_DAYS = 3650  # the same bounds as retention.expireAfterDays
FUNCTION = "envfence.expire_experiment_rows(interval)"


class RetentionError(Exception):
    """The job cannot run against this database. The message says why."""


@dataclass(frozen=True)
class Expired:
    events: int
    curated: int


def expire(conn: psycopg.Connection, identity: Identity, *, older_than_days: int) -> Expired:
    """Delete the rows of `identity`'s database older than `older_than_days`, in one transaction.

    Refuses (RetentionError) a production identity, a database recorded as another environment,
    and a database without migration 0004. `conn` must be idle (autocommit, or not inside a
    transaction): the checks and the deletion run in one transaction, committed on return.
    """
    if identity.tier != "experiment":
        raise RetentionError("production rows are never expired by this job")
    if not MIN_DAYS <= older_than_days <= MAX_DAYS:
        raise RetentionError(
            f"older_than_days must be from {MIN_DAYS} to {MAX_DAYS}, not {older_than_days}"
        )
    with conn.transaction():
        _check_identity(conn, identity)
        row = conn.execute("SELECT to_regprocedure(%s)::text", (FUNCTION,)).fetchone()
        if row is None or row[0] is None:
            raise RetentionError(f"{FUNCTION} does not exist: run python -m db.migrate first")
        row = conn.execute(
            "SELECT events_deleted, curated_deleted"
            " FROM envfence.expire_experiment_rows(make_interval(days => %s))",
            (older_than_days,),
        ).fetchone()
        if row is None:
            raise RetentionError(f"{FUNCTION} returned no row")
        return Expired(events=int(row[0]), curated=int(row[1]))


def _check_identity(conn: psycopg.Connection, identity: Identity) -> None:
    """db.migrate's identity check, for a database that must already be migrated."""
    try:
        existing = recorded_identity(conn)
    except MigrationError as exc:
        raise RetentionError(str(exc)) from None
    if existing is None:
        raise RetentionError(
            "envfence.environment_identity does not exist: this is not a migrated envfence database"
        )
    if existing != identity:
        raise RetentionError(
            f"this database belongs to {existing.describe()}, not {identity.describe()}: "
            "refusing to delete anything"
        )


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of days from {MIN_DAYS} to {MAX_DAYS}, not {text!r}"
        )
    return days


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m db.retention",
        description="Delete an experiment database's rows older than its retention period.",
    )
    parser.add_argument(
        "--environment", required=True, help="stack name: experiment, experiment-ab12"
    )
    parser.add_argument("--tier", required=True, choices=TIERS, help="only experiment is allowed")
    parser.add_argument("--experiment-id", default=None, help="the experiment id, e.g. ab12")
    parser.add_argument(
        "--older-than-days",
        required=True,
        type=_days,
        metavar="N",
        help=f"delete rows older than N days ({MIN_DAYS}-{MAX_DAYS}; retention.expireAfterDays)",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL", ""),
        help="libpq connection string (default: $DATABASE_URL, else the PG* variables)",
    )
    args = parser.parse_args(argv)

    if args.tier != "experiment":
        print(
            f"db.retention: --tier {args.tier} is refused: only --tier experiment is allowed "
            "(production rows are never expired by this job)",
            file=sys.stderr,
        )
        return 2
    try:
        identity = Identity(args.environment, args.tier, args.experiment_id)
    except MigrationError as exc:
        print(f"db.retention: {_one_line(exc)}", file=sys.stderr)
        return 2

    import psycopg

    try:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            expired = expire(conn, identity, older_than_days=args.older_than_days)
    except (RetentionError, MigrationError) as exc:  # MigrationError: a malformed recorded row
        print(f"db.retention: {_one_line(exc)}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"db.retention: database error: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(
        f"db.retention: deleted {expired.events} event(s) and {expired.curated} curated row(s)"
        f" older than {args.older_than_days} day(s) from {identity.environment}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
