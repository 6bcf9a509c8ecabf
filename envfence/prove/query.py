"""One proof question, shared by both methods: "may this principal do anything here?"

A `Query` fixes the principal (a role session) and a set of targets (data resources, or one
role for an assume/pass/tag question), and leaves free everything a caller chooses: the action
(unless fixed), the resource ARN within the targets' shapes, and every condition key the caller
controls. `Witness` is a concrete request that the concrete evaluator (`envfence.iam`) allows.

Which condition keys a caller controls (AWS global condition context keys):

- fixed by the principal: `aws:PrincipalArn`, `aws:PrincipalAccount`, `aws:username`,
  `aws:PrincipalTag/*` — the last *not* fixed when the role's sessions can be tagged
  (`sts:TagSession` allowed), since session tags override principal tags;
- fixed by the resource: `aws:ResourceAccount`, `kms:CallerAccount` (the caller's account);
- `aws:ResourceTag/*`: either the resource's tag or absent (services differ in supplying it;
  both are tried, so a policy that relies on either reading is covered);
- keys used with `Bool`: absent, `true` or `false` (AWS supplies booleans only);
- every other key: absent or any string (single-valued), or a set of strings for keys used with
  `ForAnyValue`/`ForAllValues`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from envfence import iam
from envfence.iam import Decision, Policy, PolicySet, Request
from envfence.prove.world import ANY, Role, Target
from envfence.rules.policies import RESOURCELESS_ACTIONS

FIXED_PRINCIPAL_KEYS = ("aws:principalarn", "aws:principalaccount", "aws:username")
PRINCIPAL_TAG = "aws:principaltag/"
RESOURCE_TAG = "aws:resourcetag/"


@dataclass(frozen=True)
class Exemption:
    """A declared flow: these actions on these targets are allowed to this principal."""

    flow: str
    actions: frozenset[str]  # lower-case
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Query:
    principal: Role
    targets: tuple[Target, ...]
    action: str | None = None  # a fixed action; None: every action
    exemptions: tuple[Exemption, ...] = ()
    tags_forgeable: bool = False
    only_exempt: bool = False  # a flow control: look only inside the exemptions
    # How `aws:ResourceTag/*` reaches the request. "either": the resource's tag or absent,
    # whatever the service (isolation questions: covers both readings, so it is sound whichever
    # is right). "realistic": absent for services that put no resource tag in the request,
    # the resource's tag otherwise (controls: the environment's own access must work as AWS
    # will evaluate it, so a boundary that denies untagged requests is caught).
    resource_tags: str = "either"

    def session(self) -> iam.Principal:
        return self.principal.principal()

    def policy_set(self, target: Target) -> PolicySet:
        return PolicySet(
            identity=self.principal.identity,
            boundary=self.principal.boundary,
            resource=target.policy,
            resource_kind=target.kind,
        )

    def policies(self) -> Iterator[tuple[Policy, bool]]:
        """Every policy involved, with whether it carries a Principal element."""
        for p in self.principal.identity:
            yield p, False
        if self.principal.boundary is not None:
            yield self.principal.boundary, False
        for t in self.targets:
            if t.policy is not None:
                yield t.policy, True

    def fixed_context(self, target: Target) -> dict[str, Any]:
        """Keys the caller cannot choose, as explicit request context."""
        return {"aws:ResourceAccount": target.account, "kms:CallerAccount": self.principal.account}

    def exempt(self, action: str, resource: str) -> str | None:
        for e in self.exemptions:
            if action.lower() in e.actions and any(t.matches(resource) for t in e.targets):
                return e.flow
        return None


# Actions of these services name resources of another namespace (AWS Service Authorization
# Reference: sts:AssumeRole acts on an IAM role; AppConfig Data on AppConfig configurations).
_ACTION_SERVICES = {"iam": ("iam", "sts"), "appconfig": ("appconfig", "appconfigdata")}


def services_for(target: Target) -> tuple[str, ...]:
    """The action prefixes whose actions can name this target's ARNs: an action acts only on
    resource types of its own service, so `ecr:GetAuthorizationToken` never names a bucket."""
    out: list[str] = []
    for shape in target.shapes:
        first = shape[0] or ""
        parts = first.split(":")
        if len(parts) > 2 and parts[2]:
            for svc in _ACTION_SERVICES.get(parts[2], (parts[2],)):
                if svc not in out:
                    out.append(svc)
    return tuple(out)


def action_fits(action: str, target: Target) -> bool:
    lower = action.lower()
    return lower not in RESOURCELESS_ACTIONS and lower.split(":", 1)[0] in services_for(target)


# Services whose requests carry no aws:ResourceTag: S3 general purpose buckets unless ABAC is
# enabled on the bucket ("Enabling ABAC in general purpose buckets": disabled by default), and
# IAM database authentication (rds-db:connect names a database user, not a tagged resource).
UNTAGGED_REQUEST_SERVICES = ("s3", "rds-db")


def realistic_resource_tag(action: str, target: Target, tag: str) -> str | None:
    """The value of aws:ResourceTag/<tag> AWS puts in this request, or None (absent)."""
    if action.split(":", 1)[0].lower() in UNTAGGED_REQUEST_SERVICES:
        return None
    return next((v for k, v in target.tags.items() if k.lower() == tag.lower()), None)


def key_kind(key: str, query: Query) -> str:
    """ "fixed", "resource-tag", "principal-tag" (forgeable) or "free"."""
    lower = key.lower()
    if lower in FIXED_PRINCIPAL_KEYS or lower in ("aws:resourceaccount", "kms:calleraccount"):
        return "fixed"
    if lower.startswith(PRINCIPAL_TAG):
        return "principal-tag" if query.tags_forgeable else "fixed"
    if lower.startswith(RESOURCE_TAG):
        return "resource-tag"
    return "free"


def fixed_values(query: Query, target: Target) -> dict[str, list[str]]:
    """The fixed keys as the evaluator sees them (lower-case key -> values)."""
    request = Request(
        principal=query.session(),
        action="sts:GetCallerIdentity",
        resource="*",
        resource_account=target.account,
        context=query.fixed_context(target),
    )
    ctx = iam.effective_context(request)
    if query.tags_forgeable:
        ctx = {k: v for k, v in ctx.items() if not k.startswith(PRINCIPAL_TAG)}
    return ctx


@dataclass(frozen=True)
class Witness:
    """A concrete request the evaluator allows: the counterexample (or a control's proof)."""

    principal: str
    action: str
    resource: str
    target: Target
    context: Mapping[str, Any]
    decision: Decision
    session_tags: Mapping[str, str] = field(default_factory=dict)

    def statements(self) -> list[str]:
        return [str(s) for s in self.decision.allow_statements]


def decide(
    query: Query, target: Target, action: str, resource: str, context: Mapping[str, Any]
) -> tuple[Decision, dict[str, str]]:
    """Run the concrete evaluator on one request. `context` holds the caller-chosen keys (a
    forged principal tag goes in as a session tag, which is what forging means)."""
    session_tags: dict[str, str] = {}
    explicit: dict[str, Any] = dict(query.fixed_context(target))
    for key, value in context.items():
        if key.lower().startswith(PRINCIPAL_TAG):
            session_tags[key.split("/", 1)[1]] = str(value)
        else:
            explicit[key] = value
    principal = query.principal.principal(session_tags)
    request = Request(
        principal=principal,
        action=action,
        resource=resource,
        resource_account=target.account,
        context=explicit,
    )
    return iam.evaluate(request, query.policy_set(target)), session_tags


def target_of(query: Query, resource: str) -> Target | None:
    for t in query.targets:
        if t.matches(resource):
            return t
    return None


def shape_text(shape: tuple[str | None, ...]) -> str:
    return "".join("*" if p is ANY else p for p in shape)


def role_target(role: Role) -> Target:
    """A role as the resource of `sts:AssumeRole`/`sts:TagSession` (its trust policy guards
    it) or of `iam:PassRole`."""
    return Target(
        stack=role.stack,
        urn=role.urn,
        type="aws:iam/role:Role",
        name=role.name,
        shapes=((role.arn,),),
        account=role.account,
        tags=role.tags,
        policy=role.trust,
        kind="trust",
    )
