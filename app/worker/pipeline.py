"""The worker's core: one ingested record in, everything to write out. Pure: no I/O, no clock.

`process(record, ctx)` returns a `WritePlan`: the raw object for the `raw` bucket and the event and
curated rows for PostgreSQL, each stamped with the environment's provenance (`source`,
`experiment_id`, `environment`) and with the flag variants that produced it (`flag_set_version`,
`variants`, `experimental`: the environment's flag set evaluated on the record's attributes,
`flagset.FlagSet.assign`). A record that can never be processed raises `InvalidRecord`; the
worker leaves such a message on the queue so that it ends in the dead-letter queue.

Curation turns the numbers in an event's JSON object into (key, value) rows:

* v1 (default): the top-level numeric fields, keys as written.
* v2 (feature flag `curate_v2`, enabled in the record's variant): nested objects are flattened
  into dotted keys (`cpu.user`) and keys are lower-cased; two fields that end up with one key
  make the record invalid.

Booleans are not numbers; numbers keep their exact decimal value.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .flagset import Assignment, FlagSet, record_context

SOURCE_BY_TIER = {"production": "production", "experiment": "experiment"}
MESSAGE_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,128}$")
MAX_KEY_LENGTH = 200
FLAG_CURATE_V2 = "curate_v2"


class InvalidRecord(ValueError):
    """The record can never be processed (not a JSON object, bad id, ...)."""


@dataclass(frozen=True)
class Identity:
    """The environment this worker serves, as deployed: stack name, tier, experiment id."""

    environment: str
    tier: str
    experiment_id: str | None

    @property
    def source(self) -> str:
        return SOURCE_BY_TIER[self.tier]

    def __str__(self) -> str:
        extra = f" {self.experiment_id}" if self.experiment_id else ""
        return f"{self.environment} ({self.tier}{extra})"

    def tags(self) -> dict[str, str]:
        """Object tags and metadata. Production carries no experiment-id, as in infra's tags."""
        tags = {"environment": self.environment}
        if self.experiment_id is not None:
            tags["experiment-id"] = self.experiment_id
        return tags


@dataclass(frozen=True)
class Record:
    """One message from the ingestion queue."""

    message_id: str
    body: str
    sent_at: dt.datetime  # timezone-aware; names the day of the raw object


@dataclass(frozen=True)
class Context:
    identity: Identity
    flag_set: FlagSet


@dataclass(frozen=True)
class Stamp:
    """Which flags produced a row: the flag set's version and each flag's variant."""

    flag_set_version: str
    variants: Mapping[str, Assignment]

    @property
    def experimental(self) -> bool:
        """Some variant that produced the row is experimental: the row must be marked."""
        return any(a.experimental for a in self.variants.values())

    def variants_json(self) -> str:
        return json.dumps({k: a.stamp() for k, a in sorted(self.variants.items())})

    def enabled(self, flag: str) -> bool:
        a = self.variants.get(flag)
        return a is not None and a.enabled


@dataclass(frozen=True)
class RawObject:
    key: str
    body: bytes
    content_type: str
    tags: Mapping[str, str]
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class EventRow:
    message_id: str
    payload: str  # the JSON text as received; PostgreSQL stores it as jsonb
    source: str
    experiment_id: str | None
    environment: str
    stamp: Stamp


@dataclass(frozen=True)
class CuratedRow:
    key: str
    value: Decimal
    source: str
    experiment_id: str | None
    environment: str
    stamp: Stamp


@dataclass(frozen=True)
class WritePlan:
    raw: RawObject
    event: EventRow
    curated: tuple[CuratedRow, ...]
    curation: str  # "v1" | "v2"


def process(record: Record, ctx: Context) -> WritePlan:
    """What to write for `record` in the environment of `ctx`. Raises InvalidRecord."""
    if not MESSAGE_ID_RE.match(record.message_id):
        raise InvalidRecord(f"message id {record.message_id!r} is not a safe object name")
    if record.sent_at.tzinfo is None:
        raise InvalidRecord("sent_at must be timezone-aware")
    payload = parse_payload(record.body)
    ident = ctx.identity
    stamp = Stamp(ctx.flag_set.version, ctx.flag_set.assign(record_context(payload)))
    v2 = stamp.enabled(FLAG_CURATE_V2)
    values = curate_v2(payload) if v2 else curate_v1(payload)

    day = record.sent_at.astimezone(dt.UTC)
    tags = ident.tags()
    return WritePlan(
        raw=RawObject(
            key=f"raw/{ident.environment}/{day:%Y/%m/%d}/{record.message_id}.json",
            body=record.body.encode("utf-8"),
            content_type="application/json",
            tags=tags,
            metadata=dict(tags),
        ),
        event=EventRow(
            message_id=record.message_id,
            payload=record.body,
            source=ident.source,
            experiment_id=ident.experiment_id,
            environment=ident.environment,
            stamp=stamp,
        ),
        curated=tuple(
            CuratedRow(key, value, ident.source, ident.experiment_id, ident.environment, stamp)
            for key, value in sorted(values.items())
        ),
        curation="v2" if v2 else "v1",
    )


def parse_payload(body: str) -> dict[str, Any]:
    """The body as a JSON object with exact decimals. NaN and Infinity are not JSON."""

    def reject_constant(name: str) -> Any:
        raise InvalidRecord(f"body contains {name}, which is not valid JSON")

    try:
        payload = json.loads(body, parse_float=Decimal, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidRecord(f"body is not JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise InvalidRecord("body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise InvalidRecord(f"body must be a JSON object, got {type(payload).__name__}")
    return payload


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        return value
    return None


def _check_key(key: str) -> str:
    if not key:
        raise InvalidRecord("a curated key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRecord(f"curated key {key[:40]!r}... is longer than {MAX_KEY_LENGTH}")
    return key


def curate_v1(payload: Mapping[str, Any]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for key, value in payload.items():
        number = _number(value)
        if number is not None:
            out[_check_key(key)] = number
    return out


def curate_v2(payload: Mapping[str, Any]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}

    def walk(obj: Mapping[str, Any], prefix: str) -> None:
        for raw_key, value in obj.items():
            key = f"{prefix}{raw_key.lower()}"
            if isinstance(value, dict):
                walk(value, f"{key}.")
                continue
            number = _number(value)
            if number is None:
                continue
            if key in out:
                raise InvalidRecord(f"two fields curate to the key {key!r}")
            out[_check_key(key)] = number

    walk(payload, "")
    return out
