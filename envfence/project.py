"""The project's files: `Pulumi.yaml` and the `Pulumi.<stack>.yaml` stack files.

Reads them the way the Pulumi CLI hands config to a program: every value becomes a string keyed by
its full name (`envfence:tier`), objects and lists as JSON, booleans as `true`/`false`. The offline
evaluator feeds exactly these strings to the mock runtime, and `settings` reads the sibling stack
files through here to check what must differ between environments (CIDRs, names).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from envfence.registry import Registry, RegistryError, parse_registry

NAMESPACE = "envfence"


class ProjectFileError(Exception):
    """A project or stack file is missing or malformed. The message names the file."""


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    defaults: dict[str, str]
    # The environment registry (the `envfence:` section of Pulumi.yaml); read from the root's
    # Pulumi.yaml when a Project is built without it.
    registry_section: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self.registry_section is not None:
            return self.registry_section
        return _read_registry(self.root / "Pulumi.yaml")

    def stack_file(self, stack: str) -> Path:
        return self.root / f"Pulumi.{stack}.yaml"

    def stacks(self) -> list[str]:
        """Stack names that have a stack file, sorted."""
        return sorted(
            p.name[len("Pulumi.") : -len(".yaml")] for p in self.root.glob("Pulumi.*.yaml")
        )

    def stack_config(self, stack: str) -> dict[str, str]:
        """Project defaults overlaid with the stack file's values, as CLI-style strings."""
        path = self.stack_file(stack)
        if not path.is_file():
            known = ", ".join(self.stacks()) or "none"
            raise ProjectFileError(
                f"unknown stack '{stack}': there is no {path.name} in {self.root}; "
                f"stacks with a stack file: {known}"
            )
        doc = _load_yaml(path)
        raw = doc.get("config") or {}
        if not isinstance(raw, dict):
            raise ProjectFileError(f"{path.name}: 'config' must be a mapping of key: value")
        config = dict(self.defaults)
        for key, value in raw.items():
            full = key if ":" in str(key) else f"{self.name}:{key}"
            if isinstance(value, dict) and "secure" in value and len(value) == 1:
                # Encrypted values cannot be read offline; envfence keeps no secrets in config.
                raise ProjectFileError(
                    f"{path.name}: {full} is a secret; envfence config holds no secrets "
                    "(passwords are managed by RDS in Secrets Manager)"
                )
            config[full] = to_cli_string(value)
        return config


def to_cli_string(value: Any) -> str:
    """Render a YAML value the way `pulumi config` passes it to a program."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)):  # an unquoted YAML date
        return value.isoformat()
    return json.dumps(value, default=str)


def _load_yaml(path: Path) -> dict[str, Any]:
    """The file's mapping, parsed once per content (sibling stack files are read for every stack
    the rules look at; YAML parsing is the slow part); the caller gets its own copy."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProjectFileError(f"{path.name}: cannot be read: {exc.strerror}") from None
    return copy.deepcopy(_parse_yaml(path.name, text))


@functools.lru_cache(maxsize=256)
def _parse_yaml(name: str, text: str) -> dict[str, Any]:
    try:
        # libyaml's loader where PyYAML has it (several times faster; the same safe subset).
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProjectFileError(f"{name}: not valid YAML{where}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ProjectFileError(f"{name}: expected a mapping at the top level")
    return doc


def find_root(start: Path | None = None) -> Path:
    """The directory of the nearest `Pulumi.yaml`, walking up from `start` (default: the working
    directory), as the Pulumi CLI finds its project."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "Pulumi.yaml").is_file():
            return directory
    raise ProjectFileError(
        f"no Pulumi.yaml in {here} or any directory above it: run envfence inside the "
        "project, or name it with --cwd/-C DIR"
    )


def load_project(root: Path | None = None) -> Project:
    """The project at `root`, or the nearest one above the working directory."""
    root = find_root() if root is None else root.resolve()
    path = root / "Pulumi.yaml"
    if not path.is_file():
        raise ProjectFileError(f"no Pulumi.yaml in {root}")
    doc = _load_yaml(path)
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ProjectFileError("Pulumi.yaml: 'name' is required")
    defaults: dict[str, str] = {}
    for key, spec in (doc.get("config") or {}).items():
        full = key if ":" in str(key) else f"{name}:{key}"
        if isinstance(spec, dict):
            if "default" in spec:
                defaults[full] = to_cli_string(spec["default"])
            elif "value" in spec:
                defaults[full] = to_cli_string(spec["value"])
        else:
            defaults[full] = to_cli_string(spec)
    return Project(root=root, name=name, defaults=defaults, registry_section=_registry_of(doc))


def _registry_of(doc: dict[str, Any]) -> Registry:
    try:
        return parse_registry(doc.get("envfence"))
    except RegistryError as exc:
        raise ProjectFileError(str(exc)) from None


def _read_registry(path: Path) -> Registry:
    """The registry of `path`, validated once per content of the file (the rules ask for it
    per resource and per stack)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProjectFileError(f"{path.name}: cannot be read: {exc.strerror}") from None
    return _cached_registry(path.name, text)


@functools.lru_cache(maxsize=32)
def _cached_registry(name: str, text: str) -> Registry:
    return _registry_of(copy.deepcopy(_parse_yaml(name, text)))
