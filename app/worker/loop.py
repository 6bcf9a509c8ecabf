"""The message loop: long-poll the ingestion queue, process, write, and only then delete.

For each message: `pipeline.process` decides what to write; the raw object goes to S3, the event
and curated rows to PostgreSQL (one transaction); the message is deleted only after both writes
succeeded. Any failure leaves the message on the queue: it becomes visible again after the
visibility timeout and, after the queue's maxReceiveCount, lands in the dead-letter queue.

All AWS clients and the database connection factory are passed in, so tests use fakes.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from . import pipeline
from .config import Config
from .flags import Flags
from .store import RawStore, write_rows

log = logging.getLogger(__name__)


def record_from_message(message: dict[str, Any], now: Callable[[], dt.datetime]) -> pipeline.Record:
    """The pipeline's Record for an SQS message (SentTimestamp names the raw object's day)."""
    sent = (message.get("Attributes") or {}).get("SentTimestamp")
    try:
        sent_at = dt.datetime.fromtimestamp(int(sent) / 1000, tz=dt.UTC)
    except (TypeError, ValueError):
        sent_at = now()
    return pipeline.Record(
        message_id=message.get("MessageId", ""), body=message.get("Body", ""), sent_at=sent_at
    )


class Worker:
    def __init__(
        self,
        config: Config,
        *,
        sqs: Any,
        s3: Any,
        flags: Flags,
        connect: Callable[[], psycopg.Connection],
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ):
        self.config = config
        self.sqs = sqs
        self.raw = RawStore(s3, config.raw_bucket)
        self.flags = flags
        self._connect = connect
        self._now = now
        self._conn: psycopg.Connection | None = None
        self._drift: str | None = None

    # -- database connection, opened lazily and reopened after a failure ----------------------

    def connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the flag set ---------------------------------------------------------------------------

    def check_flag_set(self) -> None:
        """Poll AppConfig (cached per poll interval) and say once when the version it has
        deployed is not the one this worker evaluates: someone changed the flags outside
        `pulumi up`, or a deployment is under way. The worker keeps evaluating, and stamping,
        its own version: rows always name the flags that really produced them."""
        self.flags.current()
        deployed = self.flags.version
        if deployed and deployed != self.config.flag_set.version and deployed != self._drift:
            log.warning(
                "AppConfig serves flag set %s, this worker evaluates %s (its task definition's); "
                "rows are stamped with %s",
                deployed,
                self.config.flag_set.version,
                self.config.flag_set.version,
            )
        self._drift = deployed

    # -- one message ----------------------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> bool:
        """Process one message; True if it was written and deleted."""
        message_id = message.get("MessageId", "?")
        try:
            record = record_from_message(message, self._now)
            self.check_flag_set()
            ctx = pipeline.Context(self.config.identity, self.config.flag_set)
            plan = pipeline.process(record, ctx)
            conn = self.connection()  # first: only write when the database is ours and up
            self.raw.put(plan)
            try:
                event_id = write_rows(conn, plan)
            except psycopg.OperationalError:
                self.close()  # broken connection: the next message reconnects (fresh token)
                raise
            self.sqs.delete_message(
                QueueUrl=self.config.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
        except pipeline.InvalidRecord as exc:
            log.error("message %s is invalid, leaving it for the DLQ: %s", message_id, exc)
            return False
        except Exception:
            log.exception("message %s failed, leaving it on the queue", message_id)
            return False
        log.info(
            "message %s stored: s3://%s/%s, event %s, %d curated rows (%s)",
            message_id,
            self.raw.bucket,
            plan.raw.key,
            "already stored" if event_id is None else event_id,
            len(plan.curated),
            plan.curation,
        )
        return True

    # -- the loop -------------------------------------------------------------------------------

    def poll_once(self) -> tuple[int, int]:
        """One long poll; returns (messages received, messages completed)."""
        resp = self.sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=self.config.max_messages,
            WaitTimeSeconds=self.config.wait_seconds,
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        )
        messages = resp.get("Messages") or []
        done = sum(1 for m in messages if self.handle(m))
        return len(messages), done

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set (SIGTERM); the batch in hand is finished first."""
        log.info(
            "worker started: environment %s, tier %s, queue %s",
            self.config.identity.environment,
            self.config.identity.tier,
            self.config.queue_url,
        )
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except Exception:
                    log.exception("polling the queue failed; retrying")
                    stop.wait(5)
        finally:
            self.close()
            log.info("worker stopped")
