"""EF2xx: data stores are private, encrypted with their own environment's key, versioned, and
granted to no principal of another environment; production data cannot be deleted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from envfence import iam, naming
from envfence.model import Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import Context, Env, as_list, need, parse_policy, statements
from envfence.rules.engine import Finding, FlowUse, rule
from envfence.rules.policies import (
    Grant,
    condition_values,
    grants,
    is_own_principal,
    principal_role,
)
from envfence.settings import Flow


def own_key(state: StackState, ctx: Context, key: object) -> bool:
    env = ctx.env(state.stack)
    if not isinstance(key, str) or not key:
        return False
    aliases = {str(r.get("arn")) for r in state.of_type("aws:kms/alias:Alias")}
    ids = {str(r.get("keyId")) for r in state.of_type(*c.KEYS)}
    return key in env.key_arns or key in aliases or key in ids


def _configs(state: StackState, type_: str) -> dict[str, Resource]:
    """Bucket configuration resources of one type, by the bucket they configure."""
    return {str(r.get("bucket")): r for r in state.of_type(type_)}


def _store_of_bucket(state: StackState, bucket: object) -> str | None:
    """The data store (its `data-store` tag) of the stack's bucket named `bucket`."""
    for b in state.of_type(*c.BUCKETS):
        if b.get("bucket") == bucket:
            tags = b.get("tags")
            return tags.get(naming.TAG_DATA_STORE) if isinstance(tags, dict) else None
    return None


@rule(
    "EF201",
    "database-not-public",
    title="Databases are not publicly accessible",
    severity="critical",
    scope="resource",
    types=c.DATABASES,
    fix="Set publiclyAccessible = false and keep the database in the data subnets.",
)
def db_not_public(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    if need(r, "publiclyAccessible") in (True, "true"):
        yield Finding(r.urn, f"database {r.name} is publicly accessible")


@rule(
    "EF202",
    "database-encrypted-with-own-key",
    title="Databases are encrypted with their own environment's key",
    severity="critical",
    scope="resource",
    types=c.DATABASES,
    fix="Set storageEncrypted = true and kmsKeyId (and masterUserSecretKmsKeyId) to the "
    "environment's key.",
)
def db_encrypted(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    if need(r, "storageEncrypted") not in (True, "true"):
        yield Finding(r.urn, f"database {r.name} storage is not encrypted")
    for key in ("kmsKeyId", "masterUserSecretKmsKeyId"):
        value = need(r, key)
        if not own_key(state, ctx, value):
            other = ctx.owner_of_arn(str(value)) if value else None
            yield Finding(
                r.urn,
                f"database {r.name} {key} is {value or 'not set'}, not this environment's key",
                other,
            )


@rule(
    "EF203",
    "bucket-public-access-blocked",
    title="Buckets block all four kinds of public access",
    severity="critical",
    scope="resource",
    types=c.BUCKETS,
    fix="Add a BucketPublicAccessBlock with all four settings true.",
)
def bucket_pab(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    pab = _configs(state, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").get(
        str(need(r, "bucket"))
    )
    keys = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    if pab is None:
        yield Finding(r.urn, f"bucket {r.name} has no public access block")
        return
    off = [k for k in keys if need(pab, k) not in (True, "true")]
    if off:
        yield Finding(pab.urn, f"bucket {r.name} public access block leaves {', '.join(off)} off")


@rule(
    "EF204",
    "bucket-encrypted-with-own-key",
    title="Buckets use SSE-KMS with their own environment's key",
    severity="critical",
    scope="resource",
    types=c.BUCKETS,
    fix="Configure aws:kms default encryption with the environment's key and a bucket key.",
)
def bucket_sse(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    sse = _configs(
        state,
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    ).get(str(need(r, "bucket")))
    if sse is None:
        yield Finding(r.urn, f"bucket {r.name} has no default encryption configuration")
        return
    for rule_ in as_list(need(sse, "rules", [])):
        default = (rule_ or {}).get("applyServerSideEncryptionByDefault") or {}
        key = default.get("kmsMasterKeyId")
        if default.get("sseAlgorithm") not in ("aws:kms", "aws:kms:dsse"):
            yield Finding(
                sse.urn, f"bucket {r.name} uses {default.get('sseAlgorithm')}, not SSE-KMS"
            )
        elif not own_key(state, ctx, key):
            yield Finding(
                sse.urn,
                f"bucket {r.name} is encrypted with {key}, not this environment's key",
                ctx.owner_of_arn(str(key)),
            )


@rule(
    "EF205",
    "bucket-versioned",
    title="Buckets are versioned",
    severity="high",
    scope="resource",
    types=c.BUCKETS,
    fix="Add a BucketVersioning with status Enabled.",
)
def bucket_versioned(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    v = _configs(state, "aws:s3/bucketVersioning:BucketVersioning").get(str(need(r, "bucket")))
    status = (need(v, "versioningConfiguration") or {}).get("status") if v else None
    if status != "Enabled":
        yield Finding((v or r).urn, f"bucket {r.name} versioning is {status or 'not configured'}")


@rule(
    "EF206",
    "bucket-policy-guards",
    title="Bucket policies deny non-TLS requests and principals of other environments",
    severity="critical",
    scope="resource",
    types=c.BUCKETS,
    fix="Add Deny statements on aws:SecureTransport=false and on aws:PrincipalArn not in "
    "the environment's roles.",
)
def bucket_policy_guards(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    bucket = need(r, "bucket")
    bp = _configs(state, "aws:s3/bucketPolicy:BucketPolicy").get(str(bucket))
    if bp is None:
        yield Finding(r.urn, f"bucket {r.name} has no bucket policy")
        return
    stmts = statements(parse_policy(bp, "policy"))
    denies = [s for s in stmts if s.get("Effect") == "Deny"]
    tls = any(condition_values(s, "aws:SecureTransport").get("Bool") == ["false"] for s in denies)
    store = _store_of_bucket(state, bucket)
    foreign = False
    for s in denies:
        allowed = condition_values(s, "aws:PrincipalArn").get("ArnNotEquals") or condition_values(
            s, "aws:PrincipalArn"
        ).get("ArnNotLike")
        # The guard is the deny on object reads and writes (reads only on the audit bucket,
        # which CloudTrail writes, and on the experiment archive, whose writes have their own
        # deny); a deny on listing alone is not.
        if not _covers_object_data(s, reads_only=store in naming.RESERVED_STORES):
            continue
        if allowed and all(
            is_own_principal(env, ctx, a) or _declared_flow_principal(env, a, ctx, store)
            for a in allowed
        ):
            foreign = True
    if not tls:
        yield Finding(bp.urn, f"bucket {r.name} policy does not deny requests without TLS")
    if not foreign:
        yield Finding(
            bp.urn,
            f"bucket {r.name} policy does not deny principals outside the "
            "environment (Deny with ArnNotEquals aws:PrincipalArn on its roles)",
        )


def _covers_object_data(stmt: dict[str, Any], *, reads_only: bool = False) -> bool:
    actions = [a for a in as_list(stmt.get("Action")) if isinstance(a, str)]
    wanted = ("s3:GetObject",) if reads_only else ("s3:GetObject", "s3:PutObject")
    return all(any(iam.action_matches(a, w) for a in actions) for w in wanted)


def _declared_flow_principal(env: Env, arn: str, ctx: Context, store: str | None) -> bool:
    """Whether `arn` is the role of another environment that a flow into `env` declares on
    `store`: a flow opens its own store, not every bucket of the environment."""
    if store is None:
        return False
    return any(
        env.flow_for(other.stack, principal_role(other, arn), env.stack, store) is not None
        for other in ctx.others(env.stack)
    )


RESOURCE_POLICY_TYPES = (
    frozenset(c.RESOURCE_POLICIES) | frozenset(c.INLINE_RESOURCE_POLICIES)
) - c.KEY_POLICIES


@rule(
    "EF207",
    "resource-policy-no-foreign-grants",
    title="Resource policies grant no principal of another environment",
    severity="critical",
    scope="resource",
    types=RESOURCE_POLICY_TYPES,
    fix="Name only this environment's roles; pin any wildcard principal with aws:PrincipalArn; "
    "declare a flow in both stacks' config for a deliberate cross-environment read.",
)
def resource_policy_grants(
    r: Resource, state: StackState, ctx: Context
) -> Iterator[Finding | FlowUse]:
    key = c.RESOURCE_POLICIES.get(r.type) or c.INLINE_RESOURCE_POLICIES.get(r.type, "policy")
    yield from foreign_grant_findings(r, key, state, ctx)


def foreign_grant_findings(
    r: Resource, key: str, state: StackState, ctx: Context
) -> Iterator[Finding | FlowUse]:
    env = ctx.env(state.stack)
    policy = parse_policy(r, key)
    if policy and policy.get("_malformed"):
        yield Finding(r.urn, f"{r.name} {key} is not valid JSON; cannot verify it")
        return
    # A key serves every store of the environment and a bucket policy its bucket's store; no
    # other resource policy serves a store, so no declared flow can allow its grants.
    store = _store_of_bucket(state, r.get("bucket")) if r.type in c.BUCKET_POLICIES else None
    serves_store = r.type in c.KEY_POLICIES or store is not None
    for g in grants(statements(policy), env, ctx):
        flow = _declared_flow(g, env, ctx, store) if serves_store else None
        # Declared flows are reads (envfence.settings.FLOW_ACCESS): a grant that also writes or
        # manages is more than the flow, whoever it names.
        if flow is not None and flow.access == "read" and not g.beyond_reads:
            yield FlowUse(
                flow.describe(),
                env.stack,
                r.urn,
                f"{r.name} statement {g.sid} lets {g.principal} in",
            )
            continue
        who = f"stack '{g.owner}'" if g.owner else "no environment"
        if flow is not None:
            yield Finding(
                r.urn,
                f"{r.name} statement {g.sid} lets {g.principal} (a principal of {who}) use "
                f"{', '.join(g.beyond_reads)}, beyond the declared flow '{flow.describe()}'",
                g.owner,
            )
        elif g.principal == "*":
            yield Finding(
                r.urn,
                f"{r.name} statement {g.sid} allows Principal '*' without a "
                "condition that pins this environment's principals",
            )
        else:
            yield Finding(
                r.urn,
                f"{r.name} statement {g.sid} allows {g.principal} (a principal of {who})",
                g.owner,
            )


def _declared_flow(g: Grant, env: Env, ctx: Context, store: str | None) -> Flow | None:
    """The flow both environments declare for the role a grant lets in, if any."""
    if g.owner is None or g.owner == env.stack:
        return None
    role = principal_role(ctx.env(g.owner), g.principal)
    flow = env.flow_for(g.owner, role, env.stack, store)
    if flow is None or ctx.env(g.owner).flow_for(g.owner, role, env.stack, flow.store) is None:
        return None
    return flow


@rule(
    "EF208",
    "no-shared-snapshots",
    title="No snapshot or image shared outside the environment",
    severity="critical",
    scope="resource",
    types=c.SNAPSHOT_SHARING,
    fix="Do not share snapshots or AMIs; copy data through a declared flow instead.",
)
def no_shared_snapshots(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    targets = [str(a) for a in as_list(need(r, "sharedAccounts", []))]
    for key in ("accountId", "group", "organizationArn", "organizationalUnitArn"):
        v = need(r, key)
        if v:
            targets.append(str(v))
    for t in targets:
        if t != env.account:
            other = next((o.stack for o in ctx.others(state.stack) if o.account == t), None)
            yield Finding(r.urn, f"{r.name} is shared with {t}", other)


@rule(
    "EF209",
    "production-data-protected",
    title="Production data resources are protected from deletion",
    severity="critical",
    scope="stack",
    fix="Set protect and retainOnDelete on production data resources; deletion protection "
    "and a final snapshot on databases; no forceDestroy on buckets.",
)
def production_protected(state: StackState, ctx: Context) -> Iterator[Finding]:
    if ctx.env(state.stack).tier != naming.TIER_PRODUCTION:
        return
    for r in state.of_type(*(c.BUCKETS | c.DATABASES | c.KEYS)):
        if not r.protect:
            yield Finding(r.urn, f"production {r.name} is not protected (protect)")
        if not r.retain_on_delete:
            yield Finding(r.urn, f"production {r.name} has no retainOnDelete")
        if r.type in c.DATABASES:
            if need(r, "deletionProtection") not in (True, "true"):
                yield Finding(r.urn, f"production database {r.name} has no deletion protection")
            if need(r, "skipFinalSnapshot") in (True, "true") or not need(
                r, "finalSnapshotIdentifier"
            ):
                yield Finding(r.urn, f"production database {r.name} has no final snapshot")
        if r.type in c.BUCKETS and need(r, "forceDestroy") in (True, "true"):
            yield Finding(r.urn, f"production bucket {r.name} has forceDestroy")


@rule(
    "EF210",
    "queue-encrypted-with-own-key",
    title="Queues are encrypted with their own environment's key",
    severity="critical",
    scope="resource",
    types=c.QUEUES,
    fix="Set kmsMasterKeyId to the environment's key.",
)
def queue_encrypted(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    key = need(r, "kmsMasterKeyId")
    if not own_key(state, ctx, key):
        yield Finding(
            r.urn,
            f"queue {r.name} is encrypted with {key or 'no key'}, not this environment's key",
            ctx.owner_of_arn(str(key)) if key else None,
        )


@rule(
    "EF211",
    "log-group-encrypted-and-retained",
    title="Log groups are encrypted with the environment's key and have a retention period",
    severity="high",
    scope="resource",
    types=c.LOG_GROUPS,
    fix="Set kmsKeyId to the environment's key and retentionInDays (envfence:logRetentionDays).",
)
def log_group(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    key = need(r, "kmsKeyId")
    if not own_key(state, ctx, key):
        yield Finding(
            r.urn,
            f"log group {r.name} is encrypted with {key or 'no key'}, not this environment's key",
            ctx.owner_of_arn(str(key)) if key else None,
        )
    if not need(r, "retentionInDays"):
        yield Finding(r.urn, f"log group {r.name} keeps its logs forever (no retention)")


@rule(
    "EF212",
    "repository-hardened",
    title="Image repositories scan on push, have immutable tags and use the environment's key",
    severity="high",
    scope="resource",
    types=c.REPOSITORIES,
    fix="Set imageTagMutability IMMUTABLE, scanOnPush, and KMS encryption with the env key.",
)
def repository(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    if need(r, "imageTagMutability") != "IMMUTABLE":
        yield Finding(r.urn, f"repository {r.name} tags are mutable: a tag could be repointed")
    if (need(r, "imageScanningConfiguration") or {}).get("scanOnPush") not in (True, "true"):
        yield Finding(r.urn, f"repository {r.name} does not scan images on push")
    enc = as_list(need(r, "encryptionConfigurations"))
    key = (enc[0] or {}).get("kmsKey") if enc else None
    if not enc or (enc[0] or {}).get("encryptionType") != "KMS" or not own_key(state, ctx, key):
        yield Finding(r.urn, f"repository {r.name} is not encrypted with this environment's key")
