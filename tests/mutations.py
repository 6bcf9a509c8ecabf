"""Reusable leaks: mutations that turn a clean pair of evaluated stacks into a leaky one.

Every mutation takes `stacks` (stack name -> StackState, already a deep copy of the evaluated
states: use `mutated()` to get one) and changes it in place the way a real change to the program
would show up in deployed state:

- properties change through `Resource.set()` / `Resource.drop()`, which update the input and
  the output the provider echoes (the rules read outputs first, so editing only `inputs` would
  test nothing);
- new resources are clones of resources the stack already has (`clone()`): same provider
  reference, same parent component, same stack and project in the URN, with the type, name,
  inputs and computed outputs a real registration of that type would have. Nothing here is a
  hand-written minimal fake.

`at` is the stack the change is made in, `peer` the other environment it leaks towards. The
defaults follow the repository's pair: prod (123456789012, 10.10.0.0/16) and experiment
(210987654321, 10.20.0.0/16), with the declared flow prod/pipeline reads experiment/results.

`MUTATIONS` lists every leak by name, so proof tests can iterate over the same leaks;
`NEAR_MISSES` lists changes that must stay quiet.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from envfence.model import UNKNOWN, Resource, StackState

Stacks = dict[str, StackState]
Mutation = Callable[..., Any]

MUTATIONS: dict[str, Mutation] = {}
"""Every leak, by name: proof tests iterate over the same leaks."""
NEAR_MISSES: dict[str, Mutation] = {}
"""Changes that look like leaks but are not: every rule must stay quiet."""


def leak(fn: Mutation) -> Mutation:
    MUTATIONS[fn.__name__] = fn
    return fn


def near_miss(fn: Mutation) -> Mutation:
    NEAR_MISSES[fn.__name__] = fn
    return fn


PROD, EXPERIMENT = "prod", "experiment"

# Type tokens of the resources the mutations add or edit.
VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE = "aws:ec2/route:Route"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
DEFAULT_SECURITY_GROUP = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
PEERING = "aws:ec2/vpcPeeringConnection:VpcPeeringConnection"
TGW_ATTACHMENT = "aws:ec2transitgateway/vpcAttachment:VpcAttachment"
RAM_SHARE = "aws:ram/resourceShare:ResourceShare"
RAM_PRINCIPAL = "aws:ram/principalAssociation:PrincipalAssociation"
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
QUEUE_POLICY = "aws:sqs/queuePolicy:QueuePolicy"
SECRET_POLICY = "aws:secretsmanager/secretPolicy:SecretPolicy"
DB = "aws:rds/instance:Instance"
DB_SNAPSHOT = "aws:rds/snapshot:Snapshot"
KEY = "aws:kms/key:Key"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
LAMBDA = "aws:lambda/function:Function"
KEY_ALIAS = "aws:kms/alias:Alias"
QUEUE = "aws:sqs/queue:Queue"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
REPOSITORY = "aws:ecr/repository:Repository"
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
ECS_SERVICE = "aws:ecs/service:Service"
IMAGE = "docker:index/image:Image"
TRAIL = "aws:cloudtrail/trail:Trail"
EIP = "aws:ec2/eip:Eip"
AWS_PROVIDER = "pulumi:providers:aws"

S3_FULL_ACCESS = "arn:aws:iam::aws:policy/AmazonS3FullAccess"


# --------------------------------------------------------------------------------------------
# Copies and lookups


def mutated(stacks: Mapping[str, StackState], *mutations: Mutation, **kwargs: Any) -> Stacks:
    """A deep copy of `stacks` with each mutation applied (keyword arguments go to each)."""
    out = copy.deepcopy(dict(stacks))
    for m in mutations:
        m(out, **kwargs)
    return out


def provider(state: StackState) -> Resource:
    return next(r for r in state.resources if r.type == AWS_PROVIDER)


def account(state: StackState) -> str:
    raw = provider(state).inputs["allowedAccountIds"]
    return str((json.loads(raw) if isinstance(raw, str) else raw)[0])


def region(state: StackState) -> str:
    return str(provider(state).inputs["region"])


def vpc(state: StackState) -> Resource:
    return state.of_type(VPC)[0]


def cidr(state: StackState) -> str:
    return str(vpc(state).get("cidrBlock"))


def role_arn(state: StackState, role: str) -> str:
    return str(state.named(f"role-{role}", ROLE).get("arn"))


def key_arn(state: StackState) -> str:
    return str(state.named("key", KEY).get("arn"))


def bucket_arn(state: StackState, store: str) -> str:
    return str(state.named(f"store-{store}", BUCKET).get("arn"))


def fake_id(prefix: str, *parts: str, length: int = 17) -> str:
    """A deterministic cloud id in the style the evaluator's mocks use (`pcx-0a1b...`)."""
    return f"{prefix}-{hashlib.sha256('/'.join(parts).encode()).hexdigest()[:length]}"


def policy(r: Resource, key: str = "policy") -> dict[str, Any]:
    raw = r.get(key)
    return json.loads(raw) if isinstance(raw, str) else copy.deepcopy(raw)


def set_policy(r: Resource, doc: dict[str, Any], key: str = "policy") -> None:
    r.set(key, json.dumps(doc))


def add_statement(r: Resource, stmt: dict[str, Any], key: str = "policy") -> None:
    doc = policy(r, key)
    doc["Statement"] = [*doc.get("Statement", []), stmt]
    set_policy(r, doc, key)


def drop_statement(r: Resource, sid: str, key: str = "policy") -> None:
    doc = policy(r, key)
    before = len(doc["Statement"])
    doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") != sid]
    assert len(doc["Statement"]) == before - 1, f"{r.name} has no statement {sid}"
    set_policy(r, doc, key)


def remove(state: StackState, r: Resource) -> None:
    state.resources = [x for x in state.resources if x.urn != r.urn]


def clone(
    state: StackState,
    source: Resource,
    *,
    type_: str,
    name: str,
    inputs: dict[str, Any],
    computed: dict[str, Any] | None = None,
    id_: str | None = None,
    dependencies: list[str] | None = None,
) -> Resource:
    """Add a resource of `type_` to `state`, registered like `source`: same provider, parent
    component and URN prefix; inputs echoed into outputs, plus the `computed` outputs."""
    qualified = source.urn.split("::")[2]
    parents = qualified.rsplit("$", 1)[0] + "$" if "$" in qualified else ""
    r = copy.deepcopy(source)
    r.urn = "::".join([*source.urn.split("::")[:2], parents + type_, name])
    r.type = type_
    r.id = id_ or fake_id(name, state.stack, type_)
    r.inputs = copy.deepcopy(inputs)
    r.outputs = {**copy.deepcopy(inputs), **(computed or {}), "id": r.id}
    if "tags" in inputs:
        r.outputs["tagsAll"] = dict(inputs["tags"])
    r.dependencies = list(dependencies if dependencies is not None else [])
    r.property_dependencies = {k: [] for k in inputs}
    r.protect = r.retain_on_delete = False
    state.resources.append(r)
    return r


# --------------------------------------------------------------------------------------------
# EF1xx network


@leak
def vpc_peering(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """A VPC peering connection from `at`'s VPC to `peer`'s VPC (EF101)."""
    s, o = stacks[at], stacks[peer]
    own = vpc(s)
    pid = fake_id("pcx", at, peer)
    return clone(
        s,
        own,
        type_=PEERING,
        name=f"peer-{peer}",
        id_=pid,
        inputs={
            "vpcId": own.id,
            "peerVpcId": vpc(o).id,
            "peerOwnerId": account(o),
            "peerRegion": region(o),
            "autoAccept": False,
            "tags": {"Name": f"{at}-to-{peer}"},
        },
        computed={
            "acceptStatus": "pending-acceptance",
            "arn": f"arn:aws:ec2:{region(s)}:{account(s)}:vpc-peering-connection/{pid}",
        },
        dependencies=[own.urn],
    )


@leak
def transit_gateway_attachment(stacks: Stacks, at: str = PROD) -> Resource:
    """The VPC of `at` attached to a (shared) transit gateway (EF102)."""
    s = stacks[at]
    own = vpc(s)
    subnets = [r.id for r in s.of_type(SUBNET) if (r.get("tags") or {}).get("subnet-tier") == "app"]
    aid = fake_id("tgw-attach", at)
    return clone(
        s,
        own,
        type_=TGW_ATTACHMENT,
        name="tgw-attachment",
        id_=aid,
        inputs={
            "transitGatewayId": "tgw-0123456789abcdef0",
            "vpcId": own.id,
            "subnetIds": subnets,
        },
        computed={"vpcOwnerId": account(s)},
        dependencies=[own.urn],
    )


@leak
def route_via_peering(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """A route in an app route table of `at` to `peer`'s VPC CIDR through a peering (EF103)."""
    s, o = stacks[at], stacks[peer]
    table = s.named("rt-app-0")
    source = next(iter(s.of_type(ROUTE)), table)
    return clone(
        s,
        source,
        type_=ROUTE,
        name=f"route-app-0-{peer}",
        inputs={
            "routeTableId": table.id,
            "destinationCidrBlock": cidr(o),
            "vpcPeeringConnectionId": fake_id("pcx", at, peer),
        },
        dependencies=[table.urn],
    )


@leak
def data_subnet_route(stacks: Stacks, at: str = EXPERIMENT) -> Resource:
    """A default route via NAT in the data subnets' route table (EF107). Needs a NAT (the
    experiment stack has one)."""
    s = stacks[at]
    table = s.named("rt-data")
    nat = s.named("nat-0")
    return clone(
        s,
        s.of_type(ROUTE)[0],
        type_=ROUTE,
        name="route-data-nat",
        inputs={
            "routeTableId": table.id,
            "destinationCidrBlock": "0.0.0.0/0",
            "natGatewayId": nat.id,
        },
        dependencies=[table.urn, nat.urn],
    )


def _db_ingress(stacks: Stacks, at: str) -> Resource:
    r = stacks[at].named("sg-db-in-postgres", SG_INGRESS_RULE)
    r.drop("referencedSecurityGroupId")
    return r


@leak
def ingress_from_other_cidr(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """The database's PostgreSQL ingress admits `peer`'s whole VPC CIDR (EF104)."""
    r = _db_ingress(stacks, at)
    r.set("cidrIpv4", cidr(stacks[peer]))
    return r


@near_miss
def ingress_from_own_cidr(stacks: Stacks, at: str = PROD) -> Resource:
    """Near miss: PostgreSQL ingress from an app subnet of the same VPC (allowed)."""
    s = stacks[at]
    r = _db_ingress(stacks, at)
    r.set("cidrIpv4", str(s.named("subnet-app-0").get("cidrBlock")))
    return r


@leak
def ingress_from_anywhere(stacks: Stacks, at: str = PROD) -> Resource:
    """PostgreSQL ingress from 0.0.0.0/0 (EF104)."""
    r = _db_ingress(stacks, at)
    r.set("cidrIpv4", "0.0.0.0/0")
    return r


@leak
def ingress_from_ipv6(stacks: Stacks, at: str = PROD) -> Resource:
    """PostgreSQL ingress from an IPv6 range: nothing inside the VPC has IPv6 (EF104)."""
    r = _db_ingress(stacks, at)
    r.set("cidrIpv6", "2001:db8:1234::/56")
    return r


@leak
def ingress_from_prefix_list(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """PostgreSQL ingress from `peer`'s S3 endpoint prefix list, not one of `at`'s (EF104)."""
    r = _db_ingress(stacks, at)
    r.set("prefixListId", str(stacks[peer].named("s3-endpoint").get("prefixListId")))
    return r


@leak
def ingress_from_other_sg(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """PostgreSQL ingress from `peer`'s application security group (EF104)."""
    r = stacks[at].named("sg-db-in-postgres", SG_INGRESS_RULE)
    r.set("referencedSecurityGroupId", stacks[peer].named("sg-app", SECURITY_GROUP).id)
    return r


@leak
def inline_sg_ingress(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """An inline `ingress` block on the database security group from `peer`'s CIDR (EF104)."""
    r = stacks[at].named("sg-db", SECURITY_GROUP)
    r.set(
        "ingress",
        [
            {
                "protocol": "tcp",
                "fromPort": 5432,
                "toPort": 5432,
                "cidrBlocks": [cidr(stacks[peer])],
                "ipv6CidrBlocks": [],
                "prefixListIds": [],
                "securityGroups": [],
                "self": False,
                "description": "PostgreSQL from the peer",
            }
        ],
    )
    return r


@leak
def default_sg_ingress(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """An inline `ingress` on the VPC's default security group from `peer`'s CIDR (EF104)."""
    r = stacks[at].named("default-sg", DEFAULT_SECURITY_GROUP)
    r.set(
        "ingress",
        [
            {
                "protocol": "-1",
                "fromPort": 0,
                "toPort": 0,
                "cidrBlocks": [cidr(stacks[peer])],
                "ipv6CidrBlocks": [],
                "prefixListIds": [],
                "securityGroups": [],
                "self": False,
            }
        ],
    )
    return r


@leak
def sg_rule_ingress(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """An ec2 SecurityGroupRule of type ingress on the db group from `peer`'s CIDR (EF104)."""
    s = stacks[at]
    src = s.named("sg-db-in-postgres", SG_INGRESS_RULE)
    sg = s.named("sg-db", SECURITY_GROUP)
    return clone(
        s,
        src,
        type_=SG_RULE,
        name="sg-db-in-postgres-legacy",
        inputs={
            "type": "ingress",
            "securityGroupId": sg.id,
            "protocol": "tcp",
            "fromPort": 5432,
            "toPort": 5432,
            "cidrBlocks": [cidr(stacks[peer])],
        },
        dependencies=[sg.urn],
    )


@leak
def ingress_rule_on_other_sg(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """`at` manages an ingress rule on `peer`'s database security group that admits `at`'s own
    CIDR: `peer`'s database is opened to `at`'s network (EF104/EF105)."""
    s = stacks[at]
    src = s.named("sg-db-in-postgres", SG_INGRESS_RULE)
    return clone(
        s,
        src,
        type_=SG_INGRESS_RULE,
        name="sg-peer-db-in-postgres",
        inputs={
            "securityGroupId": stacks[peer].named("sg-db", SECURITY_GROUP).id,
            "ipProtocol": "tcp",
            "fromPort": 5432,
            "toPort": 5432,
            "cidrIpv4": cidr(s),
            "description": "PostgreSQL from the peer",
        },
    )


@leak
def subnet_in_other_vpc(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """An app subnet of `at` placed in `peer`'s VPC (EF105)."""
    r = stacks[at].named("subnet-app-0", SUBNET)
    r.set("vpcId", vpc(stacks[peer]).id)
    return r


@leak
def uses_other_subnet(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """The database subnet group of `at` includes a data subnet of `peer` (EF105)."""
    r = stacks[at].named("db-subnets")
    r.set("subnetIds", [*r.get("subnetIds"), stacks[peer].named("subnet-data-0", SUBNET).id])
    return r


@leak
def ram_share(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> list[Resource]:
    """A RAM resource share of `at` with `peer`'s account (EF105)."""
    s, o = stacks[at], stacks[peer]
    own = vpc(s)
    share_arn = f"arn:aws:ram:{region(s)}:{account(s)}:resource-share/{fake_id('rs', at)}"
    share = clone(
        s,
        own,
        type_=RAM_SHARE,
        name="share-subnets",
        id_=share_arn,
        inputs={
            "name": f"{at}-subnets",
            "allowExternalPrincipals": True,
        },
        computed={"arn": share_arn},
    )
    assoc = clone(
        s,
        own,
        type_=RAM_PRINCIPAL,
        name="share-subnets-peer",
        id_=f"{share_arn},{account(o)}",
        inputs={"resourceShareArn": share_arn, "principal": account(o)},
        dependencies=[share.urn],
    )
    return [share, assoc]


@leak
def subnet_public_ip(stacks: Stacks, at: str = PROD) -> Resource:
    """A data subnet that maps public IPs on launch (EF106)."""
    r = stacks[at].named("subnet-data-0", SUBNET)
    r.set("mapPublicIpOnLaunch", True)
    return r


# --------------------------------------------------------------------------------------------
# EF2xx data


@leak
def db_public(stacks: Stacks, at: str = PROD) -> Resource:
    """The database is publicly accessible (EF201, and EF106 for the same setting)."""
    r = stacks[at].named("db", DB)
    r.set("publiclyAccessible", True)
    return r


@leak
def db_other_key(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """The database of `at` is encrypted with `peer`'s key (EF202)."""
    r = stacks[at].named("db", DB)
    r.set("kmsKeyId", key_arn(stacks[peer]))
    return r


@leak
def pab_setting_off(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """One of the four public access block settings is off (EF203)."""
    r = stacks[at].named(f"store-{store}-public-access")
    r.set("blockPublicPolicy", False)
    return r


@leak
def pab_missing(stacks: Stacks, at: str = PROD, store: str = "raw") -> None:
    """The bucket's public access block is gone (EF203)."""
    remove(stacks[at], stacks[at].named(f"store-{store}-public-access"))


@leak
def bucket_sse_other_key(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD, store: str = "raw"
) -> Resource:
    """The bucket's default encryption uses `peer`'s key (EF204)."""
    r = stacks[at].named(f"store-{store}-encryption")
    rules = copy.deepcopy(r.get("rules"))
    rules[0]["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"] = key_arn(stacks[peer])
    r.set("rules", rules)
    return r


@leak
def bucket_sse_s3(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """The bucket's default encryption is SSE-S3 (AES256), not SSE-KMS (EF204)."""
    r = stacks[at].named(f"store-{store}-encryption")
    rules = copy.deepcopy(r.get("rules"))
    rules[0]["applyServerSideEncryptionByDefault"] = {"sseAlgorithm": "AES256"}
    rules[0]["bucketKeyEnabled"] = False
    r.set("rules", rules)
    return r


@leak
def versioning_suspended(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """The bucket's versioning is suspended (EF205)."""
    r = stacks[at].named(f"store-{store}-versioning")
    r.set("versioningConfiguration", {"status": "Suspended"})
    return r


@leak
def bucket_policy_no_tls_deny(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """The bucket policy lost its Deny on aws:SecureTransport = false (EF206)."""
    r = stacks[at].named(f"store-{store}-policy", BUCKET_POLICY)
    drop_statement(r, "DenyInsecureTransport")
    return r


@leak
def bucket_policy_no_foreign_deny(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """The bucket policy lost its Deny on principals outside the environment (EF206)."""
    r = stacks[at].named(f"store-{store}-policy", BUCKET_POLICY)
    drop_statement(r, "DenyPrincipalsOutsideThisEnvironment")
    return r


@leak
def bucket_policy_deny_exempts_flow_role(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD, store: str = "raw"
) -> Resource:
    """The foreign-principal Deny of a bucket that is *not* a flow's store exempts `peer`'s
    flow role anyway (the flow is declared for another store) (EF206)."""
    r = stacks[at].named(f"store-{store}-policy", BUCKET_POLICY)
    doc = policy(r)
    for s in doc["Statement"]:
        if s.get("Sid") == "DenyPrincipalsOutsideThisEnvironment":
            s["Condition"]["ArnNotEquals"]["aws:PrincipalArn"].append(
                role_arn(stacks[peer], "pipeline")
            )
    set_policy(r, doc)
    return r


def _bucket_allow(
    stacks: Stacks,
    at: str,
    store: str,
    sid: str,
    principal: Any,
    actions: list[str],
    condition: dict[str, Any] | None = None,
) -> Resource:
    r = stacks[at].named(f"store-{store}-policy", BUCKET_POLICY)
    arn = bucket_arn(stacks[at], store)
    stmt: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": principal,
        "Action": actions,
        "Resource": [arn, f"{arn}/*"],
    }
    if condition:
        stmt["Condition"] = condition
    add_statement(r, stmt)
    return r


@leak
def bucket_policy_allow_other_root(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD, store: str = "raw"
) -> Resource:
    """The bucket policy allows `peer`'s whole account (its root), unconditioned (EF207)."""
    root = f"arn:aws:iam::{account(stacks[peer])}:root"
    return _bucket_allow(
        stacks, at, store, "ShareWithPeer", {"AWS": root}, ["s3:GetObject", "s3:ListBucket"]
    )


@leak
def bucket_policy_allow_star(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """The bucket policy allows Principal '*' without any condition (EF207)."""
    return _bucket_allow(stacks, at, store, "PublicRead", "*", ["s3:GetObject"])


@near_miss
def bucket_policy_deny_star(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """Near miss: one more Deny statement with Principal '*' (denies never grant)."""
    r = stacks[at].named(f"store-{store}-policy", BUCKET_POLICY)
    arn = bucket_arn(stacks[at], store)
    add_statement(
        r,
        {
            "Sid": "DenyDeletes",
            "Effect": "Deny",
            "Principal": "*",
            "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
            "Resource": [f"{arn}/*"],
        },
    )
    return r


@leak
def flow_bucket_allow_root(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """On the flow's store, the grant to the flow role loses its aws:PrincipalArn condition:
    every principal of `peer`'s account may now read (EF207)."""
    r = stacks[at].named("store-results-policy", BUCKET_POLICY)
    doc = policy(r)
    for s in doc["Statement"]:
        if s.get("Sid", "").startswith("DeclaredFlow"):
            s.pop("Condition")
    set_policy(r, doc)
    return r


@leak
def flow_bucket_allow_write(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """The declared *read* flow's bucket grant is widened to writes and deletes (EF207)."""
    r = stacks[at].named("store-results-policy", BUCKET_POLICY)
    doc = policy(r)
    for s in doc["Statement"]:
        if s.get("Sid", "").endswith("Read") and s.get("Sid", "").startswith("DeclaredFlow"):
            s["Action"] = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    set_policy(r, doc)
    return r


@leak
def queue_policy_grant(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """An SQS queue policy (cloned from a bucket policy) granting `peer`'s service role
    SendMessage/ReceiveMessage (EF207)."""
    s = stacks[at]
    src = s.named("store-raw-policy", BUCKET_POLICY)
    queue = f"envfence-{at}-jobs"
    url = f"https://sqs.{region(s)}.amazonaws.com/{account(s)}/{queue}"
    doc = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PeerSends",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn(stacks[peer], "service")},
                "Action": ["sqs:SendMessage", "sqs:ReceiveMessage"],
                "Resource": f"arn:aws:sqs:{region(s)}:{account(s)}:{queue}",
            }
        ],
    }
    return clone(
        s,
        src,
        type_=QUEUE_POLICY,
        name="jobs-policy",
        id_=url,
        inputs={"queueUrl": url, "policy": json.dumps(doc)},
    )


@leak
def secret_policy_grant(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """A Secrets Manager secret policy (cloned from a bucket policy) granting `peer`'s analyst
    role GetSecretValue (EF207)."""
    s = stacks[at]
    src = s.named("store-raw-policy", BUCKET_POLICY)
    secret = f"arn:aws:secretsmanager:{region(s)}:{account(s)}:secret:envfence-{at}-api-AbCdEf"
    doc = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PeerReads",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn(stacks[peer], "analyst")},
                "Action": "secretsmanager:GetSecretValue",
                "Resource": "*",
            }
        ],
    }
    return clone(
        s,
        src,
        type_=SECRET_POLICY,
        name="api-secret-policy",
        id_=secret,
        inputs={"secretArn": secret, "policy": json.dumps(doc)},
    )


@leak
def snapshot_shared(stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT) -> Resource:
    """A manual RDS snapshot of `at`'s database shared with `peer`'s account (EF208)."""
    s = stacks[at]
    db = s.named("db", DB)
    ident = f"{db.get('identifier')}-copy"
    return clone(
        s,
        db,
        type_=DB_SNAPSHOT,
        name="db-snapshot",
        id_=ident,
        inputs={
            "dbInstanceIdentifier": db.get("identifier"),
            "dbSnapshotIdentifier": ident,
            "sharedAccounts": [account(stacks[peer])],
        },
        computed={
            "dbSnapshotArn": f"arn:aws:rds:{region(s)}:{account(s)}:snapshot:{ident}",
            "encrypted": True,
            "kmsKeyId": key_arn(s),
        },
        dependencies=[db.urn],
    )


@leak
def prod_db_unprotected(stacks: Stacks, at: str = PROD) -> Resource:
    """The production database lost `protect` (EF209)."""
    r = stacks[at].named("db", DB)
    r.protect = False
    return r


@leak
def prod_db_no_deletion_protection(stacks: Stacks, at: str = PROD) -> Resource:
    """The production database has deletionProtection off (EF209)."""
    r = stacks[at].named("db", DB)
    r.set("deletionProtection", False)
    return r


@leak
def prod_db_skip_final_snapshot(stacks: Stacks, at: str = PROD) -> Resource:
    """The production database skips its final snapshot (EF209)."""
    r = stacks[at].named("db", DB)
    r.set("skipFinalSnapshot", True)
    r.drop("finalSnapshotIdentifier")
    return r


@leak
def prod_bucket_force_destroy(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """A production bucket can be emptied and deleted by `pulumi destroy` (EF209)."""
    r = stacks[at].named(f"store-{store}", BUCKET)
    r.set("forceDestroy", True)
    return r


@leak
def queue_other_key(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD, queue: str = "ingest"
) -> Resource:
    """`at`'s queue is encrypted with `peer`'s key (EF210)."""
    r = stacks[at].named(queue, QUEUE)
    r.set("kmsMasterKeyId", key_arn(stacks[peer]))
    return r


@leak
def queue_without_kms(stacks: Stacks, at: str = PROD, queue: str = "ingest-dlq") -> Resource:
    """The queue switched from the environment's key to SQS-managed encryption, which any
    principal with sqs:ReceiveMessage can read through (EF210)."""
    r = stacks[at].named(queue, QUEUE)
    r.drop("kmsMasterKeyId")
    r.drop("kmsDataKeyReusePeriodSeconds")
    r.set("sqsManagedSseEnabled", True)
    return r


@near_miss
def queue_key_by_alias(stacks: Stacks, at: str = PROD, queue: str = "ingest") -> Resource:
    """Near miss: the queue names its key by the environment's own alias ARN (allowed)."""
    s = stacks[at]
    r = s.named(queue, QUEUE)
    r.set("kmsMasterKeyId", str(s.named("key-alias", KEY_ALIAS).get("arn")))
    return r


@leak
def log_group_without_key(stacks: Stacks, at: str = PROD, group: str = "worker-logs") -> Resource:
    """The log group is no longer encrypted with the environment's key (EF211)."""
    r = stacks[at].named(group, LOG_GROUP)
    r.drop("kmsKeyId")
    return r


@leak
def log_group_kept_forever(
    stacks: Stacks, at: str = EXPERIMENT, group: str = "flow-logs"
) -> Resource:
    """The log group lost its retention: an experiment's logs outlive it (EF211)."""
    r = stacks[at].named(group, LOG_GROUP)
    r.drop("retentionInDays")
    return r


@near_miss
def log_group_longer_retention(
    stacks: Stacks, at: str = PROD, group: str = "worker-logs"
) -> Resource:
    """Near miss: a longer, still finite retention (allowed)."""
    r = stacks[at].named(group, LOG_GROUP)
    r.set("retentionInDays", 731)
    return r


def _repository(stacks: Stacks, at: str) -> Resource:
    return stacks[at].named("repository", REPOSITORY)


@leak
def repository_mutable_tags(stacks: Stacks, at: str = PROD) -> Resource:
    """The image repository lets a tag be pushed again: a deployed tag can change (EF212)."""
    r = _repository(stacks, at)
    r.set("imageTagMutability", "MUTABLE")
    return r


@leak
def repository_without_scan(stacks: Stacks, at: str = PROD) -> Resource:
    """The image repository no longer scans images on push (EF212)."""
    r = _repository(stacks, at)
    r.set("imageScanningConfiguration", {"scanOnPush": False})
    return r


@leak
def repository_aes256(stacks: Stacks, at: str = EXPERIMENT) -> Resource:
    """The image repository uses AES256, not the environment's key (EF212)."""
    r = _repository(stacks, at)
    r.set("encryptionConfigurations", [{"encryptionType": "AES256"}])
    return r


# --------------------------------------------------------------------------------------------
# EF3xx identity


def _role_allow(stacks: Stacks, at: str, role: str, stmt: dict[str, Any]) -> Resource:
    r = stacks[at].named(f"policy-{role}", ROLE_POLICY)
    add_statement(r, {"Effect": "Allow", **stmt})
    return r


@leak
def identity_all_buckets(stacks: Stacks, at: str = PROD, role: str = "service") -> Resource:
    """A role policy widened to every bucket: arn:aws:s3:::* (EF301)."""
    return _role_allow(
        stacks,
        at,
        role,
        {
            "Sid": "AllBuckets",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": ["arn:aws:s3:::*", "arn:aws:s3:::*/*"],
        },
    )


@leak
def identity_results_wildcard(stacks: Stacks, at: str = PROD, role: str = "analyst") -> Resource:
    """A role policy reads every environment's results store: `arn:aws:s3:::*-results-*/*`
    (EF301; on a role that has no declared flow)."""
    return _role_allow(
        stacks,
        at,
        role,
        {
            "Sid": "AllResults",
            "Action": ["s3:GetObject"],
            "Resource": ["arn:aws:s3:::*-results-*/*"],
        },
    )


@leak
def identity_not_resource(stacks: Stacks, at: str = PROD, role: str = "service") -> Resource:
    """Allow s3:GetObject on everything but the environment's own raw store (EF301)."""
    return _role_allow(
        stacks,
        at,
        role,
        {
            "Sid": "EverythingElse",
            "Action": ["s3:GetObject"],
            "NotResource": [f"{bucket_arn(stacks[at], 'raw')}/*"],
        },
    )


@leak
def identity_resource_star_data(stacks: Stacks, at: str = PROD, role: str = "service") -> Resource:
    """Allow s3:GetObject on Resource '*' (EF301)."""
    return _role_allow(
        stacks, at, role, {"Sid": "ReadAnything", "Action": "s3:GetObject", "Resource": "*"}
    )


@near_miss
def identity_resource_star_non_data(
    stacks: Stacks, at: str = PROD, role: str = "service"
) -> Resource:
    """Near miss: Resource '*' on ecr:GetAuthorizationToken, which has no resource (allowed)."""
    return _role_allow(
        stacks,
        at,
        role,
        {"Sid": "EcrLogin", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
    )


@leak
def passrole_other_env(
    stacks: Stacks, at: str = PROD, peer: str = EXPERIMENT, role: str = "pipeline"
) -> Resource:
    """iam:PassRole on `peer`'s service role (EF305, and EF301 as reach)."""
    return _role_allow(
        stacks,
        at,
        role,
        {
            "Sid": "PassPeerRole",
            "Action": "iam:PassRole",
            "Resource": role_arn(stacks[peer], "service"),
        },
    )


def _trust(stacks: Stacks, at: str, role: str) -> Resource:
    return stacks[at].named(f"role-{role}", ROLE)


@leak
def trust_other_env_role(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD, role: str = "analyst"
) -> Resource:
    """`at`'s role trusts `peer`'s pipeline role (EF302)."""
    r = _trust(stacks, at, role)
    add_statement(
        r,
        {
            "Sid": "PeerPipeline",
            "Effect": "Allow",
            "Principal": {"AWS": role_arn(stacks[peer], "pipeline")},
            "Action": "sts:AssumeRole",
        },
        key="assumeRolePolicy",
    )
    return r


@leak
def trust_service_without_source_account(
    stacks: Stacks, at: str = PROD, role: str = "service"
) -> Resource:
    """The ECS trust lost its aws:SourceAccount condition (confused deputy) (EF302)."""
    r = _trust(stacks, at, role)
    doc = policy(r, "assumeRolePolicy")
    for s in doc["Statement"]:
        s.pop("Condition", None)
    set_policy(r, doc, "assumeRolePolicy")
    return r


@leak
def role_without_boundary(stacks: Stacks, at: str = PROD, role: str = "analyst") -> Resource:
    """A role without a permission boundary (EF303)."""
    r = _trust(stacks, at, role)
    r.drop("permissionsBoundary")
    return r


@leak
def role_other_boundary(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD, role: str = "analyst"
) -> Resource:
    """A role bounded by `peer`'s boundary instead of its own (EF303)."""
    r = _trust(stacks, at, role)
    r.set("permissionsBoundary", str(stacks[peer].named("boundary").get("arn")))
    return r


@leak
def boundary_without_tag_session_deny(stacks: Stacks, at: str = PROD) -> Resource:
    """The boundary no longer denies sts:TagSession (EF304)."""
    r = stacks[at].named("boundary")
    drop_statement(r, "DenySessionTags")
    return r


@leak
def boundary_without_tag_keys_deny(stacks: Stacks, at: str = PROD) -> Resource:
    """The boundary no longer denies changes to the environment tags (EF304)."""
    r = stacks[at].named("boundary")
    drop_statement(r, "DenyEnvironmentTagChanges")
    return r


@leak
def managed_policy_attached(
    stacks: Stacks, at: str = PROD, role: str = "analyst", arn: str = S3_FULL_ACCESS
) -> Resource:
    """An AWS managed policy attached to a role (EF306)."""
    s = stacks[at]
    src = s.named(f"policy-{role}", ROLE_POLICY)
    role_r = s.named(f"role-{role}", ROLE)
    return clone(
        s,
        src,
        type_=ROLE_POLICY_ATTACHMENT,
        name=f"attach-{role}-s3-full",
        id_=f"{role_r.id}-{fake_id('attach', role)}",
        inputs={"role": role_r.id, "policyArn": arn},
        dependencies=[role_r.urn],
    )


@leak
def flow_one_side(stacks: Stacks, at: str = EXPERIMENT) -> None:
    """`at` no longer declares its flows (envfence:flows = []); the peer still does (EF320)."""
    stacks[at].config["envfence:flows"] = "[]"


# --------------------------------------------------------------------------------------------
# EF4xx keys


@leak
def key_policy_other_role(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """`at`'s key policy lets `peer`'s service role decrypt (EF401)."""
    r = stacks[at].named("key", KEY)
    add_statement(
        r,
        {
            "Sid": "PeerServiceDecrypts",
            "Effect": "Allow",
            "Principal": {"AWS": role_arn(stacks[peer], "service")},
            "Action": ["kms:Decrypt", "kms:DescribeKey"],
            "Resource": "*",
        },
    )
    return r


@leak
def key_policy_star(stacks: Stacks, at: str = PROD) -> Resource:
    """`at`'s key policy allows Principal '*' to decrypt, unconditioned (EF401)."""
    r = stacks[at].named("key", KEY)
    add_statement(
        r,
        {
            "Sid": "AnyoneDecrypts",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    )
    return r


@leak
def flow_key_grant_widened(stacks: Stacks, at: str = EXPERIMENT) -> Resource:
    """The key policy's declared-flow statement loses its aws:PrincipalArn and kms:ViaService
    conditions and grants kms:*: the flow source's whole account may use and manage the key
    (EF401)."""
    r = stacks[at].named("key", KEY)
    doc = policy(r)
    for s in doc["Statement"]:
        if s.get("Sid", "").startswith("DeclaredFlow"):
            s.pop("Condition")
            s["Action"] = "kms:*"
    set_policy(r, doc)
    return r


@leak
def key_locks_out_deployer(stacks: Stacks, at: str = PROD) -> Resource:
    """The key policy's administration statement names only the break-glass administrators:
    the deployer that runs `pulumi up` can no longer read or replace it; KMS refuses such a
    policy at CreateKey (EF403)."""
    r = stacks[at].named("key", KEY)
    doc = policy(r)
    for s in doc["Statement"]:
        if s.get("Sid") == "KeyAdministration":
            s["Principal"] = {"AWS": ["arn:aws:iam::123456789012:role/platform-admins"]}
    set_policy(r, doc)
    return r


@leak
def key_rotation_off(stacks: Stacks, at: str = PROD) -> Resource:
    """Key rotation disabled (EF402)."""
    r = stacks[at].named("key", KEY)
    r.set("enableKeyRotation", False)
    return r


# --------------------------------------------------------------------------------------------
# EF5xx tagging and lifecycle


@leak
def provider_tags_removed(stacks: Stacks, at: str = PROD) -> Resource:
    """The stack's provider lost its defaultTags: resources carry no environment tags
    (EF501; EF903 names the provider)."""
    r = provider(stacks[at])
    r.drop("defaultTags")
    return r


@leak
def tagged_other_env(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD, store: str = "raw"
) -> Resource:
    """A bucket of `at` tagged environment=`peer` (EF502)."""
    r = stacks[at].named(f"store-{store}", BUCKET)
    r.set("tags", {**r.get("tags"), "environment": peer})
    return r


@leak
def lifecycle_without_expiration(
    stacks: Stacks, at: str = EXPERIMENT, store: str = "raw"
) -> Resource:
    """An experiment bucket's lifecycle rule no longer expires objects (EF503)."""
    r = stacks[at].named(f"store-{store}-lifecycle")
    rules = copy.deepcopy(r.get("rules"))
    for rule in rules:
        rule.pop("expiration", None)
    r.set("rules", rules)
    return r


@leak
def experiment_expired(stacks: Stacks, at: str = EXPERIMENT, on: str = "2020-01-31") -> None:
    """The experiment's envfence:expiresOn is in the past (EF504)."""
    stacks[at].config["envfence:expiresOn"] = on


# --------------------------------------------------------------------------------------------
# EF6xx compute


def _task(stacks: Stacks, at: str) -> Resource:
    return stacks[at].named("worker-task", TASK_DEFINITION)


def containers(r: Resource) -> list[dict[str, Any]]:
    raw = r.get("containerDefinitions")
    return json.loads(raw) if isinstance(raw, str) else copy.deepcopy(raw)


def set_container(r: Resource, **changes: Any) -> None:
    """Change the (only) container of a task definition; a value None removes the key."""
    defs = containers(r)
    for k, v in changes.items():
        if v is None:
            defs[0].pop(k, None)
        else:
            defs[0][k] = v
    r.set("containerDefinitions", json.dumps(defs))


@leak
def task_privileged(stacks: Stacks, at: str = PROD) -> Resource:
    """The worker container runs privileged (EF601)."""
    r = _task(stacks, at)
    set_container(r, privileged=True)
    return r


@leak
def task_runs_as_root(stacks: Stacks, at: str = PROD) -> Resource:
    """The worker container runs as root, on a writable root filesystem (EF601)."""
    r = _task(stacks, at)
    set_container(r, user="root", readonlyRootFilesystem=None)
    return r


@leak
def task_role_of_other_env(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD, role: str = "service"
) -> Resource:
    """`at`'s task runs with `peer`'s task role: its containers act as `peer` (EF601)."""
    r = _task(stacks, at)
    r.set("taskRoleArn", role_arn(stacks[peer], role))
    return r


@leak
def task_logs_to_other_env(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """`at`'s container ships its logs into `peer`'s worker log group (EF601)."""
    r = _task(stacks, at)
    options = containers(r)[0]["logConfiguration"]["options"]
    group = str(stacks[peer].named("worker-logs", LOG_GROUP).get("name"))
    set_container(
        r, logConfiguration={"logDriver": "awslogs", "options": {**options, "awslogs-group": group}}
    )
    return r


def _service(stacks: Stacks, at: str) -> Resource:
    return stacks[at].named("worker-service", ECS_SERVICE)


def _set_network(r: Resource, **changes: Any) -> None:
    r.set("networkConfiguration", {**copy.deepcopy(r.get("networkConfiguration")), **changes})


@leak
def service_public_ip(stacks: Stacks, at: str = PROD) -> Resource:
    """The service gives its tasks public IP addresses (EF602)."""
    r = _service(stacks, at)
    _set_network(r, assignPublicIp=True)
    return r


@leak
def service_in_other_subnet(stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD) -> Resource:
    """`at`'s service also places tasks in an app subnet of `peer` (EF602)."""
    r = _service(stacks, at)
    subnets = r.get("networkConfiguration")["subnets"]
    _set_network(r, subnets=[*subnets, stacks[peer].named("subnet-app-0", SUBNET).id])
    return r


@leak
def service_exec(stacks: Stacks, at: str = PROD) -> Resource:
    """ECS Exec is on: a shell in the container with its role (EF602)."""
    r = _service(stacks, at)
    r.set("enableExecuteCommand", True)
    return r


@near_miss
def service_one_subnet(stacks: Stacks, at: str = PROD) -> Resource:
    """Near miss: the service runs in one of its own app subnets only (allowed)."""
    r = _service(stacks, at)
    _set_network(r, subnets=r.get("networkConfiguration")["subnets"][:1])
    return r


def _repository_url(state: StackState) -> str:
    return str(state.named("repository", REPOSITORY).get("repositoryUrl"))


@leak
def image_from_other_repository(
    stacks: Stacks, at: str = EXPERIMENT, peer: str = PROD
) -> list[Resource]:
    """`at` builds its worker image into `peer`'s repository and its task runs it (EF603)."""
    s = stacks[at]
    image = s.named("worker-image", IMAGE)
    repo = _repository_url(stacks[peer])
    tag = str(image.get("imageName")).rsplit(":", 1)[1]
    digest = str(image.get("repoDigest")).rsplit("@", 1)[1]
    image.set("registry", {**image.get("registry"), "server": repo})
    image.set("imageName", f"{repo}:{tag}")
    image.outputs["repoDigest"] = image.outputs["id"] = f"{repo}@{digest}"
    image.id = image.outputs["id"]
    task = _task(stacks, at)
    set_container(task, image=f"{repo}@{digest}")
    return [image, task]


@leak
def task_image_public(stacks: Stacks, at: str = PROD) -> Resource:
    """The task runs a public image instead of one of its own repository (EF603)."""
    r = _task(stacks, at)
    set_container(r, image="public.ecr.aws/docker/library/python:3.12-slim")
    return r


@near_miss
def task_image_by_tag(stacks: Stacks, at: str = PROD) -> Resource:
    """Near miss: the task names its image by tag, in its own repository with immutable tags
    (allowed)."""
    s = stacks[at]
    tag = str(s.named("worker-image", IMAGE).get("imageName")).rsplit(":", 1)[1]
    r = _task(stacks, at)
    set_container(r, image=f"{_repository_url(s)}:{tag}")
    return r


# --------------------------------------------------------------------------------------------
# EF7xx audit


@leak
def trail_single_region(stacks: Stacks, at: str = PROD) -> Resource:
    """The trail records its home region only (EF701)."""
    r = stacks[at].named("trail", TRAIL)
    r.set("isMultiRegionTrail", False)
    return r


@leak
def trail_without_data_events(stacks: Stacks, at: str = EXPERIMENT) -> Resource:
    """The trail records management events only: no S3 data events of the stores (EF701)."""
    r = stacks[at].named("trail", TRAIL)
    selectors = [
        sel
        for sel in r.get("advancedEventSelectors")
        if not any(f.get("equals") == ["Data"] for f in sel["fieldSelectors"])
    ]
    r.set("advancedEventSelectors", selectors)
    return r


def _audit_policy(stacks: Stacks, at: str) -> Resource:
    return stacks[at].named("audit-policy", BUCKET_POLICY)


@leak
def audit_deny_exempts_role(stacks: Stacks, at: str = PROD, role: str = "pipeline") -> Resource:
    """The audit bucket's tamper Deny no longer covers `role`: it may rewrite or delete the
    logs (EF702)."""
    r = _audit_policy(stacks, at)
    doc = policy(r)
    arn = role_arn(stacks[at], role)
    for st in doc["Statement"]:
        if st.get("Sid") == "DenyTamperingByEnvironmentRoles":
            arns = st["Condition"]["ArnEquals"]["aws:PrincipalArn"]
            st["Condition"]["ArnEquals"]["aws:PrincipalArn"] = [a for a in arns if a != arn]
    set_policy(r, doc)
    return r


@leak
def audit_policy_allows_role_delete(
    stacks: Stacks, at: str = EXPERIMENT, role: str = "pipeline"
) -> Resource:
    """The audit bucket policy lets `role` delete log files (EF702)."""
    r = _audit_policy(stacks, at)
    arn = str(stacks[at].named("audit-bucket", BUCKET).get("arn"))
    add_statement(
        r,
        {
            "Sid": "PipelineCleansLogs",
            "Effect": "Allow",
            "Principal": {"AWS": role_arn(stacks[at], role)},
            "Action": ["s3:DeleteObject"],
            "Resource": [f"{arn}/*"],
        },
    )
    return r


def _data_event_arns(r: Resource) -> dict[str, Any]:
    """The resources.ARN field selector of the trail's data-event selector (edited in place)."""
    for sel in r.get("advancedEventSelectors"):
        for f in sel["fieldSelectors"]:
            if f.get("field") == "resources.ARN":
                return dict(f)
    raise AssertionError(f"{r.name} selects no resources.ARN")


def _set_data_event_arns(r: Resource, arns: dict[str, Any]) -> None:
    selectors = copy.deepcopy(r.get("advancedEventSelectors"))
    for sel in selectors:
        sel["fieldSelectors"] = [
            arns if f.get("field") == "resources.ARN" else f for f in sel["fieldSelectors"]
        ]
    r.set("advancedEventSelectors", selectors)


@leak
def trail_drops_other_stacks(stacks: Stacks, at: str = EXPERIMENT) -> Resource:
    """The account's trail selects its owner's buckets only: the prefix that covers the
    account's experiment-<id> stacks is gone, so their data events go unrecorded (EF701)."""
    r = stacks[at].named("trail", TRAIL)
    arns = _data_event_arns(r)
    arns["startsWiths"] = [a for a in arns["startsWiths"] if a.endswith("/")]
    _set_data_event_arns(r, arns)
    return r


@leak
def trail_logs_its_own_bucket(stacks: Stacks, at: str = EXPERIMENT) -> Resource:
    """The prefix selector no longer excludes the trail's own audit bucket (which the prefix
    matches): every log delivery is a data event to deliver (EF701)."""
    r = stacks[at].named("trail", TRAIL)
    arns = _data_event_arns(r)
    del arns["notStartsWiths"]
    _set_data_event_arns(r, arns)
    return r


@leak
def audit_without_object_lock(stacks: Stacks, at: str = PROD) -> Resource:
    """The production audit bucket is created without object lock (EF702)."""
    s = stacks[at]
    remove(s, s.named("audit-object-lock"))
    r = s.named("audit-bucket", BUCKET)
    r.set("objectLockEnabled", False)
    return r


# --------------------------------------------------------------------------------------------
# EF9xx coverage


@leak
def unclassified_type(stacks: Stacks, at: str = EXPERIMENT) -> Resource:
    """A Lambda function: a type no rule class lists (EF901)."""
    s = stacks[at]
    src = s.named("role-service", ROLE)
    name = f"envfence-{at}-export"
    arn = f"arn:aws:lambda:{region(s)}:{account(s)}:function:{name}"
    return clone(
        s,
        src,
        type_=LAMBDA,
        name="export-fn",
        id_=name,
        inputs={
            "name": name,
            "role": src.get("arn"),
            "runtime": "python3.12",
            "handler": "app.handler",
            "packageType": "Zip",
            "timeout": 60,
            "tags": {"purpose": "export"},
        },
        computed={
            "arn": arn,
            "invokeArn": f"arn:aws:apigateway:{region(s)}:lambda:path/"
            f"2015-03-31/functions/{arn}/invocations",
        },
        dependencies=[src.urn],
    )


@leak
def unknown_value(stacks: Stacks, at: str = PROD) -> Resource:
    """A preview where the database's publiclyAccessible is not known yet (EF902)."""
    r = stacks[at].named("db", DB)
    r.set("publiclyAccessible", UNKNOWN)
    return r


@leak
def unknown_provider_region(stacks: Stacks, at: str = PROD) -> Resource:
    """A preview where the provider's region is not known yet (EF902)."""
    r = provider(stacks[at])
    r.set("region", UNKNOWN)
    return r


@leak
def unknown_tags(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """A preview where a bucket's whole `tags` map is not known yet (EF501/EF502 cannot
    decide: must fail closed)."""
    r = stacks[at].named(f"store-{store}", BUCKET)
    r.set("tags", UNKNOWN)
    return r


@leak
def unknown_tag_value(stacks: Stacks, at: str = PROD, store: str = "raw") -> Resource:
    """A preview where a bucket's `environment` tag is not known yet."""
    r = stacks[at].named(f"store-{store}", BUCKET)
    r.set("tags", {**r.get("tags"), "environment": UNKNOWN})
    return r


@leak
def no_provider(stacks: Stacks, at: str = PROD) -> Resource:
    """A resource registered without the stack's explicit provider (EF903)."""
    r = stacks[at].named("key-alias")
    r.provider = None
    return r


@leak
def default_provider(stacks: Stacks, at: str = PROD) -> Resource:
    """A resource on Pulumi's default AWS provider (no allowed accounts, no default tags)
    (EF903)."""
    s = stacks[at]
    explicit = provider(s)
    default = copy.deepcopy(explicit)
    default.urn = explicit.urn.rsplit("::", 1)[0] + "::default_7_0_0"
    default.id = fake_id("default", at, length=8) + "-0000-4000-8000-provider0000"
    default.inputs = {
        "region": region(s),
        "skipCredentialsValidation": "false",
        "skipRegionValidation": "true",
    }
    default.outputs = dict(default.inputs)
    default.property_dependencies = {k: [] for k in default.inputs}
    s.resources.insert(s.resources.index(explicit) + 1, default)
    r = s.named("key-alias")
    r.provider = f"{default.urn}::{default.id}"
    return r


# --------------------------------------------------------------------------------------------
# EF8xx account quotas


@leak
def elastic_ips_over_quota(stacks: Stacks, at: str = EXPERIMENT, extra: int = 5) -> Resource:
    """`extra` more Elastic IPs (as `extra` more NAT gateways would allocate) next to the NAT
    gateway's: with AWS's default of 5 per region, the account is over its quota (EF801)."""
    s = stacks[at]
    source = s.of_type(EIP)[0]
    added = source
    for i in range(extra):
        eid = fake_id("eipalloc", at, str(i))
        added = clone(
            s,
            source,
            type_=EIP,
            name=f"nat-eip-extra-{i}",
            id_=eid,
            inputs={"domain": "vpc"},
            computed={
                "arn": f"arn:aws:ec2:{region(s)}:{account(s)}:elastic-ip/{eid}",
                "publicIp": f"198.51.100.{10 + i}",
                "tagsAll": {},
            },
        )
    return added


# -- EF505: feature flags of live experiments --------------------------------------------------

HOSTED_FLAGS = "aws:appconfig/hostedConfigurationVersion:HostedConfigurationVersion"


def _flag_set(r: Resource) -> dict[str, Any]:
    env = {e["name"]: e["value"] for e in containers(r)[0]["environment"]}
    return dict(json.loads(env["FLAG_SET"]))


def _deploy_flag_set(stacks: Stacks, at: str, document: dict[str, Any]) -> Resource:
    """Deploy `document` consistently: the worker's copy, its label, and AppConfig's version."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    label = "fs-" + hashlib.sha256(text.encode()).hexdigest()[:20]
    for task in (_task(stacks, at), stacks[at].named("pipeline-task", TASK_DEFINITION)):
        defs = containers(task)
        for e in defs[0]["environment"]:
            if e["name"] == "FLAG_SET":
                e["value"] = text
            elif e["name"] == "FLAG_SET_VERSION":
                e["value"] = label
        task.set("containerDefinitions", json.dumps(defs))
    stacks[at].named("flags-version", HOSTED_FLAGS).set("versionLabel", label)
    return _task(stacks, at)


@leak
def experiment_rolled_out_to_everyone(stacks: Stacks, at: str = PROD) -> Resource:
    """An experimental flag's default variant is switched on in production: a 100 % rollout
    of an experiment (EF505)."""
    doc = _flag_set(_task(stacks, at))
    default = doc["values"]["curate_v2"]["_variants"][-1]
    default["enabled"] = True
    default["attributeValues"]["experimental"] = True
    return _deploy_flag_set(stacks, at, doc)


@leak
def experiment_without_owner(stacks: Stacks, at: str = PROD) -> Resource:
    """A live experimental flag in production names no owner and no end date (EF505)."""
    doc = _flag_set(_task(stacks, at))
    for v in doc["values"]["curate_v2"]["_variants"]:
        v["attributeValues"].pop("owner", None)
    doc["flags"]["curate_v2"].pop("_deprecation", None)
    return _deploy_flag_set(stacks, at, doc)


@leak
def flag_set_not_deployed(stacks: Stacks, at: str = PROD) -> Resource:
    """AppConfig serves another flag set than the one the worker evaluates (EF505)."""
    r = stacks[at].named("flags-version", HOSTED_FLAGS)
    r.set("versionLabel", "fs-0123456789abcdef0123")
    return r


@near_miss
def experiment_targeted_in_experiment_stack(stacks: Stacks, at: str = EXPERIMENT) -> Resource:
    """Near miss: an experiment stack targets a tenth of its users with an experimental variant
    that names no owner and no end date (only production needs them)."""
    doc = _flag_set(_task(stacks, at))
    rule = '(split by::$userId pct::10 seed::"curate_v2")'
    doc["values"]["curate_v2"] = {
        "_variants": [
            {"name": "t", "enabled": True, "rule": rule, "attributeValues": {"experimental": True}},
            {"name": "default", "enabled": False, "attributeValues": {"experimental": False}},
        ]
    }
    return _deploy_flag_set(stacks, at, doc)
