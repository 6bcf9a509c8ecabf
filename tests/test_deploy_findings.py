"""Issue 8: what a real `pulumi up` would hit. Each test is a request as AWS really receives it
(its action, resource and the condition keys it carries or lacks), decided by the concrete
evaluator on the policies the stacks declare. Each one failed on the code before its fix.

The request shapes come from AWS's pages, cited beside each test; see also
../shared/docs/notes-real-requests.md.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from envfence.model import StackState
from envfence.prove.requests import RealRequest, decide
from envfence.prove.world import World, build_world
from envfence.rules.context import build_context
from infra import naming
from infra.project import Project

Stacks = dict[str, StackState]
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def world(stacks: Stacks, project: Project) -> World:
    ctx = build_context(stacks.values(), project)
    return build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})


def account(state: StackState) -> str:
    provider = next(r for r in state.resources if r.type == "pulumi:providers:aws")
    ids = provider.inputs["allowedAccountIds"]
    return str((json.loads(ids) if isinstance(ids, str) else ids)[0])


def role_arn(state: StackState, role: str) -> str:
    return naming.role_arn("envfence", state.stack, role, account(state))


def object_arn(state: StackState, store: str, key: str) -> str:
    return f"{naming.bucket_arn('envfence', state.stack, store, account(state))}/{key}"


def key_arn(state: StackState) -> str:
    key = state.named("key", "aws:kms/key:Key")
    return str(key.outputs["arn"])


def through_gateway(state: StackState) -> dict[str, Any]:
    """Global keys of a request through the S3 gateway endpoint: TLS, VPC and endpoint present,
    source IP absent (AWS global condition context keys)."""
    return {"aws:SecureTransport": True, "aws:SourceVpce": "vpce-0abc", "aws:SourceVpc": "vpc-0abc"}


# -- 1. the worker's own writes ---------------------------------------------------------------


def worker_put(state: StackState, **extra: Any) -> RealRequest:
    """What `RawStore.put` sends (app/worker/store.py): PutObject with object tags and no SSE
    header. Object tags put s3:RequestObjectTagKeys and s3:RequestObjectTag/<k> in the request;
    the SSE keys are absent (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
    tagging-and-policies.html, https://docs.aws.amazon.com/AmazonS3/latest/userguide/
    UsingKMSEncryption.html)."""
    tags = {"environment": state.stack}
    if state.stack != "prod":
        tags["experiment-id"] = state.config.get("envfence:experimentId", "shared")
    context: dict[str, Any] = {
        **through_gateway(state),
        "s3:RequestObjectTagKeys": sorted(tags),
        **{f"s3:RequestObjectTag/{k}": v for k, v in tags.items()},
        **extra,
    }
    return RealRequest(
        "worker PutObject into raw",
        role_arn(state, "service"),
        "s3:PutObject",
        object_arn(state, "raw", f"raw/{state.stack}/2026/12/02/m-1.json"),
        context,
    )


@pytest.mark.parametrize("stack", ["prod", "experiment"])
def test_the_workers_put_without_sse_headers_is_allowed(
    world: World, stacks: Stacks, stack: str
) -> None:
    outcome = decide(world, worker_put(stacks[stack]))
    assert outcome.allowed, outcome.line()
    # Tags on PutObject are authorized as s3:PutObjectTagging as well (API_PutObject).
    tagging = decide(world, _as(worker_put(stacks[stack]), "s3:PutObjectTagging"))
    assert tagging.allowed, tagging.line()


def _as(request: RealRequest, action: str) -> RealRequest:
    return RealRequest(request.what, request.principal, action, request.resource, request.context)


@pytest.mark.parametrize(
    "headers",
    [
        {"s3:x-amz-server-side-encryption": "AES256"},
        # aws:kms without a key id selects the AWS managed key aws/s3, not the environment's
        {"s3:x-amz-server-side-encryption": "aws:kms"},
        {
            "s3:x-amz-server-side-encryption": "aws:kms",
            "s3:x-amz-server-side-encryption-aws-kms-key-id": (
                "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000"
            ),
        },
    ],
)
def test_a_put_naming_another_encryption_is_denied(
    world: World, stacks: Stacks, headers: dict[str, str]
) -> None:
    outcome = decide(world, worker_put(stacks["prod"], **headers))
    assert not outcome.allowed
    assert "Deny" in outcome.reason or "denied by" in outcome.reason


def test_a_put_naming_the_environment_key_is_allowed(world: World, stacks: Stacks) -> None:
    prod = stacks["prod"]
    outcome = decide(
        world,
        worker_put(
            prod,
            **{
                "s3:x-amz-server-side-encryption": "aws:kms",
                "s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn(prod),
            },
        ),
    )
    assert outcome.allowed, outcome.line()


def test_no_deny_uses_a_negated_if_exists_operator(stacks: Stacks) -> None:
    """A negated ...IfExists operator in a Deny is true when the key is missing: it denies every
    request that lacks the key, which is how the worker's writes were denied."""
    found = []
    for state in stacks.values():
        for r in state.resources:
            for field in ("policy", "assumeRolePolicy"):
                raw = r.inputs.get(field)
                if not isinstance(raw, str) or not raw.startswith("{"):
                    continue
                for stmt in json.loads(raw).get("Statement", []):
                    if stmt.get("Effect") != "Deny":
                        continue
                    for op in stmt.get("Condition", {}):
                        if "Not" in op and op.endswith("IfExists"):
                            found.append(f"{state.stack}/{r.name}#{stmt.get('Sid')}: {op}")
    assert not found
