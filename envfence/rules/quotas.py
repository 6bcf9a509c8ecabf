"""EF8xx: what all stacks of an account declare together fits the account's quotas.

A quota is per account and Region, so no stack can be checked alone: six `experiment-<id>` stacks
that are each fine make the sixth `pulumi up` fail on VPCs. The rule counts, per (account,
region), what every checked stack declares, plus the registry-known stacks of the account that
are not in hand but whose stack files are (from their facts: one VPC each, their NAT gateways,
the account's trail if they own it), against the registry's quotas (`Registry.quota`, AWS's
defaults without a registry):

- CloudTrail trails: 5 per Region, not adjustable, and a multi-Region trail counts in every
  Region (https://docs.aws.amazon.com/awscloudtrail/latest/userguide/WhatIsCloudTrail-Limits.html).
  So a multi-Region trail counts in every Region where a stack of its account lives.
- VPCs per Region (https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html).
- Elastic IP addresses per Region, one per NAT gateway
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/elastic-ip-addresses-eip.html).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from envfence.model import Resource, StackState
from envfence.registry import DEFAULT_QUOTAS
from envfence.rules import classify as c
from envfence.rules.context import Context, Env, is_unknown
from envfence.rules.engine import UNKNOWN_RULE_ID, Finding, rule, undecided
from envfence.rules.providers import aws

TRAILS = "trails"
VPCS = "vpcs"
ELASTIC_IPS = "elasticIps"
EIPS = c.tokens(aws.ec2.Eip)
NOUNS = {TRAILS: "CloudTrail trails", VPCS: "VPCs", ELASTIC_IPS: "Elastic IPs"}
# How each quota is raised.
RAISE = {
    TRAILS: "not adjustable: only the account's baseline stack (registry accountBaseline) may "
    "declare a trail, and it records the other stacks of the account; remove the others, or move "
    "stacks to another account",
    VPCS: "request an increase of 'VPCs per Region' (Amazon VPC) in Service Quotas, then set "
    'envfence.quotas."{account}".vpcs in Pulumi.yaml; or move stacks to another account',
    ELASTIC_IPS: "request an increase of 'EC2-VPC Elastic IPs' (Amazon EC2) in Service Quotas, "
    'then set envfence.quotas."{account}".elasticIps in Pulumi.yaml; or lower '
    "network.natGateways",
}
# A stack has at most this many NAT gateways (network.natGateways <= azCount <= 4): the bound
# for a stack file whose NAT gateway count the checker's facts do not carry.
MAX_NAT_PER_STACK = 4


@dataclass
class Tally:
    """What the stacks of one account declare in one region."""

    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {k: defaultdict(int) for k in DEFAULT_QUOTAS}
    )
    from_files: set[str] = field(default_factory=set)  # stacks counted from their stack files
    unknown_eips: set[str] = field(default_factory=set)  # stack files without a NAT count
    # quota -> URN of the last checked resource counted (stacks by name, resources in declaration
    # order): the one that tips the count over, as far as one can say.
    anchors: dict[str, str] = field(default_factory=dict)


def _region(state: StackState, r: Resource, default: str | None) -> str | None:
    """The resource's region: its own `region` (pulumi-aws 7), else its provider's."""
    own = r.get("region")
    if isinstance(own, str) and own and not is_unknown(own):
        return own
    provider = r.provider_urn
    if provider:
        for p in state.resources:
            if p.urn == provider:
                region = p.inputs.get("region")
                if isinstance(region, str) and region:
                    return region
    return default


def _nat_gateways(env: Env) -> int | None:
    """The NAT gateway count of a stack known from its stack file, when its facts carry it."""
    value = getattr(env, "nat_gateways", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tallies(ctx: Context) -> tuple[dict[tuple[str, str], Tally], list[Finding]]:
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    regions: dict[str, set[str]] = defaultdict(set)  # account -> regions where its stacks live
    multi_region: list[tuple[str, str, str | None]] = []  # (account, stack, anchor URN)
    undecidable: list[Finding] = []
    for name, state in sorted(ctx.states.items()):
        env = ctx.env(name)
        if not env.account:
            continue  # EF903: no explicit provider with an allowed account
        if env.region:
            regions[env.account].add(env.region)
        for kind, types in ((VPCS, c.VPCS), (ELASTIC_IPS, EIPS)):
            for r in state.of_type(*types):
                region = _region(state, r, env.region)
                if region is None:
                    continue
                regions[env.account].add(region)
                tally = tallies[(env.account, region)]
                tally.counts[kind][name] += 1
                tally.anchors[kind] = r.urn
        for t in state.of_type(*c.TRAILS):
            multi = t.get("isMultiRegionTrail")
            if is_unknown(multi):
                undecidable.append(
                    undecided(t.urn, "EF801", f"isMultiRegionTrail of {t.name}", multi)
                )
                continue
            if multi in (True, "true"):
                multi_region.append((env.account, name, t.urn))
                continue
            region = _region(state, t, env.region)
            if region is not None:
                tally = tallies[(env.account, region)]
                tally.counts[TRAILS][name] += 1
                tally.anchors[TRAILS] = t.urn
    for name, env in sorted(ctx.envs.items()):
        if name in ctx.states or not env.account or not env.region:
            continue
        # Known from its stack file only: what the program declares for it.
        regions[env.account].add(env.region)
        tally = tallies[(env.account, env.region)]
        tally.from_files.add(name)
        tally.counts[VPCS][name] += 1
        nat = _nat_gateways(env)
        if nat is None:
            tally.unknown_eips.add(name)
        elif nat:
            tally.counts[ELASTIC_IPS][name] += nat
        if (env.trail_owner or name) == name:
            multi_region.append((env.account, name, None))
    for account, stack, urn in multi_region:
        for region in regions[account]:
            tally = tallies[(account, region)]
            tally.counts[TRAILS][stack] += 1
            if urn is not None:
                tally.anchors[TRAILS] = urn
    return tallies, undecidable


def _quota(ctx: Context, account: str, kind: str) -> int:
    if ctx.registry is not None:
        return ctx.registry.quota(account, kind)
    return DEFAULT_QUOTAS[kind]


@rule(
    "EF801",
    "account-quotas",
    title="Together, the stacks of an account stay within its per-region quotas (CloudTrail "
    "trails, VPCs, Elastic IPs)",
    severity="high",
    scope="cross",
    fix="Trails: only the account's baseline stack declares one (5 per region, not adjustable). "
    "VPCs and Elastic IPs (one per NAT gateway): raise the quota in Service Quotas, then in "
    "Pulumi.yaml (envfence.quotas.<account>), or move stacks to another account.",
)
def account_quotas(ctx: Context) -> Iterator[Finding]:
    tallies, undecidable = _tallies(ctx)
    yield from undecidable
    for (account, region), tally in sorted(tallies.items()):
        for kind in DEFAULT_QUOTAS:
            anchor = tally.anchors.get(kind)
            if anchor is None:
                continue  # nothing of this kind among the checked stacks: not theirs to fix
            per_stack = {s: n for s, n in tally.counts[kind].items() if n}
            total = sum(per_stack.values())
            quota = _quota(ctx, account, kind)
            unknown = sorted(tally.unknown_eips) if kind == ELASTIC_IPS else []
            if total <= quota and unknown and total + MAX_NAT_PER_STACK * len(unknown) > quota:
                yield Finding(
                    anchor,
                    f"[EF801] cannot decide: the NAT gateway count of {', '.join(unknown)} "
                    f"(not in hand, known from stack files only) is not among the checker's "
                    f"facts; account {account} in {region} has {total} Elastic IPs of quota "
                    f"{quota} without them; check them together; this fails closed",
                    other=UNKNOWN_RULE_ID,
                )
                continue
            if total <= quota:
                continue
            contributing = ", ".join(
                f"{s} {n}"
                + (" (from its stack file, not in hand)" if s in tally.from_files else "")
                for s, n in sorted(per_stack.items())
            )
            multi = (
                " (a multi-region trail counts in every region where a stack of the account lives)"
                if kind == TRAILS
                else ""
            )
            yield Finding(
                anchor,
                f"account {account}, region {region}: {total} {NOUNS[kind]} "
                f"declared, quota {quota}{multi}: {contributing}. To raise it: "
                + RAISE[kind].format(account=account),
            )
