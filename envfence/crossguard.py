"""The envfence rules as CrossGuard policies (`pulumi_policy`), for `policy/__main__.py`.

One policy per rule, named with the rule's kebab-case name, described `EFxxx: title`, mandatory.

What CrossGuard hands a policy, and how the rules see it:

- `ResourceValidationPolicy` (engine `Analyze`, once per registration, before the step): one
  resource, its **inputs**, its options (`protect`, `parent`) and its provider (type, URN, inputs).
  A rule of scope `resource` runs here only if its function needs nothing but the resource itself
  and the environments' facts (`PER_RESOURCE_RULES`); the adapter builds a one-resource
  `StackState` (plus the provider) around it. Every other `resource` rule reads sibling
  resources of the stack, or is not known not to (`RESOURCE_RULES_NEEDING_STACK` says why for
  the known ones), and runs as a stack policy instead.
- `StackValidationPolicy` (engine `AnalyzeStack`, once, after every registration): every
  resource of the stack (the root stack, components and providers included) with its
  **outputs**, parent, dependencies, property dependencies, `protect` and provider. Rules of
  scope `stack` and `cross`, and the resource rules above, run on a `StackState` rebuilt from it.

The environments' facts (tier, account, CIDR, stores, flows) come from the repository's stack
files: `Pulumi.<stack>.yaml` for the stack being previewed (its name and project from the URNs)
and every other `Pulumi.*.yaml` for the other environments (`build_context(..., extra_stacks=)`).
A stack without a stack file cannot be checked: every policy reports that, mandatory.

Unknown values fail closed. During a preview the SDK hands policies proxies that raise
`UnknownValueError` when an unknown is read, and turns that exception into an *advisory* "can't
run policy during preview": the check silently does not happen. The adapter therefore unwraps the
proxies first and turns every unknown sentinel into envfence's `UNKNOWN`, so a rule's `need()`
raises `Unknown` and `run_rule` yields an EF902 finding, reported as a mandatory violation of
the rule that could not decide (message prefixed `EF902 values-known:`). An `UnknownValueError`
that escapes anyway is caught and reported the same way, naming the property.

What CrossGuard cannot show a policy, so the pack cannot check it (`envfence check` on the
evaluated or exported state does):

- `retainOnDelete`: `AnalyzerResourceOptions` has no such field. The adapter marks resources
  `retain_on_delete=True` so EF209 still checks `protect`, deletion protection, final snapshots
  and `forceDestroy` instead of failing every production resource.
- other stacks' concrete ids and ARNs (their subnet, security group and VPC ids, key ARN): the
  pack sees one stack; the others are known from their stack files only (account, CIDR, and the
  names and ARNs derived from them by `envfence.naming`).
- config that is not in the stack file (`ConfigureStack` carries the stack's config, but the
  SDK's servicer keeps only its tags).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import SPECIAL_SECRET_SIG, SPECIAL_SIG_KEY
from pulumi_policy.proxy import (
    UNKNOWN_ARCHIVE_VALUE,
    UNKNOWN_ARRAY_VALUE,
    UNKNOWN_ASSET_VALUE,
    UNKNOWN_BOOLEAN_VALUE,
    UNKNOWN_NUMBER_VALUE,
    UNKNOWN_OBJECT_VALUE,
    UNKNOWN_STRING_VALUE,
    UnknownValueError,
)

from envfence.model import PROVIDER_PREFIX, STACK_TYPE, UNKNOWN, Resource, StackState, urn_parts
from envfence.project import Project, ProjectFileError, load_project
from envfence.rules.context import Context, build_context
from envfence.rules.engine import (
    UNKNOWN_RULE_ID,
    Finding,
    FlowUse,
    Rule,
    all_rules,
    get_rule,
    run_rule,
)

# Resource-scope rules that run per resource (ResourceValidationPolicy, on `Analyze`): their
# function reads the resource itself and the environments' facts, nothing else of the stack.
# Every other resource-scope rule runs as a StackValidationPolicy on AnalyzeStack's resources,
# including rules added later and not listed here: a stack policy sees every resource, so that
# default is always right, only later in the preview (and on outputs rather than inputs).
# tests/test_policy_pack.py checks the list through the pack: with these rules per resource, the
# pack reports exactly what `envfence check` (every rule per stack) reports, on the clean stacks,
# the near misses and batches of the leaks of tests/mutations.py.
PER_RESOURCE_RULES: frozenset[str] = frozenset(
    {
        "EF101",  # peering: the resource (and other stacks' ids, for the message)
        "EF102",  # transit gateway / VPN: the resource's type
        "EF103",  # routes: the route's destination against the other environments' CIDRs
        "EF106",  # public IPs: the subnet's or database's own flag
        "EF201",  # public database: its own flag
        "EF208",  # shared snapshots: accounts named by the resource vs the environments' accounts
        "EF302",  # trust policies: principals vs the environments' accounts and role ARNs
        "EF305",  # PassRole/AssumeRole: statements vs the other environments' role ARNs
        "EF401",  # key policies: principals vs the environments' roles and accounts
        "EF402",  # key rotation: the key's own flag
    }
)
# Why the known resource-scope rules outside that list need the stack: given only the resource,
# each of them would report what `envfence check` does not.
RESOURCE_RULES_NEEDING_STACK: dict[str, str] = {
    "EF104": "the stack's own security groups and VPC endpoint prefix lists (allowed sources)",
    "EF202": "the stack's KMS keys and aliases (which key is the environment's own)",
    "EF203": "the bucket's BucketPublicAccessBlock resource",
    "EF204": "the bucket's encryption configuration resource and the stack's keys",
    "EF205": "the bucket's BucketVersioning resource",
    "EF206": "the bucket's BucketPolicy resource",
    "EF207": "for bucket policies, the bucket's data-store tag (which declared flow applies)",
    "EF301": "the stack's roles (which role a policy is attached to, for declared flows)",
    "EF303": "the stack's permission boundary policy",
    "EF306": "the stack's own IAM policies (which attachments are verifiable)",
    "EF503": "the bucket's lifecycle configuration resources",
}

# Every sentinel the engine uses for a value unknown during preview.
_UNKNOWN_SENTINELS = frozenset(
    {
        UNKNOWN_BOOLEAN_VALUE,
        UNKNOWN_NUMBER_VALUE,
        UNKNOWN_STRING_VALUE,
        UNKNOWN_ARRAY_VALUE,
        UNKNOWN_ASSET_VALUE,
        UNKNOWN_ARCHIVE_VALUE,
        UNKNOWN_OBJECT_VALUE,
    }
)
# The policies see no provider id (only the provider's URN); a reference needs one.
_NO_ID = UNKNOWN


def runs_per_resource(rule: Rule) -> bool:
    """Whether the rule runs as a ResourceValidationPolicy (else a StackValidationPolicy)."""
    return rule.scope == "resource" and rule.id in PER_RESOURCE_RULES


def build_policies(project_root: Path | str) -> list[Policy]:
    """One CrossGuard policy per envfence rule, in rule-id order: mandatory, except the
    advisory rules (EF504)."""
    root = Path(project_root).resolve()
    policies: list[Policy] = []
    for rule in all_rules():
        common: dict[str, Any] = {
            "name": rule.name,
            "description": rule.description(),
            # An advisory rule (an expired experiment) must not block unrelated previews.
            "enforcement_level": EnforcementLevel.ADVISORY
            if rule.advisory
            else EnforcementLevel.MANDATORY,
            "severity": Severity(rule.severity),
            "remediation_steps": rule.fix,
        }
        if runs_per_resource(rule):
            policies.append(
                ResourceValidationPolicy(validate=_resource_validation(rule, root), **common)
            )
        else:
            policies.append(StackValidationPolicy(validate=_stack_validation(rule, root), **common))
    return policies


# --------------------------------------------------------------------------------------------
# Values: proxies unwrapped, unknowns made envfence's UNKNOWN


def plain(value: Any) -> Any:
    """A policy property value as plain data: the SDK's unknown-checking proxies unwrapped
    without reading through them (which would raise `UnknownValueError`), every unknown
    sentinel → `UNKNOWN`, secrets → their value."""
    t = type(value)
    if t is str:
        return UNKNOWN if value in _UNKNOWN_SENTINELS else value
    if t is dict:
        if value.get(SPECIAL_SIG_KEY) == SPECIAL_SECRET_SIG:
            return plain(value.get("value"))
        return {str(k): plain(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [plain(v) for v in value]
    if value is None or t is bool or t is int or t is float:
        return value
    if isinstance(value, Secret):
        return plain(value.value)
    if isinstance(value, Mapping | Sequence) and not isinstance(value, str | bytes):
        # The SDK's proxies hand out their raw target under "__target" (as the SDK's own
        # serialize_properties reads them); any other mapping or sequence is read as such.
        target = _proxy_target(value)
        if target is not None:
            return plain(target)
        if isinstance(value, Mapping):
            return {str(k): plain(value[k]) for k in value}
        return [plain(v) for v in value]
    return value


def _proxy_target(value: Any) -> Any:
    try:
        target = value["__target"]
    except (KeyError, IndexError, TypeError):
        return None
    return target if type(target) in (dict, list) else None


def _props(props: Mapping[str, Any]) -> dict[str, Any]:
    out = plain(props)
    return dict(out) if isinstance(out, dict) else {}


# --------------------------------------------------------------------------------------------
# The repository's stack files


class _CachedProject(Project):
    """The repository project with its stack files read once per content (a preview runs
    every policy on every resource; each builds a context from the stack files)."""

    def stack_config(self, stack: str) -> dict[str, str]:
        path = self.stack_file(stack)
        try:
            st = path.stat()
        except OSError:
            return super().stack_config(stack)  # raises the project's own error
        return dict(
            _stack_config(
                self.root,
                self.name,
                tuple(sorted(self.defaults.items())),
                stack,
                st.st_mtime_ns,
                st.st_size,
            )
        )


@functools.lru_cache(maxsize=64)
def _stack_config(
    root: Path,
    name: str,
    defaults: tuple[tuple[str, str], ...],
    stack: str,
    _mtime: int,
    _size: int,
) -> dict[str, str]:
    return Project(root=root, name=name, defaults=dict(defaults)).stack_config(stack)


def _project(root: Path) -> Project:
    path = root / "Pulumi.yaml"
    try:
        st = path.stat()
        signature = (st.st_mtime_ns, st.st_size)
    except OSError:
        signature = (0, 0)
    return _load_project(root, signature)


@functools.lru_cache(maxsize=8)
def _load_project(root: Path, _signature: tuple[int, int]) -> Project:
    p = load_project(root)
    return _CachedProject(root=p.root, name=p.name, defaults=p.defaults)


class _NoFacts(Exception):
    """The stack being previewed has no usable stack file in the repository."""


def _stack_state(root: Path, urn: str, resources: list[Resource]) -> tuple[StackState, Project]:
    """A StackState for the stack of `urn`, configured from the repository's stack file."""
    stack, project_name = urn_parts(urn)[:2]
    try:
        project = _project(root)
        if project.name != project_name:
            raise _NoFacts(
                f"the resources belong to project '{project_name}', but the "
                f"repository at {root} is project '{project.name}'"
            )
        config = project.stack_config(stack)
    except ProjectFileError as exc:
        raise _NoFacts(str(exc)) from None
    state = StackState(
        stack=stack,
        project=project_name,
        tier=config.get("envfence:tier"),
        experiment_id=config.get("envfence:experimentId"),
        config=config,
        resources=resources,
        source="preview",
    )
    return state, project


def _context(state: StackState, project: Project) -> Context:
    return build_context([state], project, extra_stacks=project.stacks())


# --------------------------------------------------------------------------------------------
# Reporting


def _report(rule: Rule, items: Iterable[Finding | FlowUse], report: ReportViolation) -> None:
    """Findings → violations (message and fix); a declared flow in use is not a violation."""
    unknown = get_rule(UNKNOWN_RULE_ID)
    seen: set[tuple[str, str]] = set()
    for item in items:
        if isinstance(item, FlowUse):
            continue
        if item.other == UNKNOWN_RULE_ID:
            message = f"{unknown.id} {unknown.name}: {item.message} (fix: {unknown.fix})"
        else:
            message = f"{item.message} (fix: {rule.fix})"
        if (item.urn, message) not in seen:
            seen.add((item.urn, message))
            report(message, item.urn)


def _fail_closed(rule: Rule, report: ReportViolation, urn: str, why: str) -> None:
    unknown = get_rule(UNKNOWN_RULE_ID)
    report(
        f"{unknown.id} {unknown.name}: [{rule.id}] cannot decide: {why}; "
        f"{rule.title.lower()} must be checked on known values, so this fails closed "
        f"(fix: {unknown.fix})",
        urn,
    )


def _guarded(rule: Rule, report: ReportViolation, urn: str, check: Callable[[], None]) -> None:
    try:
        check()
    except UnknownValueError as exc:  # a value read through an SDK proxy after all
        _fail_closed(rule, report, urn, f"{exc.message} (property .{'.'.join(exc.props)})")
    except _NoFacts as exc:
        _fail_closed(rule, report, urn, f"the environment's facts are unknown: {exc}")


# --------------------------------------------------------------------------------------------
# Resource policies (Analyze: one resource, its inputs)


def _provider_ref(urn: str | None) -> str | None:
    return f"{urn}::{_NO_ID}" if urn else None


def _resource_validation(rule: Rule, root: Path) -> Callable[..., None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type not in rule.types:
            return

        def check() -> None:
            state, project = _stack_state(root, args.urn, resources_of_args(args))
            _report(rule, run_rule(rule, state, _context(state, project)), report_violation)

        _guarded(rule, report_violation, args.urn, check)

    return validate


def resources_of_args(args: ResourceValidationArgs) -> list[Resource]:
    """The analyzed resource (its inputs, also as outputs) and, first, its provider."""
    props = _props(args.props)
    out: list[Resource] = []
    if args.provider is not None:
        prov = _props(args.provider.props)
        out.append(
            Resource(
                urn=args.provider.urn,
                type=args.provider.resource_type,
                custom=True,
                inputs=prov,
                outputs=dict(prov),
            )
        )
    out.append(
        Resource(
            urn=args.urn,
            type=args.resource_type,
            custom=True,
            parent=getattr(args.opts, "parent", None) or None,
            provider=_provider_ref(args.provider.urn if args.provider else None),
            inputs=props,
            outputs=dict(props),
            protect=bool(args.opts.protect),
            retain_on_delete=True,  # invisible to CrossGuard; see the module docstring
        )
    )
    return out


# --------------------------------------------------------------------------------------------
# Stack policies (AnalyzeStack: every resource, its outputs)


def _stack_validation(rule: Rule, root: Path) -> Callable[..., None]:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        if not args.resources:
            return
        urn = _root_urn(args.resources)

        def check() -> None:
            state, project = _stack_state(root, urn, resources_of_stack(args.resources))
            target = None if rule.scope == "cross" else state
            _report(rule, run_rule(rule, target, _context(state, project)), report_violation)

        _guarded(rule, report_violation, urn, check)

    return validate


def _root_urn(resources: list[PolicyResource]) -> str:
    # pulumi_policy is not followed by mypy (PolicyResource is Any): the engine's URNs are str.
    urn: str = next((r.urn for r in resources if r.resource_type == STACK_TYPE), resources[0].urn)
    return urn


def resources_of_stack(resources: list[PolicyResource]) -> list[Resource]:
    """AnalyzeStack's resources as envfence Resources, the root stack first (the engine sends
    them in no particular order; rules name a stack-wide finding after the first resource)."""
    out = [_stack_resource(r) for r in resources]
    out.sort(key=lambda r: r.type != STACK_TYPE)  # stable: the rest keep the engine's order
    return out


def _stack_resource(r: PolicyResource) -> Resource:
    outputs = _props(r.props)
    rid = outputs.get("id")
    parent = r.parent.urn if r.parent is not None else getattr(r.opts, "parent", None)
    return Resource(
        urn=r.urn,
        type=r.resource_type,
        # Policies are not told which resources are custom: every custom resource has a
        # provider reference (explicit or default), components and the root stack have none.
        custom=r.provider is not None or r.resource_type.startswith(PROVIDER_PREFIX),
        id=rid if isinstance(rid, str) and rid and rid != UNKNOWN else None,
        parent=parent or None,
        provider=_provider_ref(r.provider.urn if r.provider is not None else None),
        dependencies=[d.urn for d in r.dependencies],
        property_dependencies={k: [d.urn for d in v] for k, v in r.property_dependencies.items()},
        inputs=outputs,
        outputs=dict(outputs),
        protect=bool(r.opts.protect),
        retain_on_delete=True,  # invisible to CrossGuard; see the module docstring
    )


__all__ = [
    "PER_RESOURCE_RULES",
    "RESOURCE_RULES_NEEDING_STACK",
    "build_policies",
    "plain",
    "resources_of_args",
    "resources_of_stack",
    "runs_per_resource",
]
