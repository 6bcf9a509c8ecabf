"""Run the real CrossGuard pack (`policy/`) in-process, the way `pulumi preview` drives it.

There is no Pulumi CLI here, so this imitates the parts of it that matter for the verdict:

1. Start the pack like the Python policy host (`python -m pulumi.policy`): `runpy.run_path` on
   the pack directory, as `__main__`. Constructing `PolicyPack` would start a gRPC server and
   sleep forever; for the duration, `add_AnalyzerServicer_to_server` (the attribute of
   `pulumi.runtime.proto.analyzer_pb2_grpc` that `pulumi_policy.policy` calls) is replaced by a
   function that captures the servicer and aborts the constructor, before it binds a port,
   starts the server, prints the port or sleeps. One fresh pack per stack, as one per CLI run.
2. `ConfigureStack` (stack, project, organization, dry run, the stack's config), as the CLI
   does right after the plugin starts.
3. `GetAnalyzerInfo`, then the policy config the CLI would send to `Configure`
   (`ReconcilePolicyPackConfig`): every policy at its own enforcement level with its schema
   defaults, then the pack's initial config, then the `--policy-pack-config` file — its `"all"`
   enforcement level first, applied to every policy, then each named entry (a string is an
   enforcement level; an object may carry `enforcementLevel` and properties). Only the CLI does
   this; the SDK applies whatever it is given.
4. `Analyze` for every registered resource (the engine analyzes every registration: the root
   stack, components, providers and custom resources) with its **inputs**, `protect`, parent
   and its provider (type, URN, name, inputs); then `AnalyzeStack` once with every resource's
   **outputs**, parent, dependencies, non-empty property dependencies, `protect` and provider.

Requests are the engine's protos (`pulumi.runtime.proto.analyzer_pb2`, which the SDK's servicer
is generated against), properties marshalled like the engine (`KeepUnknowns`: an unknown value
travels as the unknown sentinel string, which is envfence's `UNKNOWN`; `SkipInternalKeys`: keys
starting with `__` are dropped). Diagnostics are collected with the policy name, the URN (for
`Analyze`, the analyzed resource's, as the CLI attributes them), the message and the
enforcement level; the CLI fails the preview on any mandatory one.

What the runner cannot convey, because the CLI does not either: `retainOnDelete` (not in
`AnalyzerResourceOptions`) and config that differs from the repository's stack files (the
pack reads those). `StackState.config` is sent in `ConfigureStack` but the SDK ignores it.

This uses the SDK's private servicer class through `PolicyPack`: `pulumi-policy` is pinned.
"""

from __future__ import annotations

import json
import math
import runpy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import pulumi_policy.policy as sdk_policy
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2 as pb

from envfence.model import Resource, StackState


def pack_dir(root: Path | None = None) -> Path:
    """The project's pack: `policy/` of `root`, or of the project around the working directory
    (the pack is the repository's, not the installed package's)."""
    from envfence.project import find_root

    return (root or find_root()) / "policy"


def pack_config(directory: Path | None = None) -> Path:
    """The `--policy-pack-config` file CI passes: `policy/config.json`."""
    return (directory or pack_dir()) / "config.json"


LEVELS = ("advisory", "mandatory", "remediate", "disabled")
_LEVEL_TO_PROTO = {
    "advisory": pb.ADVISORY,
    "mandatory": pb.MANDATORY,
    "remediate": pb.REMEDIATE,
    "disabled": pb.DISABLED,
}
_PROTO_TO_LEVEL = {v: k for k, v in _LEVEL_TO_PROTO.items()}


class Diagnostic(NamedTuple):
    policy_name: str
    urn: str
    message: str
    enforcement_level: str  # advisory | mandatory | remediate | disabled


class PackConfigError(ValueError):
    """The --policy-pack-config file is not what the CLI accepts."""


class _Captured(Exception):
    pass


@contextmanager
def _servicer_capture() -> Iterator[dict[str, Any]]:
    captured: dict[str, Any] = {}

    def capture(servicer: Any, _server: Any) -> None:
        captured["servicer"] = servicer
        raise _Captured  # leave PolicyPack.__init__ before it binds a port and serves forever

    grpc_module = sdk_policy.analyzer_pb2_grpc
    with mock.patch.object(grpc_module, "add_AnalyzerServicer_to_server", capture):
        yield captured


def load_pack(directory: Path | None = None) -> Any:
    """Run the pack's `__main__.py` like the policy host; return its analyzer servicer."""
    # `capture` raises _Captured once the servicer is in hand: PolicyPack.__init__ stops there.
    with _servicer_capture() as captured, suppress(_Captured):
        runpy.run_path(str(directory or pack_dir()), run_name="__main__")
    if "servicer" not in captured:
        raise RuntimeError(f"{directory}/__main__.py did not construct a PolicyPack")
    return captured["servicer"]


# --------------------------------------------------------------------------------------------
# Policy pack config, as the CLI reconciles it


def parse_pack_config(doc: Mapping[str, Any]) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """`--policy-pack-config` JSON → {name: (enforcement level or None, properties)}."""
    out: dict[str, tuple[str | None, dict[str, Any]]] = {}
    for key, value in doc.items():
        if isinstance(value, str):
            if value not in LEVELS:
                raise PackConfigError(
                    f'parsing enforcement level for "{key}": "{value}" is '
                    "not a valid enforcement level"
                )
            out[key] = (value, {})
        elif isinstance(value, dict):
            props = dict(value)
            level = props.pop("enforcementLevel", None)
            if level is not None and level not in LEVELS:
                raise PackConfigError(
                    f'parsing enforcement level for "{key}": "{level}" is '
                    "not a valid enforcement level"
                )
            if level is None and not props:
                continue  # the CLI drops empty entries
            out[key] = (level, props)
        else:
            raise PackConfigError(
                f'parsing "{key}": {value!r} is not a valid value; must be a string or object'
            )
    return out


def reconcile(
    info: Any, given: Mapping[str, tuple[str | None, dict[str, Any]]]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """The config the CLI sends to `Configure`: policy defaults (enforcement level, schema
    defaults), then the pack's initial config, then the given config; each layer applies its
    "all" enforcement level to every policy before its named entries."""
    result: dict[str, tuple[str, dict[str, Any]]] = {}
    for p in info.policies:
        defaults = {
            k: v["default"]
            for k, v in _struct(p.configSchema.properties).items()
            if isinstance(v, dict) and "default" in v
        }
        result[p.name] = (_PROTO_TO_LEVEL[p.enforcementLevel], defaults)
    initial = {
        k: (_PROTO_TO_LEVEL[v.enforcementLevel], _struct(v.properties))
        for k, v in info.initialConfig.items()
    }
    for layer in (initial, given):
        if "all" in layer and layer["all"][0]:
            result = {k: (str(layer["all"][0]), props) for k, (_, props) in result.items()}
        for name, (level, props) in layer.items():
            old_level, old_props = result.get(name, ("", {}))
            result[name] = (level or old_level, {**old_props, **props})
    return result


def _struct(s: struct_pb2.Struct) -> dict[str, Any]:
    from google.protobuf import json_format

    return dict(json_format.MessageToDict(s))


# --------------------------------------------------------------------------------------------
# Marshalling like the engine


def _value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _value(x) for k, x in v.items() if not str(k).startswith("__")}
    if isinstance(v, list | tuple):
        return [_value(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int | float):
        f = float(v)
        return f if math.isfinite(f) else str(v)
    return str(v)


def _props(props: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(_value(dict(props)))
    return s


def _options(r: Resource) -> pb.AnalyzerResourceOptions:
    return pb.AnalyzerResourceOptions(protect=r.protect, parent=r.parent or "")


def _provider(r: Resource, by_urn: Mapping[str, Resource]) -> pb.AnalyzerProviderResource | None:
    prov = by_urn.get(r.provider_urn or "")
    if prov is None:
        return None
    return pb.AnalyzerProviderResource(
        type=prov.type, properties=_props(prov.inputs), urn=prov.urn, name=prov.name
    )


def analyze_request(r: Resource, by_urn: Mapping[str, Resource]) -> pb.AnalyzeRequest:
    req = pb.AnalyzeRequest(
        type=r.type, properties=_props(r.inputs), urn=r.urn, name=r.name, options=_options(r)
    )
    prov = _provider(r, by_urn)
    if prov is not None:
        req.provider.CopyFrom(prov)
    return req


def analyze_stack_request(state: StackState) -> pb.AnalyzeStackRequest:
    by_urn = state.by_urn()
    resources = []
    for r in state.resources:
        res = pb.AnalyzerResource(
            type=r.type,
            properties=_props(r.outputs),
            urn=r.urn,
            name=r.name,
            options=_options(r),
            parent=r.parent or "",
            dependencies=list(r.dependencies),
            propertyDependencies={
                k: pb.AnalyzerPropertyDependencies(urns=list(v))
                for k, v in r.property_dependencies.items()
                if v
            },
        )
        prov = _provider(r, by_urn)
        if prov is not None:
            res.provider.CopyFrom(prov)
        resources.append(res)
    return pb.AnalyzeStackRequest(resources=resources)


# --------------------------------------------------------------------------------------------
# Running


def _configure(servicer: Any, state: StackState, config: Mapping[str, Any]) -> None:
    servicer.ConfigureStack(
        pb.AnalyzerStackConfigureRequest(
            stack=state.stack,
            project=state.project,
            organization="organization",
            dry_run=True,
            config={k: str(v) for k, v in state.config.items()},
            tags={},
        ),
        None,
    )
    info = servicer.GetAnalyzerInfo(empty_pb2.Empty(), None)
    if not info.supportsConfig:
        return
    reconciled = reconcile(info, parse_pack_config(config))
    request = pb.ConfigureAnalyzerRequest()
    for name, (level, props) in reconciled.items():
        if level not in LEVELS:
            raise PackConfigError(f"invalid enforcement level {level!r} for {name!r}")
        pc = pb.PolicyConfig(enforcementLevel=_LEVEL_TO_PROTO[level])
        pc.properties.update(props)
        request.policyConfig[name].CopyFrom(pc)
    servicer.Configure(request, None)


def _collect(response: Any, urn: str | None = None) -> list[Diagnostic]:
    return [
        Diagnostic(
            d.policyName,
            urn if urn is not None else d.urn,
            d.message,
            _PROTO_TO_LEVEL[d.enforcementLevel],
        )
        for d in response.diagnostics
    ]


def run_stack(
    state: StackState, config: Mapping[str, Any] | None = None, directory: Path | None = None
) -> list[Diagnostic]:
    """Every diagnostic the pack reports on one stack (a fresh pack, as one CLI run)."""
    directory = directory or pack_dir()
    if config is None:
        config = json.loads(pack_config(directory).read_text())
    servicer = load_pack(directory)
    _configure(servicer, state, config)
    by_urn = state.by_urn()
    out: list[Diagnostic] = []
    for r in state.resources:
        out += _collect(servicer.Analyze(analyze_request(r, by_urn), None), urn=r.urn)
    out += _collect(servicer.AnalyzeStack(analyze_stack_request(state), None))
    return out


def run_pack(
    states: list[StackState], config: Mapping[str, Any] | None = None, directory: Path | None = None
) -> dict[str, list[Diagnostic]]:
    """{stack: diagnostics} of the real pack on each stack, as `pulumi preview --stack <stack>
    --policy-pack policy --policy-pack-config policy/config.json` would report them."""
    return {s.stack: run_stack(s, config, directory) for s in states}


def mandatory(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """The diagnostics that fail a preview."""
    return [d for d in diagnostics if d.enforcement_level == "mandatory"]


__all__ = [
    "Diagnostic",
    "load_pack",
    "mandatory",
    "pack_config",
    "pack_dir",
    "run_pack",
    "run_stack",
]
