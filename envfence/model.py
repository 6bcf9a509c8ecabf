"""StackState: the one data model, shaped like a `pulumi stack export` deployment.

Whatever produced it — the offline evaluator, a real `pulumi stack export`, a `pulumi preview
--json`, or (later) a read of a live account — the rules and proofs see the same document.
`to_document()` writes the export shape (`{"version": 3, "deployment": {...}}`) plus an
`envfence` section; `envfence.state` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

STACK_TYPE = "pulumi:pulumi:Stack"
PROVIDER_PREFIX = "pulumi:providers:"

# Marks a value that is not known yet (a preview). Same sentinel as the Pulumi engine's.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

# Marks a value the state holds only encrypted: a `pulumi stack export` without
# `--show-secrets` (its `ciphertext`), or `[secret]` in a `pulumi preview --json`. envfence's own
# sentinel, distinct from UNKNOWN (which it is treated like: whatever reads it fails closed),
# so that messages can say why a value cannot be read.
SECRET = "envfence-secret-1b47061264138c4ac30d75fd1eb44270-not-readable"

# How the engine marks a secret in a serialized state: {SECRET_SIG_KEY: SECRET_SIG,
# "ciphertext": ...} or, under `--show-secrets`, {..., "plaintext": "<the value as JSON>"}.
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def reveal(value: Any) -> Any:
    """`value` with every engine secret unwrapped, anywhere in it: a `plaintext` becomes the
    value it encodes (JSON-decoded once), a `ciphertext` becomes `SECRET`. Raises ValueError on
    a plaintext that is not JSON."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            if "plaintext" in value and isinstance(value["plaintext"], str):
                try:
                    decoded = json.loads(value["plaintext"])
                except json.JSONDecodeError:
                    raise ValueError("a secret's plaintext is not valid JSON") from None
                return reveal(decoded)
            return SECRET
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def unreadable(value: Any) -> str | None:
    """Why `value` (or something inside it) cannot be read: "secret", "unknown", or None.
    A string counts when it is a sentinel or contains one (a JSON document built from one)."""
    if isinstance(value, str):
        if SECRET in value:
            return "secret"
        return "unknown" if UNKNOWN in value else None
    items: list[Any] = []
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, list | tuple):
        items = list(value)
    found = [why for why in (unreadable(v) for v in items) if why]
    return "secret" if "secret" in found else (found[0] if found else None)


def why_unreadable(what: str, why: str) -> str:
    """The message for a value that cannot be read: `what` names it ("policy of x (type)")."""
    if why == "secret":
        return f"{what} is a secret the checker cannot read (exported without --show-secrets)"
    return f"{what} is unknown until deployment"


def urn_parts(urn: str) -> tuple[str, str, str, str]:
    """(stack, project, qualified type, name) of `urn:pulumi:STACK::PROJECT::TYPE::NAME`."""
    parts = urn.split("::")
    if len(parts) < 4 or not parts[0].startswith("urn:pulumi:"):
        raise ValueError(f"not a Pulumi URN: {urn!r}")
    return parts[0][len("urn:pulumi:") :], parts[1], parts[2], "::".join(parts[3:])


@dataclass
class Resource:
    urn: str
    type: str
    custom: bool = True
    id: str | None = None
    parent: str | None = None
    provider: str | None = None
    dependencies: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    protect: bool = False
    retain_on_delete: bool = False

    @property
    def name(self) -> str:
        return urn_parts(self.urn)[3]

    @property
    def stack(self) -> str:
        return urn_parts(self.urn)[0]

    @property
    def is_provider(self) -> bool:
        return self.type.startswith(PROVIDER_PREFIX)

    @property
    def provider_urn(self) -> str | None:
        """The URN part of the `URN::ID` provider reference."""
        if not self.provider:
            return None
        return self.provider.rsplit("::", 1)[0]

    def get(self, key: str, default: Any = None) -> Any:
        """A property: the output if known (deployed state), else the input."""
        if key in self.outputs and self.outputs[key] is not None:
            return self.outputs[key]
        return self.inputs.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Change a property as a new deployment would: the input and its echoed output."""
        self.inputs[key] = value
        if key in self.outputs or self.custom:
            self.outputs[key] = value

    def drop(self, key: str) -> None:
        self.inputs.pop(key, None)
        self.outputs.pop(key, None)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"urn": self.urn, "custom": self.custom, "type": self.type}
        if self.id is not None:
            doc["id"] = self.id
        doc["inputs"] = self.inputs
        doc["outputs"] = self.outputs
        if self.parent:
            doc["parent"] = self.parent
        if self.provider:
            doc["provider"] = self.provider
        doc["dependencies"] = self.dependencies
        doc["propertyDependencies"] = self.property_dependencies
        if self.protect:
            doc["protect"] = True
        if self.retain_on_delete:
            doc["retainOnDelete"] = True
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Resource:
        return cls(
            urn=doc["urn"],
            type=doc["type"],
            custom=bool(doc.get("custom", True)),
            id=doc.get("id") or None,
            parent=doc.get("parent") or None,
            provider=doc.get("provider") or None,
            dependencies=list(doc.get("dependencies") or []),
            property_dependencies={
                k: list(v) for k, v in (doc.get("propertyDependencies") or {}).items()
            },
            inputs=dict(doc.get("inputs") or {}),
            outputs=dict(doc.get("outputs") or {}),
            protect=bool(doc.get("protect", False)),
            retain_on_delete=bool(doc.get("retainOnDelete", False)),
        )


@dataclass
class StackState:
    stack: str
    project: str
    tier: str | None
    experiment_id: str | None = None
    config: dict[str, str] = field(default_factory=dict)
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    source: str = "evaluate"  # evaluate | export | preview | plan

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.resources)

    def by_urn(self) -> dict[str, Resource]:
        return {r.urn: r for r in self.resources}

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.resources if r.type in types]

    def custom(self) -> list[Resource]:
        """Cloud resources: neither components, the stack, nor providers."""
        return [r for r in self.resources if r.custom and not r.is_provider]

    def named(self, name: str, type_: str | None = None) -> Resource:
        hits = [r for r in self.resources if r.name == name and (type_ is None or r.type == type_)]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} resources named {name!r} in stack {self.stack}")
        return hits[0]

    def to_document(self) -> dict[str, Any]:
        return {
            "version": 3,
            "deployment": {
                "manifest": {"magic": "", "version": "envfence"},
                "resources": [_sorted_refs(r.to_dict()) for r in stable_order(self.resources)],
            },
            "envfence": {
                "stack": self.stack,
                "project": self.project,
                "tier": self.tier,
                "experimentId": self.experiment_id,
                "config": self.config,
                "outputs": self.outputs,
            },
        }


def stable_order(resources: Sequence[Resource]) -> list[Resource]:
    """Resources in an order that depends only on the resources, never on the order they were
    registered in: what a resource refers to (parent, provider, dependencies) comes first, as in
    `pulumi stack export`, and ties are broken by URN. Plans can be diffed and kept as golden
    files. A reference to a resource not in the list is ignored; a cycle (which the engine
    refuses) is broken by URN."""
    by_urn = {r.urn: r for r in resources}
    needs: dict[str, set[str]] = {}
    for r in resources:
        refs = {r.parent or "", _provider_urn(r), *r.dependencies}
        needs[r.urn] = {u for u in refs if u and u in by_urn and u != r.urn}
    done: list[Resource] = []
    placed: set[str] = set()
    waiting = sorted(by_urn)
    while waiting:
        ready = [u for u in waiting if needs[u] <= placed]
        if not ready:  # a cycle: take the first by URN
            ready = waiting[:1]
        first = ready[0]
        done.append(by_urn[first])
        placed.add(first)
        waiting.remove(first)
    return done


def _sorted_refs(doc: dict[str, Any]) -> dict[str, Any]:
    """Dependencies are a set to the engine; listed sorted, they no longer carry the order in
    which the program's outputs resolved."""
    doc["dependencies"] = sorted(doc.get("dependencies") or [])
    doc["propertyDependencies"] = {
        k: sorted(v) if isinstance(v, list) else v
        for k, v in sorted((doc.get("propertyDependencies") or {}).items())
    }
    return doc


def _provider_urn(r: Resource) -> str:
    """The URN of a resource's provider reference (`urn::id`)."""
    ref = r.provider or ""
    return ref.rsplit("::", 1)[0] if "::" in ref else ref
