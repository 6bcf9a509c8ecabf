"""EF3xx: every role is of one environment, bounded by it, and can reach nothing of another."""

from __future__ import annotations

from collections.abc import Iterator

from envfence import naming
from envfence.model import Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import Context, need, parse_policy, statements
from envfence.rules.engine import Finding, FlowUse, rule
from envfence.rules.policies import (
    action_allowed,
    condition_values,
    foreign_reach,
    only_reads,
    principals,
    store_of,
)


def _role_kind(r: Resource, state: StackState) -> str | None:
    """Which environment role an identity policy is attached to (service, pipeline, ...)."""
    ref = str(r.get("role") or "")
    for role in state.of_type(*c.ROLES):
        if ref in (role.id, role.get("name"), role.get("arn")):
            name = str(role.get("name") or "")
            prefix = f"{naming.prefix(state.project, state.stack)}-"
            return name[len(prefix) :] if name.startswith(prefix) else name
    return None


def _is_boundary(r: Resource, state: StackState) -> bool:
    return r.type == "aws:iam/policy:Policy" and r.get("name") == naming.boundary_name(
        state.project, state.stack
    )


@rule(
    "EF301",
    "identity-policy-stays-in-environment",
    title="Identity policies can reach no resource of another environment",
    severity="critical",
    scope="resource",
    types=frozenset(c.IDENTITY_POLICIES),
    fix="Name this environment's ARNs exactly; no wildcard, NotResource or Resource '*' on "
    "data actions; declare a flow in both stacks' config for a deliberate read.",
)
def identity_policy(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding | FlowUse]:
    if _is_boundary(r, state):
        return  # the boundary only narrows; EF304 checks it
    env = ctx.env(state.stack)
    policy = parse_policy(r, c.IDENTITY_POLICIES[r.type])
    if policy and policy.get("_malformed"):
        yield Finding(r.urn, f"{r.name} policy is not valid JSON; cannot verify it")
        return
    role = _role_kind(r, state)
    seen: set[tuple[str, str]] = set()
    for i, stmt in enumerate(statements(policy)):
        sid = str(stmt.get("Sid") or f"statement {i}")
        for reach in foreign_reach(stmt, env, ctx):
            key = (sid, reach.other.stack)
            store = store_of(reach.other, reach.arn)
            flow = env.flow_for(env.stack, role, reach.other.stack, store) or (
                env.flow_for(env.stack, role, reach.other.stack, None)
                if reach.arn.startswith("arn:aws:kms:")
                else None
            )
            both_sides = (
                flow is not None
                and reach.other.flow_for(env.stack, role, reach.other.stack, flow.store) is not None
            )
            if flow is not None and both_sides and only_reads(reach.actions):
                yield FlowUse(
                    flow.describe(), env.stack, r.urn, f"{r.name} statement {sid} reads {reach.arn}"
                )
                continue
            if key in seen:
                continue
            seen.add(key)
            yield Finding(
                r.urn,
                f"{r.name} statement {sid} allows {', '.join(reach.actions)} on "
                f"{reach.arn} of stack '{reach.other.stack}'",
                reach.other.stack,
            )


# Services that do not document sending aws:SourceAccount/aws:SourceArn when they assume a
# role: CloudTrail documents them for its bucket and key policies ("Cross-service confused
# deputy prevention") but not for the CloudWatch Logs role it assumes. For these the IfExists
# form is accepted: it checks the key when it is sent and does not lock delivery out when not.
SOURCE_KEYS_UNDOCUMENTED = ("cloudtrail.amazonaws.com",)


@rule(
    "EF302",
    "trust-own-environment",
    title="Trust policies trust only their own environment",
    severity="critical",
    scope="resource",
    types=c.ROLES,
    fix="Trust only this environment's principals; give service principals an "
    "aws:SourceAccount condition.",
)
def trust_policy(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    policy = parse_policy(r, "assumeRolePolicy")
    for stmt in statements(policy):
        if stmt.get("Effect") != "Allow":
            continue
        for kind, value in principals(stmt):
            if kind == "Service":
                values = condition_values(stmt, "aws:SourceAccount")
                source = values.get("StringEquals")
                if value in SOURCE_KEYS_UNDOCUMENTED and source is None:
                    source = values.get("StringEqualsIfExists")
                if source != [env.account]:
                    yield Finding(
                        r.urn,
                        f"role {r.name} trusts service {value} without "
                        f"aws:SourceAccount = {env.account}",
                    )
                continue
            if kind == "Federated" or value == "*":
                pinned = condition_values(stmt, "aws:PrincipalArn")
                ok = any(
                    all(env.owns_arn(v) or v.split(":")[4:5] == [env.account] for v in vals)
                    for op, vals in pinned.items()
                    if op in ("ArnEquals", "StringEquals")
                )
                if not ok:
                    yield Finding(
                        r.urn,
                        f"role {r.name} trusts {kind} {value} without pinning "
                        "this environment's principals",
                    )
                continue
            account = value if value.isdigit() else (value.split(":") + [""] * 5)[4]
            owner = ctx.owner_of_arn(value)
            if owner is not None and owner != env.stack:
                yield Finding(
                    r.urn, f"role {r.name} trusts {value}, a principal of stack '{owner}'", owner
                )
            elif account != env.account:
                other = next((o.stack for o in ctx.others(env.stack) if o.account == account), None)
                yield Finding(
                    r.urn,
                    f"role {r.name} trusts {value} of account {account}, not "
                    f"this environment's account {env.account}",
                    other,
                )
            elif value.endswith(":root") or value.isdigit():
                shared = [o.stack for o in ctx.others(env.stack) if o.account == env.account]
                pinned = condition_values(stmt, "aws:PrincipalArn")
                if shared and not pinned:
                    yield Finding(
                        r.urn,
                        f"role {r.name} trusts the whole account {account}, "
                        f"which stack(s) {', '.join(shared)} share",
                        shared[0],
                    )


@rule(
    "EF303",
    "role-has-boundary",
    title="Every role carries the environment's permission boundary",
    severity="critical",
    scope="resource",
    types=c.ROLES,
    fix="Set permissionsBoundary to the environment's boundary policy.",
)
def role_boundary(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    boundary = need(r, "permissionsBoundary")
    expected = [
        str(p.get("arn")) for p in state.of_type("aws:iam/policy:Policy") if _is_boundary(p, state)
    ]
    if not boundary:
        yield Finding(r.urn, f"role {r.name} has no permission boundary")
    elif boundary not in expected:
        yield Finding(
            r.urn,
            f"role {r.name} boundary {boundary} is not this environment's boundary",
            ctx.owner_of_arn(str(boundary)),
        )


@rule(
    "EF304",
    "boundary-guards-tags",
    title="The boundary denies session tags, environment tag changes and other environments' data",
    severity="critical",
    scope="stack",
    fix="Keep the boundary's Deny statements on sts:TagSession, aws:TagKeys and the "
    "NotResource data statements (infra/components/identity.py).",
)
def boundary_guards(state: StackState, ctx: Context) -> Iterator[Finding]:
    boundaries = [p for p in state.of_type("aws:iam/policy:Policy") if _is_boundary(p, state)]
    if not boundaries:
        if state.of_type(*c.ROLES):
            yield Finding(
                state.resources[0].urn if state.resources else "",
                "the stack has roles but no permission boundary policy "
                f"{naming.boundary_name(state.project, state.stack)}",
            )
        return
    b = boundaries[0]
    denies = [s for s in statements(parse_policy(b, "policy")) if s.get("Effect") == "Deny"]
    if not any(
        action_allowed(s, "sts:TagSession")
        and s.get("Resource") in ("*", ["*"])
        and not s.get("Condition")
        for s in denies
    ):
        yield Finding(
            b.urn,
            "the boundary does not deny sts:TagSession: callers could forge "
            "aws:PrincipalTag through session tags",
        )
    if not any(
        naming.TAG_ENVIRONMENT
        in (condition_values(s, "aws:TagKeys").get("ForAnyValue:StringEquals") or [])
        for s in denies
    ):
        yield Finding(b.urn, "the boundary does not deny changes to the environment tag")
    for service in ("s3", "kms"):
        if not any(
            action_allowed(s, f"{service}:GetObject" if service == "s3" else "kms:Decrypt")
            and "NotResource" in s
            for s in denies
        ):
            yield Finding(b.urn, f"the boundary does not deny {service} outside the environment")


@rule(
    "EF305",
    "no-passrole-across",
    title="No iam:PassRole or sts:AssumeRole to roles of another environment",
    severity="critical",
    scope="resource",
    types=frozenset(c.IDENTITY_POLICIES),
    fix="Scope iam:PassRole and sts:AssumeRole to this environment's role ARNs.",
)
def no_passrole(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    # EF301 covers these as reach; this rule names the escalation path explicitly.
    if _is_boundary(r, state):
        return
    env = ctx.env(state.stack)
    for i, stmt in enumerate(statements(parse_policy(r, c.IDENTITY_POLICIES[r.type]))):
        if stmt.get("Effect") != "Allow":
            continue
        for reach in foreign_reach(stmt, env, ctx):
            if reach.arn.startswith("arn:aws:iam::"):
                yield Finding(
                    r.urn,
                    f"{r.name} statement {stmt.get('Sid') or i} allows "
                    f"{', '.join(reach.actions)} on {reach.arn}",
                    reach.other.stack,
                )


@rule(
    "EF306",
    "no-unverifiable-managed-policies",
    title="No managed policy whose content cannot be checked",
    severity="high",
    scope="resource",
    types=c.POLICY_ATTACHMENTS,
    fix="Attach only policies declared in this stack; copy what you need from an AWS managed "
    "policy into a scoped inline policy.",
)
def managed_policies(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    arn = need(r, "policyArn")
    own = {str(p.get("arn")) for p in state.of_type("aws:iam/policy:Policy")}
    if arn not in own:
        yield Finding(
            r.urn,
            f"{r.name} attaches {arn}, whose statements this stack does not "
            "declare: isolation cannot be verified",
            ctx.owner_of_arn(str(arn)),
        )


@rule(
    "EF320",
    "flows-declared-on-both-sides",
    title="A cross-environment flow is declared by both environments",
    severity="high",
    scope="cross",
    fix="Declare the same envfence:flows entry in both stacks' config.",
)
def flows_both_sides(ctx: Context) -> Iterator[Finding]:
    for name, env in ctx.envs.items():
        if name not in ctx.states:
            continue
        for flow in env.flows:
            peer_name = flow.target if flow.source == name else flow.source
            peer = ctx.envs.get(peer_name)
            if peer is None:
                continue
            if peer.flow_for(flow.source, flow.role, flow.target, flow.store) is None:
                urn = ctx.states[name].resources[0].urn
                yield Finding(
                    urn,
                    f"stack '{name}' declares '{flow.describe()}' but stack '{peer_name}' does not",
                    peer_name,
                )
