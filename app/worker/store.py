"""The two writes of a processed record: the raw object in S3 and the rows in PostgreSQL.

Both are idempotent, so a redelivered message does no harm: the object key is the message id,
and `events.message_id` is unique (a second insert of the same message writes nothing).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import psycopg

from .pipeline import WritePlan


class RawWriteError(RuntimeError):
    """S3 accepted the object but not as required (SSE-KMS)."""


class RawStore:
    """Writes raw objects to the environment's `raw` bucket, encrypted by its default KMS key.

    No SSE header is sent: `ServerSideEncryption=aws:kms` without a key id would select the AWS
    managed key, not the bucket's. The response must confirm aws:kms; anything else is an error
    (the message stays queued and the DLQ alarm tells someone the bucket is misconfigured).
    """

    def __init__(self, s3_client: Any, bucket: str):
        self._s3 = s3_client
        self.bucket = bucket

    def put(self, plan: WritePlan) -> dict[str, Any]:
        raw = plan.raw
        resp: dict[str, Any] = self._s3.put_object(
            Bucket=self.bucket,
            Key=raw.key,
            Body=raw.body,
            ContentType=raw.content_type,
            Metadata=dict(raw.metadata),
            Tagging=urlencode(sorted(raw.tags.items())),
        )
        sse = resp.get("ServerSideEncryption")
        if sse not in ("aws:kms", "aws:kms:dsse"):
            raise RawWriteError(
                f"s3://{self.bucket}/{raw.key} was stored with encryption {sse!r}, not aws:kms: "
                "the bucket's default encryption must be SSE-KMS"
            )
        return resp


INSERT_EVENT = """
INSERT INTO envfence.events (message_id, payload, source, experiment_id, environment,
                             flag_set_version, variants, experimental)
VALUES (%s, %s::jsonb, %s, %s, %s, %s, %s::jsonb, %s)
ON CONFLICT (message_id) DO NOTHING
RETURNING id
"""

INSERT_CURATED = """
INSERT INTO envfence.curated (event_id, key, value, source, experiment_id, environment,
                              flag_set_version, variants, experimental)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)
"""


def write_rows(conn: psycopg.Connection, plan: WritePlan) -> int | None:
    """Insert the event and its curated rows in one transaction.

    Returns the new event id, or None if this message was stored before. Needs an autocommit
    connection (each call is its own transaction) as the `worker` role: INSERT only.
    """
    ev = plan.event
    with conn.transaction():
        st = ev.stamp
        row = conn.execute(
            INSERT_EVENT,
            (
                ev.message_id,
                ev.payload,
                ev.source,
                ev.experiment_id,
                ev.environment,
                st.flag_set_version,
                st.variants_json(),
                st.experimental,
            ),
        ).fetchone()
        if row is None:
            return None
        event_id: int = row[0]
        if plan.curated:
            with conn.cursor() as cur:
                cur.executemany(
                    INSERT_CURATED,
                    [
                        (
                            event_id,
                            c.key,
                            c.value,
                            c.source,
                            c.experiment_id,
                            c.environment,
                            c.stamp.flag_set_version,
                            c.stamp.variants_json(),
                            c.stamp.experimental,
                        )
                        for c in plan.curated
                    ],
                )
    return event_id
