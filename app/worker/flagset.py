"""The environment's flag set: AppConfig multi-variant feature flags, evaluated per record.

The document is exactly what `infra/components/flags.py` deploys as the AWS.AppConfig.FeatureFlags
hosted configuration version. AppConfig's SDK calls do not return variant data ("For performance
reasons, AWS CLI and SDK calls to AWS AppConfig don't retrieve variant data",
https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-procedures.html);
only the AppConfig Agent evaluates variant rules. The worker instead evaluates AppConfig's
documented rule language itself (`flagrules`) on the same document, which the task definition
hands it in `FLAG_SET`, with `FLAG_SET_VERSION` the version label of that hosted configuration
version: `fs-` and the start of the document's SHA-256, so a worker refuses a document that is not
the one the label names.

A record's context comes from its JSON body: `user_id` ($userId), `group` ($group) and `region`
($region), top-level scalars. Evaluation is deterministic: the same attributes always give the
same variants (a split hashes the user id, `flagrules.split_bucket`).

Every row the worker writes is stamped with the version and, for every flag of the set, the
variant that produced it (`Assignment`): db/migrations/0005_flag_variants.sql refuses a row
produced by an experimental variant that is not marked experimental.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import flagrules

# A record's attributes that rules may read: body field -> context key ($key in a rule).
CONTEXT_FIELDS = {"user_id": "userId", "group": "group", "region": "region"}
EXPERIMENTAL_ATTRIBUTE = "experimental"
NO_VARIANTS = "default"  # the variant name stamped for a flag without variants


class FlagSetError(ValueError):
    """The flag set document is not usable (malformed, or not the version it claims to be)."""


def version_label(document: str) -> str:
    """The hosted configuration version's label for `document` (infra computes the same)."""
    return "fs-" + hashlib.sha256(document.encode("utf-8")).hexdigest()[:20]


@dataclass(frozen=True)
class Assignment:
    """One flag's outcome for one record."""

    variant: str
    enabled: bool
    default: bool  # the flag's last variant: everyone no rule targets (the control arm)
    experimental: bool  # rows it produces are experimental (the variant's `experimental` attribute)

    def stamp(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "enabled": self.enabled,
            "default": self.default,
            "experimental": self.experimental,
        }


@dataclass(frozen=True)
class _Flag:
    name: str
    variants: tuple[dict[str, Any], ...]  # the `_variants` entries, checked by `load`
    experimentals: tuple[bool, ...]  # each variant's `experimental` attribute
    enabled: bool  # for a flag without variants
    experimental: bool  # likewise


def _bool_attr(values: Mapping[str, Any], where: str) -> bool:
    value = values.get(EXPERIMENTAL_ATTRIBUTE, False)
    if not isinstance(value, bool):
        raise FlagSetError(f"{where}.{EXPERIMENTAL_ATTRIBUTE} must be true or false, got {value!r}")
    return value


class FlagSet:
    """A parsed, version-checked flag set."""

    def __init__(self, version: str, flags: tuple[_Flag, ...]):
        self.version = version
        self._flags = flags

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self._flags)

    @classmethod
    def load(cls, document: str, version: str) -> FlagSet:
        """Parse `document`; `version` must be its label. Raises FlagSetError."""
        if version != version_label(document):
            raise FlagSetError(
                f"version {version!r} is not the label of this document ({version_label(document)})"
            )
        try:
            data = json.loads(document)
        except ValueError as exc:
            raise FlagSetError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != "1":
            raise FlagSetError('not an AWS.AppConfig.FeatureFlags document ({"version": "1", ...})')
        values = data.get("values", {})
        if not isinstance(values, dict):
            raise FlagSetError("values must be an object")
        flags = []
        for name, value in sorted(values.items()):
            where = f"values.{name}"
            if not isinstance(value, dict):
                raise FlagSetError(f"{where} must be an object")
            raw_variants = value.get("_variants")
            if raw_variants is None:
                enabled = value.get("enabled", False)
                if not isinstance(enabled, bool):
                    raise FlagSetError(f"{where}.enabled must be true or false")
                flags.append(_Flag(name, (), (), enabled, _bool_attr(value, where)))
                continue
            if not isinstance(raw_variants, list) or not raw_variants:
                raise FlagSetError(f"{where}._variants must be a non-empty list")
            marks = []
            for i, v in enumerate(raw_variants):
                at = f"{where}._variants[{i}]"
                if not isinstance(v, dict) or not isinstance(v.get("name"), str):
                    raise FlagSetError(f"{at} must be an object with a name")
                if not isinstance(v.get("enabled"), bool):
                    raise FlagSetError(f"{at}.enabled must be true or false")
                attrs = v.get("attributeValues", {})
                if not isinstance(attrs, dict):
                    raise FlagSetError(f"{at}.attributeValues must be an object")
                marks.append(_bool_attr(attrs, at))
            try:  # checks the whole list (default last, without a rule; every rule parses)
                flagrules.select_variant(raw_variants, {}, flag=name)
            except flagrules.RuleError as exc:
                raise FlagSetError(f"{where}._variants: {exc}") from None
            flags.append(_Flag(name, tuple(raw_variants), tuple(marks), False, False))
        return cls(version, tuple(flags))

    def assign(self, context: Mapping[str, str | int | float | bool]) -> dict[str, Assignment]:
        """Every flag's variant for a record with this context."""
        out: dict[str, Assignment] = {}
        for flag in self._flags:
            if not flag.variants:
                out[flag.name] = Assignment(NO_VARIANTS, flag.enabled, True, flag.experimental)
                continue
            chosen = flagrules.select_variant(flag.variants, context, flag=flag.name)
            variant = flag.variants[chosen]
            out[flag.name] = Assignment(
                variant["name"],
                variant["enabled"],
                chosen == len(flag.variants) - 1,
                flag.experimentals[chosen],
            )
        return out


def record_context(payload: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """The attributes of a record that variant rules may read (absent ones stay absent)."""
    context: dict[str, str | int | float | bool] = {}
    for field, key in CONTEXT_FIELDS.items():
        value = payload.get(field)
        if isinstance(value, Decimal):  # the body's non-integer numbers (pipeline.parse_payload)
            value = str(value)
        if isinstance(value, str | bool | int | float) and value != "":
            context[key] = value
    return context
