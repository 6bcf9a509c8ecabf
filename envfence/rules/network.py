"""EF1xx: nothing carries a packet between environments."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from envfence.model import Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import Context, as_list, is_unknown, need
from envfence.rules.engine import Finding, rule, undecided


@rule(
    "EF101",
    "no-vpc-peering",
    title="No VPC peering",
    severity="critical",
    scope="resource",
    types=c.PEERING,
    fix="Remove the peering: environments share data only through declared flows, never a "
    "network path.",
)
def no_vpc_peering(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    peer = r.get("peerVpcId") or r.get("vpcPeeringConnectionId")
    other = ctx.owner_of_id(str(peer), exclude=state.stack) if peer else None
    yield Finding(
        r.urn,
        f"{r.type.split(':')[-1]} {r.name} connects this VPC to another network"
        + (f" (the VPC of stack '{other}')" if other else ""),
        other,
    )


@rule(
    "EF102",
    "no-transit-gateway",
    title="No transit gateway or VPN attachment",
    severity="critical",
    scope="resource",
    types=c.TRANSIT,
    fix="Remove the transit gateway/VPN resource: environment VPCs stay unconnected.",
)
def no_transit(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    yield Finding(r.urn, f"{r.type.split(':')[-1]} {r.name} can route between VPCs")


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return None


def _route_findings(
    r: Resource, route: dict[str, Any], state: StackState, ctx: Context
) -> Iterator[Finding]:
    for key in ("vpcPeeringConnectionId", "transitGatewayId"):
        if route.get(key):
            yield Finding(
                r.urn,
                f"route {route.get('destinationCidrBlock') or route.get('cidrBlock')}"
                f" targets {key} {route[key]}: a path out of the environment",
            )
    dest = _network(route.get("destinationCidrBlock") or route.get("cidrBlock"))
    if dest is None or dest.prefixlen == 0:
        return
    for other in ctx.others(state.stack):
        if other.cidr is not None and dest.version == 4 and dest.overlaps(other.cidr):
            yield Finding(
                r.urn,
                f"route to {dest} leads into the VPC CIDR {other.cidr} of stack '{other.stack}'",
                other.stack,
            )


@rule(
    "EF103",
    "routes-stay-in-environment",
    title="Routes never lead to another environment",
    severity="critical",
    scope="resource",
    types=c.ROUTES | c.ROUTE_TABLES,
    fix="Delete the route; environments have no network path to each other.",
)
def routes_stay(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    if r.type in c.ROUTES:
        yield from _route_findings(
            r,
            {
                k: need(r, k)
                for k in ("destinationCidrBlock", "vpcPeeringConnectionId", "transitGatewayId")
            },
            state,
            ctx,
        )
    else:
        for route in as_list(need(r, "routes", [])):
            if isinstance(route, dict):
                yield from _route_findings(r, route, state, ctx)


def _ingress_sources(r: Resource) -> Iterator[tuple[str, str]]:
    """(kind, value) of every source an ingress rule or group admits."""
    if r.type in c.SG_INGRESS_RULES:
        for kind in ("cidrIpv4", "cidrIpv6", "prefixListId", "referencedSecurityGroupId"):
            v = need(r, kind)
            if v:
                yield kind, str(v)
        return
    if r.type in c.SG_RULES:
        if need(r, "type") != "ingress":
            return
        for v in as_list(need(r, "cidrBlocks", [])):
            yield "cidrIpv4", str(v)
        for v in as_list(need(r, "ipv6CidrBlocks", [])):
            yield "cidrIpv6", str(v)
        for v in as_list(need(r, "prefixListIds", [])):
            yield "prefixListId", str(v)
        if need(r, "sourceSecurityGroupId"):
            yield "referencedSecurityGroupId", str(r.get("sourceSecurityGroupId"))
        if need(r, "self") in (True, "true"):
            return
        return
    for rule_ in as_list(need(r, "ingress", [])):
        if not isinstance(rule_, dict):
            continue
        for v in as_list(rule_.get("cidrBlocks")):
            yield "cidrIpv4", str(v)
        for v in as_list(rule_.get("ipv6CidrBlocks")):
            yield "cidrIpv6", str(v)
        for v in as_list(rule_.get("prefixListIds")):
            yield "prefixListId", str(v)
        for v in as_list(rule_.get("securityGroups")):
            yield "referencedSecurityGroupId", str(v)


@rule(
    "EF104",
    "ingress-from-own-vpc-only",
    title="Security groups admit traffic only from their own VPC",
    severity="critical",
    scope="resource",
    types=c.SG_INGRESS_RULES | c.SG_RULES | c.SECURITY_GROUPS,
    fix="Admit only the environment's own VPC CIDR or its own security groups.",
)
def ingress_own_vpc(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    own_sgs = {x.id for x in state.of_type(*c.SECURITY_GROUPS) if x.id}
    own_lists = {
        str(x.get("prefixListId"))
        for x in state.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
        if x.get("prefixListId")
    }
    for kind, value in _ingress_sources(r):
        if is_unknown(value):
            yield undecided(r.urn, "EF104", f"{kind} of {r.name}", value)
            continue
        if kind == "cidrIpv4":
            net = _network(value)
            if (
                net is None
                or env.cidr is None
                or not (net.version == 4 and net.subnet_of(env.cidr))
            ):
                # Name another environment only when the range lies inside its VPC; a wider range
                # (0.0.0.0/0) admits everyone, which is said as such.
                other = next(
                    (
                        o.stack
                        for o in ctx.others(state.stack)
                        if o.cidr and net is not None and net.version == 4 and net.subnet_of(o.cidr)
                    ),
                    None,
                )
                reaches = [
                    o.stack
                    for o in ctx.others(state.stack)
                    if o.cidr and net is not None and net.version == 4 and net.overlaps(o.cidr)
                ]
                where = (
                    f" (inside the VPC of stack '{other}')"
                    if other
                    else f" (which includes the VPC of {', '.join(reaches)})"
                    if reaches
                    else ""
                )
                yield Finding(
                    r.urn,
                    f"{r.name} admits {value}, outside the VPC CIDR {env.cidr}{where}",
                    other,
                )
        elif kind == "cidrIpv6":
            yield Finding(
                r.urn,
                f"{r.name} admits IPv6 {value}; environment VPCs have no IPv6 "
                "inside them, so this can only come from outside",
            )
        elif kind == "prefixListId":
            if value not in own_lists:
                yield Finding(
                    r.urn,
                    f"{r.name} admits prefix list {value}, which is not an "
                    "endpoint of this environment",
                )
        elif value not in own_sgs:
            other = ctx.owner_of_id(value, exclude=state.stack)
            yield Finding(
                r.urn,
                f"{r.name} admits security group {value}, which is not a "
                "security group of this environment"
                + (f" (it belongs to stack '{other}')" if other else ""),
                other,
            )


@rule(
    "EF105",
    "no-shared-network",
    title="No subnet, security group or endpoint shared across environments",
    severity="critical",
    scope="stack",
    fix="Give each environment its own VPC, subnets, security groups and endpoints; remove "
    "RAM shares.",
)
def no_shared_network(state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    own_vpcs = env.vpc_ids
    for r in state.resources:
        if r.type in c.SHARING:
            yield Finding(
                r.urn,
                f"{r.type.split(':')[-1]} {r.name} shares resources with other "
                "accounts or principals",
            )
            continue
        if r.type in c.NETWORK and r.type not in c.VPCS and r.custom:
            vpc = r.get("vpcId")
            if vpc and not is_unknown(vpc) and own_vpcs and vpc not in own_vpcs:
                other = ctx.owner_of_id(str(vpc), exclude=state.stack)
                yield Finding(
                    r.urn,
                    f"{r.name} is placed in VPC {vpc}, not this environment's"
                    + (f" (the VPC of stack '{other}')" if other else ""),
                    other,
                )
        # securityGroupId: a rule this stack manages on another environment's group opens that
        # environment's resources, whatever source the rule admits.
        for key in (
            "subnetId",
            "subnetIds",
            "securityGroupId",
            "securityGroupIds",
            "vpcSecurityGroupIds",
        ):
            for v in as_list(r.get(key)):
                if isinstance(v, str) and not is_unknown(v):
                    other = ctx.owner_of_id(v, exclude=state.stack)
                    if other is not None:
                        yield Finding(r.urn, f"{r.name} uses {v} of stack '{other}'", other)


@rule(
    "EF106",
    "no-public-ip-on-data",
    title="No public IP on data resources or their subnets",
    severity="high",
    scope="resource",
    types=c.SUBNETS | c.DATABASES,
    fix="Set mapPublicIpOnLaunch / publiclyAccessible to false.",
)
def no_public_ip(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    key = "mapPublicIpOnLaunch" if r.type in c.SUBNETS else "publiclyAccessible"
    if need(r, key) in (True, "true"):
        yield Finding(r.urn, f"{r.name} has {key} = true")


@rule(
    "EF107",
    "data-subnets-stay-private",
    title="Data subnets have no route out of the VPC",
    severity="high",
    scope="stack",
    fix="Associate data subnets with a route table that has only the local route.",
)
def data_subnets_private(state: StackState, ctx: Context) -> Iterator[Finding]:
    by_id = {r.id: r for r in state.resources if r.id}
    data_subnets = {
        r.id
        for r in state.of_type(*c.SUBNETS)
        if isinstance(r.get("tags"), dict) and r.get("tags").get("subnet-tier") == "data"
    }
    tables = {
        str(a.get("routeTableId"))
        for a in state.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")
        if a.get("subnetId") in data_subnets
    }
    for route in state.of_type(*c.ROUTES):
        if str(route.get("routeTableId")) in tables:
            yield Finding(
                route.urn,
                f"route {route.get('destinationCidrBlock')} in a data "
                "subnet's route table: data subnets must not reach out",
            )
    for table_id in tables:
        table = by_id.get(table_id)
        if table is not None and as_list(table.get("routes")):
            yield Finding(table.urn, f"route table {table.name} of data subnets has routes")
