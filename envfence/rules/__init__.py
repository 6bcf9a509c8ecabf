"""Isolation rules: one function per rule, each with a stable id (EF1xx network, EF2xx data,
EF3xx identity, EF4xx keys, EF5xx tagging and lifecycle, EF9xx coverage).

`run_all(states)` checks stacks together — cross-stack rules are the point — and returns a
`Result` with violations and the declared flows in use. The CrossGuard pack in `policy/` runs
the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from envfence.model import StackState
from envfence.project import Project, ProjectFileError, load_project
from envfence.rules.context import Context, build_context
from envfence.rules.engine import Result, Rule, Violation, all_rules, run


def repository_project(project: Project | None = None) -> Project | None:
    """`project`, else the repository's own (its stack files name the other environments),
    else None when there is none (state files checked outside a checkout)."""
    if project is not None:
        return project
    try:
        return load_project()
    except ProjectFileError:
        return None


def run_all(
    states: Iterable[StackState],
    project: Project | None = None,
    *,
    enforce_advisories: bool = False,
) -> Result:
    """Every rule over `states`. Advisory rules (EF504) warn unless `enforce_advisories`. The
    repository's other stacks are known from their stack files (as in the CrossGuard pack), so
    a stack checked alone is still judged against its account's trail owner and quotas."""
    repo = repository_project(project)
    extra: list[str] = []
    if repo is not None:
        try:
            extra = repo.stacks()
        except ProjectFileError:
            extra = []
    ctx = build_context(list(states), repo, extra_stacks=extra)
    ctx.enforce_advisories = enforce_advisories
    return run(ctx)


__all__ = [
    "Context",
    "Result",
    "Rule",
    "Violation",
    "all_rules",
    "build_context",
    "repository_project",
    "run_all",
]
