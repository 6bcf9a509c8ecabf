"""EF7xx: every environment's data is recorded by an audit trail it cannot alter.

An account has one envfence trail (CloudTrail allows five per Region, not adjustable): the one
its baseline stack declares (`accountBaseline` in the registry, `Env.trail_owner`). That trail
records the data events of every stack of the account: the baseline's own stores by name, the
others by bucket-name prefix (`Env.trail_prefixes`). So the rules ask, of every stack, whether
*the account's* trail records its stores and whether *the account's* audit bucket is closed to
its roles, reading the owner's state when it is among the checked states, else the owner's facts
(its stack file), and failing closed when neither is in hand.

Which events a trail records is decided as CloudTrail decides it (`records`): an event is logged
when it matches any advanced event selector (PutEventSelectors); a selector matches when every
one of its field selectors does; within a field selector the Equals/StartsWith/EndsWith values
are ORed, the NotEquals/NotStartsWith/NotEndsWith values are ANDed (any match excludes), and the
two groups are ANDed ("How CloudTrail evaluates multiple conditions for a field").
https://docs.aws.amazon.com/awscloudtrail/latest/userguide/filtering-data-events.html
https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_AdvancedFieldSelector.html
https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_PutEventSelectors.html
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from envfence import naming
from envfence.model import SECRET, UNKNOWN, Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import (
    Context,
    Env,
    as_list,
    is_unknown,
    need,
    parse_policy,
    statements,
    wildcard_match,
)
from envfence.rules.data import own_key
from envfence.rules.engine import Finding, rule, undecided
from envfence.rules.policies import action_allowed, condition_values, principals

S3_OBJECT = "AWS::S3::Object"
# The object calls whose data events must reach the trail: a read and the two writes.
OBJECT_EVENTS = (("GetObject", "true"), ("PutObject", "false"), ("DeleteObject", "false"))
PROBE_KEY = "envfence/coverage-probe"  # an object key no key-prefix selector is written for
# Operators of a field selector: SELECT (ORed) and DESELECT (any match excludes the event).
SELECT = ("equals", "startsWith", "endsWith")
DESELECT = ("notEquals", "notStartsWith", "notEndsWith")
TAMPER_PROBES = ("s3:PutObject", "s3:DeleteObject", "s3:PutBucketPolicy")


def _store_tag(bucket: Resource) -> Any:
    """A bucket's data-store tag; UNKNOWN while its tags map is not known (preview), SECRET
    while it is a secret the state does not show."""
    tags = bucket.get("tags") or {}
    if isinstance(tags, dict):
        return tags.get(naming.TAG_DATA_STORE)
    return SECRET if tags == SECRET else UNKNOWN


# -- what a trail records ------------------------------------------------------------------------


def _operator(fs: Mapping[str, Any], op: str) -> list[str]:
    """The values of operator `op` of a field selector, whatever the spelling: Pulumi's
    (`startsWiths`), the API's (`StartsWith`), or plain (`startsWith`)."""
    out: list[str] = []
    for key in (op, f"{op}s", op[0].upper() + op[1:]):
        out += [str(v) for v in as_list(fs.get(key))]
    return out


def _field_holds(fs: Mapping[str, Any], value: str) -> bool:
    def hit(op: str, v: str) -> bool:
        if op.endswith("quals"):
            return value == v
        return value.startswith(v) if "tarts" in op else value.endswith(v)

    selects = {op: _operator(fs, op) for op in SELECT}
    if any(selects.values()) and not any(hit(op, v) for op, vs in selects.items() for v in vs):
        return False
    return not any(hit(op, v) for op in DESELECT for v in _operator(fs, op))


def _advanced_match(
    selector: Mapping[str, Any], event: Mapping[str, str], unknown_matches: bool
) -> bool:
    for fs in as_list(selector.get("fieldSelectors") or selector.get("FieldSelectors")):
        if not isinstance(fs, dict):
            continue
        field = str(fs.get("field") or fs.get("Field") or "")
        if field not in event:
            # A field this model does not know (userIdentity.arn, eventType, ...): whether it
            # holds for the event is the caller's reading.
            if not unknown_matches:
                return False
            continue
        if not _field_holds(fs, event[field]):
            return False
    return True


def _basic_match(selector: Mapping[str, Any], event: Mapping[str, str]) -> bool:
    """Basic event selectors: a data resource value is an ARN prefix (`arn:aws:s3` for every
    object, `arn:aws:s3:::bucket/` for one bucket's)."""
    rw = str(selector.get("readWriteType") or "All")
    if (rw == "ReadOnly" and event["readOnly"] != "true") or (
        rw == "WriteOnly" and event["readOnly"] != "false"
    ):
        return False
    for resource in as_list(selector.get("dataResources")):
        if not isinstance(resource, dict) or resource.get("type") != event["resources.type"]:
            continue
        values = as_list(resource.get("values"))
        if any(event["resources.ARN"].startswith(str(v)) for v in values):
            return True
    return False


def records(trail: Resource, object_arn: str, *, unknown_matches: bool = False) -> bool:
    """Whether `trail` logs the data events of the object calls (OBJECT_EVENTS) on `object_arn`:
    all of them (`unknown_matches` False: a field the model cannot evaluate counts as not
    matching, so coverage is never assumed), or any of them (`unknown_matches` True: such a
    field counts as matching, so a possible record is never missed)."""
    advanced = need(trail, "advancedEventSelectors") or []
    basic = need(trail, "eventSelectors") or []
    seen = []
    for name, read_only in OBJECT_EVENTS:
        event = {
            "eventCategory": "Data",
            "eventSource": "s3.amazonaws.com",
            "resources.type": S3_OBJECT,
            "resources.ARN": object_arn,
            "eventName": name,
            "readOnly": read_only,
        }
        logged = any(
            _advanced_match(s, event, unknown_matches)
            for s in as_list(advanced)
            if isinstance(s, dict)
        ) or any(_basic_match(s, event) for s in as_list(basic) if isinstance(s, dict))
        seen.append(logged)
    return any(seen) if unknown_matches else all(seen)


def _objects(bucket_arn: str) -> str:
    return f"{bucket_arn}/{PROBE_KEY}"


def _data_buckets(state: StackState) -> Iterator[Resource | Finding]:
    """The stack's data-store buckets (not its audit bucket); an undecidable tag as a finding."""
    for bucket in state.of_type(*c.BUCKETS):
        store = _store_tag(bucket)
        if is_unknown(store):
            yield undecided(bucket.urn, "EF701", f"the data-store tag of {bucket.name}", store)
            continue
        if store in (None, "audit"):
            continue
        yield bucket


def _owner(env: Env, stack: str) -> str:
    """The stack owning the account's trail; without the registry, each stack its own."""
    return env.trail_owner or stack


def _account(env: Env) -> str:
    return env.account or "?"


# -- EF701 ---------------------------------------------------------------------------------------


@rule(
    "EF701",
    "audit-trail",
    title="The account's multi-region, validated, encrypted trail records data events of every "
    "data store",
    severity="high",
    scope="stack",
    fix="The account's baseline stack (registry accountBaseline) keeps the Audit component "
    "(infra/components/audit.py): CloudTrail with log file validation, its key, and S3 data "
    "events for its stores and, by bucket-name prefix, every other stack of the account, its own "
    "audit bucket excluded. Other stacks declare no trail.",
)
def audit_trail(state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    owner = _owner(env, state.stack)
    if owner == state.stack:
        yield from _baseline_trail(state, ctx, env)
    else:
        yield from _covered_by_owner(state, ctx, env, owner)


def _baseline_trail(state: StackState, ctx: Context, env: Env) -> Iterator[Finding]:
    trails = state.of_type(*c.TRAILS)
    anchor = state.resources[0].urn if state.resources else ""
    if not trails:
        owns = (
            f" (it owns account {_account(env)}'s trail: registry accountBaseline)"
            if env.trail_prefixes or ctx.registry is not None
            else ""
        )
        yield Finding(anchor, f"stack '{state.stack}' has no CloudTrail trail{owns}")
        return
    t = trails[0]
    if t.get("isMultiRegionTrail") not in (True, "true"):
        yield Finding(t.urn, f"trail {t.name} records one region only")
    if t.get("enableLogFileValidation") not in (True, "true"):
        yield Finding(t.urn, f"trail {t.name} has no log file validation")
    if not own_key(state, ctx, t.get("kmsKeyId")):
        yield Finding(t.urn, f"trail {t.name} is not encrypted with this environment's key")
    for bucket in _data_buckets(state):
        if isinstance(bucket, Finding):
            yield bucket
            continue
        if not records(t, _objects(str(need(bucket, "arn")))):
            yield Finding(t.urn, f"trail {t.name} records no data events for {bucket.name}")
    for prefix in env.trail_prefixes:
        probe = f"arn:aws:s3:::{prefix}coverage-probe-{_account(env)}"
        if not records(t, _objects(probe)):
            yield Finding(
                t.urn,
                f"trail {t.name} does not record the data events of the account's other "
                f"stacks' buckets ({prefix}*): add arn:aws:s3:::{prefix} to its "
                "resources.ARN StartsWith",
            )
    # Logging the data events of the bucket the trail writes to logs every delivery again.
    target = need(t, "s3BucketName")
    if isinstance(target, str) and target:
        folder = f"{t.get('s3KeyPrefix')}/" if t.get("s3KeyPrefix") else ""
        log = f"arn:aws:s3:::{target}/{folder}AWSLogs/{_account(env)}/CloudTrail/x.json.gz"
        if records(t, log, unknown_matches=True):
            yield Finding(
                t.urn,
                f"trail {t.name} records data events of its own log bucket {target}: every "
                "delivery is a new event to deliver; exclude it (resources.ARN NotStartsWith "
                f"arn:aws:s3:::{target}/ in the same field selector)",
            )


def _covered_by_owner(state: StackState, ctx: Context, env: Env, owner: str) -> Iterator[Finding]:
    acct = _account(env)
    for t in state.of_type(*c.TRAILS):
        yield Finding(
            t.urn,
            f"stack '{state.stack}' declares its own trail {t.name}: account {acct}'s trail is "
            f"'{owner}''s (registry accountBaseline), and CloudTrail allows 5 per region; remove "
            "it, the owner's trail records this stack's data events",
        )
    buckets = []
    for bucket in _data_buckets(state):
        if isinstance(bucket, Finding):
            yield bucket
        else:
            buckets.append(bucket)
    anchor = state.resources[0].urn if state.resources else ""
    owner_state = ctx.states.get(owner)
    if owner_state is not None:
        trails = owner_state.of_type(*c.TRAILS)
        if not trails:
            yield Finding(
                anchor,
                f"account {acct}'s trail owner '{owner}' declares no trail: nothing records "
                f"the data events of stack '{state.stack}'",
            )
            return
        for bucket in buckets:
            arn = str(need(bucket, "arn"))
            if not any(records(t, _objects(arn)) for t in trails):
                yield Finding(
                    bucket.urn,
                    f"account {acct}'s trail ({owner}/{trails[0].name}) records no data events "
                    f"for {bucket.name} ({arn}) of stack '{state.stack}'",
                )
        return
    owner_env = ctx.envs.get(owner)
    if owner_env is None:
        yield Finding(
            anchor,
            f"cannot tell whether account {acct}'s trail records stack '{state.stack}': its "
            f"owner '{owner}' is neither among the checked states nor readable from its stack "
            f"file; check them together (--stack {owner} --stack {state.stack})",
        )
        return
    # The owner's facts: its program selects the account's other stacks by these prefixes.
    for bucket in buckets:
        name = str(need(bucket, "bucket"))
        if not any(name.startswith(p) for p in owner_env.trail_prefixes):
            yield Finding(
                bucket.urn,
                f"account {acct}'s trail owner '{owner}' (from its stack file) selects no "
                f"prefix of bucket {name} of stack '{state.stack}' (it selects "
                f"{', '.join(owner_env.trail_prefixes) or 'no other stack'})",
            )


# -- EF702 ---------------------------------------------------------------------------------------


def _guards(stmt: Mapping[str, Any], role_arn: str) -> bool:
    """A Deny of the tampering actions that applies to `role_arn` whatever else the request
    carries: its only condition names the principal (ArnEquals/ArnLike or the String forms)."""
    if stmt.get("Effect") != "Deny":
        return False
    if not all(action_allowed(dict(stmt), a) for a in TAMPER_PROBES):
        return False
    conditions = stmt.get("Condition") or {}
    if not isinstance(conditions, dict):
        return False
    matching = False
    for op, block in conditions.items():
        if not isinstance(block, dict):
            return False
        for key in block:
            if key.lower() != "aws:principalarn":
                return False
            if op not in ("ArnEquals", "ArnLike", "StringEquals", "StringLike"):
                return False
    for op, values in condition_values(dict(stmt), "aws:PrincipalArn").items():
        like = op.endswith("Like")
        if any(wildcard_match(v, role_arn) if like else v == role_arn for v in values):
            matching = True
    return matching


def _audit_bucket(state: StackState) -> tuple[Resource | None, list[Resource]]:
    """The stack's audit bucket, and the buckets whose tags cannot be read yet."""
    buckets = state.of_type(*c.BUCKETS)
    audit = [b for b in buckets if _store_tag(b) == "audit"]
    unknown = [b for b in buckets if is_unknown(_store_tag(b))]
    return (audit[0] if audit else None), unknown


def _bucket_policy(state: StackState, bucket: Resource) -> tuple[Resource | None, list[Any]]:
    policies = [
        p
        for p in state.of_type("aws:s3/bucketPolicy:BucketPolicy")
        if p.get("bucket") == bucket.get("bucket")
    ]
    if not policies:
        return None, []
    return policies[0], statements(parse_policy(policies[0], "policy"))


@rule(
    "EF702",
    "audit-log-tamper-proof",
    title="No environment role can write, delete or re-configure the audit log",
    severity="critical",
    scope="stack",
    fix="Keep the audit bucket policy's Deny on tampering by every role of the environment and, "
    "by role-name prefix, of the account's other environments; object lock in production.",
)
def audit_tamper_proof(state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    owner = _owner(env, state.stack)
    bucket, unknown = _audit_bucket(state)
    if owner != state.stack and bucket is None and not unknown:
        yield from _guarded_by_owner(state, ctx, env, owner)
        return
    if bucket is None:
        # Any bucket whose tags are not known yet may be the audit store.
        for b in unknown:
            yield undecided(b.urn, "EF702", f"the data-store tag of {b.name}", _store_tag(b))
        if state.of_type(*c.TRAILS) and not unknown:
            yield Finding(
                state.of_type(*c.TRAILS)[0].urn,
                "the trail's bucket is not an audit store of this environment",
            )
        return
    policy, stmts = _bucket_policy(state, bucket)
    exposed = [r for r in env.role_arns() if not any(_guards(s, r) for s in stmts)]
    if exposed:
        yield Finding(
            (policy or bucket).urn,
            f"audit bucket {bucket.name}: nothing denies this environment's roles "
            f"writing, deleting or re-configuring it ({', '.join(exposed)})",
        )
    others = [
        e
        for e in ctx.others(state.stack)
        if e.account == env.account and _owner(e, e.stack) == state.stack
    ]
    for other in others:
        open_to = [r for r in other.role_arns() if not any(_guards(s, r) for s in stmts)]
        if open_to:
            yield Finding(
                (policy or bucket).urn,
                f"audit bucket {bucket.name} keeps account {_account(env)}'s trail, but nothing "
                f"denies stack '{other.stack}''s roles writing, deleting or re-configuring it "
                f"({', '.join(open_to)})",
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
            if kind != "Service" and policy is not None:
                yield Finding(
                    policy.urn,
                    f"audit bucket policy statement {s.get('Sid')} "
                    f"allows {value}: only AWS services may write",
                )


def _guarded_by_owner(state: StackState, ctx: Context, env: Env, owner: str) -> Iterator[Finding]:
    """A stack without an audit bucket of its own: the account's audit bucket (its trail
    owner's) must deny this stack's roles too."""
    acct = _account(env)
    anchor = state.resources[0].urn if state.resources else ""
    owner_state = ctx.states.get(owner)
    if owner_state is not None:
        bucket, unknown = _audit_bucket(owner_state)
        if bucket is None:
            for b in unknown:
                yield undecided(b.urn, "EF702", f"the data-store tag of {b.name}", _store_tag(b))
            if not unknown:
                yield Finding(
                    anchor,
                    f"account {acct}'s trail owner '{owner}' declares no audit bucket: nothing "
                    f"keeps stack '{state.stack}''s audit log",
                )
            return
        _, stmts = _bucket_policy(owner_state, bucket)
        exposed = [r for r in env.role_arns() if not any(_guards(s, r) for s in stmts)]
        if exposed:
            yield Finding(
                anchor,
                f"account {acct}'s audit bucket {owner}/{bucket.name}: nothing denies stack "
                f"'{state.stack}''s roles writing, deleting or re-configuring it "
                f"({', '.join(exposed)})",
            )
        return
    owner_env = ctx.envs.get(owner)
    if owner_env is None:
        yield Finding(
            anchor,
            f"cannot tell whether account {acct}'s audit bucket is closed to stack "
            f"'{state.stack}''s roles: its trail owner '{owner}' is neither among the checked "
            f"states nor readable from its stack file; check them together (--stack {owner} "
            f"--stack {state.stack})",
        )
        return
    # The owner's program denies the account's other stacks by role-name prefix.
    prefix = naming.prefix(env.project, state.stack) + "-"
    if not any(prefix.startswith(p) for p in owner_env.trail_prefixes):
        yield Finding(
            anchor,
            f"account {acct}'s audit bucket (owner '{owner}', from its stack file) does not "
            f"deny stack '{state.stack}''s roles: no prefix of {prefix} is among "
            f"{', '.join(owner_env.trail_prefixes) or 'its prefixes (none)'}",
        )
