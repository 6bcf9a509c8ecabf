"""EF4xx: each environment's key is used by that environment only."""

from __future__ import annotations

from collections.abc import Iterator

from envfence import iam
from envfence.model import Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import Context, is_unknown, need, parse_policy
from envfence.rules.data import foreign_grant_findings
from envfence.rules.engine import Finding, FlowUse, rule, undecided

# What the deployer must keep on its own key: the provider's reads of the key on every refresh
# (DescribeKey, GetKeyPolicy, GetKeyRotationStatus, ListResourceTags) and PutKeyPolicy, without
# which CreateKey refuses the policy and no later `pulumi up` can change it
# (https://docs.aws.amazon.com/kms/latest/APIReference/API_CreateKey.html,
# BypassPolicyLockoutSafetyCheck; terraform-provider-aws internal/service/kms/key.go).
DEPLOYER_KEY_ACTIONS = (
    "kms:PutKeyPolicy",
    "kms:GetKeyPolicy",
    "kms:DescribeKey",
    "kms:GetKeyRotationStatus",
    "kms:ListResourceTags",
)


@rule(
    "EF401",
    "key-policy-own-environment",
    title="Key policies allow no principal of another "
    "environment, and no '*' without a pinning condition",
    severity="critical",
    scope="resource",
    types=c.KEY_POLICIES,
    fix="Allow key use only to this environment's roles (aws:PrincipalArn) and pinned AWS "
    "services; declare flows in both stacks for a deliberate cross-environment read.",
)
def key_policy(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding | FlowUse]:
    yield from foreign_grant_findings(r, "policy", state, ctx)


@rule(
    "EF402",
    "key-rotation",
    title="Keys rotate",
    severity="medium",
    scope="resource",
    types=c.KEYS,
    fix="Set enableKeyRotation = true.",
)
def key_rotation(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    if need(r, "enableKeyRotation") not in (True, "true"):
        yield Finding(r.urn, f"key {r.name} does not rotate")


@rule(
    "EF403",
    "key-policy-keeps-the-deployer",
    title="The key policy lets the stack's deployer read and replace it (no lockout)",
    severity="critical",
    scope="resource",
    types=c.KEYS,
    fix="Name envfence:access.deployer in the key policy's KeyAdministration statement; KMS "
    "refuses a policy that would lock out the caller of CreateKey.",
)
def key_keeps_deployer(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    if not env.deployer:
        yield Finding(
            r.urn,
            f"stack '{state.stack}' names no deployer (envfence:access.deployer): nothing shows "
            "who may manage key " + r.name,
        )
        return
    raw = need(r, "policy")
    policy = parse_policy(r, "policy")
    if is_unknown(raw) or policy is None:
        yield undecided(r.urn, "EF403", f"the policy of key {r.name}", raw)
        return
    arn = need(r, "arn")
    if is_unknown(arn) or not arn:
        arn = f"arn:aws:kms:{env.region}:{env.account}:key/unknown"
    account = env.deployer.split(":")[4]
    name = env.deployer.rsplit("/", 1)[-1]
    principal = iam.Principal(
        arn=env.deployer,
        account=account,
        session_arn=f"arn:aws:sts::{account}:assumed-role/{name}/pulumi",
    )
    policies = iam.PolicySet(
        identity=(
            iam.Policy(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                },
                "deployer-identity",
            ),
        ),
        resource=iam.Policy(policy, r.name),
        resource_kind="kms",
    )
    for action in DEPLOYER_KEY_ACTIONS:
        try:
            decision = iam.evaluate(
                iam.Request(
                    principal, action, str(arn), env.account, {"aws:SecureTransport": True}
                ),
                policies,
            )
        except (iam.Unsupported, ValueError) as exc:
            yield Finding(r.urn, f"key {r.name}: cannot evaluate {action} for the deployer: {exc}")
            continue
        if not decision.allowed:
            yield Finding(
                r.urn,
                f"key {r.name} policy does not let the deployer {env.deployer} call {action} "
                f"({decision.reason}): CreateKey refuses it, or the next pulumi up fails",
            )
