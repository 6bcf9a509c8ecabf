"""EF505: a live experiment in production reaches a targeted subset, has an owner and an end date,
and the worker evaluates exactly the flag set AppConfig serves.

The flag set is an AWS.AppConfig.FeatureFlags document (infra/components/flags.py). The provider
keeps a hosted configuration version's `content` secret, so the rule reads the copy the worker
evaluates, its task definition's `FLAG_SET`, and holds it to the hosted version by hash: the
version's `versionLabel` and the worker's `FLAG_SET_VERSION` must both be the document's label
(`fs-` and the start of its SHA-256). Whatever cannot be read or parsed fails closed.

In a production stack, a flag with any enabled value whose `experimental` attribute is true (an
experimental variant that produces rows) must:

- reach only targeted records: it has `_variants` and its default variant (the last, without a
  rule: everyone no rule targets) is not an enabled experimental one; no 100 % rollout;
- name an owner (the variants' `owner` attribute) and an end date (the flag's
  `_deprecation.date`).

Every value must carry the boolean `experimental` attribute: without it nobody can tell whether
the rows it produces must be marked, so the rule fails closed on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from envfence.flagset import flag_set_version
from envfence.model import Resource, StackState
from envfence.rules import classify as c
from envfence.rules.compute import _containers
from envfence.rules.context import Context, is_unknown
from envfence.rules.engine import Finding, rule, undecided
from envfence.rules.providers import aws

HOSTED_VERSIONS = c.tokens(aws.appconfig.HostedConfigurationVersion)
FLAG_SET = "FLAG_SET"
FLAG_SET_VERSION = "FLAG_SET_VERSION"
RULE_ID = "EF505"


def _worker_flag_sets(state: StackState) -> list[tuple[Resource, Any, Any]]:
    """(task definition, FLAG_SET, FLAG_SET_VERSION) of every container that carries one."""
    found = []
    for task in state.of_type(*c.TASK_DEFINITIONS):
        raw = task.get("containerDefinitions")
        if is_unknown(raw):
            found.append((task, raw, raw))
            continue
        for container in _containers(task):
            env = {
                e.get("name"): e.get("value")
                for e in container.get("environment") or []
                if isinstance(e, dict)
            }
            if FLAG_SET in env or FLAG_SET_VERSION in env:
                found.append((task, env.get(FLAG_SET), env.get(FLAG_SET_VERSION)))
    return found


def _problems(document: Any) -> Iterator[str]:
    """What is wrong with a production flag set (the document as the worker gets it)."""
    values = document.get("values") if isinstance(document, dict) else None
    definitions = document.get("flags") if isinstance(document, dict) else None
    if not isinstance(values, dict) or not isinstance(definitions, dict):
        yield "the flag set is not an AWS.AppConfig.FeatureFlags document with flags and values"
        return
    for name, value in sorted(values.items()):
        if not isinstance(value, dict):
            yield f"flag {name}: its value is not an object"
            continue
        variants = value.get("_variants")
        entries: list[tuple[str, bool, dict[str, Any], bool]] = []  # name, enabled, attrs, default
        if variants is None:
            entries.append(("(no variants)", value.get("enabled") is True, value, True))
        elif isinstance(variants, list) and variants:
            for i, v in enumerate(variants):
                v = v if isinstance(v, dict) else {}
                attrs = v.get("attributeValues")
                entries.append(
                    (
                        str(v.get("name", f"#{i}")),
                        v.get("enabled") is True,
                        attrs if isinstance(attrs, dict) else {},
                        i == len(variants) - 1,
                    )
                )
        else:
            yield f"flag {name}: _variants is not a non-empty list"
            continue
        live = []
        for variant, enabled, attrs, default in entries:
            marked = attrs.get("experimental")
            if not isinstance(marked, bool):
                yield (
                    f"flag {name}, variant {variant}: no boolean `experimental` attribute, so "
                    "nobody can tell whether its rows must be marked"
                )
                continue
            if enabled and marked:
                live.append((variant, attrs, default))
        if not live:
            continue
        for variant, _, default in live:
            if default:
                yield (
                    f"experimental flag {name} is on for everyone in production (variant "
                    f"{variant} has no targeting rule): target a subset with variants"
                )
        if not all(isinstance(a.get("owner"), str) and a.get("owner") for _, a, _ in live):
            yield f"experimental flag {name} is live in production without an owner"
        definition = definitions.get(name)
        deprecation = definition.get("_deprecation") if isinstance(definition, dict) else None
        if not (isinstance(deprecation, dict) and isinstance(deprecation.get("date"), str)):
            yield (
                f"experimental flag {name} is live in production without an end date "
                "(_deprecation.date)"
            )


@rule(
    RULE_ID,
    "experimental-flag-targeted",
    title="An experimental flag live in production targets a subset and has an owner and an "
    "end date; the worker evaluates the flag set AppConfig serves",
    severity="high",
    scope="stack",
    fix="In envfence:flags, keep `enabled: false` for an experimental flag in production, target "
    "users with `variants`, and set `owner` and `endsOn`; deploy the flag set with the worker "
    "(FLAG_SET and FLAG_SET_VERSION come from infra/components/flags.py).",
)
def experimental_flag_targeted(state: StackState, ctx: Context) -> Iterator[Finding]:
    hosted = list(state.of_type(*HOSTED_VERSIONS))
    copies = _worker_flag_sets(state)
    if not hosted and not copies:
        return
    for version in hosted:
        label = version.get("versionLabel")
        if is_unknown(label):
            yield undecided(version.urn, RULE_ID, f"{version.name} versionLabel", label)
        elif not isinstance(label, str) or not label:
            yield Finding(
                version.urn,
                f"flag set version {version.name} has no versionLabel: nothing ties the flag "
                "set the worker evaluates (and stamps rows with) to the one AppConfig serves",
            )
    if hosted and not copies:
        yield Finding(
            hosted[0].urn,
            "no task definition carries the flag set (FLAG_SET, FLAG_SET_VERSION): the worker "
            "cannot evaluate variants, and the flag set cannot be checked",
        )
    production = ctx.env(state.stack).tier == "production"
    for task, document, version in copies:
        if is_unknown(document) or is_unknown(version):
            yield undecided(task.urn, RULE_ID, f"{task.name} {FLAG_SET}", document)
            continue
        if not isinstance(document, str) or not isinstance(version, str):
            yield Finding(task.urn, f"task {task.name} has no {FLAG_SET} or no {FLAG_SET_VERSION}")
            continue
        if flag_set_version(document) != version:
            yield Finding(
                task.urn,
                f"task {task.name}: {FLAG_SET_VERSION} {version} is not the label of its "
                f"{FLAG_SET} ({flag_set_version(document)})",
            )
            continue
        for hosted_version in hosted:
            label = hosted_version.get("versionLabel")
            if isinstance(label, str) and label and label != version:
                yield Finding(
                    hosted_version.urn,
                    f"task {task.name} evaluates flag set {version}, but AppConfig serves "
                    f"{label} ({hosted_version.name})",
                )
        if not production:
            continue
        try:
            parsed = json.loads(document)
        except ValueError:
            yield Finding(task.urn, f"task {task.name}: {FLAG_SET} is not JSON")
            continue
        for problem in _problems(parsed):
            yield Finding(task.urn, problem)
