"""EF5xx: every resource says which environment it belongs to, and experiment data ends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from envfence import naming
from envfence.model import Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import Context, as_list, is_unknown, provider_tags
from envfence.rules.engine import Finding, rule, undecided


def merged_tags(r: Resource, state: StackState) -> dict[str, Any] | None:
    """What AWS will apply: the provider's default tags under the resource's own tags. None
    when the resource's own tags are not a map yet (unknown at preview): any of them could
    override a default tag, so nothing about the result is known."""
    own = r.get("tags") or {}
    if not isinstance(own, dict):
        return None
    return {**provider_tags(state), **own}


def _expected(state: StackState, ctx: Context) -> dict[str, str | None]:
    env = ctx.env(state.stack)
    return {
        naming.TAG_ENVIRONMENT: state.stack,
        naming.TAG_TIER: env.tier,
        naming.TAG_CLASSIFICATION: naming.CLASSIFICATION.get(env.tier or ""),
        naming.TAG_EXPERIMENT_ID: env.experiment_id,
    }


@rule(
    "EF501",
    "environment-tags-present",
    title="Every taggable resource carries the environment tags",
    severity="high",
    scope="stack",
    fix="Tag through the stack's provider defaultTags (infra/__main__.py); do not override "
    "them per resource.",
)
def tags_present(state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    required = list(naming.REQUIRED_TAGS)
    if env.tier == naming.TIER_EXPERIMENT:
        required.append(naming.TAG_EXPERIMENT_ID)
    for r in state.custom():
        if not c.is_taggable(r.type):
            continue
        tags = merged_tags(r, state)
        if tags is None or is_unknown(tags):
            yield undecided(r.urn, "EF501", f"the tags of {r.name}", r.get("tags"))
            continue
        missing = [t for t in required if not tags.get(t)]
        if missing:
            yield Finding(r.urn, f"{r.name} lacks the tag(s) {', '.join(missing)}")


@rule(
    "EF502",
    "environment-tag-matches-stack",
    title="A resource's environment tags name its own stack and tier",
    severity="critical",
    scope="stack",
    fix="Never set environment, tier, data-classification or experiment-id per resource.",
)
def tags_match(state: StackState, ctx: Context) -> Iterator[Finding]:
    expected = _expected(state, ctx)
    for r in state.custom():
        if not c.is_taggable(r.type):
            continue
        tags = merged_tags(r, state)
        if tags is None:
            yield undecided(r.urn, "EF502", f"the tags of {r.name}", r.get("tags"))
            continue
        for key, want in expected.items():
            have = tags.get(key)
            if is_unknown(have):
                yield undecided(r.urn, "EF502", f"tag {key} of {r.name}", have)
                continue
            if have is not None and want is not None and have != want:
                other = have if key == naming.TAG_ENVIRONMENT and have in ctx.envs else None
                yield Finding(
                    r.urn,
                    f"{r.name} is tagged {key}={have} but belongs to stack "
                    f"'{state.stack}' ({key}={want})",
                    other,
                )


@rule(
    "EF503",
    "experiment-data-expires",
    title="Experiment data stores expire",
    severity="high",
    scope="resource",
    types=c.BUCKETS,
    fix="Give experiment buckets a lifecycle rule with expiration (envfence:retention).",
)
def experiment_expiry(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    if ctx.env(state.stack).tier != naming.TIER_EXPERIMENT:
        return
    lifecycles = [
        lc
        for lc in state.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
        if lc.get("bucket") == r.get("bucket")
    ]
    for lc in lifecycles:
        for rule_ in as_list(lc.get("rules")):
            if (
                isinstance(rule_, dict)
                and rule_.get("status") == "Enabled"
                and (rule_.get("expiration") or {}).get("days")
            ):
                return
    yield Finding(
        r.urn,
        f"experiment bucket {r.name} has no enabled expiration rule: its data "
        "would outlive the experiment",
    )


@rule(
    "EF504",
    "experiment-not-expired",
    title="An experiment stack past its expiresOn date is reported (a warning in pull "
    "requests, a failure in the scheduled run)",
    severity="high",
    scope="stack",
    fix="Conclude it (envfence experiment conclude <id>: archive, destroy, residue check) or "
    "extend envfence:expiresOn with a reason in review.",
    advisory=True,
)
def experiment_expired(state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    if env.expires_on is not None and env.expires_on < ctx.today and state.resources:
        days = (ctx.today - env.expires_on).days
        ident = env.experiment_id or state.stack
        yield Finding(
            state.resources[0].urn,
            f"experiment stack '{state.stack}' expired on {env.expires_on.isoformat()} "
            f"({days} day{'s' if days != 1 else ''} ago); conclude it: "
            f"envfence experiment conclude {ident}",
        )
