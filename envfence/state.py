"""Load real state into StackState: `pulumi stack export`, `pulumi preview --json`, or the
output of `envfence plan --format json` (an export plus an `envfence` section).

The stack comes from the resources' URNs; the tier and experiment id from the `envfence` section
when there is one, else from the environment tags (the provider's default tags, or any
resource's tags). A file that is none of these is refused with a message naming it.

Secrets, anywhere in a resource's inputs or outputs: the engine writes them wrapped,
`{"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "ciphertext": ...}`,
or with `"plaintext": "<the value as JSON>"` under `--show-secrets`; `pulumi preview --json`
writes the string `[secret]` instead. A plaintext is read as the value it encodes; anything
else becomes `model.SECRET`, which every rule and proof that reads it treats like a value not
known yet: it fails closed, naming the resource and property.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envfence import naming
from envfence.model import SECRET, Resource, StackState, reveal, urn_parts

# What `pulumi preview --json` prints for a secret (the engine's display layer replaces the
# value by this string; `--show-secrets` prints the value itself).
PREVIEW_SECRET = "[secret]"


class StateError(Exception):
    """A state file cannot be read or is not a Pulumi state. Exit code 2."""


def load_file(path: str | Path) -> StackState:
    """The one stack of a state file (a file of several stacks is refused: use `load_states`)."""
    states = load_states(path)
    if len(states) != 1:
        raise StateError(
            f"{path}: holds {len(states)} stacks ({', '.join(s.stack for s in states)}); "
            "expected one"
        )
    return states[0]


def load_states(path: str | Path) -> list[StackState]:
    """Every stack of a state file: one document, or a list of them (`envfence plan --format
    json` over several stacks)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise StateError(f"{p}: cannot be read: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    docs = doc if isinstance(doc, list) else [doc]
    if not docs:
        raise StateError(f"{p}: an empty list: no stack to check")
    states = []
    for i, item in enumerate(docs):
        where = f"{p}[{i}]" if isinstance(doc, list) else str(p)
        try:
            states.append(load_document(item, source_name=where))
        except StateError as exc:
            raise StateError(f"{where}: {exc}") from None
    return states


def load_document(doc: Any, source_name: str = "<document>") -> StackState:
    if not isinstance(doc, dict):
        raise StateError(
            "expected a JSON object (or a list of them): a `pulumi stack export`, a `pulumi "
            "preview --json` or an `envfence plan --format json` document"
        )
    if "deployment" in doc:
        return _from_export(doc)
    if "steps" in doc:
        return _from_preview(doc)
    raise StateError(
        "not a Pulumi state: expected a `deployment` (pulumi stack export) or "
        "`steps` (pulumi preview --json) key"
    )


def _preview_secrets(value: Any) -> Any:
    if value == PREVIEW_SECRET:
        return SECRET
    if isinstance(value, dict):
        return {k: _preview_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_preview_secrets(v) for v in value]
    return value


def _resources(items: Any, where: str, *, preview: bool = False) -> list[Resource]:
    if not isinstance(items, list):
        raise StateError(f"`{where}` must be a list of resources")
    out = []
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("urn"), str)
            or not isinstance(item.get("type"), str)
        ):
            raise StateError(f"{where}[{i}] is not a resource (needs `urn` and `type`)")
        try:
            urn_parts(item["urn"])
        except ValueError as exc:
            raise StateError(f"{where}[{i}]: {exc}") from None
        item = dict(item)
        for part in ("inputs", "outputs"):
            if not isinstance(item.get(part), dict):
                continue
            try:
                props = reveal(item[part])
            except ValueError as exc:
                raise StateError(f"{where}[{i}] ({item['urn']}): {part}: {exc}") from None
            item[part] = _preview_secrets(props) if preview else props
        out.append(Resource.from_dict(item))
    return out


def _from_export(doc: dict[str, Any]) -> StackState:
    version = doc.get("version")
    if version not in (3, 4):
        raise StateError(f"unsupported export version {version!r}; supported: 3 (and 4)")
    deployment = doc.get("deployment")
    if not isinstance(deployment, dict):
        raise StateError("`deployment` must be an object")
    resources = _resources(deployment.get("resources") or [], "deployment.resources")
    section = doc.get("envfence")
    meta: dict[str, Any] = section if isinstance(section, dict) else {}
    return _assemble(resources, meta, source="plan" if meta else "export")


def _from_preview(doc: dict[str, Any]) -> StackState:
    steps = doc.get("steps")
    if not isinstance(steps, list):
        raise StateError("`steps` must be a list")
    items = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise StateError(f"steps[{i}] is not an object")
        if step.get("op") in ("delete", "discard", "remove-pending-replace"):
            continue
        state = step.get("newState")
        if state is None:
            continue
        items.append(state)
    resources = _resources(items, "steps[].newState", preview=True)
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    return _assemble(resources, {"config": config}, source="preview")


def _assemble(resources: list[Resource], meta: dict[str, Any], source: str) -> StackState:
    if not resources:
        raise StateError("the deployment has no resources: nothing to check")
    stacks = {r.stack for r in resources}
    if len(stacks) != 1:
        raise StateError(f"resources of several stacks in one file: {', '.join(sorted(stacks))}")
    stack = stacks.pop()
    project = urn_parts(resources[0].urn)[1]
    config = {
        str(k): v if isinstance(v, str) else json.dumps(v)
        for k, v in (meta.get("config") or {}).items()
    }
    tags = _environment_tags(resources)
    tier = meta.get("tier") or config.get("envfence:tier") or tags.get(naming.TAG_TIER)
    experiment_id = (
        meta.get("experimentId")
        or config.get("envfence:experimentId")
        or tags.get(naming.TAG_EXPERIMENT_ID)
    )
    stack_res = [r for r in resources if r.type == "pulumi:pulumi:Stack"]
    outputs = meta.get("outputs") or (stack_res[0].outputs if stack_res else {})
    return StackState(
        stack=stack,
        project=str(meta.get("project") or project),
        tier=tier,
        experiment_id=experiment_id,
        config=config,
        resources=resources,
        outputs=outputs,
        source=source,
    )


def _environment_tags(resources: list[Resource]) -> dict[str, str]:
    """The provider's default tags, else the tags of the first resource that has a tier tag."""
    for r in resources:
        if r.type == "pulumi:providers:aws":
            raw = r.inputs.get("defaultTags")
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError:
                    raw = None
            if isinstance(raw, dict):
                tags = raw.get("tags")
                if isinstance(tags, dict):
                    return tags
    for r in resources:
        tags = r.get("tagsAll") or r.get("tags")
        if isinstance(tags, dict) and naming.TAG_TIER in tags:
            return tags
    return {}
