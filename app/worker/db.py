"""Connections to the environment's PostgreSQL database.

Authentication: `DB_PASSWORD` when set (local runs), otherwise an IAM authentication token from
`rds.generate_db_auth_token` (signed locally, valid 15 minutes, needed only to open a
connection). TLS: `DB_SSLMODE`, default verify-full against `DB_SSLROOTCERT` (the RDS CA bundle
in the image).

Every new connection checks `envfence.environment_identity`: a worker configured for one
environment refuses to write into another environment's database.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from .config import Config
from .pipeline import Identity

CONNECT_TIMEOUT = 10


class WrongDatabase(RuntimeError):
    """The database belongs to another environment than the worker's."""


def conninfo(config: Config, rds_client: Any | None) -> str:
    password = config.db_password
    if password is None:
        if rds_client is None:
            raise RuntimeError("DB_PASSWORD is not set and there is no RDS client for IAM auth")
        password = rds_client.generate_db_auth_token(
            DBHostname=config.db_host,
            Port=config.db_port,
            DBUsername=config.db_user,
            Region=config.region,
        )
    params: dict[str, Any] = {
        "host": config.db_host,
        "port": config.db_port,
        "dbname": config.db_name,
        "user": config.db_user,
        "password": password,
        "sslmode": config.db_sslmode,
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": f"envfence-worker/{config.identity.environment}",
    }
    if config.db_sslmode in ("verify-ca", "verify-full"):
        params["sslrootcert"] = config.db_sslrootcert
    return make_conninfo(**params)


def database_identity(conn: psycopg.Connection) -> Identity:
    row = conn.execute(
        "SELECT environment, tier, experiment_id FROM envfence.environment_identity"
    ).fetchone()
    if row is None:
        raise WrongDatabase("envfence.environment_identity is empty: the database is not migrated")
    return Identity(*row)


def connect(config: Config, rds_client: Any | None) -> psycopg.Connection:
    """An autocommit connection to the worker's own database, identity checked."""
    conn = psycopg.connect(conninfo(config, rds_client), autocommit=True)
    try:
        found = database_identity(conn)
    except psycopg.errors.UndefinedTable:
        conn.close()
        raise WrongDatabase(
            f"database {config.db_name!r} on {config.db_host} has no envfence schema "
            "(run db/migrate.py)"
        ) from None
    except BaseException:
        conn.close()
        raise
    if found != config.identity:
        conn.close()
        raise WrongDatabase(
            f"database {config.db_name!r} on {config.db_host} belongs to {found}, "
            f"not to this worker's {config.identity}"
        )
    return conn
