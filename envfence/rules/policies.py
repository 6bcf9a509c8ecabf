"""Reading IAM policy documents for the rules: who a statement grants, and what it can reach.

These answer the rules' questions conservatively: a statement "can reach" an ARN of another
environment when any of its resource patterns matches one of that environment's representative
ARNs (or a NotResource fails to exclude it) for an action whose service fits the ARN. Conditions
only narrow a statement when they pin it to an environment with a key a caller cannot forge.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from envfence import naming
from envfence.rules.context import Context, Env, as_list, wildcard_match

# Services whose actions read, write or decrypt environment data.
DATA_SERVICES = (
    "s3",
    "kms",
    "rds",
    "rds-db",
    "secretsmanager",
    "sqs",
    "logs",
    "ecr",
    "appconfig",
    "appconfigdata",
    "dynamodb",
    "sns",
    "glue",
    "athena",
)
# Actions a declared read flow may use.
READ_ACTIONS = (
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:ListBucket",
    "kms:Decrypt",
    "kms:DescribeKey",
)
# Actions that act on no resource (AWS accepts only Resource "*" for them): they cannot reach
# another environment's data whatever the statement's Resource says.
RESOURCELESS_ACTIONS = frozenset(
    a.lower()
    for a in (
        "ecr:GetAuthorizationToken",
        "sts:GetCallerIdentity",
        "logs:DescribeLogGroups",
        "kms:ListKeys",
        "kms:ListAliases",
        "s3:ListAllMyBuckets",
        "sqs:ListQueues",
        "appconfig:ListApplications",
        "ecs:DescribeClusters",
        "secretsmanager:ListSecrets",
    )
)
# Condition keys that identify the caller and that a caller cannot set.
PINNING_KEYS = (
    "aws:principalarn",
    "aws:principalaccount",
    "aws:sourceaccount",
    "aws:sourcearn",
    "aws:principalorgid",
)


def arn_service(arn: str) -> str:
    parts = arn.split(":")
    return parts[2] if len(parts) > 2 else ""


def action_patterns(stmt: dict[str, Any]) -> tuple[list[str], bool]:
    if "NotAction" in stmt:
        return [str(a) for a in as_list(stmt["NotAction"])], True
    return [str(a) for a in as_list(stmt.get("Action"))], False


def resource_patterns(stmt: dict[str, Any]) -> tuple[list[str], bool]:
    if "NotResource" in stmt:
        return [str(a) for a in as_list(stmt["NotResource"])], True
    return [str(a) for a in as_list(stmt.get("Resource"))], False


def actions_for_service(stmt: dict[str, Any], service: str) -> list[str]:
    """The statement's action patterns that can name an action of `service` ('*' if negated)."""
    patterns, negated = action_patterns(stmt)
    if negated:
        # NotAction matches every action it does not list: assume the service is reachable
        # unless every action of the service is excluded.
        if any(
            wildcard_match(p, f"{service}:*", case_insensitive=True) or p == "*" for p in patterns
        ):
            return []
        return [f"{service}:*"]
    out = []
    for p in patterns:
        svc, _, _ = p.partition(":")
        if p.lower() in RESOURCELESS_ACTIONS:
            continue
        if p == "*" or wildcard_match(svc, service, case_insensitive=True):
            out.append(p)
    return out


def statement_reaches(stmt: dict[str, Any], arn: str) -> bool:
    patterns, negated = resource_patterns(stmt)
    hit = any(wildcard_match(p, arn) for p in patterns)
    return not hit if negated else hit


def condition_values(stmt: dict[str, Any], key: str) -> dict[str, list[str]]:
    """{operator: values} of a condition key (case-insensitive) in a statement."""
    out: dict[str, list[str]] = {}
    for op, block in (stmt.get("Condition") or {}).items():
        if not isinstance(block, dict):
            continue
        for k, v in block.items():
            if k.lower() == key.lower():
                out[op] = [str(x) for x in as_list(v)]
    return out


def pinned_environment_tags(stmt: dict[str, Any]) -> list[str] | None:
    """Environments a statement is restricted to by `aws:ResourceTag/environment`, if any."""
    ops = condition_values(stmt, f"aws:ResourceTag/{naming.TAG_ENVIRONMENT}")
    values = ops.get("StringEquals")
    return values if values else None


def pinned_principals(stmt: dict[str, Any]) -> list[str] | None:
    """Principal ARNs/accounts a statement is restricted to by conditions, if any."""
    for key in ("aws:PrincipalArn", "aws:PrincipalAccount", "aws:SourceAccount"):
        for op, values in condition_values(stmt, key).items():
            if op in ("ArnEquals", "ArnLike", "StringEquals", "StringLike"):
                return values
    return None


def principals(stmt: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, value) of a statement's Principal: kind AWS, Service, Federated or '*'."""
    p = stmt.get("Principal")
    if p is None:
        return []
    if p == "*":
        return [("*", "*")]
    if isinstance(p, dict):
        return [(kind, str(v)) for kind, vals in p.items() for v in as_list(vals)]
    return [("AWS", str(p))]


@dataclass(frozen=True)
class Reach:
    """A statement of `env`'s policy that can act on `arn` of environment `other`."""

    other: Env
    arn: str
    actions: tuple[str, ...]


class ArnIndex:
    """Every environment's data and principal ARNs (`Env.data_arns`, `Env.principal_arns`),
    sorted, so the ARNs a `Resource` pattern can match are found by its literal prefix (what a
    wildcard match must start with) instead of by trying every ARN of every environment: a
    check stays linear in the number of environments. Built once per run (`Context.memo`)."""

    def __init__(self, ctx: Context) -> None:
        self.order = {name: i for i, name in enumerate(ctx.envs)}
        entries: list[tuple[str, int, int, int, Env]] = []  # arn, env order, kind, position
        for env in ctx.envs.values():
            for kind, arns in ((0, env.data_arns()), (1, env.principal_arns())):
                for position, arn in enumerate(arns):
                    entries.append((arn, self.order[env.stack], kind, position, env))
        entries.sort(key=lambda e: e[0])
        self.entries = entries
        self.arns = [e[0] for e in entries]
        self.services = sorted({arn_service(e[0]) for e in entries if e[2] == 0})

    @classmethod
    def of(cls, ctx: Context) -> ArnIndex:
        index = ctx.memo.get("arn-index")
        if not isinstance(index, ArnIndex):
            index = ctx.memo["arn-index"] = cls(ctx)
        return index

    def candidates(
        self, stmt: dict[str, Any], services: set[str], roles: bool
    ) -> list[tuple[str, int, int, int, Env]]:
        """The entries the statement's `Resource` may match (all of them for `NotResource`, a
        policy variable, or a pattern that starts with a wildcard) among the data ARNs of
        `services` and, if `roles`, the principal ARNs, in the order the environments, their
        data then their principals, list them."""
        patterns, negated = resource_patterns(stmt)
        heads = [re.split(r"[*?]|\$\{", p, maxsplit=1)[0] for p in patterns]
        if negated or any(head == "" for head in heads):
            found = [
                e for e in self.entries if (roles if e[2] == 1 else arn_service(e[0]) in services)
            ]
        else:
            found = []
            for head in dict.fromkeys(heads):
                lo = bisect.bisect_left(self.arns, head)
                for entry in self.entries[lo:]:
                    if not entry[0].startswith(head):
                        break
                    found.append(entry)
            found = list({id(e): e for e in found}.values())
        return sorted(found, key=lambda e: (e[1], e[2], e[3]))


def foreign_reach(stmt: dict[str, Any], env: Env, ctx: Context) -> Iterator[Reach]:
    """ARNs of other environments an Allow statement of an identity policy could act on."""
    if stmt.get("Effect") != "Allow":
        return
    pinned = pinned_environment_tags(stmt)
    index = ArnIndex.of(ctx)
    # What the statement allows, per service of a data ARN and on roles: decided once.
    by_service = {svc: actions_for_service(stmt, svc) for svc in index.services}
    on_roles = [a for a in ("iam:PassRole", "sts:AssumeRole") if action_allowed(stmt, a)]
    services = {svc for svc, acts in by_service.items() if acts}
    if not services and not on_roles:
        return  # e.g. ecr:GetAuthorizationToken on "*": no action that names a resource
    for arn, _order, kind, _position, other in index.candidates(stmt, services, bool(on_roles)):
        if other.stack == env.stack or (pinned is not None and other.stack not in pinned):
            continue
        acts = by_service.get(arn_service(arn), []) if kind == 0 else on_roles
        if acts and statement_reaches(stmt, arn):
            yield Reach(other=other, arn=arn, actions=tuple(acts))


def action_allowed(stmt: dict[str, Any], action: str) -> bool:
    """Whether the statement's Action/NotAction covers the concrete `action`."""
    patterns, negated = action_patterns(stmt)
    hit = any(wildcard_match(p, action, case_insensitive=True) for p in patterns)
    return not hit if negated else hit


def only_reads(actions: tuple[str, ...]) -> bool:
    return all(a in READ_ACTIONS for a in actions)


def beyond_reads(stmt: dict[str, Any]) -> list[str]:
    """The action patterns of a statement that a declared read flow may not use."""
    patterns, negated = action_patterns(stmt)
    if negated:
        return [f"NotAction {', '.join(patterns)}"]
    reads = {a.lower() for a in READ_ACTIONS}
    return [p for p in patterns if p.lower() not in reads]


def store_of(env: Env, arn: str) -> str | None:
    for store in env.stores:
        b = naming.bucket_arn(env.project, env.stack, store, env.account or "")
        if arn == b or arn.startswith(f"{b}/"):
            return store
    return None


@dataclass(frozen=True)
class Grant:
    """A principal an Allow statement of a resource policy lets in, and whose it is."""

    sid: str
    principal: str
    owner: str | None  # stack of the principal; None = outside every environment
    pinned: list[str] | None
    beyond_reads: tuple[str, ...] = ()  # actions a declared read flow may not use


def grants(policy_stmts: list[dict[str, Any]], env: Env, ctx: Context) -> Iterator[Grant]:
    """Principals let in by Allow statements that are not this environment's own."""
    for i, stmt in enumerate(policy_stmts):
        if stmt.get("Effect") != "Allow":
            continue
        sid = str(stmt.get("Sid") or f"statement {i}")
        pinned = pinned_principals(stmt)
        extra = tuple(beyond_reads(stmt))
        for kind, value in principals(stmt):
            if kind in ("Service",):
                continue  # an AWS service acting for this account's configuration
            if kind == "Federated":
                yield Grant(sid, value, None, pinned, extra)
                continue
            if value == "*":
                if pinned is None or not all(is_own_principal(env, ctx, p) for p in pinned):
                    yield Grant(sid, "*", None, pinned, extra)
                continue
            account = (
                value
                if value.isdigit()
                else (value.split(":")[4] if value.count(":") >= 5 else None)
            )
            is_root = value.isdigit() or value.endswith(":root")
            if is_root:
                shared = any(o.account == account for o in ctx.others(env.stack))
                if account == env.account and not shared:
                    continue
                if pinned is not None and all(is_own_principal(env, ctx, p) for p in pinned):
                    continue
                owner = next((o.stack for o in ctx.others(env.stack) if o.account == account), None)
                if pinned is not None:
                    for p in pinned:
                        if not is_own_principal(env, ctx, p):
                            yield Grant(sid, p, ctx.owner_of_arn(p), pinned, extra)
                    continue
                yield Grant(sid, value, owner, pinned, extra)
                continue
            if is_own_principal(env, ctx, value):
                continue
            yield Grant(sid, value, ctx.owner_of_arn(value), pinned, extra)


def is_own_principal(env: Env, ctx: Context, principal: str) -> bool:
    if principal == env.account:
        return not any(o.account == env.account for o in ctx.others(env.stack))
    if principal in env.role_arns():
        return True
    # Another principal of this account that is not a role of any environment (an admin role).
    owner = ctx.owner_of_arn(principal)
    if owner is not None:
        return owner == env.stack
    parts = principal.split(":")
    return (
        len(parts) > 4 and parts[4] == env.account and "*" not in principal and "?" not in principal
    )


def principal_role(env: Env, principal: str) -> str | None:
    prefix = f"arn:aws:iam::{env.account}:role/{naming.prefix(env.project, env.stack)}-"
    return principal[len(prefix) :] if principal.startswith(prefix) else None
