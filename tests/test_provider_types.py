"""The provider-type table (envfence/rules/provider_types.py) is what the providers say.

The rules and proofs read type tokens and taggability from a table generated from the installed
providers (`envfence.rules.providers`: importing the providers' classes costs more than every
rule and proof of a cached check). Every entry must equal what the provider's own class says,
every class envfence's code names must be in it, and every type the stacks declare must be in
its taggability table; when the installed providers are not the table's, the real classes are
used. `scripts/update-provider-types.py` regenerates it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from envfence.model import StackState
from envfence.rules import provider_types as table
from envfence.rules import providers

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "update-provider-types.py"


def _script() -> object:
    spec = importlib.util.spec_from_file_location("update_provider_types", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def token_mismatches(tokens: Mapping[str, str]) -> list[str]:
    return [
        f"{path}: table {token}, provider {providers.real_class(path).pulumi_type}"
        for path, token in tokens.items()
        if providers.real_class(path).pulumi_type != token
    ]


def taggable_mismatches(taggable: Mapping[str, bool]) -> list[str]:
    return [
        f"{type_}: table {value}"
        for type_, value in taggable.items()
        if providers.taggable_by_class(type_) != value
    ]


def test_the_table_is_of_the_installed_providers() -> None:
    for _module, dist in providers.PACKAGES.values():
        assert table.PROVIDER_VERSIONS[dist] == importlib.metadata.version(dist), (
            "run scripts/update-provider-types.py"
        )
    assert providers.current()


def test_every_token_is_the_providers() -> None:
    assert token_mismatches(table.TOKENS) == []
    # And a wrong entry is caught.
    assert token_mismatches({**table.TOKENS, "aws.s3.Bucket": "aws:s3/bucket:Bukket"}) == [
        "aws.s3.Bucket: table aws:s3/bucket:Bukket, provider aws:s3/bucket:Bucket"
    ]


def test_every_taggability_is_the_providers() -> None:
    assert taggable_mismatches(table.TAGGABLE) == []
    assert taggable_mismatches({"aws:s3/bucket:Bucket": False}) == [
        "aws:s3/bucket:Bucket: table False"
    ]


def test_every_class_envfence_names_is_in_the_table() -> None:
    found = set(_script().references())  # type: ignore[attr-defined]
    named = {path for path in found if _is_class(path)}
    assert named, "the scan found no provider class: the pattern no longer matches the code"
    assert sorted(named - set(table.TOKENS)) == [], "run scripts/update-provider-types.py"


def _is_class(path: str) -> bool:
    try:
        return hasattr(providers.real_class(path), "pulumi_type")
    except AttributeError:
        return False


def test_every_type_the_stacks_declare_is_in_the_taggability_table(
    stacks: dict[str, StackState],
) -> None:
    declared = {r.type for s in stacks.values() for r in s.custom()}
    assert sorted(declared - set(table.TAGGABLE)) == [], "run scripts/update-provider-types.py"


def test_the_table_serves_names_without_importing() -> None:
    bucket = providers.aws.s3.Bucket
    assert isinstance(bucket, providers.Known)
    assert bucket.pulumi_type == "aws:s3/bucket:Bucket"
    assert providers.docker.Image.pulumi_type == "docker:index/image:Image"


def test_other_provider_versions_use_the_real_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "current", lambda: False)
    bucket = providers.aws.s3.Bucket
    assert not isinstance(bucket, providers.Known)
    assert bucket.pulumi_type == "aws:s3/bucket:Bucket"
    monkeypatch.setattr(table, "TAGGABLE", {"aws:s3/bucket:Bucket": False})
    providers.is_taggable.cache_clear()
    try:
        assert providers.is_taggable("aws:s3/bucket:Bucket")  # the class, not the table
    finally:
        providers.is_taggable.cache_clear()


def test_a_name_not_in_the_table_is_read_from_the_provider() -> None:
    assert "aws.s3.BucketMetric" not in table.TOKENS
    metric = providers.aws.s3.BucketMetric
    assert not isinstance(metric, providers.Known)
    assert re.fullmatch(r"aws:s3/bucketMetric:BucketMetric", metric.pulumi_type)
