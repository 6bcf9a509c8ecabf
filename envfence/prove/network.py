"""Network isolation proof: no packet can travel from the VPC of one environment to another's.

For every ordered pair of stacks (A, B), A != B, one SMT query over bit-vectors asks for a packet
(source IP, destination IP, protocol, destination port) that leaves an ENI in a subnet of A and
arrives at an ENI in a subnet of B. `unsat` is the proof; a model is a witness packet, printed
with the resources on its path. For every stack A a control asks the same encoding for a packet
from A's application service to A's database on its port: it must be found, or the proof is
"broken" (a first encoding that proves everything isolated for a wrong reason is exactly what a
control catches: ../shared/docs/notes-iam-proofs.md).

What a packet must pass, as AWS evaluates it (VPC User Guide, "How Amazon VPC works", "Route
tables", "Security groups", "Network ACLs"; Transit Gateways Guide; VPC Peering Guide):

1. An ENI in a subnet of A sends it. The ENI carries one or more security groups and the packet
   must match an egress rule of one of them (security groups are allow-only: VPC User Guide,
   "Security group rules"). Which groups: any group of the subnet's VPC plus the groups that a
   declared resource (ECS service, RDS, endpoint, Lambda, instance, ENI, load balancer) attaches
   in that subnet. ENIs come and go (tasks, endpoints, instances); an ENI launched without a
   group gets the VPC's default group ("Default security groups for your VPCs"), so every group
   of the VPC is a possible sender or receiver, not only the ones attached today.
2. The source subnet's network ACL must allow it outbound (first matching rule by number wins,
   `*` denies; a subnet without a custom ACL uses the VPC's default ACL, which allows all unless
   a DefaultNetworkAcl resource replaced its rules).
3. The source subnet's route table (explicit association, else the VPC's main table) picks the
   most specific route that contains the destination (longest prefix match, "Route priority").
   The local route covers the VPC's CIDRs (and, for inconsistent states, its subnets' CIDRs).
   A peering route carries it to the other VPC of the peering; a transit gateway route carries it
   to any VPC attached to the same gateway (or a gateway peered with it). A NAT gateway route
   hands it to the NAT's subnet, whose route table decides again, with the source address
   rewritten to the NAT's private address ("NAT gateways": a public or private NAT gateway can
   reach other VPCs through a transit gateway or peering). An internet-gateway route never
   reaches a *private* address of another VPC: private ranges are not routed on the internet and
   the internet gateway only translates the public addresses it owns ("Internet gateways").
   It can reach a *public* address of an ENI in a VPC that has an internet gateway: that path is
   encoded too (both ends then see public addresses; any ENI there may hold one, since an
   Elastic IP can be associated with any ENI). Transit gateway route tables are not read: every
   attachment reaches every other attachment of the gateway, as with the default route table.
4. The target subnet's network ACL must allow it inbound, and a security group of the target ENI
   must admit it (CIDR, prefix list, or a referenced group carried by the sender; a referenced
   group only matches a packet that still carries the sender's private address: not after NAT,
   not over the internet).
5. A PrivateLink interface endpoint whose service is another environment's endpoint service is a
   path too: reaching the endpoint's ENI (in A's VPC) reaches B. Subnets shared through RAM with
   B's account (or its organization) are places where B's ENIs can be.

What a pair's query contains, and why other stacks cannot be left out of the reading. The
topology is read once per call, from every state: any stack may declare what changes another's
network (a rule on its group, a route in its table, a peering or attachment of its VPC, a RAM
share of its subnet, a PrivateLink endpoint to its service, a transit gateway peering). The query
for (A, B) is then built outward from A's ENI sites to B's, and contains only what such a packet
can traverse: the sites' subnets, groups and ACLs, the source tables' routes, the connectors those
routes name, and the tables of the NAT subnets they name. A third stack C enters it only as part
of that: a rule or route C declares on A's or B's resources, a connector C declares, C's subnet
holding a NAT that A routes to, C's endpoint to B's service (a place where reaching it reaches B),
C's subnet shared with A or B. It is never a transit hop otherwise: peering is one hop and not
transitive (VPC Peering Guide, "Unsupported VPC peering configurations"); a transit gateway is one
hop from an attachment to any other attachment; an appliance, VPN or any other route the model
does not follow is already an assumption that may lead anywhere (and a packet that reaches C at
all is the (A, C) pair's refutation). So a pair's query, and its time, does not grow with the
number of stacks: the lookups it makes are indexed once (`_Topology._index`).

The return path is NOT required. Security groups are stateful, but a one-way packet already
crosses the boundary: a UDP or ICMP datagram, or a TCP SYN, carries data into the other
environment. Requiring routes back would prove isolation for states that still let A deliver
datagrams to B. The witness path says whether a route back exists, for the reader.

Fail closed:
- A value not known yet (a preview's UNKNOWN) or a secret the state does not show (an export
  without `--show-secrets`) in any property the model reads, in A or B or in a resource that
  connects networks (peering, attachment, sharing): "broken", naming it.
- A reference to something no state declares, where what it changes cannot be placed, is
  "broken" for the pairs of the stack that declares it (and of the stacks it points into),
  naming it: a security group rule on a group, or referencing a group, declared in no state; a
  security group used by an ENI-placing resource (service, database, endpoint, ...) and declared
  in no state; a route, or a main route table association, on a table declared in no state; a
  network ACL rule on an ACL that is neither declared nor a VPC's default; a VPC endpoint in a
  VPC, or routing through a table, declared in no state; a subnet used and declared nowhere;
  a route to a peering, NAT gateway or transit gateway declared in no state (whether or not a
  packet would need it).
  The likeliest cause is an id that differs between states (offline ids are not AWS's), and a
  silently dropped rule or route is the one mistake a proof must never make.
- Route targets the model does not follow (ENIs/instances/GWLB endpoints/VPN
  gateways/local or carrier gateways/Cloud WAN; a subnet's route table declared in no state;
  PrivateLink endpoints to
  services declared nowhere) become "assumptions": a hop that may lead anywhere. The proof first
  runs without them (a path found is "refuted"), then with them: a path that needs one is
  "broken" with a detail naming it, and no path at all, even through them, is still a proof
  (they over-approximate where a packet can go; nothing is dropped).
- Prefix lists (in security group rules and routes) are taken as "any address".
- ICMP type/code filters are treated as "any ICMP" where that widens what passes (allows) and as
  "matches nothing" where that would narrow it (denies).
- IPv6 is not encoded: when both VPCs have IPv6 the pair is "broken".
- Solver `unknown` or timeout: "broken", never "proved".
- A pair that would be "proved" is "broken" while the control of either of its stacks fails: an
  encoding that cannot find a path that must exist proves nothing by finding none.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cvc5.pythonic import (
    ULE,
    BitVec,
    BitVecVal,
    Bool,
    Not,
    SolverFor,
    is_true,
    sat,
    unsat,
)

from envfence.model import Resource, StackState, unreadable, why_unreadable
from envfence.prove import logic

__all__ = ["NetworkResult", "Packet", "prove_network"]

# Type tokens the model reads (one place: this module is the only reader of network topology for
# the proof).
VPC = "aws:ec2/vpc:Vpc"
VPC_CIDR = "aws:ec2/vpcIpv4CidrBlockAssociation:VpcIpv4CidrBlockAssociation"
VPC_IPV6 = "aws:ec2/vpcIpv6CidrBlockAssociation:VpcIpv6CidrBlockAssociation"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
DEFAULT_ROUTE_TABLE = "aws:ec2/defaultRouteTable:DefaultRouteTable"
ROUTE = "aws:ec2/route:Route"
RT_ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
MAIN_RT_ASSOCIATION = "aws:ec2/mainRouteTableAssociation:MainRouteTableAssociation"
PEERING = "aws:ec2/vpcPeeringConnection:VpcPeeringConnection"
PEERING_ACCEPTER = "aws:ec2/vpcPeeringConnectionAccepter:VpcPeeringConnectionAccepter"
TGW_ATTACHMENT = "aws:ec2transitgateway/vpcAttachment:VpcAttachment"
TGW_ACCEPTER = "aws:ec2transitgateway/vpcAttachmentAccepter:VpcAttachmentAccepter"
TGW_PEERING = "aws:ec2transitgateway/peeringAttachment:PeeringAttachment"
NAT = "aws:ec2/natGateway:NatGateway"
IGW = "aws:ec2/internetGateway:InternetGateway"
IGW_ATTACHMENT = "aws:ec2/internetGatewayAttachment:InternetGatewayAttachment"
SG = "aws:ec2/securityGroup:SecurityGroup"
DEFAULT_SG = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
NACL = "aws:ec2/networkAcl:NetworkAcl"
DEFAULT_NACL = "aws:ec2/defaultNetworkAcl:DefaultNetworkAcl"
NACL_RULE = "aws:ec2/networkAclRule:NetworkAclRule"
NACL_ASSOCIATION = "aws:ec2/networkAclAssociation:NetworkAclAssociation"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
ENDPOINT_SERVICE = "aws:ec2/vpcEndpointService:VpcEndpointService"
RAM_RESOURCE = "aws:ram/resourceAssociation:ResourceAssociation"
RAM_PRINCIPAL = "aws:ram/principalAssociation:PrincipalAssociation"
ECS_SERVICE = "aws:ecs/service:Service"
DB_INSTANCE = "aws:rds/instance:Instance"
DB_CLUSTER = "aws:rds/cluster:Cluster"
DB_SUBNET_GROUP = "aws:rds/subnetGroup:SubnetGroup"
AWS_PROVIDER = "pulumi:providers:aws"

# Resources that put ENIs into subnets: type -> (subnets key path, security groups key path).
ATTACHERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    ECS_SERVICE: (("networkConfiguration", "subnets"), ("networkConfiguration", "securityGroups")),
    ENDPOINT: (("subnetIds",), ("securityGroupIds",)),
    "aws:lambda/function:Function": (("vpcConfig", "subnetIds"), ("vpcConfig", "securityGroupIds")),
    "aws:ec2/instance:Instance": (("subnetId",), ("vpcSecurityGroupIds",)),
    "aws:ec2/networkInterface:NetworkInterface": (("subnetId",), ("securityGroups",)),
    "aws:lb/loadBalancer:LoadBalancer": (("subnets",), ("securityGroups",)),
    "aws:alb/loadBalancer:LoadBalancer": (("subnets",), ("securityGroups",)),
}

ROUTE_KEYS = (
    "destinationCidrBlock",
    "destinationIpv6CidrBlock",
    "destinationPrefixListId",
    "vpcPeeringConnectionId",
    "transitGatewayId",
    "natGatewayId",
    "gatewayId",
    "egressOnlyGatewayId",
    "networkInterfaceId",
    "instanceId",
    "vpcEndpointId",
    "localGatewayId",
    "carrierGatewayId",
    "coreNetworkArn",
)
DB_PORTS = {"postgres": 5432, "mysql": 3306, "mariadb": 3306, "oracle": 1521, "sqlserver": 1433}
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}
# Not public: RFC 1918, shared address space (RFC 6598), loopback, link-local, "this network",
# multicast and reserved. An address outside these is what the internet path may use.
NOT_PUBLIC = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "0.0.0.0/8",
    "224.0.0.0/3",
)


@dataclass(frozen=True)
class Packet:
    src_ip: str
    dst_ip: str
    protocol: str  # "tcp" | "udp" | "icmp" | "-1" (another IP protocol)
    dst_port: int | None


@dataclass(frozen=True)
class NetworkResult:
    source: str
    target: str  # source == target for a control
    status: str  # "proved" | "refuted" | "broken"
    seconds: float
    packet: Packet | None = None
    path: tuple[str, ...] = ()
    detail: str = ""


# --------------------------------------------------------------------------------------------
# Small helpers: values, CIDRs, expressions


class _FailClosed(Exception):
    """Something the model needs is not known yet (a preview) or cannot be followed."""


def _is_unknown(value: Any) -> bool:
    """Not known yet (a preview) or a secret the state does not show: either fails closed."""
    return unreadable(value) is not None


def _unreadable(what: str, value: Any) -> _FailClosed:
    return _FailClosed(why_unreadable(what, unreadable(value) or "unknown"))


def _get(r: Resource, *path: str) -> Any:
    value: Any = r.get(path[0])
    for key in path[1:]:
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]  # Pulumi renders single nested blocks as a one-item list at times
        value = value.get(key) if isinstance(value, dict) else None
    if _is_unknown(value):
        raise _unreadable(f"{'.'.join(path)} of {_label(r)}", value)
    return value


def _list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str) and value.startswith("["):
        try:
            return list(json.loads(value))
        except ValueError:
            return [value]
    return list(value) if isinstance(value, list | tuple) else [value]


def _rid(r: Resource) -> str | None:
    value = r.id or r.get("id")
    if _is_unknown(value):
        raise _unreadable(f"the id of {_label(r)}", value)
    return str(value) if value else None


def _label(r: Resource) -> str:
    return f"{r.type} {r.stack}/{r.name}"


@dataclass(frozen=True)
class _Cidr:
    net: int
    mask: int
    length: int
    text: str

    def contains(self, ip: int) -> bool:
        return ip & self.mask == self.net


def _cidr(value: Any) -> _Cidr | None:
    """An IPv4 network, or None for IPv6/empty; a malformed value fails closed."""
    if value in (None, ""):
        return None
    try:
        n = ipaddress.ip_network(str(value), strict=False)
    except ValueError as e:
        raise _FailClosed(f"{value!r} is not a CIDR block") from e
    if n.version != 4:
        return None
    return _Cidr(int(n.network_address), int(n.netmask), n.prefixlen, str(n))


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def _protocol(value: Any) -> int | None:
    """IP protocol number, None for all protocols. An unrecognised name is read as "all", which
    only widens what a rule admits (fail closed for the isolation proof)."""
    text = str(value).lower() if value is not None else "-1"
    if text in ("-1", "all", ""):
        return None
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    try:
        n = int(text)
    except ValueError:
        return None
    return None if n < 0 else n


def _ports(proto: int | None, lo: Any, hi: Any) -> tuple[int, int] | None:
    """The destination port range a tcp/udp rule restricts, else None (any)."""
    if proto not in (6, 17) or lo is None or hi is None:
        return None
    lo_i, hi_i = int(lo), int(hi)
    if lo_i < 0 or hi_i < 0 or (lo_i <= 0 and hi_i >= 65535):
        return None
    return (max(lo_i, 0), min(hi_i, 65535))


def _describe(proto: int | None, ports: tuple[int, int] | None) -> str:
    name = "all traffic" if proto is None else PROTOCOL_NAMES.get(proto, f"protocol {proto}")
    if ports is None:
        return name
    return f"{name} {ports[0]}" if ports[0] == ports[1] else f"{name} {ports[0]}-{ports[1]}"


def _and(*xs: Any) -> Any:
    return logic.all_of(xs)


def _or(*xs: Any) -> Any:
    return logic.any_of(xs)


def _not(x: Any) -> Any:
    return logic.negate(x)


_smt = logic.as_term


# --------------------------------------------------------------------------------------------
# The topology, read from all states at once (peerings and attachments span stacks)


@dataclass(frozen=True)
class _SgRule:
    label: str
    proto: int | None
    ports: tuple[int, int] | None
    cidr: _Cidr | None = None
    any_address: bool = False  # prefix list: fail closed
    ref: str | None = None  # referenced group (canonical id)
    self_ref: bool = False
    assumed: str | None = None


@dataclass
class _Sg:
    id: str
    label: str
    vpc: str | None
    ingress: list[_SgRule] = field(default_factory=list)
    egress: list[_SgRule] = field(default_factory=list)


@dataclass(frozen=True)
class _Route:
    label: str
    dest: _Cidr | None  # None: a prefix list (any address, never shadows another route)
    kind: str  # local | peering | tgw | nat | igw | blackhole | assumed
    target: str = ""


@dataclass(frozen=True)
class _NaclRule:
    label: str
    number: int
    allow: bool
    proto: int | None
    ports: tuple[int, int] | None
    cidr: _Cidr | None  # None: an IPv6 rule, matches no IPv4 packet
    icmp_typed: bool = False


@dataclass
class _Subnet:
    id: str
    stack: str
    label: str
    vpc: str
    cidr: _Cidr


@dataclass(frozen=True)
class _Site:
    """Where an ENI can be: a subnet and the groups it may carry."""

    subnet: str
    sgs: frozenset[str]
    label: str
    exact: bool = False  # carries exactly these groups (a declared resource, for the control)
    assumed: str | None = None


@dataclass(frozen=True)
class _Issue:
    stacks: frozenset[str]  # the stack declaring it and the stacks owning what it points at
    connector: bool
    text: str


CONNECTORS = {
    PEERING,
    PEERING_ACCEPTER,
    TGW_ATTACHMENT,
    TGW_ACCEPTER,
    TGW_PEERING,
    RAM_RESOURCE,
    RAM_PRINCIPAL,
    ENDPOINT_SERVICE,
}


class _Topology:
    def __init__(self, states: Mapping[str, StackState]):
        self.states = states
        self.issues: list[_Issue] = []
        self.vpc_cidrs: dict[str, list[_Cidr]] = defaultdict(list)
        self.vpc_label: dict[str, str] = {}
        self.vpc_ipv6: set[str] = set()
        self.vpc_main_rt: dict[str, str] = {}
        self.vpc_output_main_rt: set[str] = set()  # main tables the VPCs themselves report
        self.vpc_default_sg: dict[str, str] = {}
        self.vpc_default_nacl: dict[str, str] = {}
        self.subnets: dict[str, _Subnet] = {}
        self.subnet_by_arn: dict[str, str] = {}
        self.route_tables: dict[str, list[_Route]] = defaultdict(list)
        self.rt_label: dict[str, str] = {}
        self.rt_vpc: dict[str, str] = {}
        self.rt_of_subnet: dict[str, str] = {}
        self.peerings: dict[str, tuple[set[str], str]] = {}
        self.tgw_parent: dict[str, str] = {}
        self.tgw_vpcs: dict[str, dict[str, str]] = defaultdict(dict)  # tgw -> vpc -> label
        self.nats: dict[str, tuple[str, str, bool]] = {}  # id -> (subnet, label, private)
        self.connectors: dict[str, set[str]] = {}
        self.igws: dict[str, str] = {}  # vpc -> label
        self.sgs: dict[str, _Sg] = {}
        self.sg_alias: dict[str, str] = {}
        self.nacls: dict[str, dict[str, list[_NaclRule]]] = {}  # id -> direction -> rules
        self.nacl_label: dict[str, str] = {}
        self.nacl_of_subnet: dict[str, str] = {}
        self.attached: dict[str, set[str]] = defaultdict(set)  # subnet -> groups attached there
        self.attachers: dict[str, list[tuple[str, frozenset[str]]]] = defaultdict(list)
        self.stack_sites: dict[str, list[tuple[str, frozenset[str], str]]] = defaultdict(list)
        self.accounts: dict[str, set[str]] = defaultdict(set)
        self.endpoint_services: dict[str, str] = {}  # serviceName -> owning stack
        self.privatelink: list[tuple[str, Resource, list[str], list[str], str]] = []
        self.shared: dict[str, list[str]] = defaultdict(list)  # stack -> subnets shared to it
        self._routes: dict[tuple[str, str], tuple[str, list[_Route]]] = {}
        self._db_groups: dict[str, list[tuple[str, Resource]]] | None = None
        # Indexes for the per-pair queries, filled once after reading (see `_index`): with them a
        # pair's query costs the same however many other stacks there are.
        self.sgs_of_vpc: dict[str, set[str]] = defaultdict(set)
        self.subnets_of_vpc: dict[str, list[_Subnet]] = defaultdict(list)
        self.ipv6_stacks: set[str] = set()
        self.issues_of: dict[str | None, list[int]] = defaultdict(list)  # None: connectors
        self.privatelink_to: dict[str | None, list[int]] = defaultdict(list)  # None: no provider
        self._reach: dict[str, dict[str, str] | None] = {}
        self.owner_of_id = {
            str(r.id): stack for stack, st in states.items() for r in st.resources if r.id
        }
        self._read()

    # -- reading --------------------------------------------------------------------------

    def _each(self, *types: str) -> Iterable[tuple[str, Resource]]:
        for stack, state in self.states.items():
            for r in state.resources:
                if r.type in types:
                    yield stack, r

    def _guard(self, stack: str, r: Resource, fn: Any) -> None:
        try:
            fn()
        except _FailClosed as e:
            # A rule that one stack puts on another stack's group (or a route into its table)
            # changes that stack's network: its unknowns count there too.
            pointed = {
                self.owner_of_id[str(v)]
                for key in ("securityGroupId", "routeTableId", "networkAclId", "subnetId", "vpcId")
                if isinstance(v := r.get(key), str) and str(v) in self.owner_of_id
            }
            stacks = frozenset({stack, *pointed})
            self.issues.append(_Issue(stacks, r.type in CONNECTORS, str(e)))

    def _read(self) -> None:
        # Order matters: ids and aliases first, then what refers to them.
        for stack, r in self._each(AWS_PROVIDER):
            for acct in _list(r.get("allowedAccountIds")):
                self.accounts[stack].add(str(acct))
        for stack, r in self._each(VPC):
            self._guard(stack, r, lambda s=stack, r=r: self._vpc(s, r))
        for stack, r in self._each(VPC_CIDR, VPC_IPV6):
            self._guard(stack, r, lambda r=r: self._vpc_cidr(r))
        for stack, r in self._each(SUBNET):
            self._guard(stack, r, lambda s=stack, r=r: self._subnet(s, r))
        for stack, r in self._each(SG, DEFAULT_SG):
            self._guard(stack, r, lambda r=r: self._sg(r))
        for vpc, sg in list(self.vpc_default_sg.items()):
            if sg not in self.sgs:
                # No DefaultSecurityGroup resource: AWS's default rules ("Default security
                # groups for your VPCs"): all inbound from the group itself, all outbound.
                label = f"default security group {sg} of {self.vpc_label.get(vpc, vpc)}"
                self.sgs[sg] = _aws_default_sg(sg, label, vpc)
        for stack, r in self._each(SG, DEFAULT_SG):
            self._guard(stack, r, lambda r=r: self._sg_inline(r))
        for stack, r in self._each(SG_INGRESS, SG_EGRESS, SG_RULE):
            self._guard(stack, r, lambda r=r: self._sg_rule(r))
        for stack, r in self._each(PEERING, PEERING_ACCEPTER):
            self._guard(stack, r, lambda r=r: self._peering(r))
        for stack, r in self._each(TGW_PEERING):
            self._guard(stack, r, lambda r=r: self._tgw_peering(r))
        for stack, r in self._each(TGW_ATTACHMENT, TGW_ACCEPTER):
            self._guard(stack, r, lambda r=r: self._tgw_attachment(r))
        for stack, r in self._each(NAT):
            self._guard(stack, r, lambda r=r: self._nat(r))
        for stack, r in self._each(IGW, IGW_ATTACHMENT):
            self._guard(stack, r, lambda r=r: self._igw(r))
        # What a route may name, by the route's key (read above, before any route).
        self.connectors = {
            "vpcPeeringConnectionId": set(self.peerings),
            "natGatewayId": set(self.nats),
            "transitGatewayId": set(self.tgw_parent) | set(self.tgw_vpcs),
        }
        for stack, r in self._each(ROUTE_TABLE, DEFAULT_ROUTE_TABLE):
            self._guard(stack, r, lambda r=r: self._route_table(r))
        for stack, r in self._each(MAIN_RT_ASSOCIATION):
            self._guard(stack, r, lambda r=r: self._main_rt(r))
        for stack, r in self._each(ROUTE):
            self._guard(stack, r, lambda r=r: self._route(r))
        for stack, r in self._each(RT_ASSOCIATION):
            self._guard(stack, r, lambda r=r: self._rt_association(r))
        for stack, r in self._each(NACL, DEFAULT_NACL):
            self._guard(stack, r, lambda r=r: self._nacl(r))
        for stack, r in self._each(NACL_RULE):
            self._guard(stack, r, lambda r=r: self._nacl_rule(r))
        for stack, r in self._each(NACL_ASSOCIATION):
            self._guard(stack, r, lambda r=r: self._nacl_association(r))
        for stack, r in self._each(DB_SUBNET_GROUP, DB_INSTANCE, DB_CLUSTER, *ATTACHERS):
            self._guard(stack, r, lambda s=stack, r=r: self._attacher(s, r))
        for stack, r in self._each(ENDPOINT_SERVICE):
            self._guard(stack, r, lambda s=stack, r=r: self._endpoint_service(s, r))
        self._guard_all(self._ram)
        for sub in self.subnets.values():
            self.stack_sites[sub.stack].append((sub.id, frozenset(), f"any ENI in {sub.label}"))
        self._index()

    def _index(self) -> None:
        """What the per-pair queries look up, indexed once (each was a scan over every stack)."""
        # Several states may declare the same route or rule (a resource read into two stacks, or
        # stacks copied from one another that kept its ids). Copies that differ only in their
        # label filter and carry exactly the same packets: keep the first, or every query through
        # that table or group would grow with the number of stacks declaring it.
        for rt, routes in self.route_tables.items():
            self.route_tables[rt] = logic.first_of_each(routes, lambda r: replace(r, label=""))
        for g in self.sgs.values():
            g.ingress = logic.first_of_each(g.ingress, lambda r: replace(r, label=""))
            g.egress = logic.first_of_each(g.egress, lambda r: replace(r, label=""))
        for g in self.sgs.values():
            if g.vpc:
                self.sgs_of_vpc[g.vpc].add(g.id)
        for sub in self.subnets.values():
            self.subnets_of_vpc[sub.vpc].append(sub)
            if sub.vpc in self.vpc_ipv6:
                self.ipv6_stacks.add(sub.stack)
        for k, issue in enumerate(self.issues):
            for stack in [None] * issue.connector + sorted(issue.stacks):
                self.issues_of[stack].append(k)
        for k, (*_, service) in enumerate(self.privatelink):
            self.privatelink_to[self.endpoint_services.get(service)].append(k)

    def _guard_all(self, fn: Any) -> None:
        try:
            fn()
        except _FailClosed as e:
            self.issues.append(_Issue(frozenset(), True, str(e)))

    def _vpc(self, stack: str, r: Resource) -> None:
        vid = _rid(r)
        if not vid:
            return
        self.vpc_label[vid] = _label(r)
        c = _cidr(_get(r, "cidrBlock"))
        if c:
            self.vpc_cidrs[vid].append(c)
        if _get(r, "ipv6CidrBlock") or _get(r, "assignGeneratedIpv6CidrBlock"):
            self.vpc_ipv6.add(vid)
        for key, table in (
            ("mainRouteTableId", self.vpc_main_rt),
            ("defaultSecurityGroupId", self.vpc_default_sg),
            ("defaultNetworkAclId", self.vpc_default_nacl),
        ):
            value = _get(r, key)
            if value:
                table[vid] = str(value)
                if key == "mainRouteTableId":
                    self.vpc_output_main_rt.add(str(value))
        owner = r.get("ownerId")  # only RAM sharing needs it; a preview may not know it yet
        if owner and not _is_unknown(owner):
            self.accounts[stack].add(str(owner))

    def _vpc_cidr(self, r: Resource) -> None:
        vid = str(_get(r, "vpcId"))
        if r.type == VPC_IPV6:
            self.vpc_ipv6.add(vid)
        elif c := _cidr(_get(r, "cidrBlock")):
            self.vpc_cidrs[vid].append(c)

    def _subnet(self, stack: str, r: Resource) -> None:
        sid, vid = _rid(r), _get(r, "vpcId")
        c = _cidr(_get(r, "cidrBlock"))
        if _get(r, "ipv6CidrBlock") or _get(r, "assignIpv6AddressOnCreation"):
            self.vpc_ipv6.add(str(vid))
        if not sid or not vid or c is None:
            return
        self.subnets[sid] = _Subnet(sid, stack, f"{_label(r)} ({c.text})", str(vid), c)
        arn = r.get("arn")
        if arn and not _is_unknown(arn):
            self.subnet_by_arn[str(arn)] = sid

    def _canonical_sg(self, sg: str) -> str:
        return self.sg_alias.get(sg, sg)

    def _sg(self, r: Resource) -> None:
        sid = _rid(r)
        vid = _get(r, "vpcId")
        if not sid:
            return
        if r.type == DEFAULT_SG and vid:
            # The resource adopts the VPC's default group: both ids name the same group.
            alias = self.vpc_default_sg.get(str(vid))
            if alias and alias != sid:
                self.sg_alias[alias] = sid
            self.vpc_default_sg[str(vid)] = sid
        self.sgs[sid] = _Sg(sid, _label(r), str(vid) if vid else None)

    def _sg_inline(self, r: Resource) -> None:
        sid = _rid(r)
        if not sid or sid not in self.sgs:
            return
        g = self.sgs[sid]
        for direction in ("ingress", "egress"):
            for k, block in enumerate(_list(_get(r, direction))):
                if not isinstance(block, dict):
                    continue
                proto = _protocol(block.get("protocol"))
                ports = _ports(proto, block.get("fromPort"), block.get("toPort"))
                base = f"{g.label} inline {direction}[{k}] ({_describe(proto, ports)}"
                rules = getattr(g, direction)
                rules.extend(
                    self._peers(
                        base,
                        proto,
                        ports,
                        cidrs=_list(block.get("cidrBlocks")),
                        prefix_lists=_list(block.get("prefixListIds")),
                        groups=_list(block.get("securityGroups")),
                        self_ref=bool(block.get("self")),
                        to=direction == "egress",
                    )
                )

    def _peers(
        self,
        base: str,
        proto: int | None,
        ports: tuple[int, int] | None,
        *,
        cidrs: list[Any],
        prefix_lists: list[Any],
        groups: list[Any],
        self_ref: bool,
        to: bool,
    ) -> list[_SgRule]:
        word = "to" if to else "from"
        out: list[_SgRule] = []
        for c in cidrs:
            parsed = _cidr(c)
            if parsed is not None:
                out.append(_SgRule(f"{base} {word} {parsed.text})", proto, ports, cidr=parsed))
        for pl in prefix_lists:
            out.append(
                _SgRule(
                    f"{base} {word} prefix list {pl}, taken as any address)",
                    proto,
                    ports,
                    any_address=True,
                )
            )
        for ref in groups:
            ref_id = self._canonical_sg(str(ref).split("/")[-1])
            known = self.sgs.get(ref_id)
            name = f" = {known.label.split(' ', 1)[-1]}" if known else ""
            label = f"{base} {word} security group {ref_id}{name})"
            if ref_id not in self.sgs:
                # Likely another environment's group under an id the states do not share:
                # which packets it admits cannot be placed.
                raise _FailClosed(f"{label}: the referenced group is declared in no state")
            out.append(_SgRule(label, proto, ports, ref=ref_id))
        if self_ref:
            out.append(_SgRule(f"{base} {word} itself)", proto, ports, self_ref=True))
        return out

    def _sg_rule(self, r: Resource) -> None:
        if r.type == SG_RULE:
            direction = str(_get(r, "type"))
            proto = _protocol(_get(r, "protocol"))
            cidrs = _list(_get(r, "cidrBlocks"))
            pls = _list(_get(r, "prefixListIds"))
            groups = _list(_get(r, "sourceSecurityGroupId"))
            self_ref = bool(_get(r, "self"))
        else:
            direction = "ingress" if r.type == SG_INGRESS else "egress"
            proto = _protocol(_get(r, "ipProtocol"))
            cidrs = _list(_get(r, "cidrIpv4"))
            pls = _list(_get(r, "prefixListId"))
            groups = _list(_get(r, "referencedSecurityGroupId"))
            self_ref = False
        ports = _ports(proto, _get(r, "fromPort"), _get(r, "toPort"))
        sg = self._canonical_sg(str(_get(r, "securityGroupId")))
        g = self.sgs.get(sg)
        if g is None:
            # A rule on a group no state declares changes a group the proof cannot place (an
            # offline id that differs from AWS's, or a group made outside Pulumi): fail closed
            # rather than drop it.
            raise _FailClosed(f"{_label(r)} is on security group {sg}, declared in no state")
        rules = self._peers(
            f"{_label(r)} ({_describe(proto, ports)}",
            proto,
            ports,
            cidrs=cidrs,
            prefix_lists=pls,
            groups=groups,
            self_ref=self_ref,
            to=direction == "egress",
        )
        (g.egress if direction == "egress" else g.ingress).extend(rules)

    def _peering(self, r: Resource) -> None:
        # The accepter side (possibly the only side a stack declares) names the same connection.
        pid = str(_get(r, "vpcPeeringConnectionId")) if r.type == PEERING_ACCEPTER else _rid(r)
        vpc, peer = _get(r, "vpcId"), _get(r, "peerVpcId")
        if pid and vpc and peer and pid not in self.peerings:
            # Counted whatever its acceptStatus: the accepter may live in another stack or be
            # accepted outside Pulumi at any time, so "pending" is no isolation.
            self.peerings[pid] = ({str(vpc), str(peer)}, _label(r) + f" ({pid})")

    def _tgw_root(self, tgw: str) -> str:
        while self.tgw_parent.get(tgw, tgw) != tgw:
            tgw = self.tgw_parent[tgw]
        return tgw

    def _tgw_peering(self, r: Resource) -> None:
        a = self._tgw_root(str(_get(r, "transitGatewayId")))
        b = self._tgw_root(str(_get(r, "peerTransitGatewayId")))
        if a != b:
            self.tgw_parent[b] = a

    def _tgw_attachment(self, r: Resource) -> None:
        # Transit gateway route tables (associations, propagations, static and blackhole routes)
        # are not read: every attachment is taken to reach every other one on the same gateway,
        # which is what the default route table does and an over-approximation otherwise.
        tgw, vpc = _get(r, "transitGatewayId"), _get(r, "vpcId")
        if tgw and vpc:
            self.tgw_vpcs[str(tgw)].setdefault(str(vpc), f"{_label(r)} (on {tgw})")

    def _tgw_reach(self, tgw: str) -> dict[str, str] | None:
        """VPCs attached to `tgw` or a gateway peered with it; None if no state attaches it."""
        root = self._tgw_root(tgw)
        if root not in self._reach:
            out: dict[str, str] = {}
            for other, vpcs in self.tgw_vpcs.items():
                if self._tgw_root(other) == root:
                    out.update(vpcs)
            self._reach[root] = out or None
        return self._reach[root]

    def _nat(self, r: Resource) -> None:
        nid = _rid(r)
        if nid:
            private = str(_get(r, "connectivityType") or "public") == "private"
            self.nats[nid] = (str(_get(r, "subnetId")), _label(r) + f" ({nid})", private)

    def _igw(self, r: Resource) -> None:
        vid = _get(r, "vpcId")
        if vid:
            self.igws[str(vid)] = _label(r)

    def _route_table(self, r: Resource) -> None:
        rid = _rid(r)
        if not rid:
            return
        if r.type == DEFAULT_ROUTE_TABLE:
            # The resource adopts the VPC's main table (its id is defaultRouteTableId).
            rid = str(_get(r, "defaultRouteTableId") or rid)
        self.rt_label[rid] = _label(r) + f" ({rid})"
        if vid := _get(r, "vpcId"):
            self.rt_vpc[rid] = str(vid)
        for k, route in enumerate(_list(_get(r, "routes"))):
            if isinstance(route, dict):
                self._add_route(rid, f"{_label(r)} routes[{k}]", route)
        for vgw in _list(_get(r, "propagatingVgws")):
            self.route_tables[rid].append(
                _Route(
                    f"{_label(r)}: routes propagated from {vgw}",
                    None,
                    "assumed",
                    f"routes propagated from virtual private gateway {vgw} are not modelled",
                )
            )

    def _main_rt(self, r: Resource) -> None:
        rt = str(_get(r, "routeTableId"))
        if not self._declared_rt(rt):
            # Its routes are in no state: every subnet of the VPC without its own table would
            # be read as having only the local route.
            raise _FailClosed(f"{_label(r)} makes route table {rt}, declared in no state, main")
        self.vpc_main_rt[str(_get(r, "vpcId"))] = rt

    def _route(self, r: Resource) -> None:
        props = {k: _get(r, k) for k in ROUTE_KEYS}
        rt = str(_get(r, "routeTableId"))
        if not self._declared_rt(rt):
            # A route in a table no state declares: which subnets it steers cannot be placed.
            raise _FailClosed(f"{_label(r)} is in route table {rt}, declared in no state")
        self._add_route(rt, _label(r), props)

    def _add_route(self, rt: str, label: str, d: dict[str, Any]) -> None:
        if _is_unknown(d):
            raise _unreadable(f"a route of {label}", d)
        dest_text = d.get("destinationCidrBlock") or d.get("cidrBlock")
        pl = d.get("destinationPrefixListId")
        if not dest_text and not pl:
            return  # an IPv6-only route: carries no IPv4 packet
        dest = _cidr(dest_text) if dest_text else None
        if dest_text and dest is None:
            return
        where = f"{label}: {dest.text if dest else 'prefix list ' + str(pl)}"
        for key, known in self.connectors.items():
            if d.get(key) and str(d[key]) not in known:
                # A route to a connector no state declares is a reference to nothing: where it
                # leads cannot be placed. It breaks the pairs of the stack that declares it,
                # whether or not a packet needs it (never a silent drop, never a guess).
                raise _FailClosed(f"{where} -> {key} {d[key]}, declared in no state")
        if d.get("vpcPeeringConnectionId"):
            kind, target = "peering", str(d["vpcPeeringConnectionId"])
        elif d.get("transitGatewayId"):
            kind, target = "tgw", str(d["transitGatewayId"])
        elif d.get("natGatewayId"):
            kind, target = "nat", str(d["natGatewayId"])
        elif str(d.get("gatewayId") or "").startswith("igw-"):
            kind, target = "igw", str(d["gatewayId"])
        elif str(d.get("gatewayId") or "") == "local":
            kind, target = "local", "local"
        elif d.get("egressOnlyGatewayId"):
            return  # IPv6 only
        else:
            other = next(
                (
                    f"{k} {d[k]}"
                    for k in (
                        "gatewayId",
                        "networkInterfaceId",
                        "instanceId",
                        "vpcEndpointId",
                        "localGatewayId",
                        "carrierGatewayId",
                        "coreNetworkArn",
                    )
                    if d.get(k)
                ),
                None,
            )
            if other is None:
                kind, target = "blackhole", ""
            else:
                # An appliance, VPN, Cloud WAN or outpost gateway forwards with its own routing,
                # which the states do not describe: it may lead anywhere.
                kind, target = "assumed", f"{where} -> {other} is not modelled (may lead anywhere)"
        self.route_tables[rt].append(_Route(f"{where} -> {target or kind}", dest, kind, target))

    def _rt_association(self, r: Resource) -> None:
        subnet = _get(r, "subnetId")
        if subnet:  # gateway (edge) associations steer inbound traffic within the VPC only
            self.rt_of_subnet[str(subnet)] = str(_get(r, "routeTableId"))

    def _nacl(self, r: Resource) -> None:
        nid = _rid(r)
        if not nid:
            return
        if r.type == DEFAULT_NACL:
            # The resource adopts the VPC's default ACL and replaces AWS's rules with its own.
            nid = str(_get(r, "defaultNetworkAclId") or nid)
            if vid := _get(r, "vpcId"):
                self.vpc_default_nacl[str(vid)] = nid
        self.nacl_label[nid] = _label(r) + f" ({nid})"
        self.nacls[nid] = {"ingress": [], "egress": []}
        for direction in ("ingress", "egress"):
            for block in _list(_get(r, direction)):
                if isinstance(block, dict):
                    self._add_nacl_rule(nid, f"{_label(r)} {direction}", direction, block)
        for subnet in _list(_get(r, "subnetIds")):
            self.nacl_of_subnet[str(subnet)] = nid

    def _nacl_rule(self, r: Resource) -> None:
        nid = str(_get(r, "networkAclId"))
        if nid not in self.nacls and nid not in self.vpc_default_nacl.values():
            raise _FailClosed(f"{_label(r)} is in network ACL {nid}, declared in no state")
        if nid not in self.nacls:
            # A rule on a VPC's default ACL, which no resource declares: that ACL still has
            # AWS's rule 100 allowing everything ("Default network ACL").
            everything = _NaclRule(
                f"network ACL {nid} rule 100 (AWS default: allow all)",
                100,
                True,
                None,
                None,
                _cidr("0.0.0.0/0"),
            )
            self.nacls[nid] = {"ingress": [everything], "egress": [everything]}
        block = {
            "ruleNo": _get(r, "ruleNumber"),
            "action": _get(r, "ruleAction"),
            "protocol": _get(r, "protocol"),
            "fromPort": _get(r, "fromPort"),
            "toPort": _get(r, "toPort"),
            "cidrBlock": _get(r, "cidrBlock"),
            "ipv6CidrBlock": _get(r, "ipv6CidrBlock"),
            "icmpType": _get(r, "icmpType"),
        }
        direction = "egress" if _get(r, "egress") else "ingress"
        self._add_nacl_rule(nid, _label(r), direction, block)

    def _add_nacl_rule(self, nid: str, label: str, direction: str, b: dict[str, Any]) -> None:
        proto = _protocol(b.get("protocol"))
        ports = _ports(proto, b.get("fromPort"), b.get("toPort"))
        number = int(b.get("ruleNo") or 0)
        allow = str(b.get("action")).lower() == "allow"
        icmp_typed = proto == 1 and b.get("icmpType") not in (None, -1, "-1")
        peer = b.get("cidrBlock") or b.get("ipv6CidrBlock")
        rule = _NaclRule(
            f"{label} rule {number} ({'allow' if allow else 'deny'} {_describe(proto, ports)}"
            f" {peer})",
            number,
            allow,
            proto,
            ports,
            _cidr(b.get("cidrBlock")),
            icmp_typed,
        )
        self.nacls[nid][direction].append(rule)

    def _nacl_association(self, r: Resource) -> None:
        self.nacl_of_subnet[str(_get(r, "subnetId"))] = str(_get(r, "networkAclId"))

    def _attacher(self, stack: str, r: Resource) -> None:
        if r.type == DB_SUBNET_GROUP:
            return
        if r.type in (DB_INSTANCE, DB_CLUSTER):
            subnets = self.db_subnets(stack, r)
            sgs = _list(_get(r, "vpcSecurityGroupIds"))
        else:
            subnets_path, sgs_path = ATTACHERS[r.type]
            subnets = [str(s) for s in _list(_get(r, *subnets_path))]
            sgs = _list(_get(r, *sgs_path))
        groups = {self._canonical_sg(str(g)) for g in sgs}
        for g in sorted(groups):
            if g not in self.sgs:
                raise _FailClosed(f"{_label(r)} uses security group {g}, declared in no state")
        if r.type == ENDPOINT:
            self._endpoint_refs(r)
        for sid in subnets:
            if sid not in self.subnets:
                raise _FailClosed(f"{_label(r)} uses subnet {sid}, declared in no state")
            self.attached[sid] |= groups
            self.attachers[sid].append((_label(r), frozenset(groups)))
            if self.subnets[sid].stack != stack:
                self.stack_sites[stack].append(
                    (sid, frozenset(groups), f"{_label(r)} in {self.subnets[sid].label}")
                )
        if r.type == ENDPOINT:
            service = str(_get(r, "serviceName") or "")
            kind = str(_get(r, "vpcEndpointType") or "Gateway")
            aws_service = service.startswith("com.amazonaws.") and not service.startswith(
                "com.amazonaws.vpce."
            )
            if kind != "Gateway" and not aws_service:
                self.privatelink.append((stack, r, subnets, sorted(groups), service))

    def _endpoint_refs(self, r: Resource) -> None:
        """A VPC endpoint's VPC and route tables must be declared somewhere: an endpoint whose
        VPC no state declares may put ENIs (or, for a gateway endpoint, routes) in any
        network."""
        vpc = _get(r, "vpcId")
        if vpc and str(vpc) not in self.vpc_label:
            raise _FailClosed(f"{_label(r)} is in VPC {vpc}, declared in no state")
        for rt in _list(_get(r, "routeTableIds")):
            if not self._declared_rt(str(rt)):
                raise _FailClosed(
                    f"{_label(r)} routes through route table {rt}, declared in no state"
                )

    def _declared_rt(self, rt: str) -> bool:
        """A route table some state declares, or the main table a declared VPC reports."""
        return rt in self.rt_label or rt in self.vpc_output_main_rt

    def db_subnets(self, stack: str, r: Resource) -> list[str]:
        """The subnets of the DB subnet group `r` (of `stack`) names. Names are unique per
        account and region only, and environments in other accounts may use the same name: the
        group declared in the database's own stack wins, then one declared in a stack of the same
        account, then any."""
        name = _get(r, "dbSubnetGroupName")
        if not name:
            raise _FailClosed(f"{_label(r)} names no DB subnet group (default VPC?)")
        if self._db_groups is None:
            self._db_groups = defaultdict(list)
            for owner, g in self._each(DB_SUBNET_GROUP):
                for key in dict.fromkeys(str(k) for k in (g.id, g.get("name"), g.get("id")) if k):
                    self._db_groups[key].append((owner, g))
        found = self._db_groups.get(str(name), [])
        mine = self.accounts.get(stack, set())
        for preferred in (
            [g for owner, g in found if owner == stack],
            [g for owner, g in found if mine & self.accounts.get(owner, set())],
            [g for _, g in found],
        ):
            if preferred:
                return [str(s) for s in _list(_get(preferred[0], "subnetIds"))]
        raise _FailClosed(f"{_label(r)} uses DB subnet group {name}, declared in no state")

    def _endpoint_service(self, stack: str, r: Resource) -> None:
        name = _get(r, "serviceName")
        if name:
            self.endpoint_services[str(name)] = stack

    def _ram(self) -> None:
        """Subnets shared through RAM: ENIs of the principal's account can live in them."""
        resources: dict[str, list[str]] = defaultdict(list)
        for _, r in self._each(RAM_RESOURCE):
            arn = str(_get(r, "resourceArn"))
            if arn in self.subnet_by_arn:
                resources[str(_get(r, "resourceShareArn"))].append(self.subnet_by_arn[arn])
        for _, r in self._each(RAM_PRINCIPAL):
            share, principal = str(_get(r, "resourceShareArn")), str(_get(r, "principal"))
            for stack, accounts in self.accounts.items():
                # An organization or OU principal shares with every account in it.
                if principal in accounts or principal.startswith("arn:aws:organizations:"):
                    for sid in resources.get(share, []):
                        if self.subnets[sid].stack != stack:
                            self.shared[stack].append(sid)

    # -- derived ---------------------------------------------------------------------------

    def vpc_name(self, vpc: str) -> str:
        return self.vpc_label.get(vpc, f"VPC {vpc}")

    def local_cidrs(self, vpc: str) -> list[_Cidr]:
        subnets = [s.cidr for s in self.subnets_of_vpc.get(vpc, [])]
        return list(dict.fromkeys([*self.vpc_cidrs.get(vpc, []), *subnets]))

    def vpc_sgs(self, vpc: str) -> set[str]:
        out = set(self.sgs_of_vpc.get(vpc, ()))
        if vpc in self.vpc_default_sg:
            out.add(self._canonical_sg(self.vpc_default_sg[vpc]))
        else:
            # No id for the default group (a preview, or a VPC declared nowhere): an ENI
            # launched without groups still gets one; stand in with AWS's default rules.
            sg = f"default-sg-of-{vpc}"
            self.vpc_default_sg[vpc] = sg
            label = f"default security group of {self.vpc_name(vpc)}"
            self.sgs[sg] = _aws_default_sg(sg, label, vpc)
            self.sgs_of_vpc[vpc].add(sg)
            out.add(sg)
        return out

    def route_table_of(self, subnet: _Subnet) -> str:
        return self.rt_of_subnet.get(subnet.id) or self.vpc_main_rt.get(
            subnet.vpc, f"main-of-{subnet.vpc}"
        )

    def routes(self, subnet: _Subnet) -> tuple[str, list[_Route]]:
        """(table label, routes) a packet from `subnet` is matched against, local routes first.
        The same list object for the same table and VPC, so selections can be cached on it."""
        rt = self.route_table_of(subnet)
        key = (rt, subnet.vpc)
        if key in self._routes:
            return self._routes[key]
        label = self.rt_label.get(rt) or (
            f"main route table {rt} of {self.vpc_name(subnet.vpc)}"
            if rt == self.vpc_main_rt.get(subnet.vpc) or rt.startswith("main-of-")
            else f"route table {rt}"
        )
        # The local route always exists and cannot be removed ("Route tables: local route").
        local = [
            _Route(f"{label}: {c.text} -> local ({self.vpc_name(subnet.vpc)})", c, "local")
            for c in self.local_cidrs(subnet.vpc)
        ]
        declared = [r for r in self.route_tables.get(rt, []) if r.kind != "local"]
        known = rt in self.rt_label or rt == self.vpc_main_rt.get(subnet.vpc)
        if not known and not rt.startswith("main-of-"):
            declared.append(
                _Route(
                    f"{label}: declared in no state",
                    None,
                    "assumed",
                    f"route table {rt} of {subnet.label} is declared in no state",
                )
            )
        self._routes[key] = (label, local + declared)
        return self._routes[key]

    def default_sg(self, vpc: str) -> str:
        self.vpc_sgs(vpc)  # makes sure a stand-in exists
        return self._canonical_sg(self.vpc_default_sg[vpc])

    def nacl_of(self, subnet: _Subnet) -> str | None:
        """The ACL whose rules apply, or None for AWS's default ACL (allows everything)."""
        nid = self.nacl_of_subnet.get(subnet.id) or self.vpc_default_nacl.get(subnet.vpc)
        return nid if nid in self.nacls else None

    def carries(
        self, route: _Route, src_vpc: str, dst_vpc: str
    ) -> list[tuple[str, list[str], str]]:
        """How `route` in a table of `src_vpc` can bring a packet to an ENI in `dst_vpc`:
        [(kind, hops, assumption)], kind is direct | nat:<id> | internet."""
        if route.kind == "local":
            return [("direct", [route.label], "")] if dst_vpc == src_vpc else []
        if route.kind == "peering":
            if route.target not in self.peerings:
                why = f"{route.label}: peering {route.target} is declared in no state"
                return [("direct", [why], why)] if dst_vpc != src_vpc else []
            ends, label = self.peerings[route.target]
            others = ends - {src_vpc} if src_vpc in ends else ends
            return [("direct", [route.label, label], "")] if dst_vpc in others else []
        if route.kind == "tgw":
            reach = self._tgw_reach(route.target)
            if reach is None:
                why = f"{route.label}: transit gateway {route.target} is attached in no state"
                return [("direct", [why], why)] if dst_vpc != src_vpc else []
            if src_vpc in reach and dst_vpc in reach and dst_vpc != src_vpc:
                return [("direct", [route.label, reach[src_vpc], reach[dst_vpc]], "")]
            return []
        if route.kind == "nat":
            return [(f"nat:{route.target}", [route.label], "")]
        if route.kind == "igw":
            if dst_vpc in self.igws:
                hop = f"internet, to a public address in {self.vpc_name(dst_vpc)} through "
                return [("internet", [route.label, hop + self.igws[dst_vpc]], "")]
            return []
        if route.kind == "assumed":
            return [("direct", [route.label], route.target)]
        return []  # blackhole


# --------------------------------------------------------------------------------------------
# The encoding of one question: is there a packet from one of `sources` to one of `targets`?


@dataclass
class _Option:
    expr: Any
    hops: list[str]
    kind: str  # direct | nat | internet
    src_vpc: str
    dst_vpc: str
    dst_subnet: _Subnet


@dataclass
class _Answer:
    status: str  # found | none | assumed | unknown
    packet: Packet | None = None
    path: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()
    target: int | None = None  # the index of the target site the packet arrives at


class _Query:
    LAYERS = (
        "source security group egress",
        "source network ACL",
        "routing",
        "target network ACL",
        "target security group ingress",
    )

    def __init__(self, topo: _Topology, sources: list[_Site], targets: list[_Site]):
        self.t = topo
        self.sources, self.targets = sources, targets
        self.src = BitVec("src", 32)  # the sending ENI's private address
        self.dst = BitVec("dst", 32)  # the receiving ENI's private address
        self.dst_out = BitVec("dst_out", 32)  # destination as it leaves the sender
        self.src_seen = BitVec("src_seen", 32)  # source as the receiver sees it
        self.proto = BitVec("proto", 8)
        self.port = BitVec("port", 16)
        self.k_direct, self.k_nat, self.k_internet = Bool("direct"), Bool("nat"), Bool("internet")
        self.assume: dict[str, Any] = {}
        self.relax = {layer: Bool(f"relax {layer}") for layer in self.LAYERS}
        self.s_sel = [Bool(f"s{i}") for i in range(len(sources))]
        self.t_sel = [Bool(f"t{j}") for j in range(len(targets))]
        self.src_has = {
            g: Bool(f"src has {g}") for g in sorted({g for s in sources for g in s.sgs})
        }
        self.dst_has = {
            g: Bool(f"dst has {g}") for g in sorted({g for s in targets for g in s.sgs})
        }
        self.options: list[_Option] = []
        self.egress_rules: list[tuple[str, str, Any]] = []
        self.ingress_rules: list[tuple[str, str, Any]] = []
        self.constraints: list[Any] = []
        self._sel_cache: dict[tuple[int, int], Any] = {}
        self._build()

    # -- terms -----------------------------------------------------------------------------

    @staticmethod
    def within(x: Any, c: _Cidr) -> Any:
        if c.length == 0:
            return True
        return (x & BitVecVal(c.mask, 32)) == BitVecVal(c.net, 32)

    def assignable(self, x: Any, c: _Cidr) -> Any:
        """An address an ENI can hold: AWS reserves the first four and the last address of
        every subnet ("Subnet CIDR blocks")."""
        if c.length > 28:
            return self.within(x, c)  # not a valid subnet size: do not narrow
        first, last = c.net + 4, c.net + (~c.mask & 0xFFFFFFFF) - 1
        return _and(ULE(BitVecVal(first, 32), x), ULE(x, BitVecVal(last, 32)))

    def public(self, x: Any) -> Any:
        return _and(*(_not(self.within(x, _cidr(c))) for c in NOT_PUBLIC))  # type: ignore[arg-type]

    def assumption(self, why: str) -> Any:
        if why not in self.assume:
            self.assume[why] = Bool(f"assume #{len(self.assume)}")
        return self.assume[why]

    def proto_port(self, proto: int | None, ports: tuple[int, int] | None) -> Any:
        if proto is None:
            return True
        term = self.proto == BitVecVal(proto, 8)
        if ports is None:
            return term
        lo, hi = BitVecVal(ports[0], 16), BitVecVal(ports[1], 16)
        return _and(term, ULE(lo, self.port), ULE(self.port, hi))

    def sg_match(
        self, rule: _SgRule, owner: str, addr: Any, peer_has: dict[str, Any], direct: Any
    ) -> Any:
        if rule.assumed:
            peer: Any = self.assumption(rule.assumed)
        elif rule.cidr is not None:
            peer = self.within(addr, rule.cidr)
        elif rule.any_address:
            peer = True
        elif rule.self_ref:
            peer = _and(direct, peer_has.get(owner, False))
        else:
            peer = _and(direct, peer_has.get(rule.ref or "", False))
        return _and(self.proto_port(rule.proto, rule.ports), peer)

    def nacl_ok(
        self, subnet: _Subnet, egress: bool, addr: Any
    ) -> tuple[Any, list[tuple[str, Any]]]:
        nid = self.t.nacl_of(subnet)
        if nid is None:
            return True, []
        rules = sorted(self.t.nacls[nid]["egress" if egress else "ingress"], key=lambda r: r.number)
        terms: list[Any] = []
        decided: list[tuple[str, Any]] = []
        earlier: list[Any] = []
        for r in rules:
            base = _and(self.within(addr, r.cidr) if r.cidr else False)
            widest = _and(base, self.proto_port(r.proto, r.ports))
            # An ICMP type filter: matches all ICMP when it allows, nothing when it denies.
            narrowest = False if r.icmp_typed else widest
            if r.allow:
                term = _and(widest, *(_not(e) for e in earlier))
                terms.append(term)
                decided.append((r.label, term))
            earlier.append(narrowest if not r.allow else widest)
        label = self.t.nacl_label.get(nid, f"network ACL {nid}")
        decided.append((f"{label}: no rule allows it (*)", False))
        return _or(*terms), decided

    def selected(self, routes: list[_Route], k: int, addr: Any) -> Any:
        key = (id(routes), k)
        if key not in self._sel_cache:
            r = routes[k]
            if r.dest is None:
                # A prefix list may contain any address; it is not allowed to shadow others.
                term: Any = True
            else:
                longer = [
                    o.dest for o in routes if o.dest is not None and o.dest.length > r.dest.length
                ]
                term = _and(
                    self.within(addr, r.dest),
                    *(_not(self.within(addr, c)) for c in longer if _overlaps(c, r.dest)),
                )
            self._sel_cache[key] = term
        return self._sel_cache[key]

    # -- building ----------------------------------------------------------------------------

    def _site_constraints(
        self, sites: list[_Site], sel: list[Any], has: dict[str, Any], ip: Any
    ) -> list[Any]:
        out = []
        for k, site in enumerate(sites):
            sub = self.t.subnets[site.subnet]
            held = [has[g] for g in site.sgs]
            if site.exact:
                groups = _and(*held, *(_not(has[g]) for g in has if g not in site.sgs))
            else:
                # At least one group (every ENI has one), none from elsewhere.
                groups = _and(_or(*held), *(_not(has[g]) for g in has if g not in site.sgs))
            extra = self.assumption(site.assumed) if site.assumed else True
            out.append(_or(_not(sel[k]), _and(self.assignable(ip, sub.cidr), groups, extra)))
        out.append(_or(*sel))
        for a in range(len(sel)):  # exactly one
            for b in range(a + 1, len(sel)):
                out.append(_or(_not(sel[a]), _not(sel[b])))
        return out

    def _build(self) -> None:
        c = self.constraints
        c += self._site_constraints(self.sources, self.s_sel, self.src_has, self.src)
        c += self._site_constraints(self.targets, self.t_sel, self.dst_has, self.dst)
        c.append(_or(self.proto == 6, self.proto == 17, self.port == 0))
        # How the packet travels: exactly one kind, and what each does to the addresses.
        kinds = [self.k_direct, self.k_nat, self.k_internet]
        c.append(_or(*kinds))
        c += [_or(_not(a), _not(b)) for i, a in enumerate(kinds) for b in kinds[i + 1 :]]
        c.append(_or(_not(self.k_direct), self.src_seen == self.src))
        c.append(_or(self.k_internet, self.dst_out == self.dst))
        c.append(
            _or(_not(self.k_internet), _and(self.public(self.src_seen), self.public(self.dst_out)))
        )

        routing = []
        for i, s in enumerate(self.sources):
            ssub = self.t.subnets[s.subnet]
            _, routes = self.t.routes(ssub)
            for j, tsite in enumerate(self.targets):
                tsub = self.t.subnets[tsite.subnet]
                for k, route in enumerate(routes):
                    for kind, hops, why in self.t.carries(route, ssub.vpc, tsub.vpc):
                        sel = self.selected(routes, k, self.dst_out)
                        base = _and(self.s_sel[i], self.t_sel[j], sel)
                        if why:
                            base = _and(base, self.assumption(why))
                        if kind.startswith("nat:"):
                            self._nat_options(base, kind[4:], hops, ssub, tsub)
                            continue
                        flag = self.k_internet if kind == "internet" else self.k_direct
                        self.options.append(
                            _Option(_and(base, flag), hops, kind, ssub.vpc, tsub.vpc, tsub)
                        )
        routing = [o.expr for o in self.options]
        c.append(_or(_and(self.relax["routing"], self.k_direct), *routing))

        direct_dst = _not(self.k_internet)
        egress = []
        for g in self.src_has:
            for rule in self.t.sgs[g].egress:
                m = _and(
                    self.src_has[g], self.sg_match(rule, g, self.dst_out, self.dst_has, direct_dst)
                )
                self.egress_rules.append((g, rule.label, m))
                egress.append(m)
        c.append(_or(self.relax["source security group egress"], *egress))
        ingress = []
        for g in self.dst_has:
            for rule in self.t.sgs[g].ingress:
                m = _and(
                    self.dst_has[g],
                    self.sg_match(rule, g, self.src_seen, self.src_has, self.k_direct),
                )
                self.ingress_rules.append((g, rule.label, m))
                ingress.append(m)
        c.append(_or(self.relax["target security group ingress"], *ingress))

        self.nacl_out: list[list[tuple[str, Any]]] = []
        self.nacl_in: list[list[tuple[str, Any]]] = []
        for i, s in enumerate(self.sources):
            ok, decided = self.nacl_ok(self.t.subnets[s.subnet], True, self.dst_out)
            self.nacl_out.append(decided)
            c.append(_or(_not(self.s_sel[i]), self.relax["source network ACL"], ok))
        for j, s in enumerate(self.targets):
            ok, decided = self.nacl_ok(self.t.subnets[s.subnet], False, self.src_seen)
            self.nacl_in.append(decided)
            c.append(_or(_not(self.t_sel[j]), self.relax["target network ACL"], ok))

    def _nat_options(
        self, base: Any, nat_id: str, hops: list[str], ssub: _Subnet, tsub: _Subnet
    ) -> None:
        if nat_id not in self.t.nats or self.t.nats[nat_id][0] not in self.t.subnets:
            why = f"{hops[0]}: NAT gateway {nat_id} (or its subnet) is declared in no state"
            self.options.append(
                _Option(
                    _and(base, self.assumption(why), self.k_direct),
                    [*hops, why],
                    "direct",
                    ssub.vpc,
                    tsub.vpc,
                    tsub,
                )
            )
            return
        nat_subnet_id, nat_label, private = self.t.nats[nat_id]
        nsub = self.t.subnets[nat_subnet_id]
        _, routes = self.t.routes(nsub)
        for k, route in enumerate(routes):
            for kind, more, why in self.t.carries(route, nsub.vpc, tsub.vpc):
                if kind.startswith("nat:") or (kind == "internet" and private):
                    continue  # a NAT gateway does not forward into another NAT; a private one
                    # has no internet path ("NAT gateways: connectivity types").
                sel = self.selected(routes, k, self.dst_out)
                expr = _and(base, sel, self.assumption(why) if why else True)
                if kind == "internet":
                    expr = _and(expr, self.k_internet)
                else:
                    # The NAT rewrites the source to its own private address, in its subnet.
                    expr = _and(expr, self.k_nat, self.within(self.src_seen, nsub.cidr))
                self.options.append(
                    _Option(
                        expr,
                        [*hops, f"{nat_label} in {nsub.label}", *more],
                        "internet" if kind == "internet" else "nat",
                        ssub.vpc,
                        tsub.vpc,
                        tsub,
                    )
                )

    # -- solving ---------------------------------------------------------------------------

    def solve(self, fixed: list[Any], timeout_ms: int) -> _Answer:
        s = SolverFor("QF_BV")
        s.set("tlimit-per", max(1, int(timeout_ms)))
        for term in [*self.constraints, *fixed]:
            s.add(_smt(term))
        for r in self.relax.values():
            s.add(Not(r))
        s.push()
        for a in self.assume.values():
            s.add(Not(a))
        result = s.check()
        if result == sat:
            return self._found(s, "found")
        if result != unsat:
            return _Answer("unknown")
        s.pop()
        if self.assume:
            result = s.check()
            if result == sat:
                return self._found(s, "assumed")
            if result != unsat:
                return _Answer("unknown")
        return _Answer("none")

    def why_none(self, fixed: list[Any], timeout_ms: int) -> tuple[str, ...]:
        """Which single layer, relaxed, lets a packet through (for a failed control)."""
        out = []
        for layer in self.relax:
            s = SolverFor("QF_BV")
            s.set("tlimit-per", max(1, int(timeout_ms)))
            for term in [*self.constraints, *fixed]:
                s.add(_smt(term))
            for other, v in self.relax.items():
                s.add(v if other == layer else Not(v))
            for a in self.assume.values():
                s.add(Not(a))
            if s.check() == sat:
                out.append(layer)
        return tuple(out)

    def _declared(self, sites: list[_Site], sel: list[Any], has: dict[str, Any]) -> Any:
        """The chosen ENI carries exactly the groups one declared resource attaches there."""
        terms = []
        for k, site in enumerate(sites):
            sets = {gs for _, gs in self.t.attachers.get(site.subnet, [])}
            exact = [_and(*(has[g] if g in gs else _not(has[g]) for g in has)) for gs in sets]
            terms.append(_or(_not(sel[k]), *exact))
        return _and(*terms)

    def _found(self, s: Any, status: str) -> _Answer:
        # The first model is a proof of existence; for the reader, look for a witness that uses
        # TCP and the groups resources really carry today (a database, a service), in that order.
        tcp = self.proto == 6
        src_declared = self._declared(self.sources, self.s_sel, self.src_has)
        dst_declared = self._declared(self.targets, self.t_sel, self.dst_has)
        for preference in (
            [tcp, dst_declared, src_declared],
            [tcp, dst_declared],
            [dst_declared],
            [tcp],
        ):
            s.push()
            for term in preference:
                s.add(_smt(term))
            if s.check() == sat:
                break
            s.pop()
        else:
            s.check()
        m = s.model()

        def val(x: Any) -> int:
            return int(m.eval(x, model_completion=True).as_long())

        def true(x: Any) -> bool:
            return x is True or (x is not False and is_true(m.eval(_smt(x), model_completion=True)))

        proto = val(self.proto)
        port = val(self.port) if proto in (6, 17) else None
        option = next((o for o in self.options if true(o.expr)), None)
        i = next(k for k, v in enumerate(self.s_sel) if true(v))
        j = next(k for k, v in enumerate(self.t_sel) if true(v))
        src, dst, dst_out, src_seen = (
            val(self.src),
            val(self.dst),
            val(self.dst_out),
            val(self.src_seen),
        )
        held = self._eni(self.sources[i], {g for g, v in self.src_has.items() if true(v)})
        held_t = self._eni(self.targets[j], {g for g, v in self.dst_has.items() if true(v)})
        path = [f"from {_ip(src)}: {self.sources[i].label}, {held}"]
        path += [f"egress: {label}" for _, label, m_ in self.egress_rules if true(m_)][:1]
        path += [f"network ACL out: {label}" for label, t_ in self.nacl_out[i] if true(t_)][:1]
        if option is not None:
            path += option.hops
            if option.kind == "nat":
                path.append(f"source rewritten to the NAT's private address {_ip(src_seen)}")
            if option.kind == "internet":
                path.append(
                    f"{_ip(src_seen)} (public) -> {_ip(dst_out)} (public address of the target ENI,"
                    f" private {_ip(dst)})"
                )
        path += [f"network ACL in: {label}" for label, t_ in self.nacl_in[j] if true(t_)][:1]
        path += [f"ingress: {label}" for _, label, m_ in self.ingress_rules if true(m_)][:1]
        path.append(f"to {_ip(dst)}: {self.targets[j].label}, {held_t}")
        if option is not None and option.kind == "direct":
            path.append(self._return_path(option, src_seen))
        assumptions = tuple(why for why, v in self.assume.items() if true(v))
        name = PROTOCOL_NAMES.get(proto, "-1")
        packet = Packet(_ip(src), _ip(dst_out), name, port)
        return _Answer(status, packet, tuple(path), assumptions, j)

    def _eni(self, site: _Site, groups: set[str]) -> str:
        names = ", ".join(self.t.sgs[g].label for g in sorted(groups))
        owners = [label for label, gs in self.t.attachers.get(site.subnet, []) if gs == groups]
        more = f" and {len(owners) - 2} more" if len(owners) > 2 else ""
        held = f" (as {', '.join(owners[:2])}{more} has)" if owners and not site.exact else ""
        return f"security groups: {names}{held}"

    def _return_path(self, option: _Option, src_seen: int) -> str:
        """Informational: is there a route back from the target subnet? (Not required.)"""
        rt, routes = self.t.routes(option.dst_subnet)
        matching = [r for r in routes if r.dest is None or r.dest.contains(src_seen)]
        if matching:
            best = max((r.dest.length for r in matching if r.dest is not None), default=-1)
            matching = [r for r in matching if r.dest is None or r.dest.length == best]
        for r in matching:
            for kind, hops, _ in self.t.carries(r, option.dst_vpc, option.src_vpc):
                if kind == "direct":
                    return f"return route exists: {hops[0]}"
        return (
            f"no return route to {_ip(src_seen)} in {rt}: replies are lost, but this one-way"
            " packet still arrives"
        )


def _aws_default_sg(sg: str, label: str, vpc: str) -> _Sg:
    """A default group as AWS creates it ("Default security groups for your VPCs"): all
    inbound from the group itself, all outbound."""
    return _Sg(
        sg,
        label,
        vpc,
        [_SgRule(f"{label} (AWS default: all from itself)", None, None, self_ref=True)],
        [_SgRule(f"{label} (AWS default: all to 0.0.0.0/0)", None, None, _cidr("0/0"))],
    )


def _overlaps(a: _Cidr, b: _Cidr) -> bool:
    return a.contains(b.net) or b.contains(a.net)


# --------------------------------------------------------------------------------------------
# Sites of a stack, the control, and the public entry point


def _sites(topo: _Topology, stack: str, *, as_target: bool) -> list[_Site]:
    sites: list[_Site] = []
    for sid, groups, label in topo.stack_sites.get(stack, []):
        sub = topo.subnets[sid]
        cand = frozenset(topo.vpc_sgs(sub.vpc) | topo.attached.get(sid, set()) | groups)
        sites.append(_Site(sid, cand, label))
    for sid in topo.shared.get(stack, []):
        sub = topo.subnets[sid]
        label = f"any ENI of stack {stack} in {sub.label}, shared with its account through RAM"
        sites.append(_Site(sid, frozenset(topo.vpc_sgs(sub.vpc)), label))
    if as_target:
        # Only endpoints to `stack`'s services or to services declared nowhere (indexed).
        mine = {*topo.privatelink_to.get(stack, []), *topo.privatelink_to.get(None, [])}
        for owner, r, subnets, pl_groups, service in (topo.privatelink[k] for k in sorted(mine)):
            provider = topo.endpoint_services.get(service)
            if owner == stack or (provider is not None and provider != stack):
                continue
            why = (
                ""
                if provider == stack
                else f"{_label(r)} connects to endpoint service {service}, declared in no state"
            )
            for sid in subnets:
                sub = topo.subnets[sid]
                held = frozenset(pl_groups or topo.vpc_sgs(sub.vpc))
                whose = f"of stack {stack}" if not why else "(declared in no state)"
                label = f"{_label(r)} in {sub.label}: PrivateLink to {service} {whose}"
                sites.append(_Site(sid, held, label, exact=False, assumed=why or None))
    return sites


def _control_sites(topo: _Topology, state: StackState) -> tuple[list[_Site], list[_Site], int]:
    sources: list[_Site] = []
    for r in state.of_type(ECS_SERVICE):
        subnets = [str(s) for s in _list(_get(r, "networkConfiguration", "subnets"))]
        groups = [str(g) for g in _list(_get(r, "networkConfiguration", "securityGroups"))]
        for sid in subnets:
            if sid not in topo.subnets:
                raise _FailClosed(f"{_label(r)} uses subnet {sid}, declared in no state")
            sub = topo.subnets[sid]
            held = {topo._canonical_sg(g) for g in groups} or {topo.default_sg(sub.vpc)}
            sources.append(_Site(sid, frozenset(held), f"{_label(r)} in {sub.label}", exact=True))
    targets: list[_Site] = []
    ports: set[int] = set()
    for r in state.of_type(DB_INSTANCE, DB_CLUSTER):
        engine = (
            str(_get(r, "engine") or "postgres").replace("aurora-", "").replace("aurora", "mysql")
        )
        port = _get(r, "port") or DB_PORTS.get(engine.split("-")[0])
        if port is None:
            raise _FailClosed(f"the port of {_label(r)} (engine {engine})")
        ports.add(int(port))
        groups = [str(g) for g in _list(_get(r, "vpcSecurityGroupIds"))]
        for sid in topo.db_subnets(state.stack, r):
            if sid not in topo.subnets:
                raise _FailClosed(f"{_label(r)} uses subnet {sid}, declared in no state")
            sub = topo.subnets[sid]
            held = {topo._canonical_sg(g) for g in groups} or {topo.default_sg(sub.vpc)}
            targets.append(_Site(sid, frozenset(held), f"{_label(r)} in {sub.label}", exact=True))
    if len(ports) > 1:
        raise _FailClosed(
            f"databases of stack {state.stack} listen on several ports {sorted(ports)}"
        )
    return sources, targets, (ports.pop() if ports else 0)


def _issues(topo: _Topology, a: str, b: str) -> list[str]:
    # The issues that are connectors' or concern a or b, in reading order (indexed: a pair does
    # not scan the issues of every other stack).
    mine = {k for key in (None, a, b) for k in topo.issues_of.get(key, [])}
    return [topo.issues[k].text for k in sorted(mine)]


def _ipv6_pair(topo: _Topology, a: str, b: str) -> bool:
    return a in topo.ipv6_stacks and b in topo.ipv6_stacks


def _finisher(a: str, b: str) -> Callable[..., NetworkResult]:
    """`done(status, answer=None, detail="")` for the pair (a, b), timed from now."""
    start = time.perf_counter()

    def done(status: str, answer: _Answer | None = None, detail: str = "") -> NetworkResult:
        return NetworkResult(
            a,
            b,
            status,
            time.perf_counter() - start,
            answer.packet if answer else None,
            answer.path if answer else (),
            detail,
        )

    return done


def _pair(topo: _Topology, a: str, b: str, timeout_ms: int) -> NetworkResult:
    done = _finisher(a, b)

    if issues := _issues(topo, a, b):
        return done("broken", detail="not known or not modelled: " + "; ".join(issues))
    if _ipv6_pair(topo, a, b):
        return done("broken", detail=f"both {a} and {b} have IPv6 addresses: IPv6 is not modelled")
    sources, targets = _sites(topo, a, as_target=False), _sites(topo, b, as_target=True)
    if not sources or not targets:
        return done("proved", detail=f"no subnets in {a if not sources else b}")
    try:
        answer = _Query(topo, sources, targets).solve([], timeout_ms)
    except _FailClosed as e:
        return done("broken", detail=str(e))
    if answer.status == "found":
        return done("refuted", answer, f"a packet can travel from {a} to {b}")
    if answer.status == "assumed":
        return done(
            "broken",
            answer,
            "a path exists only through constructs the model does not follow: "
            + "; ".join(answer.assumptions),
        )
    if answer.status == "unknown":
        return done("broken", detail=f"the solver answered unknown (timeout {timeout_ms} ms)")
    return done("proved")


def _control(topo: _Topology, state: StackState, timeout_ms: int) -> NetworkResult:
    a = state.stack
    done = _finisher(a, a)

    if issues := _issues(topo, a, a):
        return done("broken", detail="not known or not modelled: " + "; ".join(issues))
    try:
        sources, targets, port = _control_sites(topo, state)
        if not sources or not targets:
            missing = "an ECS service with a network configuration" if not sources else "a database"
            return done("broken", detail=f"control: stack {a} has no {missing} to test against")
        q = _Query(topo, sources, targets)
        fixed = [q.proto == 6, q.port == port]
        answer = q.solve(fixed, timeout_ms)
        if answer.status == "found":
            return done(
                "proved", answer, f"control: the application reaches its database on {port}"
            )
        if answer.status == "unknown":
            return done("broken", detail=f"control: the solver answered unknown ({timeout_ms} ms)")
        if answer.status == "assumed":
            return done(
                "broken",
                answer,
                "control: a path exists only through constructs the model does not follow: "
                + "; ".join(answer.assumptions),
            )
        blocking = q.why_none(fixed, timeout_ms)
        return done(
            "broken",
            detail=f"control: no packet from the application to its database on tcp {port}; "
            + (
                "blocked by: " + ", ".join(blocking)
                if blocking
                else "no single layer explains it (several layers block)"
            ),
        )
    except _FailClosed as e:
        return done("broken", detail=f"control: {e}")


def _may_be_public(c: _Cidr) -> bool:
    """Some address of the block is public (it lies in none of the `NOT_PUBLIC` ranges)."""
    for text in NOT_PUBLIC:
        block = _cidr(text)
        assert block is not None
        if block.length <= c.length and block.contains(c.net):
            return False
    return True


class _Reach:
    """Which target sites a packet from `sources` can possibly arrive at, by the routes alone:
    the question of one environment against everything outside it holds only those, so its
    size follows what the environment's routes connect to, not the number of environments.

    A site is kept when some route of a source subnet's table carries a packet to the site's
    VPC directly (local, peering, transit gateway, an assumption: `_Topology.carries`), or
    through a NAT gateway whose subnet's table does (as `_Query._nat_options` follows it), or
    over the internet to a VPC with an internet gateway *and* a group the site may carry admits
    some public source address (a CIDR rule reaching outside the `NOT_PUBLIC` ranges, a prefix
    list, an assumed rule; a rule naming a group needs the sender's private address, which the
    internet path does not keep). Every other site has no routing option, or no ingress rule
    that the internet path can satisfy, in the query: it cannot change the answer."""

    def __init__(self, topo: _Topology, sources: list[_Site]) -> None:
        self.t = topo
        self.tables: list[tuple[str, list[_Route]]] = []
        seen: set[int] = set()
        for site in sources:
            sub = topo.subnets[site.subnet]
            _, routes = topo.routes(sub)
            if id(routes) not in seen:
                seen.add(id(routes))
                self.tables.append((sub.vpc, routes))
        self._vpcs: dict[str, tuple[bool, bool]] = {}

    def _kinds(self, vpc: str) -> tuple[bool, bool]:
        """(a direct or NAT path to `vpc`, an internet path to `vpc`)."""
        if vpc not in self._vpcs:
            direct = internet = False
            for src_vpc, routes in self.tables:
                for route in routes:
                    for kind, _, _ in self.t.carries(route, src_vpc, vpc):
                        if kind == "internet":
                            internet = True
                        elif kind.startswith("nat:"):
                            d, i = self._nat(kind[4:], vpc)
                            direct, internet = direct or d, internet or i
                        else:
                            direct = True
            self._vpcs[vpc] = (direct, internet)
        return self._vpcs[vpc]

    def _nat(self, nat_id: str, vpc: str) -> tuple[bool, bool]:
        if nat_id not in self.t.nats or self.t.nats[nat_id][0] not in self.t.subnets:
            return True, False  # an assumed hop that may lead anywhere
        nat_subnet, _, private = self.t.nats[nat_id]
        nsub = self.t.subnets[nat_subnet]
        _, routes = self.t.routes(nsub)
        direct = internet = False
        for route in routes:
            for kind, _, _ in self.t.carries(route, nsub.vpc, vpc):
                if kind.startswith("nat:") or (kind == "internet" and private):
                    continue
                if kind == "internet":
                    internet = True
                else:
                    direct = True
        return direct, internet

    def _public_ingress(self, site: _Site) -> bool:
        for g in site.sgs:
            sg = self.t.sgs.get(g)
            if sg is None:
                return True
            for rule in sg.ingress:
                if rule.assumed or rule.any_address:
                    return True
                if rule.cidr is not None and _may_be_public(rule.cidr):
                    return True
        return False

    def keeps(self, site: _Site) -> bool:
        direct, internet = self._kinds(self.t.subnets[site.subnet].vpc)
        return direct or (internet and self._public_ingress(site))


def _environment(
    topo: _Topology, a: str, others: list[str], timeout_ms: int
) -> dict[str, NetworkResult]:
    """One proof of `a` against every other environment at once: one query whose targets are
    every site of every other stack that `a`'s routes can reach (`_Reach`). A packet found
    names the stack it arrives in: that pair is refuted (or broken, when the path needs an
    assumption), the stack's sites leave the query, and it is asked again until no packet is
    found. The result, pair by pair, is what `_pair` finds for each (a test holds the two to
    agreement on every leak case); an answer that names no pair (`unknown`) is re-asked pair by
    pair, so it lands where it belongs."""
    done = _finisher(a, a)
    out: dict[str, NetworkResult] = {}
    asked: list[str] = []
    for b in others:
        if issues := _issues(topo, a, b):
            out[b] = done("broken", detail="not known or not modelled: " + "; ".join(issues))
        elif _ipv6_pair(topo, a, b):
            out[b] = done(
                "broken", detail=f"both {a} and {b} have IPv6 addresses: IPv6 is not modelled"
            )
        else:
            asked.append(b)
    sources = _sites(topo, a, as_target=False)
    if not sources:
        for b in asked:
            out[b] = done("proved", detail=f"no subnets in {a}")
        return _retarget(out, a)
    reach = _Reach(topo, sources)
    targets: list[_Site] = []
    owners: list[str] = []
    for b in asked:
        sites = _sites(topo, b, as_target=True)
        if not sites:
            out[b] = done("proved", detail=f"no subnets in {b}")
            continue
        for site in sites:
            if reach.keeps(site):
                targets.append(site)
                owners.append(b)
    while targets:
        try:
            answer = _Query(topo, sources, targets).solve([], timeout_ms)
        except _FailClosed:
            answer = _Answer("unknown")
        if answer.status in ("none", "unknown"):
            break
        assert answer.target is not None
        b = owners[answer.target]
        if answer.status == "found":
            out[b] = done("refuted", answer, f"a packet can travel from {a} to {b}")
        else:
            out[b] = done(
                "broken",
                answer,
                "a path exists only through constructs the model does not follow: "
                + "; ".join(answer.assumptions),
            )
        keep = [k for k, owner in enumerate(owners) if owner != b]
        targets, owners = [targets[k] for k in keep], [owners[k] for k in keep]
    else:
        answer = _Answer("none")
    for b in asked:
        if b in out:
            continue
        if answer.status == "unknown":
            out[b] = _pair(topo, a, b, timeout_ms)
        else:
            out[b] = done("proved")
    return _retarget(out, a)


def _retarget(results: dict[str, NetworkResult], a: str) -> dict[str, NetworkResult]:
    """The environment's results, each naming its pair (they were timed as one proof)."""
    return {b: replace(r, source=a, target=b) for b, r in results.items()}


def prove_network(
    states: Mapping[str, StackState], *, timeout_ms: int = 20000, per_pair: bool = False
) -> list[NetworkResult]:
    """For every stack, prove no packet travels from its network to any other stack's (one
    query per stack against everything outside it; `per_pair`: one per ordered pair, the way
    the proof first ran, kept to hold the two to agreement); for every stack, a control that
    must find its application-to-database path. The results are per ordered pair."""
    topo = topology(states)
    parts = {a: environment(topo, states, a, timeout_ms, per_pair=per_pair) for a in states}
    return finish(list(states), parts)


def topology(states: Mapping[str, StackState]) -> Any:
    """The networks of every stack, read once (what `environment` reads)."""
    return _Topology(states)


def environment(
    topo: Any,
    states: Mapping[str, StackState],
    a: str,
    timeout_ms: int = 20000,
    *,
    per_pair: bool = False,
) -> tuple[NetworkResult, dict[str, NetworkResult]]:
    """Stack `a`'s control, and its results against every other stack (one query for all of
    them; `per_pair`: one per pair)."""
    control = _control(topo, states[a], timeout_ms)
    others = [b for b in states if b != a]
    found = {} if per_pair else _environment(topo, a, others, timeout_ms)
    return control, {b: found[b] if b in found else _pair(topo, a, b, timeout_ms) for b in others}


def finish(
    stacks: list[str], parts: Mapping[str, tuple[NetworkResult, dict[str, NetworkResult]]]
) -> list[NetworkResult]:
    """Every stack's control, then its pairs in stack order; a pair that would be proved is
    broken while the control of either of its stacks fails."""
    controls = {a: parts[a][0] for a in stacks}
    results: list[NetworkResult] = []
    for a in stacks:
        results.append(controls[a])
        for b in stacks:
            if a == b:
                continue
            r = parts[a][1][b]
            failed = [c for c in (controls[a], controls[b]) if c.status != "proved"]
            if r.status == "proved" and failed:
                # "No path" means nothing while the same encoding cannot find a path that must
                # exist: the proof is broken, not isolated. A refutation keeps its witness.
                why = "; ".join(f"{c.source}: {c.detail}" for c in failed)
                r = replace(r, status="broken", detail=f"unsat, but a control failed ({why})")
            results.append(r)
    return results
