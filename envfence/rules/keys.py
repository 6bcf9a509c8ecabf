"""EF4xx: each environment's key is used by that environment only."""

from __future__ import annotations

from collections.abc import Iterator

from envfence.model import Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import Context, need
from envfence.rules.data import foreign_grant_findings
from envfence.rules.engine import Finding, FlowUse, rule


@rule(
    "EF401",
    "key-policy-own-environment",
    title="Key policies allow no principal of another "
    "environment, and no '*' without a pinning condition",
    severity="critical",
    scope="resource",
    types=c.KEY_POLICIES,
    fix="Allow key use only to this environment's roles (aws:PrincipalArn) and pinned AWS "
    "services; declare flows in both stacks for a deliberate cross-environment read.",
)
def key_policy(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding | FlowUse]:
    yield from foreign_grant_findings(r, "policy", state, ctx)


@rule(
    "EF402",
    "key-rotation",
    title="Keys rotate",
    severity="medium",
    scope="resource",
    types=c.KEYS,
    fix="Set enableKeyRotation = true.",
)
def key_rotation(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    if need(r, "enableKeyRotation") not in (True, "true"):
        yield Finding(r.urn, f"key {r.name} does not rotate")
