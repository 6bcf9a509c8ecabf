"""The network half of the isolation proof (issue 5): no packet between environment VPCs.

The clean stacks must be proved both ways with both controls finding their application-to-
database path; each injected network leak (built from tests/mutations.py) must be refuted with a
packet whose addresses lie in the right VPCs and a path that names the resource that carries it;
half a leak must stay proved; a control that cannot find its path makes the proof "broken".
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Callable

import mutations as m
import pytest

from envfence.evaluate import _EC2_IDS
from envfence.model import UNKNOWN, StackState
from envfence.prove.network import NetworkResult, prove_network
from envfence.state import load_document

P, E = m.PROD, m.EXPERIMENT
Stacks = dict[str, StackState]
EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
NACL = "aws:ec2/networkAcl:NetworkAcl"
SHARED_TGW = "tgw-0123456789abcdef0"  # the gateway m.transit_gateway_attachment attaches to


def results(stacks: Stacks) -> dict[tuple[str, str], NetworkResult]:
    return {(r.source, r.target): r for r in prove_network(stacks)}


def inside(ip: str, state: StackState) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(m.cidr(state))


# --------------------------------------------------------------------------------------------
# Changes the mutations module does not have. Each adds to the stack (a clone of a resource it
# already has), so the stack's own application keeps reaching its own database.


def app_egress_to(stacks: Stacks, at: str, dest: str, port: int = 5432) -> None:
    """`at`'s application group may also send PostgreSQL to `dest` (egress is the sender's half:
    the ingress mutations alone leave it closed)."""
    s = stacks[at]
    m.clone(
        s,
        s.named("sg-app-out-postgres", EGRESS_RULE),
        type_=EGRESS_RULE,
        name="sg-app-out-postgres-leak",
        inputs={
            "securityGroupId": s.named("sg-app", m.SECURITY_GROUP).id,
            "ipProtocol": "tcp",
            "fromPort": port,
            "toPort": port,
            "cidrIpv4": dest,
        },
    )


def peering_with_route(stacks: Stacks, at: str, peer: str) -> Stacks:
    """A peering made by `at` and a route in `at`'s app table into `peer` through it."""
    return m.mutated(stacks, m.vpc_peering, m.route_via_peering, at=at, peer=peer)


def transit_with_route(stacks: Stacks, at: str, peer: str) -> Stacks:
    """Both VPCs attached to the shared transit gateway; `at` routes `peer`'s CIDR to it."""
    out = m.mutated(stacks)
    m.transit_gateway_attachment(out, at=at)
    m.transit_gateway_attachment(out, at=peer)
    route = m.route_via_peering(out, at=at, peer=peer)
    route.drop("vpcPeeringConnectionId")
    route.set("transitGatewayId", SHARED_TGW)
    return out


def nat_subnet_route_to_transit(stacks: Stacks, at: str, peer: str) -> Stacks:
    """`at`'s NAT subnet routes `peer`'s CIDR to the transit gateway: the app subnets reach it
    through their default route to the NAT (which rewrites the source address)."""
    out = m.mutated(stacks)
    m.transit_gateway_attachment(out, at=at)
    m.transit_gateway_attachment(out, at=peer)
    s = out[at]
    table = s.named("rt-public")
    m.clone(
        s,
        s.of_type(m.ROUTE)[0],
        type_=m.ROUTE,
        name=f"route-public-{peer}",
        inputs={
            "routeTableId": table.id,
            "destinationCidrBlock": m.cidr(out[peer]),
            "transitGatewayId": SHARED_TGW,
        },
    )
    return out


def network_acl_denying(stacks: Stacks, at: str, source_cidr: str) -> None:
    """A network ACL on every subnet of `at`: deny inbound from `source_cidr`, allow the rest."""
    s = stacks[at]
    subnets = [r.id for r in s.of_type(m.SUBNET)]
    rule = {"protocol": "-1", "fromPort": 0, "toPort": 0, "icmpCode": 0, "icmpType": 0}
    m.clone(
        s,
        m.vpc(s),
        type_=NACL,
        name="acl-deny-peer",
        inputs={
            "vpcId": m.vpc(s).id,
            "subnetIds": subnets,
            "ingress": [
                {**rule, "ruleNo": 100, "action": "deny", "cidrBlock": source_cidr},
                {**rule, "ruleNo": 200, "action": "allow", "cidrBlock": "0.0.0.0/0"},
            ],
            "egress": [{**rule, "ruleNo": 100, "action": "allow", "cidrBlock": "0.0.0.0/0"}],
        },
    )


# --------------------------------------------------------------------------------------------
# The clean stacks


def test_clean_pair_proved_both_ways_with_controls(stacks: Stacks) -> None:
    start = time.perf_counter()
    got = results(stacks)
    elapsed = time.perf_counter() - start
    assert set(got) == {(P, P), (E, E), (P, E), (E, P)}
    for pair in [(P, E), (E, P)]:
        assert got[pair].status == "proved", got[pair]
        assert got[pair].packet is None
    for name in (P, E):
        control = got[(name, name)]
        assert control.status == "proved", control.detail
        assert control.packet is not None
        assert control.packet.protocol == "tcp" and control.packet.dst_port == 5432
        assert inside(control.packet.src_ip, stacks[name])
        assert inside(control.packet.dst_ip, stacks[name])
        assert any("aws:ecs/service:Service" in hop for hop in control.path)
        assert any("aws:rds/instance:Instance" in hop for hop in control.path)
    assert elapsed < 2.0, f"clean proof took {elapsed:.2f} s"


# --------------------------------------------------------------------------------------------
# Leaks: each must be refuted, from `src` to `dst`, through a hop naming `carrier`


def _default_sg(stacks: Stacks) -> Stacks:
    # prod's app group already sends HTTPS to "any address" (its S3 prefix-list rule, which the
    # model reads as any address); experiment's default group now admits all of prod's CIDR.
    out = peering_with_route(stacks, P, E)
    m.default_sg_ingress(out, at=E, peer=P)
    return out


def _other_cidr(stacks: Stacks) -> Stacks:
    out = peering_with_route(stacks, E, P)  # the mutations' defaults: experiment peers with prod
    m.ingress_from_other_cidr(out, at=P, peer=E)
    app_egress_to(out, E, m.cidr(out[P]))
    return out


def _other_sg(stacks: Stacks) -> Stacks:
    out = peering_with_route(stacks, P, E)
    m.ingress_from_other_sg(out, at=E, peer=P)  # group reference across the peering
    app_egress_to(out, P, m.cidr(out[E]))
    return out


def _inline(stacks: Stacks) -> Stacks:
    out = peering_with_route(stacks, P, E)
    m.inline_sg_ingress(out, at=E, peer=P)
    app_egress_to(out, P, m.cidr(out[E]))
    return out


def _sg_rule(stacks: Stacks) -> Stacks:
    out = peering_with_route(stacks, P, E)
    m.sg_rule_ingress(out, at=E, peer=P)
    app_egress_to(out, P, m.cidr(out[E]))
    return out


def _rule_on_other_sg(stacks: Stacks) -> Stacks:
    out = peering_with_route(stacks, P, E)
    m.ingress_rule_on_other_sg(out, at=P, peer=E)  # prod opens experiment's database group
    app_egress_to(out, P, m.cidr(out[E]))
    return out


def _transit(stacks: Stacks) -> Stacks:
    out = transit_with_route(stacks, P, E)
    m.ingress_from_anywhere(out, at=E)
    app_egress_to(out, P, m.cidr(out[E]))
    return out


def _nat_transit(stacks: Stacks) -> Stacks:
    out = nat_subnet_route_to_transit(stacks, E, P)
    m.ingress_from_other_cidr(out, at=P, peer=E)
    app_egress_to(out, E, m.cidr(out[P]))
    return out


def _shared_subnet(stacks: Stacks) -> Stacks:
    return m.mutated(stacks, m.subnet_in_other_vpc, at=P, peer=E)


LEAKS: dict[str, tuple[Callable[[Stacks], Stacks], str, str, tuple[str, ...]]] = {
    "peering + default group ingress": (
        _default_sg,
        P,
        E,
        (m.PEERING, "DefaultSecurityGroup experiment/default-sg"),
    ),
    "peering + ingress from other CIDR": (_other_cidr, E, P, (m.PEERING, "sg-db-in-postgres")),
    "peering + ingress from other group": (_other_sg, P, E, (m.PEERING, "= prod/sg-app")),
    "peering + inline ingress": (_inline, P, E, (m.PEERING, "sg-db inline ingress")),
    "peering + ec2 SecurityGroupRule": (_sg_rule, P, E, (m.PEERING, "sg-db-in-postgres-legacy")),
    "peering + rule on the peer's group": (
        _rule_on_other_sg,
        P,
        E,
        (m.PEERING, "prod/sg-peer-db-in-postgres"),
    ),
    "transit gateway + ingress from anywhere": (
        _transit,
        P,
        E,
        (f"{m.TGW_ATTACHMENT} prod/", f"{m.TGW_ATTACHMENT} experiment/", "0.0.0.0/0"),
    ),
    "NAT subnet routed to a transit gateway": (
        _nat_transit,
        E,
        P,
        ("aws:ec2/natGateway:NatGateway experiment/nat-0", m.TGW_ATTACHMENT, "rewritten"),
    ),
    "subnet in the other VPC": (_shared_subnet, P, E, ("-> local (aws:ec2/vpc:Vpc experiment",)),
}


@pytest.mark.parametrize("name", list(LEAKS))
def test_leak_is_refuted_with_a_packet_and_a_path(stacks: Stacks, name: str) -> None:
    build, src, dst, carriers = LEAKS[name]
    leaky = build(stacks)
    got = results(leaky)
    r = got[(src, dst)]
    assert r.status == "refuted", (r.status, r.detail)
    assert r.packet is not None
    if name != "subnet in the other VPC":  # that subnet keeps prod's range inside experiment's
        assert inside(r.packet.src_ip, leaky[src]), r.packet
        assert inside(r.packet.dst_ip, leaky[dst]), r.packet
    assert r.path[0].startswith(f"from {r.packet.src_ip}: ")
    assert any(hop.startswith("egress: ") for hop in r.path)
    assert any(hop.startswith("ingress: ") for hop in r.path)
    for carrier in carriers:
        assert any(carrier in hop for hop in r.path), (carrier, r.path)


def test_one_way_is_enough_and_the_path_says_so(stacks: Stacks) -> None:
    """Only prod routes into experiment: the packet arrives though no reply can come back."""
    r = results(_other_sg(stacks))[(P, E)]
    assert r.status == "refuted"
    assert "no return route" in r.path[-1]


# --------------------------------------------------------------------------------------------
# Half a leak stays proved


def _half(stacks: Stacks, name: str) -> Stacks:
    # Additive changes only: a mutation that replaces a stack's own database rule breaks that
    # stack's control, and a broken control turns every "proved" of the stack into "broken".
    if name == "peering without routes":
        return m.mutated(stacks, m.vpc_peering, at=P, peer=E)
    if name == "peering and routes both ways, no group opened":
        out = peering_with_route(stacks, P, E)
        back = m.route_via_peering(out, at=E, peer=P)
        back.set("vpcPeeringConnectionId", m.fake_id("pcx", P, E))  # the same peering
        return out
    if name == "groups opened both ways, no route":
        out = m.mutated(stacks, m.ingress_rule_on_other_sg, at=P, peer=E)
        app_egress_to(out, P, m.cidr(out[E]))
        return out
    if name == "peering, route and ingress, sender's egress closed":
        # prod's application sends PostgreSQL only to its own database group.
        out = peering_with_route(stacks, P, E)
        m.ingress_rule_on_other_sg(out, at=P, peer=E)
        return out
    if name == "NAT default route, database open to the peer":
        # An internet or NAT route never reaches another VPC's private address, and prod's VPC
        # has no internet gateway for a public one.
        out = m.mutated(stacks, m.data_subnet_route, at=E)
        m.sg_rule_ingress(out, at=P, peer=E)
        app_egress_to(out, E, "0.0.0.0/0")
        return out
    raise KeyError(name)


HALVES = [
    "peering without routes",
    "peering and routes both ways, no group opened",
    "groups opened both ways, no route",
    "peering, route and ingress, sender's egress closed",
    "NAT default route, database open to the peer",
]


@pytest.mark.parametrize("name", HALVES)
def test_half_a_leak_stays_proved(stacks: Stacks, name: str) -> None:
    got = results(_half(stacks, name))
    for pair in [(P, E), (E, P)]:
        assert got[pair].status == "proved", (pair, got[pair].detail, got[pair].path)


def _nat_only_path(stacks: Stacks, admit_nat_subnet: bool) -> Stacks:
    """experiment's NAT subnet routes prod's CIDR to the shared transit gateway, and its
    application subnets reach it only through their default route to the NAT, which rewrites
    the source to its own address. prod's database admits experiment's application subnets (the
    senders' private range) -- and, with `admit_nat_subnet`, the NAT's subnet too."""
    out = nat_subnet_route_to_transit(stacks, E, P)
    app_egress_to(out, E, m.cidr(out[P]))
    exp, prod = out[E], out[P]
    ranges = [str(r.get("cidrBlock")) for r in exp.of_type(m.SUBNET) if "-app-" in r.name]
    assert len(ranges) >= 2, ranges
    if admit_nat_subnet:
        [nat] = exp.of_type("aws:ec2/natGateway:NatGateway")
        [subnet] = [r for r in exp.of_type(m.SUBNET) if r.id == nat.get("subnetId")]
        ranges.append(str(subnet.get("cidrBlock")))
    for i, cidr in enumerate(ranges):
        m.clone(
            prod,
            prod.named("sg-db-in-postgres", m.SG_INGRESS_RULE),
            type_=m.SG_INGRESS_RULE,
            name=f"sg-db-in-postgres-from-experiment-{i}",
            inputs={
                "securityGroupId": prod.named("sg-db", m.SECURITY_GROUP).id,
                "ipProtocol": "tcp",
                "fromPort": 5432,
                "toPort": 5432,
                "cidrIpv4": cidr,
            },
        )
    return out


def test_the_nat_rewrite_is_what_keeps_a_half_leak_closed(stacks: Stacks) -> None:
    """Routes lead from experiment's application subnets to prod's database (through the NAT
    and the transit gateway) and the database admits those subnets: only the NAT's rewrite of
    the source address, to one outside what the database admits, stops the packet."""
    got = results(_nat_only_path(stacks, admit_nat_subnet=False))
    assert got[(E, P)].status == "proved", (got[(E, P)].detail, got[(E, P)].path)
    assert got[(E, E)].status == got[(P, P)].status == "proved"  # the controls still pass
    # Admit the NAT's subnet as well and the same routes deliver: the path was there.
    leaky = _nat_only_path(stacks, admit_nat_subnet=True)
    r = results(leaky)[(E, P)]
    assert r.status == "refuted", r.detail
    assert r.packet is not None and inside(r.packet.dst_ip, leaky[P])
    assert any("sg-db-in-postgres-from-experiment-2" in hop for hop in r.path), r.path


def test_network_acl_denying_the_peer_restores_the_proof(stacks: Stacks) -> None:
    leaky = _rule_on_other_sg(stacks)  # adds a rule: experiment's own ingress stays
    assert results(leaky)[(P, E)].status == "refuted"
    network_acl_denying(leaky, E, m.cidr(leaky[P]))
    got = results(leaky)
    assert got[(P, E)].status == "proved", got[(P, E)].path
    assert got[(E, E)].status == "proved", got[(E, E)].detail  # its own traffic still passes


# --------------------------------------------------------------------------------------------
# Broken, never proved


def test_control_without_its_ingress_rule_is_broken(stacks: Stacks) -> None:
    out = m.mutated(stacks)
    m.remove(out[P], out[P].named("sg-db-in-postgres", m.SG_INGRESS_RULE))
    got = results(out)
    control = got[(P, P)]
    assert control.status == "broken"
    assert control.packet is None
    assert "target security group ingress" in control.detail
    assert got[(E, E)].status == "proved"
    for pair in [(P, E), (E, P)]:  # "no path" means nothing while prod's control fails
        assert got[pair].status == "broken"
        assert "control failed" in got[pair].detail


def test_unknown_value_is_broken_naming_it(stacks: Stacks) -> None:
    out = m.mutated(stacks)
    out[E].named("sg-db-in-postgres", m.SG_INGRESS_RULE).set("referencedSecurityGroupId", UNKNOWN)
    got = results(out)
    for pair in [(P, E), (E, P), (E, E)]:
        assert got[pair].status == "broken", pair
        assert "experiment/sg-db-in-postgres" in got[pair].detail
    assert got[(P, P)].status == "proved"


def test_route_to_an_undeclared_peering_is_broken_even_when_nothing_uses_it(
    stacks: Stacks,
) -> None:
    # A route to a peering no state declares is a reference to nothing: where it leads cannot
    # be placed, so the pairs of its stack are broken, naming it, whether or not the groups
    # would let a packet use it (issue 9: never a silent drop).
    out = m.mutated(stacks, m.route_via_peering, at=P, peer=E)
    for opened in (False, True):
        if opened:
            m.ingress_from_other_cidr(out, at=E, peer=P)
            app_egress_to(out, P, m.cidr(out[E]))
        r = results(out)[(P, E)]
        assert r.status == "broken", (opened, r.status)
        assert "declared in no state" in r.detail and "route-app-0-experiment" in r.detail


# --------------------------------------------------------------------------------------------
# A third environment: each pair's verdict depends on its two stacks and what connects them


X = "exp00"  # a copy of the experiment stack, as bench/run.py's clone_experiment makes them
EC2_ID = re.compile(
    rf"\b({'|'.join(sorted(set(_EC2_IDS.values()), key=len, reverse=True))})-(\w{{17}})\b"
)


def third(stacks: Stacks, *, own_ids: bool = True) -> Stacks:
    """`stacks` plus X: the experiment stack under its own stack name, account, names and CIDR,
    and (unless `own_ids` is False) its own EC2 ids, as its evaluation would give it. Its DB
    subnet group keeps experiment's name: names are unique per account only."""
    e = stacks[E]
    assert m.cidr(e).startswith("10.20.")
    doc = json.dumps(e.to_document())
    for old, new in [
        (f"urn:pulumi:{E}::", f"urn:pulumi:{X}::"),
        (f"envfence-{E}", f"envfence-{X}"),
        (f"/envfence/{E}/", f"/envfence/{X}/"),
        (f'"environment": "{E}"', f'"environment": "{X}"'),
        (f'"stack": "{E}"', f'"stack": "{X}"'),
        (m.account(e), "300000000000"),
        ("10.20.", "10.40."),
    ]:
        doc = doc.replace(old, new)
    if own_ids:
        doc = EC2_ID.sub(
            lambda g: f"{g[1]}-{g[2][0]}{hashlib.sha256(g[2].encode()).hexdigest()[:16]}", doc
        )
    return {**m.mutated(stacks), X: load_document(json.loads(doc), X)}


def test_an_unrelated_third_environment_changes_no_verdict(stacks: Stacks) -> None:
    two = results(stacks)
    three = results(third(stacks))
    assert set(three) == {(a, b) for a in (P, E, X) for b in (P, E, X)}
    for pair, r in two.items():
        assert (three[pair].status, three[pair].packet) == (r.status, r.packet), pair
    for pair, r in three.items():
        assert r.status == "proved", (pair, r.detail, r.path)
    assert inside(three[(X, X)].packet.src_ip, third(stacks)[X])  # type: ignore[union-attr]


def test_a_leak_between_two_of_three_environments_is_found(stacks: Stacks) -> None:
    # Each P <-> E leak of LEAKS, with X present: the same verdicts and packets as without it,
    # and X isolated from both (broken, not proved, only where the leak broke P's or E's control).
    for name, (build, src, dst, carriers) in LEAKS.items():
        leaky = build(stacks)
        two, got = results(leaky), results(third(leaky))
        r = got[(src, dst)]
        assert r.status == "refuted", (name, r.detail)
        for carrier in carriers:
            assert any(carrier in hop for hop in r.path), (name, carrier, r.path)
        for pair, was in two.items():
            assert (got[pair].status, got[pair].packet) == (was.status, was.packet), (name, pair)
        for pair in [(P, X), (X, P), (E, X), (X, E)]:
            controls_pass = all(got[(s, s)].status == "proved" for s in pair)
            assert got[pair].status == ("proved" if controls_pass else "broken"), (name, pair)
    # And a leak between the copy and experiment, with prod the bystander.
    out = peering_with_route(third(stacks), X, E)
    m.ingress_rule_on_other_sg(out, at=X, peer=E)
    app_egress_to(out, X, m.cidr(out[E]))
    got = results(out)
    r = got[(X, E)]
    assert r.status == "refuted", r.detail
    assert inside(r.packet.src_ip, out[X]) and inside(r.packet.dst_ip, out[E])  # type: ignore[union-attr]
    assert any(m.PEERING in hop and f"{X}/peer-{E}" in hop for hop in r.path), r.path
    for pair in [(E, X), (P, E), (E, P), (P, X), (X, P)]:
        assert got[pair].status == "proved", (pair, got[pair].detail)


def test_a_third_environment_can_open_a_path_between_two_others(stacks: Stacks) -> None:
    """What a third stack declares on the others' networks counts for their pair: here X puts an
    ingress rule on experiment's database group that admits prod's CIDR (prod peers and routes
    to experiment, and its application may send PostgreSQL there)."""
    out = peering_with_route(third(stacks), P, E)
    app_egress_to(out, P, m.cidr(out[E]))
    assert results(out)[(P, E)].status == "proved"  # no group admits prod yet
    x = out[X]
    m.clone(
        x,
        x.named("sg-db-in-postgres", m.SG_INGRESS_RULE),
        type_=m.SG_INGRESS_RULE,
        name="sg-third-db-in-postgres",
        inputs={
            "securityGroupId": out[E].named("sg-db", m.SECURITY_GROUP).id,
            "ipProtocol": "tcp",
            "fromPort": 5432,
            "toPort": 5432,
            "cidrIpv4": m.cidr(out[P]),
        },
    )
    r = results(out)[(P, E)]
    assert r.status == "refuted", r.detail
    assert any(f"{X}/sg-third-db-in-postgres" in hop for hop in r.path), r.path


def test_a_third_environment_with_the_same_network_ids_shares_the_network(
    stacks: Stacks,
) -> None:
    """A copy that kept experiment's VPC, subnet and group ids declares the same network: its
    pairs with experiment are refuted (a shared subnet), prod stays isolated from both."""
    got = results(third(stacks, own_ids=False))
    for pair in [(E, X), (X, E)]:
        assert got[pair].status == "refuted", (pair, got[pair].detail)
    for pair in [(P, E), (E, P), (P, X), (X, P)]:
        assert got[pair].status == "proved", (pair, got[pair].detail)
