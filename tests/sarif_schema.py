"""Validate SARIF logs against the packaged SARIF 2.1.0 schema (envfence/schemas/), offline.

    from sarif_schema import assert_valid_sarif, assert_github_ready
    assert_valid_sarif(doc)      # the OASIS schema: structure, types, formats
    assert_github_ready(doc)     # what GitHub code scanning reads, beyond the schema

The schema is JSON Schema draft-04 (its `$schema`), so the validator is the one `jsonschema`
picks for that draft (`Draft4Validator`). The schema is registered under its own `id` in a
`referencing` registry whose retrieval always fails: no reference is ever fetched from the
network. Formats (`date-time`, `uri`, ...) are checked where `jsonschema` has a checker.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT4

from envfence.sarif import SCHEMA_PATH


def _no_network(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)


@functools.cache
def schema() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return doc


@functools.cache
def validator() -> Validator:
    s = schema()
    cls = validator_for(s)
    assert cls is Draft4Validator, cls  # the schema says draft-04
    resource = Resource.from_contents(s, default_specification=DRAFT4)
    registry: Registry[Any] = Registry(retrieve=_no_network).with_resource(s["id"], resource)
    cls.check_schema(s)
    return cls(s, registry=registry, format_checker=cls.FORMAT_CHECKER)


def errors(doc: Any) -> list[str]:
    """Every schema violation of `doc`, as `path: message`."""
    return sorted(
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator().iter_errors(doc)
    )


def assert_valid_sarif(doc: Any) -> None:
    """`doc` is a valid SARIF 2.1.0 log (the packaged OASIS schema)."""
    found = errors(doc)
    assert not found, "not valid SARIF 2.1.0:\n" + "\n".join(found[:20])


def assert_github_ready(doc: dict[str, Any]) -> None:
    """Valid, and what GitHub code scanning reads is there: every rule with a security severity
    and the `security` tag, every result with the right `ruleIndex`, a line, and a
    fingerprint; one invocation."""
    assert_valid_sarif(doc)
    for run in doc["runs"]:
        driver = run["tool"]["driver"]
        assert driver["name"] and driver.get("version")
        rules = driver["rules"]
        assert len({r["id"] for r in rules}) == len(rules)
        for r in rules:
            props = r["properties"]
            assert 0.0 < float(props["security-severity"]) <= 10.0, r["id"]
            assert "security" in props["tags"], r["id"]
            assert r["shortDescription"]["text"] and r["fullDescription"]["text"]
            assert r["help"]["text"] and r["help"]["markdown"]
        [invocation] = run["invocations"]
        assert isinstance(invocation["executionSuccessful"], bool)
        fingerprints = []
        for res in run["results"]:
            assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
            [location] = res["locations"]
            assert location["physicalLocation"]["region"]["startLine"] >= 1
            assert location["physicalLocation"]["artifactLocation"]["uri"]
            fingerprints.append(tuple(sorted(res["partialFingerprints"].items())))
        assert len(set(fingerprints)) == len(fingerprints), "two results share a fingerprint"
