"""What each stack declares, component by component, checked against its own stack file.

Every test runs for every stack of the repository. Expected values come from the stack file
(account, region, CIDR, AZs, stores, flows, principals), never from the program's own settings
module, and policies are parsed and checked statement by statement.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

import mutations as m
import pytest

from envfence.model import Resource, StackState
from envfence.project import load_project
from tests.registry_facts import registered_tier

PROJECT = load_project()
STACKS = PROJECT.stacks()


def _tier(stack: str) -> str:
    return registered_tier(stack)


PRODUCTION = [s for s in STACKS if _tier(s) == "production"]
EXPERIMENTS = [s for s in STACKS if _tier(s) == "experiment"]

PROVIDER = "pulumi:providers:aws"
VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ROUTE = "aws:ec2/route:Route"
RTA = "aws:ec2/routeTableAssociation:RouteTableAssociation"
IGW = "aws:ec2/internetGateway:InternetGateway"
EGRESS_IGW = "aws:ec2/egressOnlyInternetGateway:EgressOnlyInternetGateway"
NAT = "aws:ec2/natGateway:NatGateway"
EIP = "aws:ec2/eip:Eip"
PEERING = "aws:ec2/vpcPeeringConnection:VpcPeeringConnection"
TGW_ATTACHMENT = "aws:ec2transitgateway/vpcAttachment:VpcAttachment"
SG = "aws:ec2/securityGroup:SecurityGroup"
DEFAULT_SG = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
ENDPOINT_RTA = "aws:ec2/vpcEndpointRouteTableAssociation:VpcEndpointRouteTableAssociation"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
KEY = "aws:kms/key:Key"
ALIAS = "aws:kms/alias:Alias"
DB = "aws:rds/instance:Instance"
DB_SUBNETS = "aws:rds/subnetGroup:SubnetGroup"
DB_PARAMS = "aws:rds/parameterGroup:ParameterGroup"
BUCKET = "aws:s3/bucket:Bucket"
PUBLIC_ACCESS = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
ENCRYPTION = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
)
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
OWNERSHIP = "aws:s3/bucketOwnershipControls:BucketOwnershipControls"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
ROLE = "aws:iam/role:Role"
IAM_POLICY = "aws:iam/policy:Policy"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"

DATA_ROLES = ("service", "pipeline", "analyst")
# Roles AWS services assume for the environment; `migrator` is the database tasks' execution role.
SUPPORT_ROLES = ("flowlogs", "execution", "trail", "migrator")
ENV_ROLES = (*DATA_ROLES, *SUPPORT_ROLES)
CLASSIFICATION = {"production": "production", "experiment": "experimental"}
# What reads or writes data under a KMS key (CreateGrant hands these out to a grantee).
KMS_DATA_ACTIONS = (
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateMac",
    "kms:VerifyMac",
)
# Hands key use to a grantee: as much a data permission as the actions above.
KMS_GRANT = "kms:CreateGrant"
# What the deployer and break-glass administrators may do with the key: named one by one,
# management only (no data use, no grants).
KEY_ADMIN_ACTIONS = {
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
    "kms:RotateKeyOnDemand",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:ListKeyPolicies",
    "kms:ListGrants",
    "kms:ListAliases",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
}
# What AWS services do with the key on the deployer's behalf when it creates the database, its
# RDS-managed master secret and the ECR repository; and the only services they may do it through.
DEPLOYER_THROUGH_SERVICES = {"kms:CreateGrant", "kms:DescribeKey"}
DEPLOYER_SERVICES = ("rds", "secretsmanager", "ecr")
S3_OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:RestoreObject",
)
S3_LIST_ACTIONS = ("s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads")
# The data stores' object fence and listing fence, action by action.
STORE_OBJECT_FENCE = {
    "s3:GetObject*",
    "s3:PutObject*",
    "s3:DeleteObject*",
    "s3:RestoreObject",
    "s3:ReplicateObject",
    "s3:ReplicateDelete",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
}
SSE_HEADER = "s3:x-amz-server-side-encryption"
SSE_KEY_ID = "s3:x-amz-server-side-encryption-aws-kms-key-id"


# -- expectations from the stack file --------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """A stack's config as the stack file says it, plus the names envfence derives from it."""

    project: str
    stack: str
    tier: str
    account: str
    region: str
    owner: str
    experiment_id: str | None
    cidr: ipaddress.IPv4Network
    az_count: int
    nat_gateways: int
    stores: tuple[str, ...]
    deployer: str  # the role that runs `pulumi up`
    analysts: tuple[str, ...]
    admins: tuple[str, ...]  # break-glass key administrators
    audit_readers: tuple[str, ...]
    log_retention: int
    retention: dict[str, Any]
    flows: tuple[dict[str, str], ...]
    peer_accounts: dict[str, str] = field(default_factory=dict)

    @property
    def production(self) -> bool:
        return self.tier == "production"

    @property
    def root(self) -> str:
        return f"arn:aws:iam::{self.account}:root"

    @property
    def trail_arn(self) -> str:
        return f"arn:aws:cloudtrail:{self.region}:{self.account}:trail/{self.project}-{self.stack}"

    @property
    def schedule_arn(self) -> str:
        """The experiments' retention schedule (default group): its payload's KMS context."""
        return (
            f"arn:aws:scheduler:{self.region}:{self.account}:schedule/default/"
            f"{self.project}-{self.stack}-retention"
        )

    def via(self, service: str) -> str:
        """The kms:ViaService value of an AWS service in the stack's region."""
        return f"{service}.{self.region}.amazonaws.com"

    def account_of(self, stack: str) -> str:
        return self.account if stack == self.stack else self.peer_accounts[stack]

    def role_arn(self, role: str, stack: str | None = None) -> str:
        stack = stack or self.stack
        return f"arn:aws:iam::{self.account_of(stack)}:role/{self.project}-{stack}-{role}"

    def bucket(self, store: str, stack: str | None = None) -> str:
        stack = stack or self.stack
        return f"{self.project}-{stack}-{store}-{self.account_of(stack)}"

    def bucket_arns(self, store: str, stack: str | None = None) -> set[str]:
        arn = f"arn:aws:s3:::{self.bucket(store, stack)}"
        return {arn, f"{arn}/*"}

    def own_bucket_arns(self) -> set[str]:
        return set().union(*(self.bucket_arns(store) for store in self.stores))

    def outbound(self) -> list[dict[str, str]]:
        return [f for f in self.flows if f["from"] == self.stack]

    def inbound(self) -> list[dict[str, str]]:
        return [f for f in self.flows if f["to"] == self.stack]

    def tags(self) -> dict[str, str]:
        tags = {
            "environment": self.stack,
            "tier": self.tier,
            "data-classification": CLASSIFICATION[self.tier],
            "owner": self.owner,
            "managed-by": "pulumi",
            "project": self.project,
        }
        if self.experiment_id:
            tags["experiment-id"] = self.experiment_id
        return tags


def _value(config: dict[str, str], key: str, default: Any) -> Any:
    raw = config.get(key)
    if raw is None:
        return default
    return json.loads(raw) if raw[:1] in "[{" else raw


def facts_of(state: StackState) -> Facts:
    c = state.config
    network = _value(c, "envfence:network", {})
    access = _value(c, "envfence:access", {})
    tier = registered_tier(state.stack)
    flows = tuple(_value(c, "envfence:flows", []))
    peers = {f[side] for f in flows for side in ("from", "to")} - {state.stack}
    peer_accounts = {
        peer: json.loads(PROJECT.stack_config(peer)["envfence:allowedAccountIds"])[0]
        for peer in peers
    }
    return Facts(
        project=state.project,
        stack=state.stack,
        tier=tier,
        account=json.loads(c["envfence:allowedAccountIds"])[0],
        region=c["aws:region"],
        owner=c["envfence:owner"],
        experiment_id=c.get("envfence:experimentId"),
        cidr=ipaddress.IPv4Network(network["cidr"]),
        az_count=int(network.get("azCount", 2)),
        nat_gateways=int(network.get("natGateways", 0)),
        stores=tuple(_value(c, "envfence:dataStores", ["raw", "curated", "results"])),
        deployer=access["deployer"],
        analysts=tuple(access.get("analystPrincipals", ())),
        admins=tuple(access.get("adminPrincipals", ())),
        audit_readers=tuple(access.get("auditReaders", ())),
        log_retention=int(c.get("envfence:logRetentionDays", 365 if tier == "production" else 30)),
        retention=_value(c, "envfence:retention", {}),
        flows=flows,
        peer_accounts=peer_accounts,
    )


@pytest.fixture(params=STACKS)
def state(request: pytest.FixtureRequest, stacks: dict[str, StackState]) -> StackState:
    return stacks[request.param]


@pytest.fixture
def facts(state: StackState) -> Facts:
    return facts_of(state)


# -- helpers ---------------------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(document: str) -> list[dict[str, Any]]:
    doc = json.loads(document)
    assert doc["Version"] == "2012-10-17"
    return [doc["Statement"]] if isinstance(doc["Statement"], dict) else list(doc["Statement"])


def grants(st: dict[str, Any], action: str) -> bool:
    """Whether the statement's Action (or NotAction) covers `action`."""

    def hit(patterns: Any) -> bool:
        return any(fnmatch.fnmatchcase(action.lower(), str(p).lower()) for p in as_list(patterns))

    if "Action" in st:
        return hit(st["Action"])
    return not hit(st.get("NotAction", []))


def grants_any(st: dict[str, Any], actions: tuple[str, ...]) -> bool:
    return any(grants(st, a) for a in actions)


def principals(st: dict[str, Any], kind: str) -> set[str]:
    p = st.get("Principal")
    if p == "*":
        return {"*"}
    if not isinstance(p, dict):
        return set()
    return {str(v) for v in as_list(p.get(kind, []))}


def only(items: list[Resource], what: str) -> Resource:
    assert len(items) == 1, f"expected exactly one {what}, found {[r.name for r in items]}"
    return items[0]


def with_inputs(state: StackState, type_: str, **inputs: Any) -> list[Resource]:
    return [r for r in state.of_type(type_) if all(r.inputs.get(k) == v for k, v in inputs.items())]


def subnets(state: StackState, tier: str) -> list[Resource]:
    return [r for r in state.of_type(SUBNET) if r.name.startswith(f"subnet-{tier}-")]


def route_tables_of(state: StackState, subnet_ids: set[str]) -> set[str]:
    return {
        a.inputs["routeTableId"]
        for a in state.of_type(RTA)
        if a.inputs.get("subnetId") in subnet_ids
    }


def provider_of(state: StackState, r: Resource) -> Resource:
    by_ref = {f"{p.urn}::{p.id}": p for p in state.of_type(PROVIDER)}
    assert r.provider in by_ref, f"{r.urn} does not use the stack's aws provider"
    return by_ref[r.provider]


def merged_tags(state: StackState, r: Resource) -> dict[str, str]:
    default = json.loads(provider_of(state, r).inputs["defaultTags"])["tags"]
    return {**default, **(r.inputs.get("tags") or {})}


def key_of(state: StackState) -> Resource:
    """The environment's key (`key`); an experiment account's baseline also has the archive's
    own key (`archive-key`), checked on its own."""
    return only([k for k in state.of_type(KEY) if k.name == "key"], "KMS key")


def vpc_of(state: StackState) -> Resource:
    return only(state.of_type(VPC), "VPC")


def bucket_of(state: StackState, name: str) -> Resource:
    return only(with_inputs(state, BUCKET, bucket=name), f"bucket {name}")


def attached(state: StackState, type_: str, bucket: Resource) -> Resource:
    return only(with_inputs(state, type_, bucket=bucket.id), f"{type_} of {bucket.id}")


def role_named(state: StackState, name: str) -> Resource:
    return only(with_inputs(state, ROLE, name=name), f"role {name}")


def boundary_of(state: StackState, facts: Facts) -> Resource:
    return only(
        with_inputs(state, IAM_POLICY, name=f"{facts.project}-{facts.stack}-boundary"),
        "permission boundary",
    )


# -- network ---------------------------------------------------------------------------------


def test_vpc_has_the_configured_cidr(state: StackState, facts: Facts) -> None:
    vpc = vpc_of(state)
    assert vpc.inputs["cidrBlock"] == str(facts.cidr)
    assert vpc.inputs.get("assignGeneratedIpv6CidrBlock") in (None, False)


@pytest.mark.parametrize("tier", ["app", "data"])
def test_one_subnet_per_az_inside_the_vpc(state: StackState, facts: Facts, tier: str) -> None:
    vpc = vpc_of(state)
    group = subnets(state, tier)
    assert len(group) == facts.az_count
    azs = [sn.inputs["availabilityZone"] for sn in group]
    assert len(set(azs)) == facts.az_count, azs
    for sn in group:
        assert sn.inputs["availabilityZone"].startswith(facts.region)
        assert sn.inputs["vpcId"] == vpc.id
        assert ipaddress.IPv4Network(sn.inputs["cidrBlock"]).subnet_of(facts.cidr)
        assert sn.inputs.get("mapPublicIpOnLaunch") is False


def test_subnets_do_not_overlap(state: StackState, facts: Facts) -> None:
    nets = [ipaddress.IPv4Network(sn.inputs["cidrBlock"]) for sn in state.of_type(SUBNET)]
    assert len(nets) >= 2 * facts.az_count
    for i, a in enumerate(nets):
        assert a.subnet_of(facts.cidr)
        for b in nets[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_data_subnets_route_table_has_no_route(state: StackState) -> None:
    data_ids = {sn.id for sn in subnets(state, "data")}
    associated = {a.inputs.get("subnetId") for a in state.of_type(RTA)}
    assert data_ids <= associated, "a data subnet falls back to the VPC's main route table"
    data_rts = route_tables_of(state, data_ids)
    assert data_rts <= {rt.id for rt in state.of_type(ROUTE_TABLE)}
    for rt in state.of_type(ROUTE_TABLE):
        if rt.id in data_rts:
            assert not rt.inputs.get("routes"), rt.inputs
    assert [r.name for r in state.of_type(ROUTE) if r.inputs["routeTableId"] in data_rts] == []
    others = {sn.id for sn in state.of_type(SUBNET)} - data_ids
    assert not route_tables_of(state, others) & data_rts, "data route table shared"
    # No peering or transit gateway anywhere: nothing routes towards another VPC.
    assert state.of_type(PEERING, TGW_ATTACHMENT) == []
    for route in state.of_type(ROUTE):
        for target in ("vpcPeeringConnectionId", "transitGatewayId", "egressOnlyGatewayId"):
            assert not route.inputs.get(target), route.inputs


def test_data_route_table_is_not_routed_to_the_s3_endpoint(state: StackState) -> None:
    data_rts = route_tables_of(state, {sn.id for sn in subnets(state, "data")})
    assert data_rts
    for endpoint in state.of_type(ENDPOINT):
        assert not set(endpoint.inputs.get("routeTableIds") or []) & data_rts, endpoint.name
    assert [
        r.name for r in state.of_type(ENDPOINT_RTA) if r.inputs.get("routeTableId") in data_rts
    ] == []


def test_nat_only_where_configured(state: StackState, facts: Facts) -> None:
    vpc = vpc_of(state)
    nats, igws, eips = state.of_type(NAT), state.of_type(IGW), state.of_type(EIP)
    public = subnets(state, "public")
    assert len(nats) == facts.nat_gateways
    assert state.of_type(EGRESS_IGW) == []
    if facts.nat_gateways == 0:
        assert igws == [] and eips == [] and public == []
        assert [r.name for r in state.of_type(ROUTE)] == []
        assert [
            r.name for r in state.of_type(EGRESS) if r.inputs.get("cidrIpv4") == "0.0.0.0/0"
        ] == []
        return
    igw = only(igws, "internet gateway")
    assert igw.inputs["vpcId"] == vpc.id
    assert len(eips) == len(public) == facts.nat_gateways
    public_ids = {sn.id for sn in public}
    assert {n.inputs["subnetId"] for n in nats} == public_ids
    assert {n.inputs["allocationId"] for n in nats} == {e.id for e in eips}
    # Application subnets reach the internet only through a NAT of this VPC.
    nat_ids = {n.id for n in nats}
    for rt in route_tables_of(state, {sn.id for sn in subnets(state, "app")}):
        routes = [r.inputs for r in state.of_type(ROUTE) if r.inputs["routeTableId"] == rt]
        assert len(routes) == 1, routes
        assert routes[0]["destinationCidrBlock"] == "0.0.0.0/0"
        assert routes[0].get("natGatewayId") in nat_ids
        assert not routes[0].get("gatewayId")
    # The internet gateway is a target only in route tables of the public subnets.
    public_rts = route_tables_of(state, public_ids)
    igw_routes = [r for r in state.of_type(ROUTE) if r.inputs.get("gatewayId") == igw.id]
    assert igw_routes
    assert {r.inputs["routeTableId"] for r in igw_routes} <= public_rts


def test_default_security_group_is_emptied(state: StackState) -> None:
    default = only(state.of_type(DEFAULT_SG), "default security group")
    assert default.inputs["vpcId"] == vpc_of(state).id
    assert default.inputs.get("ingress") == []
    assert default.inputs.get("egress") == []


def test_database_security_group_admits_postgres_from_the_app_only(state: StackState) -> None:
    db = only(state.of_type(DB), "database")
    sg_db = only(
        [sg for sg in state.of_type(SG) if sg.id in db.inputs["vpcSecurityGroupIds"]],
        "database security group",
    )
    assert db.inputs["vpcSecurityGroupIds"] == [sg_db.id]
    assert not sg_db.inputs.get("ingress")
    assert [
        r.name for r in state.of_type(SG_RULE) if r.inputs.get("securityGroupId") == sg_db.id
    ] == []
    rules = [r.inputs for r in state.of_type(INGRESS) if r.inputs["securityGroupId"] == sg_db.id]
    assert len(rules) == 1, rules
    rule = rules[0]
    assert (rule["ipProtocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 5432, 5432)
    for source in ("cidrIpv4", "cidrIpv6", "prefixListId"):
        assert not rule.get(source)
    sg_app = only([sg for sg in state.of_type(SG) if sg.name == "sg-app"], "app security group")
    assert rule["referencedSecurityGroupId"] == sg_app.id
    # And nothing at all comes in to the application tasks.
    assert [
        r.name for r in state.of_type(INGRESS) if r.inputs["securityGroupId"] == sg_app.id
    ] == []


def _ingress_sources(state: StackState) -> list[tuple[str, str, dict[str, Any]]]:
    """Every way the stack lets a security group admit traffic, as (label, the group it opens,
    its sources): standalone ingress rules, groups' inline `ingress` blocks (default group
    included) and legacy `SecurityGroupRule`s of type ingress."""
    out: list[tuple[str, str, dict[str, Any]]] = []

    def sources(block: dict[str, Any], cidr4: str, cidr6: str, prefix: str, group: str) -> Any:
        return {
            "cidr4": [c for c in as_list(block.get(cidr4) or []) if c],
            "cidr6": [c for c in as_list(block.get(cidr6) or []) if c],
            "prefix lists": [c for c in as_list(block.get(prefix) or []) if c],
            "groups": [c for c in as_list(block.get(group) or []) if c],
            "self": bool(block.get("self")),
        }

    for r in state.of_type(INGRESS):
        src = sources(r.inputs, "cidrIpv4", "cidrIpv6", "prefixListId", "referencedSecurityGroupId")
        out.append((r.name, r.inputs["securityGroupId"], src))
    for r in (*state.of_type(SG), *state.of_type(DEFAULT_SG)):
        for i, block in enumerate(r.inputs.get("ingress") or []):
            src = sources(block, "cidrBlocks", "ipv6CidrBlocks", "prefixListIds", "securityGroups")
            out.append((f"{r.name} inline ingress {i}", r.id, src))
    for r in state.of_type(SG_RULE):
        if r.inputs.get("type") == "ingress":
            src = sources(
                r.inputs, "cidrBlocks", "ipv6CidrBlocks", "prefixListIds", "sourceSecurityGroupId"
            )
            out.append((r.name, r.inputs["securityGroupId"], src))
    return out


def _ingress_problems(state: StackState, facts: Facts) -> list[str]:
    vpc = vpc_of(state).id
    groups = {g.id for g in (*state.of_type(SG), *state.of_type(DEFAULT_SG))}
    own = {
        g.id for g in (*state.of_type(SG), *state.of_type(DEFAULT_SG)) if g.inputs["vpcId"] == vpc
    }
    problems = []
    for label, group, src in _ingress_sources(state):
        if group not in own:
            where = "another VPC of this stack" if group in groups else "a group of no VPC here"
            problems.append(f"{label} opens {group}, {where}")
        for cidr in src["cidr4"]:
            if not ipaddress.IPv4Network(cidr).subnet_of(facts.cidr):
                problems.append(f"{label} admits {cidr}, outside {facts.cidr}")
        problems += [f"{label} admits IPv6 {c}" for c in src["cidr6"]]
        # A prefix list holds ranges outside the VPC (AWS-managed lists are services' ranges).
        problems += [f"{label} admits prefix list {p}" for p in src["prefix lists"]]
        problems += [
            f"{label} admits group {g}, not a group of this VPC"
            for g in src["groups"]
            if g not in own
        ]
        if not (
            src["cidr4"] or src["cidr6"] or src["prefix lists"] or src["groups"] or src["self"]
        ):
            problems.append(f"{label} admits from a source this test does not read")
    return problems


def test_no_ingress_from_outside_the_vpc(state: StackState, facts: Facts) -> None:
    # Not vacuous: the database's rule (from the application group) and the endpoints' rule
    # (HTTPS from the VPC) are read, whatever form they take.
    labels = {label for label, _, _ in _ingress_sources(state)}
    assert {"sg-db-in-postgres", "sg-endpoints-in-https"} <= labels, labels
    assert _ingress_problems(state, facts) == []


@pytest.mark.parametrize(
    ("mutation", "problem"),
    [
        ("ingress_from_other_cidr", "sg-db-in-postgres admits 10.20.0.0/16, outside"),
        ("ingress_from_anywhere", "sg-db-in-postgres admits 0.0.0.0/0, outside"),
        ("ingress_from_ipv6", "sg-db-in-postgres admits IPv6 2001:db8:1234::/56"),
        ("ingress_from_prefix_list", "sg-db-in-postgres admits prefix list pl-"),
        ("ingress_from_other_sg", "sg-db-in-postgres admits group sg-"),
        ("inline_sg_ingress", "sg-db inline ingress 0 admits 10.20.0.0/16"),
        ("default_sg_ingress", "default-sg inline ingress 0 admits 10.20.0.0/16"),
        ("sg_rule_ingress", "sg-db-in-postgres-legacy admits 10.20.0.0/16"),
        ("ingress_rule_on_other_sg", "sg-peer-db-in-postgres opens sg-"),
    ],
)
def test_the_ingress_check_reads_every_way_in(
    stacks: dict[str, StackState], mutation: str, problem: str
) -> None:
    """Each way of admitting another environment (tests/mutations.py, all in prod) is caught."""
    leaky = m.mutated(stacks, m.MUTATIONS[mutation])["prod"]
    problems = _ingress_problems(leaky, facts_of(leaky))
    assert any(p.startswith(problem) for p in problems), problems


# AWS services the tasks reach through interface endpoints (no NAT in production): ECR for the
# image, logs, the queue, the flags and (ECS, for the database tasks) Secrets Manager.
INTERFACE_SERVICES = ("ecr.api", "ecr.dkr", "logs", "sqs", "appconfigdata", "secretsmanager")


def test_interface_endpoints_serve_the_app_subnets_for_this_account_only(
    state: StackState, facts: Facts
) -> None:
    vpc = vpc_of(state)
    app_ids = {sn.id for sn in subnets(state, "app")}
    interface = [e for e in state.of_type(ENDPOINT) if e.inputs["vpcEndpointType"] == "Interface"]
    assert sorted(e.inputs["serviceName"] for e in interface) == sorted(
        f"com.amazonaws.{facts.region}.{service}" for service in INTERFACE_SERVICES
    )
    sg_endpoints = {sg.id for sg in state.of_type(SG)}
    for endpoint in interface:
        i = endpoint.inputs
        assert i["vpcId"] == vpc.id
        assert set(i["subnetIds"]) == app_ids, endpoint.name
        assert i["privateDnsEnabled"] is True, endpoint.name
        assert set(i["securityGroupIds"]) <= sg_endpoints, endpoint.name
        (st,) = statements(i["policy"])
        assert st["Effect"] == "Allow"
        assert st["Condition"] == {
            "StringEquals": {
                "aws:PrincipalAccount": facts.account,
                "aws:ResourceAccount": facts.account,
            }
        }, endpoint.name


def _s3_endpoint(state: StackState, facts: Facts) -> Resource:
    return only(
        with_inputs(state, ENDPOINT, serviceName=f"com.amazonaws.{facts.region}.s3"), "S3 endpoint"
    )


def test_s3_endpoint_admits_only_this_environments_buckets(state: StackState, facts: Facts) -> None:
    endpoint = _s3_endpoint(state, facts)
    assert endpoint.inputs["vpcEndpointType"] == "Gateway"
    assert endpoint.inputs["vpcId"] == vpc_of(state).id
    app_rts = route_tables_of(state, {sn.id for sn in subnets(state, "app")})
    assert app_rts <= set(endpoint.inputs["routeTableIds"])
    expected = facts.own_bucket_arns()
    for flow in facts.outbound():
        expected |= facts.bucket_arns(flow["store"], flow["to"])
    # ECR keeps image layers in an AWS-owned bucket; pulls through the endpoint need it (read).
    ecr_layers = f"arn:aws:s3:::prod-{facts.region}-starport-layer-bucket/*"
    stmts = statements(endpoint.inputs["policy"])
    assert all(st["Effect"] == "Allow" for st in stmts)
    named: set[str] = set()
    for st in stmts:
        assert "NotResource" not in st and "NotAction" not in st
        resources = set(as_list(st["Resource"]))
        assert "*" not in resources
        if resources == {ecr_layers}:
            assert as_list(st["Action"]) == ["s3:GetObject"]
            continue
        named |= resources
    assert named == expected


def test_flow_logs_go_to_an_encrypted_log_group_with_retention(
    state: StackState, facts: Facts
) -> None:
    vpc = vpc_of(state)
    flow_log = only(with_inputs(state, FLOW_LOG, vpcId=vpc.id), "VPC flow log")
    assert flow_log.inputs["trafficType"] == "ALL"
    assert flow_log.inputs["logDestinationType"] == "cloud-watch-logs"
    group = only(
        [
            g
            for g in state.of_type(LOG_GROUP)
            if g.outputs["arn"] == flow_log.inputs["logDestination"]
        ],
        "flow log group",
    )
    assert group.inputs["name"].startswith(f"/{facts.project}/{facts.stack}/")
    assert group.inputs["kmsKeyId"] == key_of(state).outputs["arn"]
    assert group.inputs["retentionInDays"] == facts.log_retention
    role = role_named(state, f"{facts.project}-{facts.stack}-flowlogs")
    assert flow_log.inputs["iamRoleArn"] == role.outputs["arn"]


def test_every_log_group_is_encrypted_with_retention(state: StackState) -> None:
    key = key_of(state)
    groups = state.of_type(LOG_GROUP)
    assert groups
    for group in groups:
        assert group.inputs.get("kmsKeyId") == key.outputs["arn"], group.name
        assert group.inputs.get("retentionInDays"), group.name


# -- keys ------------------------------------------------------------------------------------


def test_key_rotates_and_has_an_alias(state: StackState, facts: Facts) -> None:
    key = key_of(state)
    assert key.inputs["enableKeyRotation"] is True
    alias = only(with_inputs(state, ALIAS, targetKeyId=key.outputs["keyId"]), "key alias")
    assert alias.inputs["name"] == f"alias/{facts.project}/{facts.stack}"


def _actions(st: dict[str, Any]) -> set[str]:
    assert "NotAction" not in st, st
    return set(as_list(st["Action"]))


def _by_sid(stmts: list[dict[str, Any]], sid: str) -> dict[str, Any]:
    found = [st for st in stmts if st.get("Sid") == sid]
    assert len(found) == 1, f"expected one statement {sid}, found {len(found)}"
    return found[0]


def _data_statement_is_allowed(st: dict[str, Any], facts: Facts) -> str | None:
    """None if an Allow statement granting data use of the key (or grants of it) has one of the
    acceptable shapes: the environment's roles; a declared flow, through S3; the deployer, only
    through the services that encrypt for it; the migrator, only through Secrets Manager; the
    audit readers, only trail logs through S3; or a pinned AWS service."""
    cond = st.get("Condition", {})
    aws = principals(st, "AWS")
    services = principals(st, "Service")
    if "*" in aws or "*" in principals(st, "*"):
        return "open to every principal"
    if aws and services:
        return "mixes AWS and service principals"
    if set(st) - {"Sid", "Effect", "Principal", "Action", "Resource", "Condition"}:
        return f"unexpected elements {sorted(st)}"
    if aws:
        arns = set(as_list(cond.get("ArnEquals", {}).get("aws:PrincipalArn", [])))
        equals = cond.get("StringEquals", {})
        via = as_list(equals.get("kms:ViaService", []))
        own_roles = {facts.role_arn(r) for r in DATA_ROLES}
        if aws == {facts.root} and arns and arns <= own_roles:
            if KMS_GRANT in _actions(st) or set(cond) != {"ArnEquals"}:
                return "the environment roles' use grants or is conditioned otherwise"
            return None  # the environment's roles
        if aws == {facts.root} and arns == {facts.role_arn("migrator")}:
            if _actions(st) == {"kms:Decrypt"} and cond == {
                "ArnEquals": {"aws:PrincipalArn": facts.role_arn("migrator")},
                "StringEquals": {"kms:ViaService": facts.via("secretsmanager")},
            }:
                return None  # the database tasks read the master secret, through Secrets Manager
            return "the migrator's use is not decrypt-through-Secrets-Manager only"
        if aws == {facts.root} and arns == {facts.role_arn("scheduler")}:
            # The retention schedule's execution role decrypts its payload (CKV_AWS_297: the
            # payload is under this key), for that one schedule only.
            if (
                not facts.production
                and _actions(st) == {"kms:Decrypt"}
                and cond
                == {
                    "ArnEquals": {"aws:PrincipalArn": facts.role_arn("scheduler")},
                    "StringEquals": {
                        "kms:EncryptionContext:aws:scheduler:schedule:arn": facts.schedule_arn
                    },
                }
            ):
                return None
            return "the scheduler role's use is not decrypt-its-schedule's-payload only"
        if aws == {facts.root} and facts.audit_readers and arns == set(facts.audit_readers):
            if (
                _actions(st) == {"kms:Decrypt"}
                and set(cond)
                == {
                    "ArnEquals",
                    "StringEquals",
                    "StringLike",
                }
                and equals == {"kms:ViaService": facts.via("s3")}
                and cond["StringLike"]
                == {"kms:EncryptionContext:aws:cloudtrail:arn": facts.trail_arn}
            ):
                return None  # the security team reads this trail's logs, through S3
            return "the audit readers' use is not decrypt-this-trail's-logs-through-S3 only"
        for flow in facts.inbound():
            src = flow["from"]
            if (
                aws == {f"arn:aws:iam::{facts.account_of(src)}:root"}
                and arns == {facts.role_arn(flow["role"], src)}
                and via == [facts.via("s3")]
                and not grants_any(st, ("kms:Encrypt", "kms:GenerateDataKey", KMS_GRANT))
            ):
                return None  # a declared flow: decrypt through S3 only
        if (
            aws == {facts.deployer}
            and not facts.production
            and equals.get("kms:EncryptionContext:aws:scheduler:schedule:arn")
        ):
            # Creating/updating the retention schedule encrypts its payload, through Scheduler,
            # for that one schedule (CKV_AWS_297).
            if (
                _actions(st) == {"kms:GenerateDataKey", "kms:Decrypt"}
                and set(cond) == {"StringEquals"}
                and equals
                == {
                    "kms:CallerAccount": facts.account,
                    "kms:ViaService": facts.via("scheduler"),
                    "kms:EncryptionContext:aws:scheduler:schedule:arn": facts.schedule_arn,
                }
            ):
                return None
            return "the deployer's schedule use is not limited to its schedule, via Scheduler"
        if aws == {facts.deployer} and not facts.production:
            # `envfence experiment conclude`: the results store read, only through S3 and only
            # for that bucket (the bucket key's context is its ARN). The archive has its own key.
            wanted = {f"arn:aws:s3:::{facts.bucket('results')}": {"kms:Decrypt"}}
            context = equals.get("kms:EncryptionContext:aws:s3:arn")
            if (
                set(cond) == {"StringEquals"}
                and set(equals)
                == {"kms:CallerAccount", "kms:ViaService", "kms:EncryptionContext:aws:s3:arn"}
                and equals["kms:CallerAccount"] == facts.account
                and via == [facts.via("s3")]
                and context in wanted
                and _actions(st) == wanted[context]
            ):
                return None
        if aws == {facts.deployer}:
            if (
                _actions(st) == DEPLOYER_THROUGH_SERVICES
                and set(cond) == {"StringEquals"}
                and set(equals) == {"kms:CallerAccount", "kms:ViaService"}
                and equals["kms:CallerAccount"] == facts.account
                and sorted(via) == sorted(facts.via(s) for s in DEPLOYER_SERVICES)
            ):
                return None  # the deployer, only through the services that encrypt for it
            secret = f"arn:aws:secretsmanager:{facts.region}:{facts.account}:secret:rds!*"
            if (
                equals.get("kms:CallerAccount") == facts.account
                and sorted(via) == sorted([facts.via("rds"), facts.via("secretsmanager")])
                and cond.get("StringLike") == {"kms:EncryptionContext:SecretARN": secret}
                and (
                    _actions(st) == {"kms:GenerateDataKey"}
                    or (
                        _actions(st) == {"kms:Decrypt"}
                        and equals.get("kms:EncryptionContext:SecretVersionId")
                        == "RequestToValidateKeyAccess"
                    )
                )
            ):
                return None  # the master secret's value written, its key access checked
            return "the deployer's use is not limited to RDS, Secrets Manager and ECR"
        return f"data use by {sorted(aws)} not limited to this environment's roles"
    if services:
        values = json.dumps(cond)
        if services == {"cloudwatch.amazonaws.com"} and not cond:
            # Deliberately unconditioned (keys.py): CloudWatch's KMS calls are not documented to
            # carry aws:SourceAccount/SourceArn. Only what publishing to the topic needs.
            if _actions(st) == {"kms:Decrypt", "kms:GenerateDataKey*"}:
                return None
            return "CloudWatch's unconditioned use goes beyond publishing to the topic"
        if not cond:
            return f"service principal {sorted(services)} without a condition"
        if KMS_GRANT in _actions(st):
            return f"service principal {sorted(services)} may hand out grants"
        if facts.account not in values:
            return f"service principal {sorted(services)} not bound to account {facts.account}"
        others = set(facts.peer_accounts.values()) - {facts.account}
        if any(acct in values for acct in others):
            return f"service principal {sorted(services)} bound to another account"
        return None
    return "no principal"


def test_key_policy_data_use_is_limited_to_this_environment(
    state: StackState, facts: Facts
) -> None:
    stmts = statements(key_of(state).inputs["policy"])
    data = [
        st
        for st in stmts
        if st["Effect"] == "Allow" and grants_any(st, (*KMS_DATA_ACTIONS, KMS_GRANT))
    ]
    problems = {st.get("Sid"): _data_statement_is_allowed(st, facts) for st in data}
    assert {sid: why for sid, why in problems.items() if why} == {}
    # The roles' use is narrowed by aws:PrincipalArn to exactly the environment's data roles.
    own_roles = {facts.role_arn(r) for r in DATA_ROLES}
    role_use = [
        st
        for st in data
        if principals(st, "AWS") == {facts.root}
        and set(as_list(st.get("Condition", {}).get("ArnEquals", {}).get("aws:PrincipalArn", [])))
        == own_roles
    ]
    assert len(role_use) == 1
    assert grants(role_use[0], "kms:Decrypt") and grants(role_use[0], "kms:GenerateDataKey")

    # The deployer: only what RDS, Secrets Manager and ECR do with the key for its creates,
    # plus retiring ECR's grants; never directly, never through S3.
    deployer = _by_sid(stmts, "DeployerThroughServices")
    assert deployer["Principal"] == {"AWS": facts.deployer}
    assert _actions(deployer) == DEPLOYER_THROUGH_SERVICES
    assert deployer["Condition"]["StringEquals"]["kms:CallerAccount"] == facts.account
    assert sorted(as_list(deployer["Condition"]["StringEquals"]["kms:ViaService"])) == sorted(
        facts.via(s) for s in DEPLOYER_SERVICES
    )
    retire = _by_sid(stmts, "DeployerRetiresServiceGrants")
    assert retire["Principal"] == {"AWS": facts.deployer} and "Condition" not in retire
    assert as_list(retire["Action"]) == ["kms:RetireGrant"]
    # The master secret: written and key-checked through Secrets Manager, never read.
    secret_arns = f"arn:aws:secretsmanager:{facts.region}:{facts.account}:secret:rds!*"
    writes = _by_sid(stmts, "DeployerWritesTheMasterSecret")
    assert as_list(writes["Action"]) == ["kms:GenerateDataKey"]
    assert writes["Condition"]["StringLike"] == {"kms:EncryptionContext:SecretARN": secret_arns}
    check = _by_sid(stmts, "DeployerValidatesTheSecretKeyOnly")
    assert as_list(check["Action"]) == ["kms:Decrypt"]
    assert check["Condition"]["StringEquals"]["kms:EncryptionContext:SecretVersionId"] == (
        "RequestToValidateKeyAccess"
    )
    # The deployer is named in exactly these statements and the administration one; in an
    # experiment also in the one `experiment conclude` needs (its results store read).
    conclude = (
        []
        if facts.production
        else ["DeployerArchivesTheResults", "DeployerEncryptsTheRetentionPayload"]
    )
    assert sorted(
        st.get("Sid") for st in stmts if facts.deployer in principals(st, "AWS")
    ) == sorted(
        [
            "DeployerRetiresServiceGrants",
            "DeployerThroughServices",
            "DeployerValidatesTheSecretKeyOnly",
            "DeployerWritesTheMasterSecret",
            "KeyAdministration",
            *conclude,
        ]
    )
    # Nothing else may hand out grants.
    assert [st.get("Sid") for st in data if grants(st, KMS_GRANT)] == ["DeployerThroughServices"]

    # The database tasks' execution role decrypts the master secret, through Secrets Manager.
    migrator = _by_sid(stmts, "DatabaseTasksReadTheMasterSecret")
    assert migrator["Principal"] == {"AWS": facts.root}
    assert as_list(migrator["Action"]) == ["kms:Decrypt"]
    assert migrator["Condition"] == {
        "ArnEquals": {"aws:PrincipalArn": facts.role_arn("migrator")},
        "StringEquals": {"kms:ViaService": facts.via("secretsmanager")},
    }

    # CloudWatch Logs may use it only for this environment's log groups (and the one RDS
    # exports this environment's database log to).
    logs = [st for st in data if principals(st, "Service") == {facts.via("logs")}]
    assert len(logs) == 1
    log_groups = f"arn:aws:logs:{facts.region}:{facts.account}:log-group:"
    assert logs[0]["Condition"] == {
        "ArnLike": {
            "kms:EncryptionContext:aws:logs:arn": [
                f"{log_groups}/{facts.project}/{facts.stack}/*",
                f"{log_groups}/aws/rds/instance/{facts.project}-{facts.stack}/postgresql",
            ]
        }
    }

    # CloudTrail: data keys for this trail's logs; DescribeKey and the bucket key's Decrypt
    # (no encryption context on those calls) for this trail only.
    trail = [st for st in stmts if principals(st, "Service") == {"cloudtrail.amazonaws.com"}]
    assert sorted(st["Sid"] for st in trail) == [
        "CloudTrailDescribesKeyAndUsesTheBucketKey",
        "CloudTrailEncryptsLogs",
    ]
    encrypts = _by_sid(trail, "CloudTrailEncryptsLogs")
    assert as_list(encrypts["Action"]) == ["kms:GenerateDataKey*"]
    assert encrypts["Condition"] == {
        "StringEquals": {"aws:SourceArn": facts.trail_arn},
        "StringLike": {
            "kms:EncryptionContext:aws:cloudtrail:arn": (
                f"arn:aws:cloudtrail:*:{facts.account}:trail/*"
            )
        },
    }
    describes = _by_sid(trail, "CloudTrailDescribesKeyAndUsesTheBucketKey")
    assert _actions(describes) == {"kms:DescribeKey", "kms:Decrypt"}
    assert describes["Condition"] == {"StringEquals": {"aws:SourceArn": facts.trail_arn}}

    # The audit readers decrypt this trail's log files, through S3, and nothing else.
    readers = [st for st in stmts if st.get("Sid") == "AuditReadersDecryptTrailLogs"]
    if facts.audit_readers:
        assert len(readers) == 1
        assert readers[0]["Principal"] == {"AWS": facts.root}
        assert as_list(readers[0]["Action"]) == ["kms:Decrypt"]
        assert readers[0]["Condition"] == {
            "ArnEquals": {"aws:PrincipalArn": list(facts.audit_readers)},
            "StringEquals": {"kms:ViaService": facts.via("s3")},
            "StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn": facts.trail_arn},
        }
    else:
        assert readers == []

    # Data use by whom, exactly: every principal the data statements narrow to.
    narrowed = {
        arn
        for st in data
        for arn in as_list(st.get("Condition", {}).get("ArnEquals", {}).get("aws:PrincipalArn", []))
    }
    # experiments: also the retention schedule's role (its payload; CKV_AWS_297)
    scheduler = set() if facts.production else {facts.role_arn("scheduler")}
    assert (
        narrowed
        == own_roles
        | {facts.role_arn("migrator")}
        | set(facts.audit_readers)
        | {facts.role_arn(f["role"], f["from"]) for f in facts.inbound()}
        | scheduler
    )
    assert {p for st in data for p in principals(st, "Service")} == {
        facts.via("logs"),
        "cloudtrail.amazonaws.com",
        "cloudwatch.amazonaws.com",
    }
    # Each declared inbound flow has its own decrypt statement, and nothing else from outside.
    foreign = [st for st in data if principals(st, "AWS") - {facts.root, facts.deployer}]
    assert len(foreign) == len(facts.inbound())
    # The break-glass administrators have no data use at all.
    assert [st.get("Sid") for st in data if principals(st, "AWS") & set(facts.admins)] == []


def test_key_administration_grants_no_data_use(state: StackState, facts: Facts) -> None:
    stmts = statements(key_of(state).inputs["policy"])
    admin = _by_sid(stmts, "KeyAdministration")
    assert admin["Effect"] == "Allow" and "Condition" not in admin
    assert set(admin["Principal"]) == {"AWS"}
    assert principals(admin, "AWS") == {facts.deployer, *facts.admins}
    assert _actions(admin) == KEY_ADMIN_ACTIONS  # named one by one: no wildcard
    assert not grants_any(admin, (*KMS_DATA_ACTIONS, KMS_GRANT, "kms:RetireGrant"))
    # The administrators (deployer included) appear in no other Allow, except the deployer's
    # two service-bound statements (checked in the data-use test).
    for st in stmts:
        if st["Effect"] == "Allow" and st is not admin:
            assert not principals(st, "AWS") & set(facts.admins), st
    unconditioned = [st for st in stmts if st["Effect"] == "Allow" and not st.get("Condition")]
    assert sorted(st.get("Sid") for st in unconditioned) == [
        "CloudWatchAlarmsPublishToTheTopic",
        "DeployerRetiresServiceGrants",
        "KeyAdministration",
    ]
    for st in unconditioned:
        if principals(st, "AWS"):
            assert principals(st, "AWS") <= {facts.deployer, *facts.admins}, st
            assert not principals(st, "Service"), st
            assert not grants_any(st, (*KMS_DATA_ACTIONS, KMS_GRANT)), st
        else:  # the alarms' publishing to the encrypted topic: that service, those two actions
            assert st["Principal"] == {"Service": "cloudwatch.amazonaws.com"}, st
            assert _actions(st) == {"kms:Decrypt", "kms:GenerateDataKey*"}, st
    if facts.production:
        assert any(
            st["Effect"] == "Deny"
            and grants(st, "kms:ScheduleKeyDeletion")
            and principals(st, "AWS") == {"*"}
            for st in stmts
        )


# -- data ------------------------------------------------------------------------------------


def test_database_is_private_encrypted_and_iam_authenticated(
    state: StackState, facts: Facts
) -> None:
    key_arn = key_of(state).outputs["arn"]
    db = only(state.of_type(DB), "database").inputs
    assert db["engine"] == "postgres"
    assert db["engineVersion"] == str(
        _value(state.config, "envfence:database", {})["engineVersion"]
    )
    assert db["publiclyAccessible"] is False
    assert db["storageEncrypted"] is True
    assert db["kmsKeyId"] == key_arn
    assert db["iamDatabaseAuthenticationEnabled"] is True
    assert db["manageMasterUserPassword"] is True
    assert db["masterUserSecretKmsKeyId"] == key_arn
    assert "password" not in db
    params = only(
        [p for p in state.of_type(DB_PARAMS) if p.outputs["name"] == db["parameterGroupName"]],
        "parameter group",
    )
    values = {p["name"]: p["value"] for p in params.inputs["parameters"]}
    assert values["rds.force_ssl"] == "1"
    assert params.inputs["family"] == f"postgres{db['engineVersion'].split('.')[0]}"
    group = only(
        [g for g in state.of_type(DB_SUBNETS) if g.outputs["name"] == db["dbSubnetGroupName"]],
        "DB subnet group",
    )
    assert set(group.inputs["subnetIds"]) == {sn.id for sn in subnets(state, "data")}


@pytest.mark.parametrize("check", ["public-access", "encryption", "versioning", "ownership"])
def test_every_bucket_is_private_encrypted_and_versioned(state: StackState, check: str) -> None:
    key_arn = key_of(state).outputs["arn"]
    buckets = state.of_type(BUCKET)
    assert buckets
    for bucket in buckets:
        if check == "public-access":
            block = attached(state, PUBLIC_ACCESS, bucket).inputs
            for flag in (
                "blockPublicAcls",
                "blockPublicPolicy",
                "ignorePublicAcls",
                "restrictPublicBuckets",
            ):
                assert block[flag] is True, (bucket.id, flag)
        elif check == "encryption":
            rules = attached(state, ENCRYPTION, bucket).inputs["rules"]
            assert rules
            for rule in rules:
                default = rule["applyServerSideEncryptionByDefault"]
                assert default["sseAlgorithm"] == "aws:kms", bucket.id
                # The archive of concluded experiments has a key of its own, which outlives the
                # environment's (test_the_archive_has_its_own_undeletable_key).
                own = (
                    state.named("archive-key", KEY).outputs["arn"]
                    if bucket.name == "archive"
                    else key_arn
                )
                assert default["kmsMasterKeyId"] == own, bucket.id
                assert rule["bucketKeyEnabled"] is True, bucket.id
        elif check == "versioning":
            config = attached(state, VERSIONING, bucket).inputs["versioningConfiguration"]
            assert config["status"] == "Enabled", bucket.id
        else:
            rule = attached(state, OWNERSHIP, bucket).inputs["rule"]
            assert rule["objectOwnership"] == "BucketOwnerEnforced", bucket.id


def test_data_stores_exist_with_their_physical_names(state: StackState, facts: Facts) -> None:
    for store in facts.stores:
        bucket = bucket_of(state, facts.bucket(store))
        assert bucket.outputs["arn"] == f"arn:aws:s3:::{facts.bucket(store)}"
        assert bucket.inputs.get("acl") in (None, "private")


def test_data_store_lifecycle_follows_the_tier(state: StackState, facts: Facts) -> None:
    for store in facts.stores:
        rules = attached(state, LIFECYCLE, bucket_of(state, facts.bucket(store))).inputs["rules"]
        enabled = [r for r in rules if r["status"] == "Enabled"]
        assert enabled
        if facts.production:
            for rule in rules:
                assert "expiration" not in rule and "noncurrentVersionExpiration" not in rule
            assert any(r.get("noncurrentVersionTransitions") for r in enabled)
        else:
            days = int(facts.retention.get("expireAfterDays", 30))
            whole_bucket = [r for r in enabled if r.get("filter") in ({}, None)]
            assert [r["expiration"]["days"] for r in whole_bucket if "expiration" in r] == [days]
            assert any(r.get("noncurrentVersionExpiration") for r in whole_bucket)


def test_experiment_data_expires_after_30_days(stacks: dict[str, StackState]) -> None:
    state = stacks["experiment"]
    facts = facts_of(state)
    for store in facts.stores:
        rules = attached(state, LIFECYCLE, bucket_of(state, facts.bucket(store))).inputs["rules"]
        assert [r["expiration"]["days"] for r in rules if "expiration" in r] == [30]


def test_data_store_policies_fence_the_environment(state: StackState, facts: Facts) -> None:
    key_arn = key_of(state).outputs["arn"]
    for store in facts.stores:
        bucket = bucket_of(state, facts.bucket(store))
        arn = bucket.outputs["arn"]
        stmts = statements(attached(state, BUCKET_POLICY, bucket).inputs["policy"])
        denies = [st for st in stmts if st["Effect"] == "Deny"]
        assert sorted(st.get("Sid") for st in denies) == [
            "DenyEncryptionHeaderWithoutThisKey",
            "DenyInsecureTransport",
            "DenyListingOutsideThisEnvironment",
            "DenyOtherEncryptionKeys",
            "DenyPrincipalsOutsideThisEnvironment",
        ], store
        for st in denies:
            assert st["Principal"] in ("*", {"AWS": "*"}), (store, st)

        tls = [
            st
            for st in denies
            if st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
            in ("false", False)
        ]
        assert len(tls) == 1, store
        assert grants(tls[0], "s3:GetObject") and grants(tls[0], "s3:PutBucketPolicy")
        assert set(as_list(tls[0]["Resource"])) == {arn, f"{arn}/*"}

        fences = [
            st
            for st in denies
            if "aws:PrincipalArn" in st.get("Condition", {}).get("ArnNotEquals", {})
        ]
        assert len(fences) == 2, store
        flow_roles = {
            facts.role_arn(f["role"], f["from"]) for f in facts.inbound() if f["store"] == store
        }
        expected = {facts.role_arn(r) for r in DATA_ROLES} | flow_roles

        # Objects: nobody outside the environment's roles and the store's declared flows. The
        # deployer empties experiment buckets on destroy; production data it never touches.
        objects = [st for st in fences if st["Sid"] == "DenyPrincipalsOutsideThisEnvironment"]
        assert len(objects) == 1, store
        st = objects[0]
        assert set(st["Condition"]) == {"ArnNotEquals"}, "the fence must not be conditional"
        assert set(as_list(st["Resource"])) == {arn, f"{arn}/*"}
        assert _actions(st) == STORE_OBJECT_FENCE, store
        for action in S3_OBJECT_ACTIONS:
            assert grants(st, action), (store, action)
        assert not grants_any(st, S3_LIST_ACTIONS), "listing has its own fence"
        exempt = set(as_list(st["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]))
        if facts.production:
            assert exempt == expected, store
            assert facts.deployer not in exempt and not exempt & set(facts.admins)
        else:
            assert exempt == expected | {facts.deployer}, store

        # Listing (object keys, not contents): the same principals and the deployer, whose
        # provider reads the bucket back with HeadBucket (authorized as s3:ListBucket).
        listing = [st for st in fences if st["Sid"] == "DenyListingOutsideThisEnvironment"]
        assert len(listing) == 1, store
        st = listing[0]
        assert set(st["Condition"]) == {"ArnNotEquals"}, "the fence must not be conditional"
        assert as_list(st["Resource"]) == [arn]
        assert _actions(st) == set(S3_LIST_ACTIONS), store
        exempt = set(as_list(st["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]))
        assert exempt == expected | {facts.deployer}, store
        assert not exempt & set(facts.admins)

        # Writes are encrypted with the environment's key: a key id other than ours, or an SSE
        # header without a key id (AES256, or aws:kms with the AWS managed key), is refused.
        # No header at all is fine: the bucket default is our key.
        other_key = _by_sid(denies, "DenyOtherEncryptionKeys")
        assert as_list(other_key["Action"]) == ["s3:PutObject"]
        assert as_list(other_key["Resource"]) == [f"{arn}/*"]
        assert other_key["Condition"] == {
            "StringNotEquals": {SSE_KEY_ID: key_arn},
            "Null": {SSE_KEY_ID: "false"},
        }
        no_key = _by_sid(denies, "DenyEncryptionHeaderWithoutThisKey")
        assert as_list(no_key["Action"]) == ["s3:PutObject"]
        assert as_list(no_key["Resource"]) == [f"{arn}/*"]
        assert no_key["Condition"] == {"Null": {SSE_HEADER: "false", SSE_KEY_ID: "true"}}

        # Allows exist only for declared flows: read-only, to exactly the flow's role.
        for allow in [s for s in stmts if s["Effect"] == "Allow"]:
            roles = set(as_list(allow["Condition"]["ArnEquals"]["aws:PrincipalArn"]))
            assert roles and roles <= flow_roles, (store, allow)
            assert not grants_any(allow, ("s3:PutObject", "s3:DeleteObject", "s3:PutBucketPolicy"))
        assert bool([s for s in stmts if s["Effect"] == "Allow"]) == bool(flow_roles)


# -- identity --------------------------------------------------------------------------------


def test_roles_carry_the_environment_boundary_and_tags(state: StackState, facts: Facts) -> None:
    boundary = boundary_of(state, facts)
    names = {r.inputs["name"] for r in state.of_type(ROLE)}
    # Every role of the environment, and (experiments only) the retention schedule's role.
    scheduler = () if facts.production else ("scheduler",)
    assert names == {f"{facts.project}-{facts.stack}-{r}" for r in (*ENV_ROLES, *scheduler)}
    for role in state.of_type(ROLE):
        assert role.inputs["name"].startswith(f"{facts.project}-{facts.stack}-")
        assert role.inputs["permissionsBoundary"] == boundary.outputs["arn"], role.name
        tags = merged_tags(state, role)
        for key, value in facts.tags().items():
            assert tags.get(key) == value, (role.name, key)


def test_boundary_denies_session_tags_and_environment_tag_changes(
    state: StackState, facts: Facts
) -> None:
    denies = [
        st
        for st in statements(boundary_of(state, facts).inputs["policy"])
        if st["Effect"] == "Deny"
    ]
    session = [st for st in denies if grants(st, "sts:TagSession") and not st.get("Condition")]
    assert session and "*" in as_list(session[0]["Resource"])
    tag_changes = [
        st
        for st in denies
        if "aws:TagKeys" in st.get("Condition", {}).get("ForAnyValue:StringEquals", {})
    ]
    assert len(tag_changes) == 1
    keys = set(as_list(tag_changes[0]["Condition"]["ForAnyValue:StringEquals"]["aws:TagKeys"]))
    assert {"environment", "tier", "data-classification", "experiment-id"} <= keys
    for action in ("ec2:CreateTags", "s3:PutBucketTagging", "iam:TagRole", "kms:TagResource"):
        assert grants(tag_changes[0], action)


def test_boundary_denies_data_and_keys_of_other_environments(
    state: StackState, facts: Facts
) -> None:
    denies = [
        st
        for st in statements(boundary_of(state, facts).inputs["policy"])
        if st["Effect"] == "Deny" and not st.get("Condition")
    ]
    s3 = [st for st in denies if grants(st, "s3:GetObject") and "NotResource" in st]
    assert len(s3) == 1
    expected = facts.own_bucket_arns()
    for flow in facts.outbound():
        expected |= facts.bucket_arns(flow["store"], flow["to"])
    assert set(as_list(s3[0]["NotResource"])) == expected

    kms = [st for st in denies if grants(st, "kms:Decrypt") and "NotResource" in st]
    assert len(kms) == 1
    peer_keys = {
        f"arn:aws:kms:{facts.region}:{facts.account_of(f['to'])}:key/*" for f in facts.outbound()
    }
    assert set(as_list(kms[0]["NotResource"])) == {key_of(state).outputs["arn"]} | peer_keys

    # Only the environment's own roles may be assumed or passed under the boundary. The
    # experiment's `scheduler` role (assumed by EventBridge Scheduler alone) is not among them:
    # no role of the environment needs to assume or pass it.
    own_roles = {r.outputs["arn"] for r in state.of_type(ROLE)}
    env_roles = {facts.role_arn(r) for r in ENV_ROLES}
    assert env_roles <= own_roles
    for action in ("sts:AssumeRole", "iam:PassRole"):
        fence = [st for st in denies if grants(st, action) and "NotResource" in st]
        assert len(fence) == 1, action
        assert set(as_list(fence[0]["NotResource"])) == env_roles, action


def _trust(state: StackState, facts: Facts, role: str) -> list[dict[str, Any]]:
    return statements(
        role_named(state, f"{facts.project}-{facts.stack}-{role}").inputs["assumeRolePolicy"]
    )


@pytest.mark.parametrize("role", ["service", "pipeline"])
def test_task_roles_trust_ecs_tasks_of_this_account_only(
    state: StackState, facts: Facts, role: str
) -> None:
    stmts = _trust(state, facts, role)
    assert stmts
    for st in stmts:
        assert st["Effect"] == "Allow"
        assert st["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert as_list(st["Action"]) == ["sts:AssumeRole"]
        assert st["Condition"]["StringEquals"]["aws:SourceAccount"] == facts.account


def test_analyst_role_trusts_only_the_configured_principals(
    state: StackState, facts: Facts
) -> None:
    assert facts.analysts, "the stack file configures analysts"
    stmts = _trust(state, facts, "analyst")
    assert stmts
    for st in stmts:
        assert st["Effect"] == "Allow"
        assert as_list(st["Action"]) == ["sts:AssumeRole"]
        assert set(st["Principal"]) == {"AWS"}
        assert principals(st, "AWS") == set(facts.analysts)
        assert set(as_list(st["Condition"]["ArnEquals"]["aws:PrincipalArn"])) == set(facts.analysts)


def test_every_trust_policy_is_bound_to_this_account(state: StackState, facts: Facts) -> None:
    for role in state.of_type(ROLE):
        for st in statements(role.inputs["assumeRolePolicy"]):
            if st["Effect"] != "Allow":
                continue
            assert "*" not in principals(st, "AWS") and st.get("Principal") != "*", role.name
            for arn in principals(st, "AWS"):
                assert arn.startswith(f"arn:aws:iam::{facts.account}:"), (role.name, arn)
            if principals(st, "Service") == {"cloudtrail.amazonaws.com"}:
                # CloudTrail does not document the source keys on AssumeRole (identity.py)
                condition = st["Condition"]["StringEqualsIfExists"]
                assert condition["aws:SourceAccount"] == facts.account
            elif principals(st, "Service"):
                assert st["Condition"]["StringEquals"]["aws:SourceAccount"] == facts.account


def test_role_policies_are_attached_to_this_environments_roles(
    state: StackState, facts: Facts
) -> None:
    roles = {r.outputs["id"] for r in state.of_type(ROLE)} | {r.id for r in state.of_type(ROLE)}
    policies = state.of_type(ROLE_POLICY)
    assert {p.inputs["role"] for p in policies} >= {
        f"{facts.project}-{facts.stack}-{r}" for r in ENV_ROLES
    }
    for policy in policies:
        assert policy.inputs["role"] in roles
        for st in statements(policy.inputs["policy"]):
            assert st["Effect"] == "Allow"
            assert "NotAction" not in st and "NotResource" not in st
            assert not grants(st, "iam:PassRole") or "*" not in as_list(st["Resource"])
            assert as_list(st.get("Action")) != ["*"]


# Actions the Service Authorization Reference lists with no resource type, so `Resource: "*"`
# is the only way to grant them; each cites its page.
RESOURCELESS = {
    "ecr:GetAuthorizationToken": "https://docs.aws.amazon.com/service-authorization/latest/"
    "reference/list_amazonelasticcontainerregistry.html",
}
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
APPCONFIG_PROFILE = "aws:appconfig/configurationProfile:ConfigurationProfile"
APPCONFIG_ENVIRONMENT = "aws:appconfig/environment:Environment"


def _own_resource_arns(state: StackState, facts: Facts) -> set[str]:
    """The ARNs of this stack's own resources, and those AWS derives from them: the database's
    IAM-authentication users and its RDS-managed master secret, AppConfig Data configurations."""
    own = {str(r.outputs["arn"]) for r in state.resources if isinstance(r.outputs.get("arn"), str)}
    for db in state.of_type(DB):
        rid = db.outputs["resourceId"]
        own.add(f"arn:aws:rds-db:{facts.region}:{facts.account}:dbuser:{rid}/*")
        own |= {str(x["secretArn"]) for x in db.outputs.get("masterUserSecrets") or []}
    for profile in state.of_type(APPCONFIG_PROFILE):
        app, _, profile_id = str(profile.outputs["arn"]).partition("/configurationprofile/")
        for env in state.of_type(APPCONFIG_ENVIRONMENT):
            if str(env.outputs["arn"]).startswith(app + "/environment/"):
                own.add(f"{env.outputs['arn']}/configuration/{profile_id}")
    return own


def _names_own(resource: str, own: set[str]) -> bool:
    """Exactly one of the stack's own ARNs, or a documented way of naming what lies inside one:
    a bucket's objects (`bucket/*`), a log group's streams (`group:log-stream:*`), a task
    definition's revisions (`family:*`), a database's users (`dbuser:<its resource id>/<user>`)."""
    if "?" in resource:
        return False
    if "*" not in resource:
        if ":dbuser:" in resource:  # a user of one of our databases
            return resource.rpartition("/")[0] + "/*" in own
        return resource in own
    head, star, rest = resource.partition("*")
    if rest or not star:  # one wildcard, at the very end
        return False
    if head.startswith("arn:aws:s3:::") and head.endswith("/"):
        return head[:-1] in own
    if head.startswith("arn:aws:logs:") and head.endswith(":log-stream:"):
        return head[: -len(":log-stream:")] in own
    if ":task-definition/" in head and head.endswith(":"):
        return any(a.rpartition(":")[0] == head[:-1] for a in own if ":task-definition/" in a)
    return False


def _declared_flow_resource(st: dict[str, Any], resource: str, facts: Facts, role: str) -> bool:
    """The peer store (and its key, pinned to S3 and to the peer's environment tag) that a
    declared flow lets this role read, in the flow's own statements."""
    for flow in facts.outbound():
        if role != f"{facts.project}-{facts.stack}-{flow['role']}":
            continue
        peer = flow["to"]
        if resource in facts.bucket_arns(flow["store"], peer):
            return _actions(st) <= {"s3:ListBucket", "s3:GetObject"}
        peer_keys = f"arn:aws:kms:{facts.region}:{facts.account_of(peer)}:key/*"
        if resource == peer_keys:
            return _actions(st) == {"kms:Decrypt"} and st.get("Condition") == {
                "StringEquals": {
                    "kms:ViaService": facts.via("s3"),
                    "aws:ResourceTag/environment": peer,
                }
            }
    return False


def test_role_policies_name_only_this_environments_resources(
    state: StackState, facts: Facts
) -> None:
    """Every Allow of every role's policies names this environment's own resources, one by one:
    no `*` (except for an action that takes no resource), no pattern that reaches past them, no
    other environment's names or accounts -- but the peer store (and key) of a declared flow, to
    the flow's role only."""
    own = _own_resource_arns(state, facts)
    others = [stack for stack in STACKS if stack != facts.stack]
    foreign = [f"{facts.project}-{o}-" for o in others] + [f"/{facts.project}/{o}/" for o in others]
    foreign_accounts = {
        json.loads(PROJECT.stack_config(o)["envfence:allowedAccountIds"])[0] for o in others
    } - {facts.account}
    assert state.of_type(ROLE_POLICY_ATTACHMENT) == []  # managed policies: not pinned here
    checked: dict[str, int] = {}
    for role in state.of_type(ROLE):
        name = role.inputs["name"]
        docs = [p.inputs["policy"] for p in state.of_type(ROLE_POLICY) if p.inputs["role"] == name]
        docs += [i["policy"] for i in role.inputs.get("inlinePolicies") or [] if i.get("policy")]
        for document in docs:
            for st in statements(document):
                assert st["Effect"] == "Allow" and "NotResource" not in st, (name, st)
                resources = as_list(st["Resource"])
                assert resources, (name, st)
                checked[name] = checked.get(name, 0) + 1
                if "*" in resources:
                    assert resources == ["*"], (name, st)
                    assert _actions(st) <= set(RESOURCELESS), (name, st["Sid"], "Resource *")
                    continue
                for resource in resources:
                    if _declared_flow_resource(st, resource, facts, name):
                        continue
                    assert _names_own(resource, own), (name, st["Sid"], resource)
                    assert not any(f in resource for f in foreign), (name, st["Sid"], resource)
                    assert not any(a in resource for a in foreign_accounts), (name, resource)
    # Not vacuous: every environment role has statements, and all were checked.
    for kind in ENV_ROLES:
        assert checked.get(f"{facts.project}-{facts.stack}-{kind}", 0) > 0, (kind, checked)


# -- protection ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRODUCTION)
def test_production_data_is_protected(stacks: dict[str, StackState], name: str) -> None:
    state = stacks[name]
    facts = facts_of(state)
    protected = [key_of(state), only(state.of_type(DB), "database")]
    protected += [bucket_of(state, facts.bucket(store)) for store in facts.stores]
    for r in protected:
        assert r.protect is True, r.name
        assert r.retain_on_delete is True, r.name
    db = only(state.of_type(DB), "database").inputs
    assert db["deletionProtection"] is True
    assert db["finalSnapshotIdentifier"]
    assert db["skipFinalSnapshot"] is False
    for store in facts.stores:
        assert bucket_of(state, facts.bucket(store)).inputs["forceDestroy"] is False


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_is_disposable(stacks: dict[str, StackState], name: str) -> None:
    state = stacks[name]
    facts = facts_of(state)
    assert [r.name for r in state.resources if r.protect] == []
    # Only the account's archive of concluded experiments outlives a `pulumi destroy` of the
    # baseline (retained, not protected: the destroy itself still runs).
    retained = sorted(r.name for r in state.resources if r.retain_on_delete)
    archive = [
        "archive",
        "archive-encryption",
        "archive-key",
        "archive-key-alias",
        "archive-lifecycle",
        "archive-ownership",
        "archive-policy",
        "archive-public-access",
        "archive-versioning",
    ]
    assert retained == (archive if name == "experiment" else [])
    for store in facts.stores:
        assert bucket_of(state, facts.bucket(store)).inputs["forceDestroy"] is True
    db = only(state.of_type(DB), "database").inputs
    assert db["skipFinalSnapshot"] is True
    assert not db.get("finalSnapshotIdentifier")


# -- provider --------------------------------------------------------------------------------


def test_every_aws_resource_uses_the_stacks_explicit_provider(state: StackState) -> None:
    provider = only(state.of_type(PROVIDER), "aws provider")
    assert not provider.name.startswith("default")
    assert [
        r.name
        for r in state.resources
        if r.type.startswith("pulumi:providers:") and r.name.startswith("default")
    ] == []
    ref = f"{provider.urn}::{provider.id}"
    aws_resources = [r for r in state.resources if r.type.startswith("aws:")]
    assert len(aws_resources) > 30
    assert [r.urn for r in aws_resources if r.provider != ref] == []
    assert json.loads(state.config["pulumi:disable-default-providers"]) == ["*"]


def test_provider_is_pinned_to_the_account_and_tags_everything(
    state: StackState, facts: Facts
) -> None:
    provider = only(state.of_type(PROVIDER), "aws provider")
    assert json.loads(provider.inputs["allowedAccountIds"]) == [facts.account]
    assert provider.inputs["region"] == facts.region
    assert json.loads(provider.inputs["defaultTags"]) == {"tags": facts.tags()}


def test_the_archive_has_its_own_undeletable_key(stacks: dict[str, StackState]) -> None:
    """Only the experiment account's baseline has an archive; its key is nobody's to delete,
    and no role of the environment may use it: the deployer writes and reads the archive
    through S3 and copies snapshots under it through RDS, the audit readers read."""
    assert not [k for k in stacks["prod"].of_type(KEY) if k.name == "archive-key"]
    state = stacks["experiment"]
    facts = facts_of(state)
    key = state.named("archive-key", KEY)
    assert key.inputs["enableKeyRotation"] is True
    stmts = {st["Sid"]: st for st in statements(key.inputs["policy"])}
    archive = f"arn:aws:s3:::envfence-experiment-archive-{facts.account}"
    assert sorted(stmts) == [
        "ArchiveKeyIsNeverDeleted",
        "AuditReadersReadTheArchive",
        "DeployerCopiesSnapshotsUnderIt",
        "DeployerWritesTheArchive",
        "KeyAdministration",
    ]
    never = stmts["ArchiveKeyIsNeverDeleted"]
    assert (never["Effect"], never["Principal"], _actions(never)) == (
        "Deny",
        {"AWS": "*"},
        {"kms:ScheduleKeyDeletion"},
    )
    writes = stmts["DeployerWritesTheArchive"]
    assert writes["Principal"] == {"AWS": facts.deployer}
    assert _actions(writes) == {"kms:GenerateDataKey", "kms:Decrypt"}
    assert writes["Condition"] == {
        "StringEquals": {
            "kms:CallerAccount": facts.account,
            "kms:ViaService": facts.via("s3"),
            "kms:EncryptionContext:aws:s3:arn": archive,
        }
    }
    copies = stmts["DeployerCopiesSnapshotsUnderIt"]
    assert _actions(copies) == {"kms:CreateGrant", "kms:DescribeKey"}
    assert copies["Condition"]["StringEquals"]["kms:ViaService"] == facts.via("rds")
    readers = stmts["AuditReadersReadTheArchive"]
    assert _actions(readers) == {"kms:Decrypt"}
    assert readers["Condition"]["StringEquals"]["kms:EncryptionContext:aws:s3:arn"] == archive
    # No role of the environment is named anywhere in it.
    assert f":role/envfence-{facts.stack}-" not in json.dumps(stmts)


def test_the_archive_bucket_is_written_by_the_deployer_and_deleted_by_nobody(
    stacks: dict[str, StackState],
) -> None:
    """The archive's policy, statement by statement, and its lifecycle: what it keeps expires
    after `archive.expireAfterDays` (Pulumi.yaml: 365), overwritten versions no sooner."""
    state = stacks["experiment"]
    facts = facts_of(state)
    policy = state.named("archive-policy", BUCKET_POLICY).inputs["policy"]
    stmts = {st["Sid"]: st for st in statements(policy)}
    assert sorted(stmts) == [
        "DenyDeletingArchives",
        "DenyInsecureTransport",
        "DenyListingTheArchiveButItsReaders",
        "DenyReadingTheArchiveButItsReaders",
        "DenyReconfiguringTheArchiveButTheDeployer",
        "DenyWritingTheArchiveButTheDeployer",
    ]
    assert all(st["Effect"] == "Deny" and st["Principal"] == "*" for st in stmts.values())
    delete = stmts["DenyDeletingArchives"]
    assert "Condition" not in delete and "s3:DeleteObject*" in _actions(delete)
    readers = [facts.deployer, *facts.audit_readers]
    for sid, who in (
        ("DenyWritingTheArchiveButTheDeployer", [facts.deployer]),
        ("DenyReconfiguringTheArchiveButTheDeployer", [facts.deployer]),
        ("DenyReadingTheArchiveButItsReaders", readers),
        ("DenyListingTheArchiveButItsReaders", readers),
    ):
        assert stmts[sid]["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": who}}, sid
    assert {"s3:PutLifecycleConfiguration", "s3:PutBucketPolicy"} <= _actions(
        stmts["DenyReconfiguringTheArchiveButTheDeployer"]
    )
    [rule] = state.named("archive-lifecycle", LIFECYCLE).inputs["rules"]
    assert rule["expiration"] == {"days": 365}
    assert rule["noncurrentVersionExpiration"] == {"noncurrentDays": 365}
