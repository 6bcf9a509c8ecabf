"""A throwaway PostgreSQL server for tests.

Test modules load it with `pytest_plugins = ("tests.pg",)`, which provides three fixtures:

* `postgres_server` (session): a private server started on 127.0.0.1 on a free port, trust auth,
  its unix socket and data directory in a temporary directory that is removed afterwards.
* `pg` (function): an empty `Database` for the one test (CREATE DATABASE ... TEMPLATE), dropped
  afterwards, so tests never see each other's rows. `postgres_server.template(name, setup)` builds
  a template once per session (e.g. a migrated schema) for `server.create_database(template=...)`.
* `envfence_db` (function): a factory of fresh databases migrated by db/migrate.py for one
  environment identity (`envfence_db("prod", "production")`), cloned from a per-session template.

The server binaries (`initdb`, `postgres`) are looked up in $PG_BINDIR, then PATH, then the
newest /usr/lib/postgresql/<version>/bin. Without them, every test that needs the server is
skipped with the reason in MISSING. initdb refuses to run as root, so when the tests run as root
the server runs as the `postgres` system user (created with useradd if absent) through
subprocess's user/group switch; nothing is started through a shell.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

MISSING = "PostgreSQL server binaries not found (apt-get install postgresql)"
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"
START_TIMEOUT = 30.0

# Durability is pointless for a server that is deleted after the tests; these make it fast.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "32MB",
    "max_wal_size": "256MB",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "timezone": "UTC",
}


def find_bindir() -> Path | None:
    """The directory holding `initdb` and `postgres`, or None."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "postgres")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _system_user() -> pwd.struct_passwd:
    """The unprivileged account that runs the server when the tests run as root."""
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


@dataclass(frozen=True)
class Database:
    """One database on the test server; `connect()` as the superuser or as any role."""

    server: PostgresServer
    name: str

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def conninfo(self, user: str = SUPERUSER) -> str:
        return self.server.conninfo(self.name, user)

    def connect(self, user: str = SUPERUSER, *, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(user), autocommit=autocommit)


class PostgresServer:
    """A private PostgreSQL cluster: `start()`, use, `stop()` (which deletes everything)."""

    host = "127.0.0.1"

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = 0
        self.tmp: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}  # subprocess user/group switch when root
        self._names = itertools.count(1)
        self._templates: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        self.tmp = Path(tempfile.mkdtemp(prefix="envfence-pg-"))
        if os.geteuid() == 0:
            user = _system_user()
            os.chown(self.tmp, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        data = self.tmp / "data"
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            env=env,
            capture_output=True,
            **self._as,
        )
        if initdb.returncode != 0:
            self.stop()
            raise RuntimeError(f"initdb failed:\n{initdb.stderr.decode(errors='replace')}")
        for attempt in range(3):  # the free port can be taken between probe and bind
            self.port = _free_port()
            if self._launch(data, env):
                return self
            if attempt == 2 or "could not bind" not in self.log():
                break
        log = self.log()
        self.stop()
        raise RuntimeError(f"postgres did not start:\n{log}")

    def _launch(self, data: Path, env: dict[str, str]) -> bool:
        assert self.tmp is not None
        args = [
            str(self.bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.tmp}",
        ]
        for key, value in SERVER_SETTINGS.items():
            args += ["-c", f"{key}={value}"]
        with open(self.tmp / "postgres.log", "wb") as log:
            self.proc = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                **self._as,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.02)
        self._terminate()
        return False

    def log(self) -> str:
        if self.tmp is None:
            return ""
        try:
            return (self.tmp / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown
            proc.wait(timeout=10)

    def stop(self) -> None:
        self._terminate()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    # -- databases -------------------------------------------------------------------------

    def conninfo(self, dbname: str, user: str = SUPERUSER) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, dbname=dbname, user=user, sslmode="disable"
        )

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo("postgres"), autocommit=True)

    def create_database(self, template: str = "template0", name: str | None = None) -> Database:
        name = name or f"test_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return Database(self, name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def template(self, key: str, setup: Callable[[Database], object]) -> str:
        """A template database built once per session by `setup`; returns its name."""
        if key not in self._templates:
            db = self.create_database(name=f"tpl_{len(self._templates) + 1}")
            setup(db)
            self._templates[key] = db.name
        return self._templates[key]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(MISSING)
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg(postgres_server: PostgresServer) -> Iterator[Database]:
    """A fresh, empty database for one test."""
    db = postgres_server.create_database()
    try:
        yield db
    finally:
        with contextlib.suppress(psycopg.Error):
            postgres_server.drop_database(db.name)


@pytest.fixture
def envfence_db(postgres_server: PostgresServer) -> Iterator[Callable[..., Database]]:
    """A factory of fresh databases migrated with db/migrate.py for one environment identity.

    `envfence_db("prod", "production", None)`; each identity's migrated template is built once
    per session, each call clones it.
    """
    from db.migrate import migrate

    created: list[str] = []

    def setup(environment: str, tier: str, experiment_id: str | None) -> Callable[[Database], None]:
        def run(db: Database) -> None:
            with db.connect() as conn:
                migrate(conn, environment=environment, tier=tier, experiment_id=experiment_id)

        return run

    def make(environment: str, tier: str, experiment_id: str | None = None) -> Database:
        key = f"envfence:{environment}:{tier}:{experiment_id}"
        template = postgres_server.template(key, setup(environment, tier, experiment_id))
        db = postgres_server.create_database(template=template)
        created.append(db.name)
        return db

    yield make
    for name in created:
        with contextlib.suppress(psycopg.Error):
            postgres_server.drop_database(name)
