"""What the question of one environment against everything outside it may leave out, and what
it must not (issue 12; found by a review of `envfence/prove/relevance.py`).

A resource is left out of the question only when no Allow statement can reach it. Three cases
the review found, each reproduced on a small hand-built world:

1. A declared flow exempts reads on its own target stack's data only: a resource of another
   stack whose ARN falls inside the flow's store is not exempt (the combined question carries
   every flow of the environment).
2. A resource policy that a question would refuse (an unsupported condition operator, a wildcard
   principal) is never left out: the question meets it and fails closed.
3. A malformed identity policy or boundary is never left out either, even when nothing else
   would make a resource relevant: the environment's pairs are broken, not proved.
"""

from __future__ import annotations

from typing import Any

import pytest

from envfence.iam import Policy
from envfence.prove import classes, smt
from envfence.prove.iam_proof import BROKEN, PROVED, Prover
from envfence.prove.query import Exemption, Query
from envfence.prove.relevance import Relevance
from envfence.prove.world import ANY, Role, Target, World

ACCT_A, ACCT_B = "111111111111", "222222222222"


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def role(stack: str, account: str, *identity: dict[str, Any], boundary: Any = None) -> Role:
    name = f"{stack}-worker"
    return Role(
        stack=stack,
        urn=f"urn:pulumi:{stack}::envfence::aws:iam/role:Role::{name}",
        name=name,
        arn=f"arn:aws:iam::{account}:role/{name}",
        account=account,
        tags={},
        trust=None,
        identity=tuple(Policy(d, f"identity-{i}") for i, d in enumerate(identity)),
        boundary=Policy(boundary, "boundary") if boundary is not None else None,
    )


def bucket(stack: str, name: str, account: str, policy: dict[str, Any] | None = None) -> Target:
    return Target(
        stack=stack,
        urn=f"urn:pulumi:{stack}::envfence::aws:s3/bucket:Bucket::{name}",
        type="aws:s3/bucket:Bucket",
        name=name,
        shapes=((f"arn:aws:s3:::{name}",), (f"arn:aws:s3:::{name}/", ANY)),
        account=account,
        tags={},
        policy=Policy(policy, f"{name}-policy") if policy is not None else None,
    )


def world(roles: list[Role], targets: list[Target]) -> World:
    stacks = tuple(dict.fromkeys([*(r.stack for r in roles), *(t.stack for t in targets)]))
    return World(
        stacks=stacks,
        accounts={},
        roles={r.arn: r for r in roles},
        targets={s: [t for t in targets if t.stack == s] for s in stacks},
        flows=(),
    )


# -- 1. a flow exempts its own target stack's data only ------------------------------------------


def test_a_flow_does_not_exempt_another_stacks_resource_inside_its_store() -> None:
    reader = role(
        "a",
        ACCT_A,
        doc({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::cbucket/*"}),
    )
    store = bucket("c", "cbucket", ACCT_A)
    # Stack b declares an object whose ARN falls inside c's bucket.
    inside = Target(
        stack="b",
        urn="urn:pulumi:b::envfence::aws:s3/bucketObjectv2:BucketObjectv2::object",
        type="aws:s3/bucketObjectv2:BucketObjectv2",
        name="object",
        shapes=(("arn:aws:s3:::cbucket/key",),),
        account=ACCT_A,
        tags={},
        policy=None,
    )
    flow = Exemption("a/worker may read c/cbucket", frozenset({"s3:getobject"}), (store,), "c")
    question = Query(reader, (inside, store), exemptions=(flow,))
    for method in (smt.solve, classes.search):
        witness = method(question)
        assert witness is not None and witness.target.stack == "b", method
    # Without the stack, the flow would exempt b's object too: the question proved nothing.
    untied = Query(
        reader, (inside, store), exemptions=(Exemption(flow.flow, flow.actions, flow.targets),)
    )
    assert smt.solve(untied) is None and classes.search(untied) is None


# -- 2. a resource policy a question would refuse is never left out -----------------------------


@pytest.mark.parametrize(
    "statement",
    [
        {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCT_A}:root"},
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::bbucket/*",
            "Condition": {"NumericFancy": {"aws:MultiFactorAuthAge": "1"}},
        },
        {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCT_B}:role/*"},
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::bbucket/*",
        },
        {
            "Effect": "Allow",
            "Principal": {"AWS": "12345"},
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::bbucket/*",
        },
    ],
    ids=["unsupported operator", "wildcard principal", "not an account id"],
)
def test_a_resource_policy_the_question_would_refuse_is_kept(statement: dict[str, Any]) -> None:
    worker = role("a", ACCT_A, doc({"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}))
    target = bucket("b", "bbucket", ACCT_B, doc(statement))
    w = world([worker], [target])
    assert Relevance(w).outside(worker, "a") == [target]
    [pair] = Prover(w, "envfence").environment("a")
    # Broken by the question itself, which names the principal and what it could not read.
    assert pair.status == BROKEN, pair
    assert pair.details and all(d.startswith("a/a-worker: ") for d in pair.details), pair.details


def test_a_readable_resource_policy_of_another_account_is_left_out() -> None:
    """The control of the three above: the same grant, readable, to someone else."""
    worker = role("a", ACCT_A, doc({"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}))
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCT_B}:root"},
        "Action": "s3:GetObject",
        "Resource": "arn:aws:s3:::bbucket/*",
    }
    target = bucket("b", "bbucket", ACCT_B, doc(statement))
    w = world([worker], [target])
    assert Relevance(w).outside(worker, "a") == []
    [pair] = Prover(w, "envfence").environment("a")
    assert pair.status == PROVED, pair


# -- 3. a malformed identity policy or boundary is never left out ---------------------------------


@pytest.mark.parametrize("where", ["identity", "boundary"])
def test_a_malformed_policy_of_the_principal_breaks_its_pairs(where: str) -> None:
    malformed = doc({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*", "Foo": "bar"})
    fine = doc({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:*:*:a"})
    worker = (
        role("a", ACCT_A, malformed)
        if where == "identity"
        else role("a", ACCT_A, fine, boundary=malformed)
    )
    target = bucket("b", "bbucket", ACCT_B)
    w = world([worker], [target])
    assert Relevance(w).outside(worker, "a") == [target]
    [pair] = Prover(w, "envfence").environment("a")
    assert pair.status == BROKEN and any("Foo" in d for d in pair.details), pair
