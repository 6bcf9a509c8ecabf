"""`python -m worker`: read the configuration, connect, and process the ingestion queue.

Exit status: 0 after SIGTERM/SIGINT, 2 for a configuration error (one line naming the
variable), 3 when the database cannot be reached or belongs to another environment.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping

from .config import Config, ConfigError, load_config

EXIT_CONFIG = 2
EXIT_DATABASE = 3


def main(environ: Mapping[str, str] | None = None) -> int:
    try:
        config = load_config(os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"envfence-worker: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stdout,
        format=f"%(asctime)s %(levelname)s [{config.identity.environment}] %(name)s: %(message)s",
    )
    return run(config)


def run(config: Config) -> int:
    import boto3  # only here: tests of everything else need no AWS SDK
    import psycopg
    from botocore.config import Config as BotoConfig

    from . import db
    from .flags import Flags
    from .loop import Worker

    session = boto3.session.Session(region_name=config.region)
    retries = BotoConfig(retries={"mode": "standard", "max_attempts": 5})
    # The long poll must not outlive the read timeout.
    sqs = session.client(
        "sqs", config=retries.merge(BotoConfig(read_timeout=config.wait_seconds + 10))
    )
    s3 = session.client("s3", config=retries)
    rds = session.client("rds", config=retries)
    appconfig = session.client("appconfigdata", config=retries)

    connect = functools.partial(db.connect, config, None if config.db_password else rds)
    try:
        connect().close()  # fail fast: reachable, migrated, and our own environment's database
    except (db.WrongDatabase, psycopg.Error) as exc:
        print(f"envfence-worker: database: {exc}".rstrip(), file=sys.stderr)
        return EXIT_DATABASE

    flags = Flags(
        appconfig,
        application=config.appconfig_application,
        environment=config.appconfig_environment,
        profile=config.appconfig_profile,
        poll_seconds=config.flags_poll_seconds,
    )
    worker = Worker(config, sqs=sqs, s3=s3, flags=flags, connect=connect)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
