"""The flag set document a stack deploys to AWS AppConfig, built from its `envfence:flags`.

Pulumi-free, so the checker (EF505), the tests and the program share it
(infra/components/flags.py deploys it; its docstring says how the rules are written).
The document is AppConfig's AWS.AppConfig.FeatureFlags type: flags under `flags`, their values
and `_variants` under `values`, the default variant last and without a rule
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-type-reference-feature-flags.html,
https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-procedures.html);
rules in AppConfig's rule language
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-rules-operators.html).
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal

from envfence.settings import DEFAULT_VARIANT, FeatureFlag, Targeting

# A variant's `rule` is at most 16,384 characters (the type's JSON schema, `maxLength`).
MAX_RULE_LENGTH = 16384
# The document is the worker's FLAG_SET and the pipeline task's too: kept well within what one
# task definition may hold, with the rest of the container definitions.
MAX_DOCUMENT_BYTES = 16384
EXPERIMENTAL_ATTRIBUTE = "experimental"
OWNER_ATTRIBUTE = "owner"


def flag_set_version(document: str) -> str:
    """The hosted configuration version's label: `fs-` and the start of the SHA-256 (at least
    one non-digit, at most 64 characters, as AppConfig's VersionLabel requires). The worker
    computes the same (app/worker/flagset.py) and refuses a document that does not match."""
    return "fs-" + hashlib.sha256(document.encode("utf-8")).hexdigest()[:20]


def _pct(hundredths: int) -> str:
    return str(Decimal(hundredths) / 100)


def _in(key: str, values: tuple[str, ...]) -> str:
    return f"(in ${key} [{', '.join(json.dumps(v) for v in values)}])"


def _split(flag: str, hundredths: int) -> str:
    return f"(split by::$userId pct::{_pct(hundredths)} seed::{json.dumps(flag)})"


def targeting_rule(flag: str, t: Targeting) -> str:
    """One condition as an AppConfig rule expression (every given attribute must hold)."""
    parts = []
    if t.groups is not None:
        parts.append(_in("group", t.groups))
    if t.regions is not None:
        parts.append(_in("region", t.regions))
    if t.split is not None:
        low, high = t.split
        if low == 0:
            parts.append(_split(flag, high))
        else:
            parts.append(f"(and {_split(flag, high)} (not {_split(flag, low)}))")
    return _nest("and", parts)


def variant_rule(flag: str, match: tuple[Targeting, ...]) -> str:
    return _nest("or", [targeting_rule(flag, t) for t in match])


def _nest(op: str, parts: list[str]) -> str:
    """`and`/`or` of two operands at a time: AppConfig documents them with two ("both
    operands"), so three are written `(and A (and B C))`."""
    if len(parts) == 1:
        return parts[0]
    return f"({op} {parts[0]} {_nest(op, parts[1:])})"


def _attributes(f: FeatureFlag, enabled: bool) -> dict[str, object]:
    values: dict[str, object] = {EXPERIMENTAL_ATTRIBUTE: f.experimental and enabled}
    if f.owner is not None:
        values[OWNER_ATTRIBUTE] = f.owner
    return values


def feature_flags_document(flags: tuple[FeatureFlag, ...]) -> str:
    """The AWS.AppConfig.FeatureFlags content: flag definitions and this stack's values."""
    definitions: dict[str, object] = {}
    values: dict[str, object] = {}
    for f in flags:
        attributes: dict[str, object] = {
            EXPERIMENTAL_ATTRIBUTE: {
                "description": "rows produced with this variant are experimental data",
                "constraints": {"type": "boolean"},
            }
        }
        if f.owner is not None:
            attributes[OWNER_ATTRIBUTE] = {
                "description": "who answers for this flag",
                "constraints": {"type": "string"},
            }
        definition: dict[str, object] = {
            "name": f.name,
            "description": f.description,
            "attributes": attributes,
        }
        if f.ends_on is not None:
            definition["_deprecation"] = {"status": "planned", "date": f.ends_on.isoformat()}
        definitions[f.name] = definition
        if not f.variants:
            values[f.name] = {"enabled": f.enabled, **_attributes(f, f.enabled)}
            continue
        variants: list[dict[str, object]] = [
            {
                "name": v.name,
                "enabled": v.enabled,
                "rule": variant_rule(f.name, v.match),
                "attributeValues": _attributes(f, v.enabled),
            }
            for v in f.variants
        ]
        variants.append(
            {
                "name": DEFAULT_VARIANT,
                "enabled": f.enabled,
                "attributeValues": _attributes(f, f.enabled),
            }
        )
        values[f.name] = {"_variants": variants}
    return json.dumps(
        {"version": "1", "flags": definitions, "values": values},
        sort_keys=True,
        separators=(",", ":"),
    )
