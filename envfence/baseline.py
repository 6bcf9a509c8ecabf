"""Accepted findings: `envfence check --baseline FILE`.

A baseline lists findings a team has reviewed and accepted, each with the reason (required) and,
optionally, a date after which it fails again. Accepted findings do not fail the run; they are
reported, with their reason, in every format (SARIF: as suppressed results). An entry that
matches no finding is reported too (the risk is gone: remove the entry), so a baseline does not
silently outlive what it accepted.

    # .envfence-baseline.yaml
    accepted:
      - rule: EF203                      # required: the rule id
        stack: experiment                # required: a stack name, or "*"
        resource: experiment-results     # required: the resource's name or its full URN
        reason: "Read by the BI export until 2027-03 (ticket DATA-142)"   # required
        expires: 2027-03-31              # optional: after this date the finding fails again

Proofs are never baselined: a refuted isolation proof always fails (`--no-prove` is the explicit
way to not run them). `envfence check --create-baseline FILE` writes the current findings with
empty reasons; the file is refused until each reason is filled in.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from envfence.rules.engine import Violation

RULE_RE = re.compile(r"^EF\d{3}$")
KEYS = ("rule", "stack", "resource", "reason", "expires")


class BaselineError(Exception):
    """The baseline file is missing or malformed: exit code 2, the message names the entry."""


@dataclass(frozen=True)
class Entry:
    index: int  # position in the file (0-based), for messages
    rule: str
    stack: str
    resource: str
    reason: str
    expires: dt.date | None = None

    def matches(self, v: Violation) -> bool:
        if v.rule != self.rule or self.stack not in ("*", v.stack):
            return False
        return self.resource in (v.urn, v.urn.rsplit("::", 1)[-1])

    def describe(self) -> str:
        return f"{self.rule} {self.stack} {self.resource}"


@dataclass(frozen=True)
class Accepted:
    violation: Violation
    entry: Entry


@dataclass
class Applied:
    """The run's findings after the baseline: what still fails, what it accepted, which of its
    entries matched nothing and which have expired (their findings fail again)."""

    violations: list[Violation]
    accepted: list[Accepted]
    stale: list[Entry]
    expired: list[Entry]


def load(path: str | Path) -> list[Entry]:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise BaselineError(f"{p}: cannot be read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise BaselineError(f"{p}: not valid YAML") from None
    if not isinstance(doc, dict) or set(doc) != {"accepted"}:
        raise BaselineError(f"{p}: expected one top-level key, `accepted`: a list of findings")
    items = doc["accepted"] or []
    if not isinstance(items, list):
        raise BaselineError(f"{p}: `accepted` must be a list of findings")
    return [_entry(p, i, item) for i, item in enumerate(items)]


def _entry(p: Path, i: int, item: Any) -> Entry:
    where = f"{p}: accepted[{i}]"
    if not isinstance(item, dict):
        raise BaselineError(f"{where}: expected a mapping with {', '.join(KEYS)}")
    unknown = sorted(set(map(str, item)) - set(KEYS))
    if unknown:
        raise BaselineError(f"{where}: unknown key {unknown[0]}; allowed: {', '.join(KEYS)}")
    for key in ("rule", "stack", "resource", "reason"):
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            what = "why the finding is accepted" if key == "reason" else "a non-empty string"
            raise BaselineError(f"{where}.{key} is missing or empty; allowed: {what}")
    if not RULE_RE.match(item["rule"]):
        raise BaselineError(
            f"{where}.rule is {item['rule']!r}; allowed: a rule id such as EF203 (proofs, "
            "EFP*, are never baselined)"
        )
    expires = item.get("expires")
    if expires is not None:
        if isinstance(expires, str):
            try:
                expires = dt.date.fromisoformat(expires)
            except ValueError:
                expires = None
        if not isinstance(expires, dt.date) or isinstance(expires, dt.datetime):
            raise BaselineError(f"{where}.expires is {item['expires']!r}; allowed: YYYY-MM-DD")
    return Entry(i, item["rule"], item["stack"], item["resource"], item["reason"].strip(), expires)


def apply(
    violations: Sequence[Violation], entries: Sequence[Entry], today: dt.date | None = None
) -> Applied:
    today = today or dt.date.today()
    live = [e for e in entries if e.expires is None or e.expires >= today]
    expired = [e for e in entries if e.expires is not None and e.expires < today]
    remaining: list[Violation] = []
    accepted: list[Accepted] = []
    used: set[int] = set()
    for v in violations:
        entry = next((e for e in live if e.matches(v)), None)
        if entry is None:
            remaining.append(v)
        else:
            accepted.append(Accepted(v, entry))
            used.add(entry.index)
    stale = [e for e in live if e.index not in used]
    return Applied(remaining, accepted, stale, expired)


def render(violations: Iterable[Violation]) -> str:
    """A baseline accepting `violations`, reasons left empty for a reviewer to fill in."""
    items = [
        {
            "rule": v.rule,
            "stack": v.stack,
            "resource": v.urn.rsplit("::", 1)[-1],
            "reason": "",
        }
        for v in sorted(violations, key=lambda v: (v.rule, v.stack, v.urn))
    ]
    head = (
        "# envfence baseline: findings accepted after review (envfence check --baseline FILE).\n"
        "# Fill in every reason (the file is refused while one is empty); add `expires:\n"
        "# YYYY-MM-DD` to have a finding fail again after that date.\n"
    )
    return head + yaml.safe_dump({"accepted": items}, sort_keys=False, width=100)


__all__ = ["Accepted", "Applied", "BaselineError", "Entry", "apply", "load", "render"]
