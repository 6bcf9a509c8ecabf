"""The rule registry and runner.

A rule is a plain function plus metadata: a stable id (`EF101`), a kebab-case name (the
CrossGuard policy name), a title, a severity, the resource types it applies to (from the provider
classes), and a fix hint. Three scopes:

- `resource`: called once per resource of its types, with the stack and the context;
- `stack`: called once per stack;
- `cross`: called once with every stack (the point: a prod bucket policy naming an experiment
  role is invisible to any per-stack scanner).

A rule yields `Finding`s (violations) and `FlowUse`s (a cross-environment grant that a declared
flow allows: listed in the report, not a violation). A rule that cannot decide because a value it
needs is unknown (preview) or a secret it cannot read (an export without `--show-secrets`) fails
closed: the runner turns `Unknown` into an EF902 violation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from envfence.model import StackState, unreadable, why_unreadable
from envfence.rules.context import Context, Unknown

SEVERITIES = ("critical", "high", "medium", "low")


@dataclass(frozen=True)
class Finding:
    urn: str
    message: str
    other: str | None = None  # the other environment, for cross-environment findings


@dataclass(frozen=True)
class FlowUse:
    flow: str
    stack: str
    urn: str
    detail: str


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    title: str
    severity: str
    scope: str  # resource | stack | cross
    fix: str
    fn: Callable[..., Iterable[Finding | FlowUse]]
    types: frozenset[str] = frozenset()
    # An advisory rule's findings are warnings (reported, exit code unchanged; CrossGuard
    # ADVISORY) unless the run enforces advisories (`envfence check --expired fail`).
    advisory: bool = False

    def description(self) -> str:
        return f"{self.id}: {self.title}"


@dataclass(frozen=True)
class Violation:
    rule: str
    name: str
    severity: str
    stack: str
    urn: str
    message: str
    fix: str
    other: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "name": self.name,
            "severity": self.severity,
            "stack": self.stack,
            "urn": self.urn,
            "message": self.message,
            "fix": self.fix,
            "otherStack": self.other,
        }


@dataclass
class Result:
    stacks: list[str]
    violations: list[Violation] = field(default_factory=list)
    flows: list[FlowUse] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # stack -> resources checked
    rules: list[Rule] = field(default_factory=list)
    warnings: list[Violation] = field(default_factory=list)  # advisory rules' findings


RULES: list[Rule] = []


def rule(
    id: str,
    name: str,
    *,
    title: str,
    severity: str,
    scope: str,
    fix: str,
    types: Iterable[str] = (),
    advisory: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a rule function. Ids and names are unique; a duplicate is a programming error."""
    assert severity in SEVERITIES, severity
    assert scope in ("resource", "stack", "cross"), scope

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if any(r.id == id or r.name == name for r in RULES):
            raise ValueError(f"duplicate rule {id} {name}")
        RULES.append(
            Rule(
                id=id,
                name=name,
                title=title,
                severity=severity,
                scope=scope,
                fix=fix,
                fn=fn,
                types=frozenset(types),
                advisory=advisory,
            )
        )
        return fn

    return register


def all_rules() -> list[Rule]:
    # Importing the families registers their rules (declarations only, no work).
    from envfence.rules import (  # noqa: F401
        audit,
        compute,
        coverage,
        data,
        flags,
        identity,
        keys,
        network,
        quotas,
        tagging,
    )

    return sorted(RULES, key=lambda r: r.id)


def get_rule(rule_id: str) -> Rule:
    for r in all_rules():
        if r.id == rule_id:
            return r
    raise KeyError(rule_id)


UNKNOWN_RULE_ID = "EF902"


def undecided(urn: str, rule_id: str, what: str, value: Any = None) -> Finding:
    """A finding for a value a rule needs but cannot know yet (or cannot read: a secret, when
    `value` is one): reported as EF902."""
    why = "secret" if unreadable(value) == "secret" else "unknown"
    return Finding(
        urn,
        f"[{rule_id}] cannot decide: {why_unreadable(what, why)}; this fails closed",
        other=UNKNOWN_RULE_ID,
    )


def run_rule(r: Rule, state: StackState | None, ctx: Context) -> Iterator[Finding | FlowUse]:
    """Run one rule over one stack (or all stacks for cross rules); Unknown → EF902 finding."""
    targets: Iterable[Any]
    if r.scope == "resource":
        assert state is not None
        targets = [res for res in state.resources if res.type in r.types]
    else:
        targets = [None]
    for target in targets:
        try:
            if r.scope == "resource":
                yield from r.fn(target, state, ctx)
            elif r.scope == "stack":
                yield from r.fn(state, ctx)
            else:
                yield from r.fn(ctx)
        except Unknown as exc:
            yield Finding(
                exc.resource.urn,
                f"[{r.id}] cannot decide: {exc}; {r.title.lower()} "
                "must be checked on known values, so this fails closed",
                other=UNKNOWN_RULE_ID,
            )


def _violation(r: Rule, stack: str, f: Finding) -> Violation:
    if f.other == UNKNOWN_RULE_ID:
        unknown = get_rule(UNKNOWN_RULE_ID)
        return Violation(
            rule=unknown.id,
            name=unknown.name,
            severity=unknown.severity,
            stack=stack,
            urn=f.urn,
            message=f.message,
            fix=unknown.fix,
        )
    return Violation(
        rule=r.id,
        name=r.name,
        severity=r.severity,
        stack=stack,
        urn=f.urn,
        message=f.message,
        fix=r.fix,
        other=f.other,
    )


def run(ctx: Context, rules: list[Rule] | None = None) -> Result:
    rules = rules if rules is not None else all_rules()
    result = Result(stacks=sorted(ctx.states), rules=rules)
    for stack, state in sorted(ctx.states.items()):
        result.checked[stack] = len(state.custom())
        for r in rules:
            if r.scope == "cross":
                continue
            for item in run_rule(r, state, ctx):
                _collect(result, r, stack, item, ctx)
    for r in rules:
        if r.scope == "cross":
            for item in run_rule(r, None, ctx):
                stack = item.stack if isinstance(item, FlowUse) else _stack_of(item.urn)
                _collect(result, r, stack, item, ctx)
    result.violations.sort(key=lambda v: (v.stack, v.rule, v.urn))
    result.warnings.sort(key=lambda v: (v.stack, v.rule, v.urn))
    return result


def _collect(result: Result, r: Rule, stack: str, item: Finding | FlowUse, ctx: Context) -> None:
    if isinstance(item, FlowUse):
        if item not in result.flows:
            result.flows.append(item)
    else:
        v = _violation(r, stack, item)
        # An undecidable value (EF902) is never a mere warning.
        warn = r.advisory and not ctx.enforce_advisories and v.rule == r.id
        into = result.warnings if warn else result.violations
        if v not in into:
            into.append(v)


def _stack_of(urn: str) -> str:
    return urn.split("::")[0][len("urn:pulumi:") :] if urn.startswith("urn:pulumi:") else "?"
