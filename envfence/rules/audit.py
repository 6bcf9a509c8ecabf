"""EF7xx: every environment keeps an audit trail it cannot alter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from envfence.model import SECRET, UNKNOWN, Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import Context, is_unknown, parse_policy, statements
from envfence.rules.data import own_key
from envfence.rules.engine import Finding, rule, undecided
from envfence.rules.policies import action_allowed, condition_values, principals
from infra import naming


def _store_tag(bucket: Resource) -> Any:
    """A bucket's data-store tag; UNKNOWN while its tags map is not known (preview), SECRET
    while it is a secret the state does not show."""
    tags = bucket.get("tags") or {}
    if isinstance(tags, dict):
        return tags.get(naming.TAG_DATA_STORE)
    return SECRET if tags == SECRET else UNKNOWN


@rule(
    "EF701",
    "audit-trail",
    title="A multi-region, validated, encrypted trail records data events of every data store",
    severity="high",
    scope="stack",
    fix="Keep the Audit component (infra/components/audit.py): CloudTrail with log file "
    "validation, the env key, and S3 data events for each data store.",
)
def audit_trail(state: StackState, ctx: Context) -> Iterator[Finding]:
    trails = state.of_type(*c.TRAILS)
    anchor = state.resources[0].urn if state.resources else ""
    if not trails:
        yield Finding(anchor, f"stack '{state.stack}' has no CloudTrail trail")
        return
    t = trails[0]
    if t.get("isMultiRegionTrail") not in (True, "true"):
        yield Finding(t.urn, f"trail {t.name} records one region only")
    if t.get("enableLogFileValidation") not in (True, "true"):
        yield Finding(t.urn, f"trail {t.name} has no log file validation")
    if not own_key(state, ctx, t.get("kmsKeyId")):
        yield Finding(t.urn, f"trail {t.name} is not encrypted with this environment's key")
    covered = json.dumps(t.get("advancedEventSelectors") or t.get("eventSelectors") or [])
    for bucket in state.of_type(*c.BUCKETS):
        store = _store_tag(bucket)
        if is_unknown(store):
            yield undecided(bucket.urn, "EF701", f"the data-store tag of {bucket.name}", store)
            continue
        if store in (None, "audit"):
            continue
        if str(bucket.get("arn")) not in covered:
            yield Finding(t.urn, f"trail {t.name} records no data events for {bucket.name}")


@rule(
    "EF702",
    "audit-log-tamper-proof",
    title="No environment role can write, delete or re-configure the audit log",
    severity="critical",
    scope="stack",
    fix="Keep the audit bucket policy's Deny on tampering by every role of the environment, "
    "and object lock in production.",
)
def audit_tamper_proof(state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    buckets = state.of_type(*c.BUCKETS)
    audit = [b for b in buckets if _store_tag(b) == "audit"]
    if not audit:
        # Any bucket whose tags are not known yet may be the audit store.
        unknown = [b for b in buckets if is_unknown(_store_tag(b))]
        for b in unknown:
            yield undecided(b.urn, "EF702", f"the data-store tag of {b.name}", _store_tag(b))
        if state.of_type(*c.TRAILS) and not unknown:
            yield Finding(
                state.of_type(*c.TRAILS)[0].urn,
                "the trail's bucket is not an audit store of this environment",
            )
        return
    bucket = audit[0]
    policies = [
        p
        for p in state.of_type("aws:s3/bucketPolicy:BucketPolicy")
        if p.get("bucket") == bucket.get("bucket")
    ]
    stmts = statements(parse_policy(policies[0], "policy")) if policies else []
    guarded = False
    for s in stmts:
        if s.get("Effect") != "Deny":
            continue
        roles = condition_values(s, "aws:PrincipalArn").get("ArnEquals") or []
        if all(r in roles for r in env.role_arns()) and all(
            action_allowed(s, a) for a in ("s3:PutObject", "s3:DeleteObject", "s3:PutBucketPolicy")
        ):
            guarded = True
    if not guarded:
        yield Finding(
            (policies[0] if policies else bucket).urn,
            f"audit bucket {bucket.name}: nothing denies this environment's roles "
            "writing, deleting or re-configuring it",
        )
    if env.tier == naming.TIER_PRODUCTION:
        if bucket.get("objectLockEnabled") not in (True, "true"):
            yield Finding(bucket.urn, f"production audit bucket {bucket.name} has no object lock")
        if not bucket.protect:
            yield Finding(bucket.urn, f"production audit bucket {bucket.name} is not protected")
    for s in stmts:
        if s.get("Effect") != "Allow":
            continue
        for kind, value in principals(s):
            if kind != "Service":
                yield Finding(
                    policies[0].urn,
                    f"audit bucket policy statement {s.get('Sid')} "
                    f"allows {value}: only AWS services may write",
                )
