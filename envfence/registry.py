"""The environment registry: which stacks may exist, and what each one is.

One reviewed place, the `envfence:` section of `Pulumi.yaml`, names every environment:

    envfence:
      environments:
        prod:           {tier: production, accounts: ["123456789012"]}
        experiment:     {tier: experiment, accounts: ["210987654321"], accountBaseline: true}
        "experiment-*": {tier: experiment, accounts: ["210987654321"]}
      quotas:
        default: {trails: 5, vpcs: 5, elasticIps: 5}
      archive: {expireAfterDays: 365}

A stack's tier and account come from here, never from the stack's own file: a stack file whose
`tier` or `allowedAccountIds` contradicts its entry, or a stack no entry matches, stops the
program (and `envfence check`) with one message. Production entries are exact names, never
patterns, and no experiment entry may share a production account, so nothing a stack file says
can turn a production stack into anything else or put an experiment next to production data.

It is a top-level section of `Pulumi.yaml` rather than project config: the Pulumi CLI lets a
stack file override any project-level config value, and it accepts extra top-level keys in the
project file (its schema has `additionalProperties: true`, which Pulumi YAML programs rely on).

`accountBaseline` marks the stack that owns what an account can hold only one of: the account's
CloudTrail trail (5 per region, not adjustable) and the archive that keeps concluded
experiments' results. Every account has exactly one.

`quotas` are the per-account, per-region limits `envfence check` counts against (EF801); the
defaults are AWS's documented defaults, raise them here after a Service Quotas increase.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envfence import naming

ACCOUNT_RE = re.compile(r"^\d{12}$")
PATTERN_RE = re.compile(r"^[a-z][a-z0-9-]{0,25}-\*$")

# AWS's defaults, per account and region:
# - CloudTrail: 5 trails per region, not adjustable; a multi-region trail counts in every region
#   (https://docs.aws.amazon.com/awscloudtrail/latest/userguide/WhatIsCloudTrail-Limits.html).
# - Amazon VPC: 5 VPCs per region, adjustable
#   (https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html).
# - Amazon EC2: 5 Elastic IP addresses per region, adjustable
#   (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/elastic-ip-addresses-eip.html).
DEFAULT_QUOTAS: dict[str, int] = {"trails": 5, "vpcs": 5, "elasticIps": 5}
QUOTA_HELP = {
    "trails": "CloudTrail trails per region (AWS: 5, not adjustable)",
    "vpcs": "VPCs per region (AWS default 5)",
    "elasticIps": "Elastic IP addresses per region (AWS default 5)",
}
DEFAULT_ARCHIVE_DAYS = 365


class RegistryError(Exception):
    """The registry in Pulumi.yaml is malformed, or a stack contradicts it."""


@dataclass(frozen=True)
class Entry:
    """One registry entry: an exact stack name, or a `prefix-*` pattern for short-lived stacks."""

    name: str
    tier: str
    accounts: tuple[str, ...]
    account_baseline: bool = False

    @property
    def is_pattern(self) -> bool:
        return self.name.endswith("*")

    def matches(self, stack: str) -> bool:
        if self.is_pattern:
            head = self.name[:-1]
            return stack.startswith(head) and len(stack) > len(head)
        return stack == self.name


@dataclass(frozen=True)
class Registry:
    entries: tuple[Entry, ...]
    quotas: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    archive_expire_days: int = DEFAULT_ARCHIVE_DAYS

    def entry(self, stack: str) -> Entry:
        """The entry of `stack`: its exact name, else the longest matching pattern."""
        for e in self.entries:
            if not e.is_pattern and e.name == stack:
                return e
        patterns = sorted(
            (e for e in self.entries if e.is_pattern and e.matches(stack)),
            key=lambda e: len(e.name),
            reverse=True,
        )
        if patterns:
            return patterns[0]
        raise RegistryError(
            f"stack '{stack}' is not in the environment registry (Pulumi.yaml, envfence."
            f"environments): registered are {', '.join(e.name for e in self.entries)}; "
            "a new environment is added there, in review, before its stack file"
        )

    def knows(self, stack: str) -> bool:
        try:
            self.entry(stack)
        except RegistryError:
            return False
        return True

    def baseline(self, account: str) -> str:
        """The stack that owns the account's trail and archive."""
        for e in self.entries:
            if e.account_baseline and account in e.accounts:
                return e.name
        raise RegistryError(f"account {account} has no accountBaseline entry in the registry")

    def production_accounts(self) -> set[str]:
        return {a for e in self.entries if e.tier == naming.TIER_PRODUCTION for a in e.accounts}

    def quota(self, account: str, name: str) -> int:
        own = self.quotas.get(account, {})
        if name in own:
            return own[name]
        return self.quotas.get("default", {}).get(name, DEFAULT_QUOTAS[name])

    def check_stack(self, stack: str, tier: str | None, accounts: tuple[str, ...] | None) -> Entry:
        """The entry of `stack`, after checking what its stack file claims against it."""
        e = self.entry(stack)
        if tier is not None and tier != e.tier:
            raise RegistryError(
                f"stack '{stack}': config envfence:tier is {tier!r} but the environment registry "
                f"(Pulumi.yaml, entry '{e.name}') says {e.tier!r}; the tier is set only there"
            )
        if accounts is not None:
            for account in accounts:
                if account not in e.accounts:
                    raise RegistryError(
                        f"stack '{stack}': config envfence:allowedAccountIds names {account}, "
                        f"but the environment registry (Pulumi.yaml, entry '{e.name}') allows "
                        f"{', '.join(e.accounts)}"
                    )
        return e


def _fail(where: str, value: Any, allowed: str) -> RegistryError:
    return RegistryError(f"Pulumi.yaml: envfence.{where} is {value!r}; allowed: {allowed}")


def parse_registry(section: Any) -> Registry:
    """Validate the `envfence:` section of Pulumi.yaml."""
    if section is None:
        raise RegistryError(
            "Pulumi.yaml: no environment registry: add an `envfence: {environments: {...}}` "
            "section naming every stack with its tier and account (see README, 'Environments')"
        )
    if not isinstance(section, Mapping):
        raise _fail("", section, "a mapping with environments, quotas and archive")
    unknown = sorted(set(section) - {"environments", "quotas", "archive"})
    if unknown:
        raise _fail(
            unknown[0], section[unknown[0]], "one of the keys environments, quotas, archive"
        )
    raw = section.get("environments")
    if not isinstance(raw, Mapping) or not raw:
        raise _fail("environments", raw, "a mapping of stack name (or 'prefix-*') to its entry")
    entries = []
    for name, spec in raw.items():
        where = f"environments.{name}"
        name = str(name)
        if not (naming.STACK_NAME_RE.match(name) or PATTERN_RE.match(name)):
            raise _fail(where, name, "a stack name (2-28 of a-z 0-9 -) or a pattern 'prefix-*'")
        if not isinstance(spec, Mapping):
            raise _fail(where, spec, "{tier, accounts, accountBaseline}")
        extra = sorted(set(spec) - {"tier", "accounts", "accountBaseline"})
        if extra:
            raise _fail(f"{where}.{extra[0]}", spec[extra[0]], "tier, accounts, accountBaseline")
        tier = spec.get("tier")
        if tier not in naming.TIERS:
            raise _fail(f"{where}.tier", tier, " | ".join(naming.TIERS))
        accounts = spec.get("accounts")
        if (
            not isinstance(accounts, list)
            or not accounts
            or not all(isinstance(a, str) and ACCOUNT_RE.match(a) for a in accounts)
        ):
            raise _fail(
                f"{where}.accounts", accounts, 'a list of 12-digit account ids, quoted: ["1234..."]'
            )
        baseline = spec.get("accountBaseline", False)
        if not isinstance(baseline, bool):
            raise _fail(f"{where}.accountBaseline", baseline, "true | false")
        entry = Entry(name, str(tier), tuple(accounts), baseline)
        if entry.is_pattern and tier == naming.TIER_PRODUCTION:
            raise _fail(f"{where}.tier", tier, "experiment: production stacks are named one by one")
        if baseline and (entry.is_pattern or len(accounts) != 1):
            raise _fail(
                f"{where}.accountBaseline",
                baseline,
                "true only on an exact stack name with one account (it owns that account's "
                "trail and archive)",
            )
        entries.append(entry)
    registry_entries = tuple(entries)
    production = {
        a for e in registry_entries if e.tier == naming.TIER_PRODUCTION for a in e.accounts
    }
    for e in registry_entries:
        shared = sorted(set(e.accounts) & production)
        if e.tier == naming.TIER_EXPERIMENT and shared:
            raise _fail(
                f"environments.{e.name}.accounts",
                list(e.accounts),
                f"accounts without production stacks ({', '.join(shared)} holds production): "
                "experiments never share an account with production data",
            )
    accounts_all = sorted({a for e in registry_entries for a in e.accounts})
    for account in accounts_all:
        owners = [e.name for e in registry_entries if e.account_baseline and account in e.accounts]
        if len(owners) != 1:
            raise _fail(
                "environments",
                owners,
                f"exactly one entry with accountBaseline: true for account {account} (it owns "
                "the account's one CloudTrail trail and the experiment archive)",
            )
    quotas = _parse_quotas(section.get("quotas"))
    archive = section.get("archive") or {}
    if not isinstance(archive, Mapping) or set(archive) - {"expireAfterDays"}:
        raise _fail("archive", archive, "{expireAfterDays}")
    days = archive.get("expireAfterDays", DEFAULT_ARCHIVE_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise _fail("archive.expireAfterDays", days, "an integer from 1 to 3650")
    return Registry(registry_entries, quotas, days)


def _parse_quotas(raw: Any) -> dict[str, dict[str, int]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _fail("quotas", raw, "a mapping of 'default' or an account id to quotas")
    out: dict[str, dict[str, int]] = {}
    for scope, values in raw.items():
        scope = str(scope)
        if scope != "default" and not ACCOUNT_RE.match(scope):
            raise _fail(f"quotas.{scope}", values, "'default' or a 12-digit account id")
        if not isinstance(values, Mapping):
            raise _fail(f"quotas.{scope}", values, ", ".join(DEFAULT_QUOTAS))
        out[scope] = {}
        for name, value in values.items():
            if name not in DEFAULT_QUOTAS:
                raise _fail(f"quotas.{scope}.{name}", value, ", ".join(DEFAULT_QUOTAS))
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10000:
                raise _fail(f"quotas.{scope}.{name}", value, "an integer from 1 to 10000")
            out[scope][str(name)] = value
    return out
