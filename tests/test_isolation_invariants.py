"""Invariants across all stacks: nothing of one environment names, shares or leaks into another.

Every policy document a stack declares (role policies, trust policies, the boundary, the key
policy, bucket, queue, repository and endpoint policies) is parsed; every ARN in a Resource,
NotResource, Principal or Condition must belong to the stack itself. The only exceptions are
the flows both stack files declare, and each of those may name exactly the declared peer store
(from the reading side) or the declared peer role (from the store's side), in the documents
that implement the flow and nowhere else.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from envfence.evaluate import evaluate
from envfence.model import Resource, StackState
from envfence.project import Project, load_project
from tests.registry_facts import registered_tier

PROJECT = load_project()
STACKS = PROJECT.stacks()
ENV_TAGS = ("environment", "tier", "data-classification", "owner", "managed-by", "project")
CLASSIFICATION = {"production": "production", "experiment": "experimental"}
POLICY_INPUTS = ("policy", "assumeRolePolicy")

Where = tuple[str, str | None]  # (kind of document, what it is attached to)


def _stack_file(stack: str) -> dict[str, Any]:
    return dict(yaml.safe_load(PROJECT.stack_file(stack).read_text())["config"])


def _account(stack: str) -> str:
    return str(_stack_file(stack)["envfence:allowedAccountIds"][0])


# -- what a stack owns -----------------------------------------------------------------------


@dataclass
class Owned:
    project: str
    stack: str
    account: str
    region: str
    # Configured principals outside the environment (this account): the deployer, analysts,
    # break-glass key administrators and audit readers, exactly as the stack file names them.
    principals: set[str]
    buckets: set[str]
    iam_names: set[str]
    key_ids: set[str]
    db_resource_ids: set[str]
    allowances: dict[str, set[Where]]  # flow ARN -> documents that may name it


def owned(state: StackState) -> Owned:
    config = _stack_file(state.stack)
    account = str(config["envfence:allowedAccountIds"][0])
    region = str(config["aws:region"])
    access = config.get("envfence:access") or {}
    project = state.project
    allowances: dict[str, set[Where]] = {}
    for flow in config.get("envfence:flows") or []:
        source, target, role, store = flow["from"], flow["to"], flow["role"], flow["store"]
        if source == state.stack:  # we read a peer's store
            bucket = f"arn:aws:s3:::{project}-{target}-{store}-{_account(target)}"
            role_policy: Where = ("role-policy", f"{project}-{source}-{role}")
            for arn in (bucket, f"{bucket}/*"):
                allowances.setdefault(arn, set()).update(
                    {("boundary", None), ("endpoint", None), role_policy}
                )
            peer_keys = f"arn:aws:kms:{region}:{_account(target)}:key/*"
            allowances.setdefault(peer_keys, set()).update({("boundary", None), role_policy})
        if target == state.stack:  # a peer role reads our store
            peer = _account(source)
            bucket_policy: Where = ("bucket-policy", f"{project}-{target}-{store}-{account}")
            for arn in (
                f"arn:aws:iam::{peer}:role/{project}-{source}-{role}",
                f"arn:aws:iam::{peer}:root",
            ):
                allowances.setdefault(arn, set()).update({("key-policy", None), bucket_policy})
    return Owned(
        project=project,
        stack=state.stack,
        account=account,
        region=region,
        principals={access["deployer"]}
        | set(access.get("analystPrincipals", []))
        | set(access.get("adminPrincipals", []))
        | set(access.get("auditReaders", [])),
        buckets={r.inputs["bucket"] for r in state.of_type("aws:s3/bucket:Bucket")},
        iam_names={
            r.inputs["name"] for r in state.of_type("aws:iam/role:Role", "aws:iam/policy:Policy")
        },
        key_ids={r.outputs["keyId"] for r in state.of_type("aws:kms/key:Key")},
        db_resource_ids={
            r.outputs["resourceId"] for r in state.of_type("aws:rds/instance:Instance")
        },
        allowances=allowances,
    )


def owner_of(name: str, project: str) -> str | None:
    """The stack a physical name belongs to: the longest stack name that prefixes it."""
    best = None
    for stack in STACKS:
        prefix = f"{project}-{stack}"
        if (name == prefix or name.startswith(f"{prefix}-")) and (
            best is None or len(stack) > len(best)
        ):
            best = stack
    return best


def arn_problem(arn: str, me: Owned) -> str | None:
    """None if `arn` belongs to the stack `me` (flows are handled by the caller)."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[1] != "aws":
        return "not an aws ARN"
    _, _, service, region, account, resource = parts
    names = re.findall(rf"{re.escape(me.project)}-[a-z0-9-]*[a-z0-9]", resource)
    paths = re.findall(rf"/{re.escape(me.project)}/([a-z0-9-]+)", resource)
    # A configured principal may carry the project's name (the deployer,
    # `<project>-deployer`) as long as the name is no stack's: `<project>-<other stack>-...` is
    # still another environment's, configured or not.
    configured = service == "iam" and arn in me.principals
    for name in names:
        owner = owner_of(name, me.project)
        if owner != me.stack and not (configured and owner is None):
            return f"names {name}, of stack {owner}"
    for path in paths:
        if path != me.stack:
            return f"names the path /{me.project}/{path}"
    if service == "s3":
        bucket = resource.split("/", 1)[0]
        if bucket not in me.buckets:
            return f"bucket {bucket} is not one of this stack's buckets"
        return None
    if account != me.account:
        return f"account {account or '(none)'}, not {me.account}"
    if region not in ("", "*", me.region):
        return f"region {region}"
    if service == "iam" and resource != "root":
        name = resource.split("/", 1)[-1]
        if configured:
            return None
        if name.startswith(f"{me.project}-"):
            return None if name in me.iam_names else f"{name} is not an IAM name of this stack"
        return None if arn in me.principals else f"{arn} is not a configured principal"
    if service == "kms" and resource.startswith("key/"):
        key = resource.split("/", 1)[1]
        return None if key in me.key_ids else f"key {key} is not this stack's key"
    if service == "rds-db":
        resource_id = resource.split(":", 1)[-1].split("/", 1)[0]
        if resource_id not in me.db_resource_ids | {"*"}:
            return f"database {resource_id} is not this stack's"
    return None


# -- documents -------------------------------------------------------------------------------


def documents(state: StackState) -> Iterator[tuple[Where, Resource, dict[str, Any]]]:
    """Every IAM-style policy document the stack declares, with where it is attached."""
    for r in state.custom():
        for name in POLICY_INPUTS:
            text = r.inputs.get(name)
            if not isinstance(text, str) or not text.lstrip().startswith("{"):
                continue
            doc = json.loads(text)
            if "Statement" not in doc:
                continue
            kind = {
                "aws:iam/rolePolicy:RolePolicy": ("role-policy", r.inputs.get("role")),
                "aws:iam/policy:Policy": ("boundary", None),
                "aws:kms/key:Key": ("key-policy", None),
                "aws:s3/bucketPolicy:BucketPolicy": ("bucket-policy", r.inputs.get("bucket")),
                "aws:ec2/vpcEndpoint:VpcEndpoint": ("endpoint", None),
            }.get(r.type, (r.type, r.name))
            if name == "assumeRolePolicy":
                kind = ("trust", r.inputs.get("name"))
            yield kind, r, doc


def arns_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.startswith("arn:"):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from arns_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from arns_in(v)


def statement_arns(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    stmts = doc["Statement"]
    for st in [stmts] if isinstance(stmts, dict) else stmts:
        for field in ("Resource", "NotResource", "Principal", "NotPrincipal", "Condition"):
            for arn in arns_in(st.get(field)):
                yield st, arn


def _ecr_layers(arn: str, st: dict[str, Any], where: Where, me: Owned) -> bool:
    """The AWS-owned bucket of ECR image layers, read-only, in the S3 endpoint's policy."""
    return (
        where[0] == "endpoint"
        and arn == f"arn:aws:s3:::prod-{me.region}-starport-layer-bucket/*"
        and st.get("Action") in (["s3:GetObject"], "s3:GetObject")
    )


def _account_deny(arn: str, st: dict[str, Any], where: Where, me: Owned) -> bool:
    """The account's audit bucket (its trail owner's) denies tampering to every role of the
    account's other environments by role-name pattern: a Deny, so it can only take access
    away, and only in this account."""
    return (
        where == ("bucket-policy", f"{me.project}-{me.stack}-audit-{me.account}")
        and st.get("Effect") == "Deny"
        and arn.startswith(f"arn:aws:iam::{me.account}:role/{me.project}-")
        and arn.endswith("*")
    )


def isolation_violations(state: StackState) -> list[str]:
    me = owned(state)
    found: list[str] = []
    for where, r, doc in documents(state):
        for st, arn in statement_arns(doc):
            problem = arn_problem(arn, me)
            if (
                problem is None
                or _ecr_layers(arn, st, where, me)
                or _account_deny(arn, st, where, me)
            ):
                continue
            allowed = me.allowances.get(arn)
            if allowed and (where in allowed or (where[0], None) in allowed):
                continue
            found.append(f"{state.stack}: {r.type} {r.name} ({where[0]}) names {arn}: {problem}")
    return found


def flow_arns_named(state: StackState) -> set[str]:
    """The declared flows' ARNs that the stack's documents actually name."""
    me = owned(state)
    return {
        arn
        for _, _, doc in documents(state)
        for _, arn in statement_arns(doc)
        if arn in me.allowances
    }


# -- the invariants --------------------------------------------------------------------------


@pytest.mark.parametrize("name", STACKS)
def test_policies_name_only_this_stacks_arns(stacks: dict[str, StackState], name: str) -> None:
    state = stacks[name]
    kinds = {where[0] for where, _, _ in documents(state)}
    assert {"role-policy", "trust", "boundary", "key-policy", "bucket-policy", "endpoint"} <= kinds
    assert isolation_violations(state) == []


@pytest.mark.parametrize("name", STACKS)
def test_declared_flows_are_named_exactly(stacks: dict[str, StackState], name: str) -> None:
    state = stacks[name]
    expected = set(owned(state).allowances)
    peer_roots = {a for a in expected if a.endswith(":root")}
    # Every declared flow is implemented: each peer store and peer role is named somewhere
    # (a peer's account root appears only as the principal narrowed to the peer role).
    assert flow_arns_named(state) | peer_roots == expected


def _with_policy(
    state: StackState,
    type_: str,
    pick: Callable[[Resource], bool],
    edit: Callable[[dict[str, Any]], None],
) -> StackState:
    copy_ = copy.deepcopy(state)
    targets = [r for r in copy_.of_type(type_) if pick(r)]
    assert targets
    for r in targets:
        doc = json.loads(r.inputs["policy"])
        edit(doc)
        r.inputs["policy"] = json.dumps(doc)
    return copy_


def _statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]


def test_the_check_finds_an_undeclared_cross_environment_arn(
    stacks: dict[str, StackState],
) -> None:
    """The invariant above is not vacuous: leaks of each kind are reported."""
    prod, exp = stacks["prod"], stacks["experiment"]
    exp_raw = "arn:aws:s3:::envfence-experiment-raw-210987654321/*"
    leaky = _with_policy(
        prod,
        "aws:iam/rolePolicy:RolePolicy",
        lambda r: r.inputs["role"] == "envfence-prod-analyst",
        lambda d: _statements(d)[0]["Resource"].append(exp_raw),
    )
    assert [v for v in isolation_violations(leaky) if exp_raw in v]

    # A declared ARN in the wrong place: the flow's bucket in another role's policy.
    exp_results = "arn:aws:s3:::envfence-experiment-results-210987654321/*"
    misplaced = _with_policy(
        prod,
        "aws:iam/rolePolicy:RolePolicy",
        lambda r: r.inputs["role"] == "envfence-prod-service",
        lambda d: _statements(d)[0]["Resource"].append(exp_results),
    )
    assert [v for v in isolation_violations(misplaced) if exp_results in v]

    # The peer role admitted to a store that is not the declared one.
    prod_pipeline = "arn:aws:iam::123456789012:role/envfence-prod-pipeline"
    wrong_store = _with_policy(
        exp,
        "aws:s3/bucketPolicy:BucketPolicy",
        lambda r: "-raw-" in r.inputs["bucket"],
        lambda d: _statements(d)[1]["Condition"]["ArnNotEquals"]["aws:PrincipalArn"].append(
            prod_pipeline
        ),
    )
    assert [v for v in isolation_violations(wrong_store) if prod_pipeline in v]

    # Another account in a key policy, and a role of a stack sharing the account.
    other = "arn:aws:iam::999999999999:root"
    foreign_key = _with_policy(
        prod,
        "aws:kms/key:Key",
        lambda r: True,
        lambda d: _statements(d).append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": other},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ),
    )
    assert [v for v in isolation_violations(foreign_key) if other in v]
    sibling = "arn:aws:iam::210987654321:role/envfence-experiment-ab12-service"
    shared_account = _with_policy(
        exp,
        "aws:kms/key:Key",
        lambda r: r.name == "key",  # the environment's key (not the archive's)
        lambda d: _statements(d)[1]["Condition"]["ArnEquals"]["aws:PrincipalArn"].append(sibling),
    )
    assert [v for v in isolation_violations(shared_account) if sibling in v]

    # Only the principals this stack's file configures pass as principals outside the
    # environment: another stack's deployer, or an unconfigured role of the project's name.
    def add_key_admin(arn: str) -> Callable[[dict[str, Any]], None]:
        return lambda d: _statements(d)[0]["Principal"]["AWS"].append(arn)

    exp_deployer = _stack_file("experiment")["envfence:access"]["deployer"]
    assert exp_deployer != _stack_file("prod")["envfence:access"]["deployer"]
    unconfigured = "arn:aws:iam::123456789012:role/envfence-operator"
    for arn in (exp_deployer, unconfigured):
        admitted = _with_policy(prod, "aws:kms/key:Key", lambda r: True, add_key_admin(arn))
        assert [v for v in isolation_violations(admitted) if arn in v], arn


def test_flows_are_declared_by_both_stacks() -> None:
    declared = {
        stack: {
            json.dumps(f, sort_keys=True) for f in _stack_file(stack).get("envfence:flows") or []
        }
        for stack in STACKS
    }
    assert any(declared.values()), "the repository declares at least one flow"
    for stack, flows in declared.items():
        for text in flows:
            flow = json.loads(text)
            assert stack in (flow["from"], flow["to"])
            peer = flow["to"] if flow["from"] == stack else flow["from"]
            assert text in declared[peer], f"{stack} declares {flow}, {peer} does not"


def test_no_two_stack_files_have_overlapping_cidrs(project: Project) -> None:
    import ipaddress

    cidrs = {
        stack: ipaddress.IPv4Network(_stack_file(stack)["envfence:network"]["cidr"])
        for stack in project.stacks()
    }
    assert len(cidrs) >= 2
    for (a, net_a), (b, net_b) in itertools.combinations(cidrs.items(), 2):
        assert not net_a.overlaps(net_b), f"{a} {net_a} overlaps {b} {net_b}"


def test_evaluated_vpcs_do_not_overlap(stacks: dict[str, StackState]) -> None:
    import ipaddress

    nets = {
        name: ipaddress.IPv4Network(r.inputs["cidrBlock"])
        for name, s in stacks.items()
        for r in s.of_type("aws:ec2/vpc:Vpc")
    }
    assert set(nets) == set(STACKS)
    for (a, net_a), (b, net_b) in itertools.combinations(nets.items(), 2):
        assert not net_a.overlaps(net_b), (a, b)


def _expected_tags(stack: str) -> dict[str, str]:
    config = _stack_file(stack)
    tags = {
        "environment": stack,
        "tier": registered_tier(stack),
        "data-classification": CLASSIFICATION[registered_tier(stack)],
        "owner": config["envfence:owner"],
        "managed-by": "pulumi",
        "project": PROJECT.name,
    }
    if config.get("envfence:experimentId"):
        tags["experiment-id"] = config["envfence:experimentId"]
    return tags


@pytest.mark.parametrize("name", STACKS)
def test_every_aws_resource_carries_the_environment_tags(
    stacks: dict[str, StackState], name: str
) -> None:
    state = stacks[name]
    expected = _expected_tags(name)
    assert set(ENV_TAGS) <= set(expected)
    providers = {f"{p.urn}::{p.id}": p for p in state.of_type("pulumi:providers:aws")}
    aws = [r for r in state.resources if r.type.startswith("aws:")]
    assert aws
    wrong = []
    for r in aws:
        provider = providers.get(r.provider or "")
        default = json.loads(provider.inputs["defaultTags"])["tags"] if provider else {}
        tags = {**default, **(r.inputs.get("tags") or {})}
        wrong += [f"{r.name}: {k}={tags.get(k)!r}" for k, v in expected.items() if tags.get(k) != v]
    assert wrong == []


NAME_INPUTS = ("bucket", "name", "identifier", "finalSnapshotIdentifier", "namePrefix")
# `family` names an ECS task definition, but on an RDS parameter group it is the engine
# ("postgres16"), which every parameter group of that engine has.
FAMILY_IS_A_NAME = {"aws:ecs/taskDefinition:TaskDefinition"}
# Names AWS keeps unique only inside a parent resource: the parent is part of the name.
NAME_SCOPES = {
    "aws:appconfig/environment:Environment": "applicationId",
    "aws:appconfig/configurationProfile:ConfigurationProfile": "applicationId",
}


def physical_names(state: StackState) -> dict[str, str]:
    """Names and ids the cloud would see, mapped to the resource that holds them."""
    names: dict[str, str] = {}
    for r in state.custom():
        keys = NAME_INPUTS + (("family",) if r.type in FAMILY_IS_A_NAME else ())
        scope = r.inputs.get(NAME_SCOPES[r.type]) if r.type in NAME_SCOPES else None
        for key in keys:
            value = r.inputs.get(key)
            if isinstance(value, str) and r.type != "aws:s3/bucketPolicy:BucketPolicy":
                names[f"{scope}/{value}" if scope else value] = f"{r.type} {r.name}.{key}"
        if r.id:
            names[r.id] = f"{r.type} {r.name} id"
        if isinstance(r.outputs.get("arn"), str):
            names[r.outputs["arn"]] = f"{r.type} {r.name} arn"
    return names


def test_no_physical_name_or_id_is_shared_between_stacks(stacks: dict[str, StackState]) -> None:
    by_stack = {name: physical_names(s) for name, s in stacks.items()}
    kinds = {v.split(" ")[0] for names in by_stack.values() for v in names.values()}
    for type_ in (
        "aws:s3/bucket:Bucket",
        "aws:iam/role:Role",
        "aws:iam/policy:Policy",
        "aws:cloudwatch/logGroup:LogGroup",
        "aws:rds/instance:Instance",
        "aws:kms/alias:Alias",
        "aws:ecs/taskDefinition:TaskDefinition",
        "aws:appconfig/configurationProfile:ConfigurationProfile",
    ):
        assert type_ in kinds
    for (a, names_a), (b, names_b) in itertools.combinations(by_stack.items(), 2):
        shared = {n: (names_a[n], names_b[n]) for n in set(names_a) & set(names_b)}
        assert shared == {}, f"{a} and {b} share {shared}"


def test_physical_names_carry_the_stack_name(stacks: dict[str, StackState]) -> None:
    checks = {
        "aws:s3/bucket:Bucket": "bucket",
        "aws:iam/role:Role": "name",
        "aws:iam/policy:Policy": "name",
        "aws:cloudwatch/logGroup:LogGroup": "name",
        "aws:rds/instance:Instance": "identifier",
        "aws:kms/alias:Alias": "name",
    }
    for name, state in stacks.items():
        for type_, key in checks.items():
            resources = state.of_type(type_)
            assert resources, (name, type_)
            for r in resources:
                value = r.inputs[key]
                assert owner_of(value, state.project) == name or value.startswith(
                    (
                        f"/{state.project}/{name}/",
                        f"alias/{state.project}/{name}",
                        # RDS fixes the name of the group it exports a log to
                        f"/aws/rds/instance/{state.project}-{name}/",
                    )
                ), (name, value)


def _snapshot(state: StackState) -> dict[str, tuple[str, str, Any, bool]]:
    return {
        r.urn: (r.type, json.dumps(r.inputs, sort_keys=True), r.parent, r.protect)
        for r in state.resources
    }


def test_evaluating_stacks_in_turn_leaks_nothing(project: Project) -> None:
    first = evaluate("prod", project)
    other = evaluate("experiment", project)
    again = evaluate("prod", project)
    assert {r.urn for r in first.resources} == {r.urn for r in again.resources}
    assert _snapshot(first) == _snapshot(again)
    assert all(r.stack == "prod" for r in again.resources)
    assert all(r.stack == "experiment" for r in other.resources)
    # None of the experiment's ids, names or account shows up in prod's inputs, beyond the
    # declared flow's store and the peer key ARN pattern.
    prod_inputs = json.dumps([r.inputs for r in again.resources])
    leaked = [
        i
        for i in (r.id for r in other.custom())
        if i and re.fullmatch(r"[a-z]+-[0-9a-f]{8,}", i) and i in prod_inputs
    ]
    assert leaked == []
    assert {r.id for r in first.custom()} == {r.id for r in again.custom()}
