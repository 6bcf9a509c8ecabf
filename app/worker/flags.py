"""Feature flags from AWS AppConfig, through the AppConfig Data API, cached per poll interval.

The worker evaluates its flag set itself, per record (flagset.py: AppConfig's SDK calls return no
variant data); it polls AppConfig to learn which version AppConfig has deployed (`version`, the
hosted version's label) and says when that is not the one it evaluates (loop.Worker).

`Flags.current()` returns the last known flags and asks AppConfig again only once the poll
interval has passed (the larger of ours and the `NextPollIntervalInSeconds` AppConfig returns).
An empty `Configuration` in the answer means "unchanged". If AppConfig cannot be reached the last
known flags stay in force (all flags off before the first success) and the session is started
again on the next poll.

Both documents AppConfig serves are understood: a feature-flag profile
(`{"curate_v2": {"enabled": true}}`) and a plain JSON object of booleans (`{"curate_v2": true}`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

DEFAULTS: Mapping[str, bool] = {"curate_v2": False}


class FlagDocumentError(ValueError):
    """The configuration AppConfig returned is not a flags document."""


def parse_flags(document: bytes | str) -> dict[str, bool]:
    """Flags from a feature-flag profile or a plain JSON object of booleans."""
    try:
        data = json.loads(document or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FlagDocumentError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FlagDocumentError(f"expected a JSON object, got {type(data).__name__}")
    flags: dict[str, bool] = {}
    for name, value in data.items():
        if isinstance(value, dict) and isinstance(value.get("enabled"), bool):
            flags[name] = value["enabled"]
        elif isinstance(value, bool):
            flags[name] = value
        else:
            raise FlagDocumentError(
                f'flag {name!r}: expected true/false or {{"enabled": true/false}}, got {value!r}'
            )
    return flags


class Flags:
    """Cached feature flags of one AppConfig application/environment/profile."""

    def __init__(
        self,
        client: Any,  # boto3 "appconfigdata" client, or a fake with the same two methods
        *,
        application: str,
        environment: str,
        profile: str,
        poll_seconds: int = 60,
        clock: Callable[[], float] = time.monotonic,
        defaults: Mapping[str, bool] = DEFAULTS,
    ):
        self._client = client
        self._session = {
            "ApplicationIdentifier": application,
            "EnvironmentIdentifier": environment,
            "ConfigurationProfileIdentifier": profile,
            "RequiredMinimumPollIntervalInSeconds": poll_seconds,
        }
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._flags: dict[str, bool] = dict(defaults)
        self._defaults = dict(defaults)
        self._token: str | None = None
        self._next_poll: float | None = None  # None: poll now
        self.version: str | None = None

    def current(self) -> dict[str, bool]:
        now = self._clock()
        if self._next_poll is None or now >= self._next_poll:
            interval = self._poll_seconds
            try:
                interval = max(interval, self._refresh())
            except Exception as exc:  # AppConfig down: keep flying on the last known flags
                log.warning("feature flags not refreshed, keeping the last known: %s", exc)
                self._token = None
            self._next_poll = now + interval
        return dict(self._flags)

    def _refresh(self) -> int:
        if self._token is None:
            self._token = self._client.start_configuration_session(**self._session)[
                "InitialConfigurationToken"
            ]
        resp = self._client.get_latest_configuration(ConfigurationToken=self._token)
        self._token = resp["NextPollConfigurationToken"]
        body = resp.get("Configuration")
        content = body.read() if hasattr(body, "read") else (body or b"")
        if content:  # empty: unchanged since the last answer
            self.version = resp.get("VersionLabel")
            try:
                flags = parse_flags(content)
            except FlagDocumentError as exc:
                # AWS does not document what the Data API returns for a flag with variants;
                # the version label is what the worker needs from it.
                log.info("AppConfig version %s is not a simplified document: %s", self.version, exc)
                return int(resp.get("NextPollIntervalInSeconds") or 0)
            self._flags = {**self._defaults, **flags}
            log.info("feature flags now %s (version %s)", self._flags, self.version)
        return int(resp.get("NextPollIntervalInSeconds") or 0)
