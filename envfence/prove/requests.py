"""Concrete requests, decided the way AWS decides them, on the policies a stack really declares.

A proof that "the pipeline may write to the raw store" is satisfied by *some* request; the
worker sends one particular request, with particular headers, and AWS evaluates exactly that
one. This module decides such concrete requests (`RealRequest`) against a `World`, through the
whole path AWS walks for it:

- a role of an environment: its identity policies, its permissions boundary, and the resource
  policy of the resource it names (bucket, queue, key, repository);
- a principal outside the modelled roles (the deployer, an administrator): identity side
  unknown and taken as "Allow *" (the worst case for isolation and the best case for a control:
  if the *resource* policy denies it, no identity policy can help);
- an AWS service principal (`cloudtrail.amazonaws.com`, ...): the resource policy alone, since
  a service principal has no identity policy in the account.

Each decision uses the concrete evaluator `envfence.iam`, so a denied request names the
statement that denies it. Nothing here is approximate: a resource the world does not know, or
a policy construct the evaluator does not implement, is an error, never an "allowed".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envfence import iam
from envfence.prove.world import ALLOW_ALL, Target, World

ContextValue = iam.ContextValue


@dataclass(frozen=True)
class RealRequest:
    """One request as AWS receives it.

    `principal` is a role ARN of the world, any other IAM ARN (identity side taken as
    "Allow *"), or a service principal name (`cloudtrail.amazonaws.com`). `context` holds the
    condition keys the request carries; a key that is not there is absent, as in AWS.
    `source` says where the shape of the request comes from (an AWS page, a recorded call).
    """

    what: str
    principal: str
    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    source: str = ""
    # The policies of the VPC endpoints the request passes through (evaluated with it: an
    # endpoint policy must allow, and its Deny wins like any other).
    endpoint_policies: tuple[iam.Policy, ...] = ()


@dataclass(frozen=True)
class Outcome:
    request: RealRequest
    allowed: bool
    reason: str

    def line(self) -> str:
        verdict = "allowed" if self.allowed else "DENIED"
        return f"{verdict}: {self.request.what} ({self.reason})"


class UnknownTarget(LookupError):
    """The request names a resource that no stack of the world declares."""


def target_of(world: World, resource: str) -> Target:
    target = world.target_named(resource)
    if target is None:
        raise UnknownTarget(f"no data resource of the world is named by {resource}")
    return target


def _principal(world: World, arn: str) -> tuple[iam.Principal, iam.PolicySet]:
    role = world.roles.get(arn)
    if role is not None:
        return role.principal(), iam.PolicySet(identity=role.identity, boundary=role.boundary)
    if arn.startswith("arn:"):
        account = arn.split(":")[4] or None
        outsider = iam.PolicySet(identity=(iam.Policy(ALLOW_ALL, "outside-identity"),))
        if ":role/" in arn:
            name = arn.split(":role/", 1)[1].rsplit("/", 1)[-1]
            session = f"arn:aws:sts::{account}:assumed-role/{name}/envfence-request"
            return iam.Principal(arn=arn, account=account, session_arn=session), outsider
        return iam.Principal(arn=arn, account=account), outsider
    # A service principal: only the resource policy speaks for it.
    return iam.Principal(arn=arn, account=None), iam.PolicySet()


def decide(world: World, request: RealRequest, target: Target | None = None) -> Outcome:
    """Decide `request`; `target` defaults to the data resource its ARN names."""
    target = target or target_of(world, request.resource)
    principal, side = _principal(world, request.principal)
    policies = iam.PolicySet(
        identity=side.identity,
        boundary=side.boundary,
        resource=target.policy,
        resource_kind=target.kind,
    )
    context = dict(request.context)
    # "aws:ResourceAccount": present in the request context of most service actions, the
    # account that owns the resource (AWS global condition context keys).
    if target.account and not any(k.lower() == "aws:resourceaccount" for k in context):
        context["aws:ResourceAccount"] = target.account
    # "aws:PrincipalIsAWSService": in every signed request; true when a service calls with its
    # service principal (CloudTrail writing its logs), false for IAM principals.
    if not any(k.lower() == "aws:principalisawsservice" for k in context):
        context["aws:PrincipalIsAWSService"] = not request.principal.startswith("arn:")
    decision = iam.evaluate(
        iam.Request(
            principal=principal,
            action=request.action,
            resource=request.resource,
            resource_account=target.account,
            context=context,
            via_endpoint_policies=request.endpoint_policies,
        ),
        policies,
    )
    if decision.allowed:
        reason = ", ".join(str(s) for s in decision.allow_statements) or decision.reason
    elif decision.deny_statements:
        reason = "denied by " + ", ".join(str(s) for s in decision.deny_statements)
    else:
        reason = decision.reason
    return Outcome(request, decision.allowed, reason)


def decide_all(world: World, requests: Sequence[RealRequest]) -> list[Outcome]:
    return [decide(world, r) for r in requests]
