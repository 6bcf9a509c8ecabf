"""The environment registry as the tests read it: plain YAML, not the code under test."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent  # the repository under test


def registered_tier(stack: str, root: Path | None = None) -> str:
    """The stack's tier as the registry in Pulumi.yaml spells it, read here with plain YAML
    rather than through the code under test (exact name first, else a `prefix-*` pattern)."""
    doc = yaml.safe_load(((root or ROOT) / "Pulumi.yaml").read_text())
    entries = doc["envfence"]["environments"]
    if stack in entries:
        return str(entries[stack]["tier"])
    for name, entry in entries.items():
        if name.endswith("*") and stack.startswith(name[:-1]):
            return str(entry["tier"])
    raise KeyError(stack)
