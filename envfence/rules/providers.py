"""The provider classes the rules and proofs name, without importing the providers.

Type tokens are taken from the provider's classes (`aws.s3.Bucket.pulumi_type`), never typed
by hand: a misspelled token would make a rule silently never fire. Importing the classes costs
well over a second (each `pulumi_aws` module loads every class it has), more than every rule
and proof of a check takes once the stacks are cached. So the tokens, and whether each type
takes `tags`, are read from `provider_types.py`, generated from the installed providers by
`scripts/update-provider-types.py` and checked against them by `tests/test_provider_types.py`.

`aws.s3.Bucket` here is an object whose `pulumi_type` is the class's token. When the installed
provider versions are not the ones the table was generated from, or a name is not in it, the
real class is imported and used instead: the table only ever saves time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass
from typing import Any

from envfence.rules import provider_types as table

PACKAGES = {"aws": ("pulumi_aws", "pulumi-aws"), "docker": ("pulumi_docker", "pulumi-docker")}


@functools.cache
def current() -> bool:
    """The installed providers are the ones the table was generated from."""
    for _module, dist in PACKAGES.values():
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return False
        if table.PROVIDER_VERSIONS.get(dist) != installed:
            return False
    return True


@dataclass(frozen=True)
class Known:
    """A provider class as the table knows it: its name and its type token."""

    path: str  # aws.s3.Bucket
    pulumi_type: str


def _resolve(path: str) -> Any:
    if current() and path in table.TOKENS:
        return Known(path, table.TOKENS[path])
    return real_class(path)


def real_class(path: str) -> Any:
    """The provider's own class for `aws.s3.Bucket` (importing its module)."""
    package, *names = path.split(".")
    obj: Any = importlib.import_module(PACKAGES[package][0])
    for name in names:
        obj = getattr(obj, name)
    return obj


class _Module:
    def __init__(self, path: str) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _resolve(f"{self._path}.{name}")


class _Package(_Module):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name[:1].isupper():  # a class at the package's top level (docker.Image)
            return _resolve(f"{self._path}.{name}")
        return _Module(f"{self._path}.{name}")


aws: Any = _Package("aws")
docker: Any = _Package("docker")


@functools.cache
def resource_class(type_: str) -> Any:
    """The provider class of a type token such as `aws:s3/bucket:Bucket`, or None."""
    try:
        pkg, mod_path, name = type_.split(":")
    except ValueError:
        return None
    if pkg not in PACKAGES:
        return None
    package = importlib.import_module(PACKAGES[pkg][0])
    module_name = mod_path.split("/")[0]
    module = package if module_name == "index" else getattr(package, module_name, None)
    cls = getattr(module, name, None) if module is not None else None
    if cls is not None and getattr(cls, "pulumi_type", None) == type_:
        return cls
    return None


def taggable_by_class(type_: str) -> bool:
    """Whether the provider's class for `type_` accepts `tags`: read from the class itself."""
    cls = resource_class(type_)
    if cls is None:
        return False
    try:
        return "tags" in inspect.signature(cls._internal_init).parameters
    except (AttributeError, ValueError, TypeError):
        return False


@functools.cache
def is_taggable(type_: str) -> bool:
    if current() and type_ in table.TAGGABLE:
        return table.TAGGABLE[type_]
    return taggable_by_class(type_)
