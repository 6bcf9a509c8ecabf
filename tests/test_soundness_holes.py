"""Soundness holes that must fail closed (issue 9): whatever the checker cannot read or resolve
makes the verdict "not proved" (or a rule fail) and names it; nothing is dropped silently.

1. Secrets in real state: `pulumi stack export` wraps a secret as `{sig: ..., "ciphertext": ...}`
   (or `"plaintext": "<the value as JSON>"` under `--show-secrets`); `pulumi preview --json`
   prints `[secret]`. A plaintext reads exactly as the unwrapped state; anything else fails
   closed, naming the resource and the property.
2. References that resolve to nothing (a grant's key, a policy's role or target, a rule's
   group, a route's table, an endpoint's VPC, ...) break the pair and name the reference; a
   reference that does resolve (by id, ARN or alias, from any state) is read.
3. One stack is not a proof: a single `--stack` is proved against every other stack of the
   repository, both ways; a single `--state` file or a one-stack repository is bad input.

States are the repository's evaluated stacks (tests/conftest.py), changed the way
tests/mutations.py changes them, or written as the real tools write them (test_check_cli.py).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mutations as m
import pytest
from test_check_cli import write

from envfence import cli
from envfence.cli import main
from envfence.model import SECRET, SECRET_SIG, SECRET_SIG_KEY, StackState, reveal
from envfence.project import Project, load_project
from envfence.prove.iam_proof import BROKEN, prove_iam
from envfence.prove.network import NetworkResult, prove_network
from envfence.prove.world import World, build_world
from envfence.rules import run_all
from envfence.rules.context import build_context
from envfence.state import StateError, load_document

ROOT = Path(__file__).resolve().parent.parent  # the repository under test

Stacks = dict[str, StackState]
P, E = m.PROD, m.EXPERIMENT
SIG = {SECRET_SIG_KEY: SECRET_SIG}
NOWHERE = "0000000000000dead"  # the tail of an id no state declares
UNREADABLE = "is a secret the checker cannot read (exported without --show-secrets)"


def ciphertext(_: Any) -> dict[str, str]:
    return {**SIG, "ciphertext": "v1:8Hcnl1nQ0kVt0x0aB6dYb4uF2mR9xQ=="}


def plaintext(value: Any) -> dict[str, str]:
    return {**SIG, "plaintext": json.dumps(value)}


def exported(stacks: Stacks, wrap: Callable[[Any], Any], *where: tuple[str, str, str]) -> Stacks:
    """`stacks` as `pulumi stack export` documents read back, with each (stack, resource name,
    property) wrapped by `wrap` in both inputs and outputs, as the engine writes a secret."""
    out: Stacks = {}
    for name, state in stacks.items():
        doc = copy.deepcopy(state.to_document())
        for stack, resource, key in where:
            if stack != name:
                continue
            [r] = [r for r in doc["deployment"]["resources"] if r["urn"].endswith(f"::{resource}")]
            for part in ("inputs", "outputs"):
                if key in r[part]:
                    r[part][key] = wrap(r[part][key])
        out[name] = load_document({"version": 3, "deployment": doc["deployment"]})
    return out


def world(stacks: Stacks, project: Project) -> World:
    ctx = build_context(stacks.values(), project)
    return build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})


def gaps(w: World) -> list[str]:
    return [f"{stack}: {g}" for stack, found in w.gaps.items() for g in found]


def iam_pairs(w: World, project: Project) -> dict[tuple[str, str], Any]:
    proof = prove_iam(w, project.name, controls=False)
    return {(p.source, p.target): p for p in proof.pairs}


def network(stacks: Stacks) -> dict[tuple[str, str], NetworkResult]:
    return {(r.source, r.target): r for r in prove_network(stacks)}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("envfence: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --------------------------------------------------------------------------------------------
# 1. Secrets


def test_reveal_unwraps_plaintext_once_and_marks_ciphertext() -> None:
    policy = json.dumps({"Version": "2012-10-17", "Statement": []})
    assert reveal(plaintext(policy)) == policy  # a JSON string stays the string it encodes
    assert reveal(plaintext({"a": [1, plaintext("x")]})) == {"a": [1, "x"]}
    assert reveal({"tags": {"k": ciphertext("v")}, "l": [ciphertext(1), 2]}) == {
        "tags": {"k": SECRET},
        "l": [SECRET, 2],
    }
    assert reveal({"not": "a secret", SECRET_SIG_KEY: "another value"})[SECRET_SIG_KEY] == (
        "another value"
    )


def test_a_plaintext_that_is_not_json_is_a_bad_state(stacks: Stacks) -> None:
    doc = copy.deepcopy(stacks[P].to_document())
    [r] = [r for r in doc["deployment"]["resources"] if r["urn"].endswith("::store-raw-policy")]
    r["outputs"]["policy"] = {**SIG, "plaintext": "{not json"}
    with pytest.raises(StateError, match=r"store-raw-policy.*plaintext is not valid JSON"):
        load_document(doc)


BUCKET_POLICY = (P, "store-raw-policy", "policy")


def test_a_ciphertext_bucket_policy_fails_check_and_breaks_the_proof(
    stacks: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = exported(stacks, ciphertext, BUCKET_POLICY)
    assert secret[P].named("store-raw-policy").get("policy") == SECRET
    paths = write(tmp_path, secret, "export")
    code, out, err = run(
        ["check", "--format", "json", *(a for p in paths for a in ("--state", p))], capsys
    )
    assert code == 1, out  # violations and a broken proof, not a crash
    assert err == ""
    doc = json.loads(out)
    named = "policy of store-raw-policy (aws:s3/bucketPolicy:BucketPolicy) " + UNREADABLE
    on_it = [v for v in doc["violations"] if v["urn"].endswith("::store-raw-policy")]
    assert on_it and {v["rule"] for v in on_it} == {"EF902"}
    assert all(named in v["message"] for v in on_it)
    assert doc["proofs"]["ok"] is False
    for p in doc["proofs"]["iam"]["pairs"]:  # both pairs involve prod
        assert p["status"] == "broken"
        assert f"prod: {named}" in p["details"]


def test_a_plaintext_bucket_policy_reads_as_the_unwrapped_state(
    stacks: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = exported(stacks, plaintext, BUCKET_POLICY)
    bare = exported(stacks, lambda v: v)
    for name in stacks:
        assert [r.to_dict() for r in plain[name].resources] == [
            r.to_dict() for r in bare[name].resources
        ]
    paths = write(tmp_path, plain, "export")
    code, out, err = run(["check", *(a for p in paths for a in ("--state", p))], capsys)
    assert code == 0, out
    assert err == ""
    assert out.splitlines()[-1].startswith("PASS: 0 violation(s)")
    assert "PROVED: 2/2 iam pair(s), 2/2 network pair(s)" in out.splitlines()[-1]


# (stack, resource, property, type): secrets the rules and the IAM proof both read.
SECRETS = [
    (P, "store-raw-policy", "policy", "aws:s3/bucketPolicy:BucketPolicy"),
    (E, "policy-pipeline", "policy", "aws:iam/rolePolicy:RolePolicy"),
    (P, "key", "policy", "aws:kms/key:Key"),
    (E, "role-analyst", "assumeRolePolicy", "aws:iam/role:Role"),
    (P, "ingest-policy", "policy", "aws:sqs/queuePolicy:QueuePolicy"),
    (P, "boundary", "policy", "aws:iam/policy:Policy"),
]


@pytest.mark.parametrize("where", SECRETS, ids=lambda w: f"{w[0]}/{w[1]}.{w[2]}")
def test_no_rule_passes_and_no_pair_is_proved_on_an_unreadable_policy(
    where: tuple[str, str, str, str], stacks: Stacks, project: Project
) -> None:
    stack, name, key, type_ = where
    secret = exported(stacks, ciphertext, (stack, name, key))
    named = f"{key} of {name} ({type_}) {UNREADABLE}"
    # The rules: every rule that reads the policy says it cannot decide (EF902), none passes.
    result = run_all(secret.values(), project)
    mine = [v for v in result.violations if v.urn.endswith(f"::{name}")]
    assert mine, f"no rule failed on the unreadable {key} of {name}"
    assert all(v.rule == "EF902" and named in v.message for v in mine), mine
    # The proof: a gap of the stack, so every pair with it is broken, naming it.
    w = world(secret, project)
    assert named in w.gaps.get(stack, []), gaps(w)
    for pair, p in iam_pairs(w, project).items():
        assert p.status == BROKEN, pair
        assert f"{stack}: {named}" in p.details


def test_a_secret_the_rules_compare_fails_closed_too(stacks: Stacks, project: Project) -> None:
    """Tags and network values: the rules that read them (EF501/EF502, EF104) and the proofs."""
    secret = exported(
        stacks,
        ciphertext,
        (P, "store-raw", "tags"),
        (E, "sg-db-in-postgres", "referencedSecurityGroupId"),
    )
    result = run_all(secret.values(), project)
    tags = [v for v in result.violations if v.urn.endswith("::store-raw")]
    assert tags and all(v.rule == "EF902" and UNREADABLE in v.message for v in tags), tags
    ingress = [v for v in result.violations if v.urn.endswith("::sg-db-in-postgres")]
    assert ingress and all(v.rule == "EF902" and UNREADABLE in v.message for v in ingress)
    tags_gap = "tags of store-raw (aws:s3/bucket:Bucket) " + UNREADABLE
    assert tags_gap in world(secret, project).gaps[P]
    got = network(secret)
    for pair in [(P, E), (E, P), (E, E)]:
        assert got[pair].status == "broken", pair
        assert "referencedSecurityGroupId of" in got[pair].detail
        assert "experiment/sg-db-in-postgres" in got[pair].detail
        assert UNREADABLE in got[pair].detail


def test_a_preview_prints_secrets_as_a_marker_that_fails_closed(
    stacks: Stacks, project: Project
) -> None:
    doc = copy.deepcopy(stacks[P].to_document())
    steps = []
    for r in doc["deployment"]["resources"]:
        if r["urn"].endswith("::store-raw-policy"):
            r = {**r, "inputs": {**r["inputs"], "policy": "[secret]"}}
            r["outputs"] = {**r["outputs"], "policy": "[secret]"}
        steps.append({"op": "same", "urn": r["urn"], "newState": r})
    state = load_document({"steps": steps})
    assert state.named("store-raw-policy").get("policy") == SECRET
    w = world({P: state, E: stacks[E]}, project)
    assert any("store-raw-policy" in g and UNREADABLE in g for g in w.gaps[P])


# --------------------------------------------------------------------------------------------
# 2. References that resolve to nothing (IAM)


def _grant(s: Stacks, at: str, key_id: str, name: str = "decrypts") -> None:
    m.clone(
        s[at],
        s[at].named("key", m.KEY),
        type_="aws:kms/grant:Grant",
        name=name,
        inputs={
            "keyId": key_id,
            "granteePrincipal": m.role_arn(s[E], "pipeline"),
            "operations": ["Decrypt"],
        },
    )


def _key_policy_names(w: World, stack: str) -> str:
    # The environment's key; an experiment account's baseline also has its archive's key.
    [key] = [k for k in w.keys_of(stack) if k.name == "key"]
    assert key.policy is not None
    return key.policy.name


def test_the_evaluated_ids_are_what_aws_gives(stacks: Stacks) -> None:
    """What other resources name a resource by: the key id for a key, the URL for a queue,
    the name for a bucket and a role, the ARN for a policy, the resource id for a database."""
    s = stacks[P]
    key = s.named("key", m.KEY)
    assert key.id == key.get("keyId") and key.id and len(key.id) == 36
    queue = s.named("ingest", m.QUEUE)
    assert queue.id == queue.get("url") and str(queue.id).startswith("https://sqs.")
    assert s.named("store-raw", m.BUCKET).id == s.named("store-raw", m.BUCKET).get("bucket")
    assert s.named("role-pipeline", m.ROLE).id == s.named("role-pipeline", m.ROLE).get("name")
    boundary = s.named("boundary", "aws:iam/policy:Policy")
    assert boundary.id == boundary.get("arn")
    db = s.named("db", m.DB)
    assert db.id == db.get("resourceId") and str(db.id).startswith("db-")
    assert s.named("ingest-policy", m.QUEUE_POLICY).id == queue.get("url")
    assert str(s.named("sg-db", m.SECURITY_GROUP).id).startswith("sg-")
    assert str(s.named("repository-policy").id) == s.named("repository", m.REPOSITORY).get("name")
    cluster = s.of_type("aws:ecs/cluster:Cluster")[0]
    assert cluster.id == cluster.get("arn")


def test_a_grant_on_no_key_breaks_the_pair_naming_it(stacks: Stacks, project: Project) -> None:
    s = m.mutated(stacks)
    _grant(s, P, f"11111111-2222-4333-8444-{NOWHERE[:12]}")
    w = world(s, project)
    [gap] = w.gaps[P]
    assert "decrypts (aws:kms/grant:Grant) names key '11111111-2222-4333-8444-" in gap
    assert "(keyId), which is no key of any state" in gap
    for p in iam_pairs(w, project).values():
        assert p.status == BROKEN and f"prod: {gap}" in p.details


@pytest.mark.parametrize("form", ["key id", "key ARN", "alias name", "alias ARN"])
def test_a_grant_resolves_by_key_id_arn_or_alias(
    form: str, stacks: Stacks, project: Project
) -> None:
    s = m.mutated(stacks)
    key, alias = s[P].named("key", m.KEY), s[P].named("key-alias", m.KEY_ALIAS)
    ref = {
        "key id": str(key.get("keyId")),
        "key ARN": str(key.get("arn")),
        "alias name": str(alias.get("name")),
        "alias ARN": str(alias.get("arn")),
    }[form]
    _grant(s, P, ref)
    w = world(s, project)
    assert P not in w.gaps, w.gaps
    assert "grant decrypts" in _key_policy_names(w, P)


def test_a_grant_another_stack_declares_lands_on_the_key(stacks: Stacks, project: Project) -> None:
    """Declared in experiment, naming prod's key by ARN: a grant on prod's key all the same
    (it used to be read only against the declaring stack's keys, and dropped)."""
    s = m.mutated(stacks)
    _grant(s, E, m.key_arn(s[P]), name="cross-decrypts")
    w = world(s, project)
    assert w.gaps == {}, w.gaps
    assert "grant cross-decrypts" in _key_policy_names(w, P)
    assert "grant cross-decrypts" not in _key_policy_names(w, E)


def _role_policy_on(s: Stacks, role: str) -> None:
    src = s[E].named("policy-pipeline", m.ROLE_POLICY)
    m.clone(
        s[E],
        src,
        type_=m.ROLE_POLICY,
        name="stray-policy",
        inputs={"role": role, "name": "stray", "policy": json.dumps(m.policy(src))},
    )


def _attachment_on(s: Stacks, role: str) -> None:
    m.clone(
        s[E],
        s[E].named("role-pipeline", m.ROLE),
        type_=m.ROLE_POLICY_ATTACHMENT,
        name="stray-attachment",
        inputs={"role": role, "policyArn": m.S3_FULL_ACCESS},
    )


def _policy_attachment_on(s: Stacks, role: str) -> None:
    m.clone(
        s[E],
        s[E].named("role-pipeline", m.ROLE),
        type_="aws:iam/policyAttachment:PolicyAttachment",
        name="stray-policy-attachment",
        inputs={"name": "stray", "roles": [role], "policyArn": m.S3_FULL_ACCESS},
    )


def _resource_policy(type_: str, key: str, value: Callable[[Stacks], str]) -> Callable[..., None]:
    def add(s: Stacks, _: str) -> None:
        src = s[P].named("store-raw-policy", m.BUCKET_POLICY)
        m.clone(
            s[P],
            src,
            type_=type_,
            name="stray-resource-policy",
            inputs={key: value(s), "policy": json.dumps(m.policy(src))},
        )

    return add


ACCOUNT_P = "123456789012"
DANGLING_IAM: dict[str, tuple[Callable[..., None], str, str]] = {
    # name: (add it, what the message must name, the property)
    "role policy": (_role_policy_on, "names role 'envfence-experiment-nobody'", "(role)"),
    "role policy attachment": (_attachment_on, "names role 'envfence-experiment-nobody'", "(role)"),
    "policy attachment": (
        _policy_attachment_on,
        "names role 'envfence-experiment-nobody'",
        "(roles)",
    ),
    "bucket policy": (
        _resource_policy(m.BUCKET_POLICY, "bucket", lambda s: "envfence-prod-nowhere"),
        "names bucket 'envfence-prod-nowhere'",
        "(bucket)",
    ),
    "queue policy": (
        _resource_policy(
            m.QUEUE_POLICY,
            "queueUrl",
            lambda s: f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT_P}/nowhere",
        ),
        "names queue 'https://sqs.eu-west-1.amazonaws.com/123456789012/nowhere'",
        "(queueUrl)",
    ),
    "key policy": (
        _resource_policy("aws:kms/keyPolicy:KeyPolicy", "keyId", lambda s: "alias/nowhere"),
        "names key 'alias/nowhere'",
        "(keyId)",
    ),
    "secret policy": (
        _resource_policy(
            m.SECRET_POLICY,
            "secretArn",
            lambda s: f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT_P}:secret:nowhere-AbCdEf",
        ),
        "names secret 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:nowhere-AbCdEf'",
        "(secretArn)",
    ),
    "repository policy": (
        _resource_policy("aws:ecr/repositoryPolicy:RepositoryPolicy", "repository", lambda s: "x"),
        "names repository 'x'",
        "(repository)",
    ),
}


@pytest.mark.parametrize("case", sorted(DANGLING_IAM))
def test_a_reference_to_nothing_breaks_the_iam_pairs_naming_it(
    case: str, stacks: Stacks, project: Project
) -> None:
    add, names, key = DANGLING_IAM[case]
    s = m.mutated(stacks)
    add(s, "envfence-experiment-nobody")
    w = world(s, project)
    declaring = E if case.startswith(("role", "policy")) else P
    found = [g for g in w.gaps.get(declaring, []) if names in g]
    assert len(found) == 1, gaps(w)
    assert f"{key}, which is no" in found[0]
    for p in iam_pairs(w, project).values():
        assert p.status == BROKEN and f"{declaring}: {found[0]}" in p.details


def test_a_role_policy_another_stack_declares_lands_on_the_role(
    stacks: Stacks, project: Project
) -> None:
    """Declared in experiment on prod's role by ARN: it is that role's policy."""
    s = m.mutated(stacks)
    _role_policy_on(s, m.role_arn(s[P], "analyst"))
    w = world(s, project)
    assert w.gaps == {}, w.gaps
    analyst = w.roles[m.role_arn(s[P], "analyst")]
    assert "stray-policy" in [p.name for p in analyst.identity]


def test_the_repository_stacks_have_no_gaps(stacks: Stacks, project: Project) -> None:
    assert world(stacks, project).gaps == {}
    assert {r.status for r in prove_network(stacks)} == {"proved"}


# --------------------------------------------------------------------------------------------
# 2. References that resolve to nothing (network)

NETWORK_TYPES = {
    "route": m.ROUTE,
    "main": "aws:ec2/mainRouteTableAssociation:MainRouteTableAssociation",
    "acl rule": "aws:ec2/networkAclRule:NetworkAclRule",
    "lambda": m.LAMBDA,
}


def _add(s: Stacks, at: str, source: str, type_: str, name: str, inputs: dict[str, Any]) -> None:
    m.clone(s[at], s[at].named(source), type_=type_, name=name, inputs=inputs)


def _sg_rule_on_nowhere(s: Stacks) -> str:
    _add(
        s,
        P,
        "sg-db-in-postgres",
        m.SG_INGRESS_RULE,
        "stray-ingress",
        {
            "securityGroupId": f"sg-{NOWHERE}",
            "ipProtocol": "tcp",
            "fromPort": 5432,
            "toPort": 5432,
            "cidrIpv4": m.cidr(s[P]),
        },
    )
    return f"prod/stray-ingress is on security group sg-{NOWHERE}, declared in no state"


def _sg_rule_from_nowhere(s: Stacks) -> str:
    _add(
        s,
        P,
        "sg-db-in-postgres",
        m.SG_INGRESS_RULE,
        "stray-ingress",
        {
            "securityGroupId": s[P].named("sg-db", m.SECURITY_GROUP).id,
            "ipProtocol": "tcp",
            "fromPort": 5432,
            "toPort": 5432,
            "referencedSecurityGroupId": f"sg-{NOWHERE}",
        },
    )
    return f"from security group sg-{NOWHERE}): the referenced group is declared in no state"


def _route_in_nowhere(s: Stacks) -> str:
    _add(
        s,
        P,
        "rt-app-0",
        m.ROUTE,
        "stray-route",
        {
            "routeTableId": f"rtb-{NOWHERE}",
            "destinationCidrBlock": m.cidr(s[E]),
            "vpcPeeringConnectionId": f"pcx-{NOWHERE}",
        },
    )
    return f"prod/stray-route is in route table rtb-{NOWHERE}, declared in no state"


def _main_table_nowhere(s: Stacks) -> str:
    _add(
        s,
        P,
        "rt-app-0",
        NETWORK_TYPES["main"],
        "stray-main",
        {"vpcId": m.vpc(s[P]).id, "routeTableId": f"rtb-{NOWHERE}"},
    )
    return f"prod/stray-main makes route table rtb-{NOWHERE}, declared in no state, main"


def _acl_rule_nowhere(s: Stacks) -> str:
    _add(
        s,
        P,
        "vpc",
        NETWORK_TYPES["acl rule"],
        "stray-acl-rule",
        {
            "networkAclId": f"acl-{NOWHERE}",
            "ruleNumber": 10,
            "egress": False,
            "protocol": "-1",
            "ruleAction": "allow",
            "cidrBlock": m.cidr(s[E]),
        },
    )
    return f"prod/stray-acl-rule is in network ACL acl-{NOWHERE}, declared in no state"


def _endpoint(s: Stacks, source: str, **changes: Any) -> None:
    src = s[P].named(source)
    inputs = {**copy.deepcopy(src.inputs), **changes}
    _add(s, P, source, "aws:ec2/vpcEndpoint:VpcEndpoint", "stray-endpoint", inputs)


def _endpoint_vpc_nowhere(s: Stacks) -> str:
    _endpoint(s, "s3-endpoint", vpcId=f"vpc-{NOWHERE}")
    return f"prod/stray-endpoint is in VPC vpc-{NOWHERE}, declared in no state"


def _endpoint_table_nowhere(s: Stacks) -> str:
    _endpoint(s, "s3-endpoint", routeTableIds=[f"rtb-{NOWHERE}"])
    return f"prod/stray-endpoint routes through route table rtb-{NOWHERE}, declared in no state"


def _endpoint_subnet_nowhere(s: Stacks) -> str:
    _endpoint(s, "endpoint-sqs", subnetIds=[f"subnet-{NOWHERE}"])
    return f"prod/stray-endpoint uses subnet subnet-{NOWHERE}, declared in no state"


def _endpoint_group_nowhere(s: Stacks) -> str:
    _endpoint(s, "endpoint-sqs", securityGroupIds=[f"sg-{NOWHERE}"])
    return f"prod/stray-endpoint uses security group sg-{NOWHERE}, declared in no state"


def _function_group_nowhere(s: Stacks) -> str:
    subnet = s[P].named("subnet-app-0").id
    _add(
        s,
        P,
        "sg-app",
        m.LAMBDA,
        "stray-function",
        {"vpcConfig": {"subnetIds": [subnet], "securityGroupIds": [f"sg-{NOWHERE}"]}},
    )
    return f"prod/stray-function uses security group sg-{NOWHERE}, declared in no state"


DANGLING_NETWORK: dict[str, Callable[[Stacks], str]] = {
    "rule on a group": _sg_rule_on_nowhere,
    "rule from a group": _sg_rule_from_nowhere,
    "route in a table": _route_in_nowhere,
    "main table": _main_table_nowhere,
    "network ACL rule": _acl_rule_nowhere,
    "endpoint VPC": _endpoint_vpc_nowhere,
    "endpoint route table": _endpoint_table_nowhere,
    "endpoint subnet": _endpoint_subnet_nowhere,
    "endpoint group": _endpoint_group_nowhere,
    "function group": _function_group_nowhere,
}


@pytest.mark.parametrize("case", sorted(DANGLING_NETWORK))
def test_a_reference_to_nothing_breaks_the_network_pairs_naming_it(
    case: str, stacks: Stacks
) -> None:
    s = m.mutated(stacks)
    named = DANGLING_NETWORK[case](s)
    got = network(s)
    for pair in [(P, E), (E, P), (P, P)]:
        assert got[pair].status == "broken", (pair, got[pair].detail)
        assert named in got[pair].detail, (pair, got[pair].detail)
    assert got[(E, E)].status == "proved"  # experiment's own network is untouched


def _open_both_ways(s: Stacks) -> None:
    """Experiment's database admits prod's CIDR and prod's application may send there: only
    routing stands between them."""
    m.ingress_from_other_cidr(s, at=E, peer=P)
    _add(
        s,
        P,
        "sg-app-out-postgres",
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
        "sg-app-out-postgres-peer",
        {
            "securityGroupId": s[P].named("sg-app", m.SECURITY_GROUP).id,
            "ipProtocol": "tcp",
            "fromPort": 5432,
            "toPort": 5432,
            "cidrIpv4": m.cidr(s[E]),
        },
    )


ROUTE_TARGETS = {
    "natGatewayId": f"nat-{NOWHERE}",
    "vpcPeeringConnectionId": f"pcx-{NOWHERE}",
    "transitGatewayId": f"tgw-{NOWHERE}",
    "networkInterfaceId": f"eni-{NOWHERE}",
    "instanceId": f"i-{NOWHERE}",
    "vpcEndpointId": f"vpce-{NOWHERE}",
    "gatewayId": f"vgw-{NOWHERE}",
}


@pytest.mark.parametrize("target", sorted(ROUTE_TARGETS))
def test_a_route_to_nothing_is_a_hop_anywhere_that_breaks_the_pair_naming_it(
    target: str, stacks: Stacks
) -> None:
    """A route target no state declares may lead anywhere: the proof takes it as a hop to any
    network. Once the groups admit the packet, the only path goes through it: broken, naming
    it (with the groups closed it carries nothing, which is still a proof:
    test_prove_network.py)."""
    s = m.mutated(stacks)
    _open_both_ways(s)
    _add(
        s,
        P,
        "rt-app-0",
        m.ROUTE,
        "route-app-0-nowhere",
        {
            "routeTableId": s[P].named("rt-app-0").id,
            "destinationCidrBlock": m.cidr(s[E]),
            target: ROUTE_TARGETS[target],
        },
    )
    r = network(s)[(P, E)]
    assert r.status == "broken", (r.status, r.detail)
    assert ROUTE_TARGETS[target] in r.detail and "route-app-0-nowhere" in r.detail
    if target in CONNECTORS_BY_ID:
        # a peering, NAT or transit gateway named by id and declared nowhere: a reference to
        # nothing, broken when the state is read (test_a_route_to_an_undeclared_connector_...)
        assert "declared in no state" in r.detail
    else:
        assert r.packet is not None  # an appliance-like hop: broken because a path needs it


CONNECTORS_BY_ID = ("natGatewayId", "vpcPeeringConnectionId", "transitGatewayId")


@pytest.mark.parametrize("target", CONNECTORS_BY_ID)
def test_a_route_to_an_undeclared_connector_breaks_the_pair_even_unused(
    target: str, stacks: Stacks
) -> None:
    """Groups closed, so no packet could use it: still broken, since where it leads cannot be
    placed (the issue: a reference the proof cannot resolve is a gap, never a silent drop)."""
    s = m.mutated(stacks)
    _add(
        s,
        P,
        "rt-app-0",
        m.ROUTE,
        "route-app-0-nowhere",
        {
            "routeTableId": s[P].named("rt-app-0").id,
            "destinationCidrBlock": m.cidr(s[E]),
            target: ROUTE_TARGETS[target],
        },
    )
    r = network(s)[(P, E)]
    assert r.status == "broken", (r.status, r.detail)
    assert f"{ROUTE_TARGETS[target]}, declared in no state" in r.detail


# --------------------------------------------------------------------------------------------
# 3. One stack is not a proof


@pytest.fixture
def offline(stacks: Stacks, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The CLI's offline evaluation answered from the session's evaluated stacks (fast); the
    stack lists it was asked for are recorded."""
    asked: list[list[str]] = []

    def load(
        names: list[str] | None,
        project: Project | None = None,
        progress: object = None,
        args: object = None,
    ) -> list[StackState]:
        names = list(dict.fromkeys(names or (project or load_project()).stacks()))
        asked.append(names)
        unknown = [n for n in names if n not in stacks]
        if unknown:
            raise cli.UsageError(f"unknown stack '{unknown[0]}'")
        return [copy.deepcopy(stacks[n]) for n in names]

    monkeypatch.setattr(cli, "_load_stacks", load)
    return asked


def one_stack_repository(tmp_path: Path) -> Project:
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return load_project(tmp_path)


def test_prove_one_stack_against_every_other_both_ways(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """End to end, nothing patched: evaluates both stacks, proves the two pairs."""
    code, out, err = run(["prove", "--stack", "prod", "--format", "json"], capsys)
    assert code == 0, out + err
    doc = json.loads(out)
    assert doc["ok"] is True
    assert sorted(doc["stacks"]) == ["experiment", "prod"]
    pairs = {(p["source"], p["target"]): p["status"] for p in doc["iam"]["pairs"]}
    assert pairs == {("prod", "experiment"): "proved", ("experiment", "prod"): "proved"}
    network_pairs = {(n["source"], n["target"]) for n in doc["network"] if not n["control"]}
    assert network_pairs == {("prod", "experiment"), ("experiment", "prod")}


def test_prove_one_stack_says_what_it_is_proved_against(
    offline: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["prove", "--stack", "prod"], capsys)
    assert code == 0, out
    assert offline == [["prod"], ["experiment"]]
    assert out.splitlines()[0] == (
        "envfence prove: stack prod is proved against every other stack of the repository, "
        "both ways: experiment"
    )
    assert "prod -> experiment: iam proved" in out and "experiment -> prod: iam proved" in out
    assert out.rstrip().splitlines()[-1].startswith("PROVED: 2/2 iam pair(s), 2/2 network")


def test_check_one_stack_runs_its_rules_and_proves_it_against_the_others(
    offline: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["check", "--stack", "prod", "--format", "json"], capsys)
    assert code == 0, out
    doc = json.loads(out)
    assert doc["stacks"] == ["prod"]  # the rules: the stack asked for
    pairs = {(p["source"], p["target"]) for p in doc["proofs"]["iam"]["pairs"]}
    assert pairs == {("prod", "experiment"), ("experiment", "prod")}
    code, out, _ = run(["check", "--stack", "prod", "--no-prove"], capsys)
    assert code == 0 and offline[-1] == ["prod"]  # no proof, no other stack evaluated


def test_a_repository_of_one_stack_has_nothing_to_prove(
    offline: list[list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "_repository", lambda: one_stack_repository(tmp_path))
    for argv in (["prove", "--stack", "prod"], ["prove"], ["check", "--stack", "prod"]):
        code, out, err = run(argv, capsys)
        assert code == 2, argv
        assert out == ""
        one_error_line(err, "prod", "only stack" if "--stack" in argv else "1 stack(s)")
    code, out, _ = run(["check", "--stack", "prod", "--no-prove"], capsys)
    assert code == 0, out


def test_one_state_file_is_not_a_proof(
    stacks: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [path] = write(tmp_path, {"prod": stacks["prod"]}, "export")
    for argv in (["prove", "--state", path], ["check", "--state", path]):
        code, out, err = run(argv, capsys)
        assert code == 2, argv
        assert out == ""
        one_error_line(err, path, "one state proves nothing")
    code, out, err = run(["check", "--state", path, "--no-prove"], capsys)
    assert code == 0, out + err


def test_help_says_what_one_stack_means(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("prove", "check"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out.replace("\n", " ")
        assert "against every other stack of the repository" in " ".join(out.split())
