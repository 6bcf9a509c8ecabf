"""Which data resources a principal could be allowed anything on at all, found through indexes.

The IAM proof asks one question per principal of an environment against every data resource
outside it (`iam_proof.Prover.environment`). Most of those resources cannot matter to a given
principal, and a question that held them all would grow with the number of environments, so
the proof's cost with their square. A request is allowed only if an Allow statement applies
to it ("Policy evaluation logic": no Allow, implicit deny), and an Allow statement comes from
one of two places:

- an identity policy of the principal, whose `Resource` must be able to name the resource
  (`world.compatible`: a common string has both literal prefixes and both literal suffixes)
  and whose `Action` must be able to name an action of the resource's service
  (`query.services_for`; actions that take no resource name none);
- the resource's own policy, whose `Principal` must name the principal (`iam.principal_match`).

A resource that neither can reach is left out of the question: both methods would fold it to
"nothing allowed" anyway (`smt.Encoder._allowed` returns False before building the denies,
`classes.Search.requests` skips a target without an applicable Allow). Everything else stays,
and whatever cannot be read here is kept, never dropped: a malformed statement, a policy
variable in a `Resource`, a `NotResource`, a `NotPrincipal`, a principal form not indexed, or
any error while reading makes the resource relevant, so the question itself meets it and fails
closed on it.

The indexes make the work per principal proportional to what its statements can name, not to
the number of environments: resources by the literal start of their ARN shapes (a sorted list
for "starts with", a dictionary for "is a prefix of"), and resource policies by the accounts
and names their Allow statements grant to.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from typing import Any

from envfence import iam
from envfence.iam import Policy
from envfence.prove import smt
from envfence.prove.query import services_for
from envfence.prove.world import Role, Target, World, _pattern_ends, _shape_ends, compatible
from envfence.rules.policies import RESOURCELESS_ACTIONS

ANYONE = "*"
ACCOUNT = re.compile(r"\d{12}")


def readable(policy: Policy, principaled: bool) -> bool:
    """The policy passes what every question checks of a policy it holds: its statements and
    version (`smt._parsed`) and its condition operators (`smt.Encoder._scan`). One that does
    not must meet a question (which fails closed on it), so it is never pruned."""
    try:
        for stmt in smt._parsed(policy, principaled)[1]:
            for op_name in stmt.get("Condition") or {}:
                iam.parse_condition_operator(op_name)
    except Exception:  # any failure: the question meets it
        return False
    return True


def grantee_keys(stmt: object) -> set[str] | None:
    """Index keys for the principals an Allow statement of a resource policy can name: `*`,
    `acct:<account>`, `arn:<exact value>`; None for a statement that is not an Allow (a Deny
    never grants). Anything not read exactly here is `*`."""
    if not isinstance(stmt, Mapping):
        return {ANYONE}
    effect = stmt.get("Effect")
    if effect == "Deny":
        return None
    if effect != "Allow" or "NotPrincipal" in stmt or "Principal" not in stmt:
        return {ANYONE}
    principal = stmt["Principal"]
    if not isinstance(principal, Mapping):
        return {ANYONE}
    out: set[str] = set()
    for key, raw in principal.items():
        values = raw if isinstance(raw, list) else [raw]
        for value in values:
            if not isinstance(value, str):
                return {ANYONE}
            if key == "AWS":
                parts = value.split(":")
                if "*" in value or "?" in value:
                    return {ANYONE}  # a wildcard (refused by `iam._aws_value_match`: met)
                if ACCOUNT.fullmatch(value):
                    out.add(f"acct:{value}")
                elif value.startswith("arn:") and len(parts) >= 6 and ACCOUNT.fullmatch(parts[4]):
                    # A role, a session, a user or the account root: every one of them names
                    # principals of that account only (`iam._aws_value_match`).
                    out.add(f"acct:{parts[4]}")
                else:
                    return {ANYONE}
            elif key in ("Service", "Federated"):
                out.add(f"arn:{value}")  # matched by exact name (`iam._named_match`)
            else:
                return {ANYONE}
    return out


def _statement_services(stmt: Mapping[str, Any]) -> set[str] | None:
    """Lower-case service prefixes whose actions an Allow statement can name (None: any)."""
    if "Action" not in stmt:
        return None  # NotAction
    raw = stmt["Action"]
    values = raw if isinstance(raw, list) else [raw]
    out: set[str] = set()
    for value in values:
        if not isinstance(value, str) or ":" not in value:
            return None
        service = value.split(":", 1)[0].lower()
        if "*" in service or "?" in service:
            return None
        if value.lower() in RESOURCELESS_ACTIONS:
            continue  # names no resource (`smt.Encoder._fits`)
        out.add(service)
    return out


class Relevance:
    """Indexes over every data resource of a world (built once per proof)."""

    def __init__(self, world: World) -> None:
        self.targets: list[Target] = [t for s in world.stacks for t in world.targets.get(s, [])]
        self._services = [frozenset(s.lower() for s in services_for(t)) for t in self.targets]
        starts: dict[str, set[int]] = {}
        for i, t in enumerate(self.targets):
            for shape in t.shapes:
                starts.setdefault(_shape_ends(shape)[0], set()).add(i)
        self._starts = starts
        self._sorted = sorted(starts)
        self._granted: dict[str, set[int]] = {}
        for i, t in enumerate(self.targets):
            if t.policy is None:
                continue
            statements: list[object]
            try:
                statements = [stmt for _, stmt in iam._statements(t.policy)]
            except Exception:  # unreadable: relevant to everyone
                statements = [None]
            if not readable(t.policy, True):
                statements = [None]  # relevant to everyone: every question meets it
            for stmt in statements:
                for key in grantee_keys(stmt) or ():
                    self._granted.setdefault(key, set()).add(i)
        self._by_pattern: dict[str, frozenset[int]] = {}

    # -- identity policies ------------------------------------------------------------------
    def _named_by(self, pattern: str) -> frozenset[int]:
        """Targets some ARN of which the wildcard `pattern` may match."""
        hit = self._by_pattern.get(pattern)
        if hit is not None:
            return hit
        if "${" in pattern:
            found = frozenset(range(len(self.targets)))  # a variable: any value
        else:
            start = _pattern_ends(pattern)[0]
            candidates: set[int] = set()
            for k in range(len(start) + 1):  # shape starts that are a prefix of the pattern's
                candidates |= self._starts.get(start[:k], set())
            lo = bisect.bisect_left(self._sorted, start)
            for key in self._sorted[lo:]:  # shape starts that begin with the pattern's
                if not key.startswith(start):
                    break
                candidates |= self._starts[key]
            found = frozenset(
                i
                for i in candidates
                if any(compatible(pattern, shape) for shape in self.targets[i].shapes)
            )
        self._by_pattern[pattern] = found
        return found

    def _identity(self, role: Role) -> set[int]:
        everything = set(range(len(self.targets)))
        limits = [*role.identity, *([role.boundary] if role.boundary is not None else [])]
        if not all(readable(policy, False) for policy in limits):
            return everything  # a malformed identity policy or boundary: every question meets it
        out: set[int] = set()
        for policy in role.identity:
            try:
                statements = [stmt for _, stmt in iam._statements(policy)]
            except Exception:  # unreadable: the question meets it
                return everything
            for stmt in statements:
                if not isinstance(stmt, Mapping) or stmt.get("Effect") not in ("Allow", "Deny"):
                    return everything
                if stmt["Effect"] == "Deny":
                    continue
                services = _statement_services(stmt)
                if services is not None and not services:
                    continue  # only actions that take no resource
                if "Resource" not in stmt:
                    named: Iterable[int] = everything  # NotResource (or malformed)
                else:
                    raw = stmt["Resource"]
                    values = raw if isinstance(raw, list) else [raw]
                    if not all(isinstance(v, str) for v in values):
                        return everything
                    named = set().union(*(self._named_by(v) for v in values))
                out.update(i for i in named if services is None or services & self._services[i])
        return out

    # -- resource policies --------------------------------------------------------------------
    def _granting(self, role: Role) -> set[int]:
        session = role.principal()
        candidates = (
            self._granted.get(ANYONE, set())
            | self._granted.get(f"acct:{role.account}", set())
            | self._granted.get(f"arn:{role.arn}", set())
        )
        out = set()
        for i in candidates:
            policy = self.targets[i].policy
            assert policy is not None
            try:
                for _, stmt in iam._statements(policy):
                    if not isinstance(stmt, Mapping) or stmt.get("Effect") != "Allow":
                        if not isinstance(stmt, Mapping) or stmt.get("Effect") != "Deny":
                            out.add(i)  # malformed: the question meets it
                            break
                        continue
                    named = iam.principal_match(
                        stmt, session, has_boundary=role.boundary is not None
                    )
                    if named is not None:
                        out.add(i)
                        break
            except Exception:  # unreadable: the question meets it
                out.add(i)
        return out

    def outside(self, role: Role, stack: str) -> list[Target]:
        """The data resources of stacks other than `stack` on which some Allow statement could
        apply to `role`'s requests, in the world's order."""
        hits = self._identity(role) | self._granting(role)
        return [self.targets[i] for i in sorted(hits) if self.targets[i].stack != stack]
