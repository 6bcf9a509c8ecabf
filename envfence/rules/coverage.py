"""EF9xx: nothing slips past the rules — unclassified types, unknown values, default providers."""

from __future__ import annotations

import json
from collections.abc import Iterator

from envfence.model import StackState, unreadable, why_unreadable
from envfence.rules import classify as c
from envfence.rules.context import Context
from envfence.rules.engine import Finding, rule


@rule(
    "EF901",
    "resource-type-classified",
    title="Every AWS resource type is classified by the rules",
    severity="high",
    scope="stack",
    fix="Add the type to a class in envfence/rules/classify.py (data, network, identity, key "
    "or neutral) and, if it can carry data or a path, a rule with tests.",
)
def classified(state: StackState, ctx: Context) -> Iterator[Finding]:
    seen: set[str] = set()
    for r in state.custom():
        if r.type.startswith("aws:") and c.classify(r.type) is None and r.type not in seen:
            seen.add(r.type)
            yield Finding(
                r.urn,
                f"resource type {r.type} ({r.name}) is not classified: no rule "
                "knows whether it holds data or opens a path",
            )


@rule(
    "EF902",
    "values-known",
    title="Values the rules need are known",
    severity="high",
    scope="stack",
    fix="Run the check on deployed state (pulumi stack export) or make the value known at "
    "preview; a rule that cannot decide never passes silently.",
)
def values_known(state: StackState, ctx: Context) -> Iterator[Finding]:
    # Findings of this rule come from every other rule (engine.run_rule turns Unknown into
    # EF902); on its own it checks that the stack's provider is known (and readable).
    for r in state.resources:
        region = r.inputs.get("region")
        if r.is_provider and unreadable(region):
            why = unreadable(region) or "unknown"
            yield Finding(r.urn, f"provider {why_unreadable(f'{r.name} region', why)}")


@rule(
    "EF903",
    "explicit-provider",
    title="Every AWS resource uses the stack's explicit provider "
    "with allowed accounts and default tags",
    severity="high",
    scope="stack",
    fix="Pass the stack's aws.Provider (infra/__main__.py); keep pulumi:disable-default-providers.",
)
def explicit_provider(state: StackState, ctx: Context) -> Iterator[Finding]:
    providers = {r.urn: r for r in state.resources if r.type == "pulumi:providers:aws"}
    for urn, p in providers.items():
        name = urn.rsplit("::", 1)[-1]
        if name.startswith("default"):
            yield Finding(urn, f"default AWS provider {name} is in use")
            continue
        accounts = p.inputs.get("allowedAccountIds")
        if isinstance(accounts, str):
            try:
                accounts = json.loads(accounts)
            except json.JSONDecodeError:
                accounts = None
        if not accounts:
            yield Finding(urn, f"provider {name} has no allowedAccountIds")
        if not p.inputs.get("defaultTags"):
            yield Finding(urn, f"provider {name} has no defaultTags")
    for r in state.custom():
        if r.type.startswith("aws:") and r.provider_urn not in providers:
            yield Finding(r.urn, f"{r.name} does not use the stack's explicit AWS provider")
