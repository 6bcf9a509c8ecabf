"""Reports: readable text grouped by environment pair, JSON, and SARIF 2.1.0 (`envfence.sarif`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console

from envfence.rules.engine import Result, Violation

if TYPE_CHECKING:
    from envfence.baseline import Applied


Section = Callable[[], None]

DETAILED_UP_TO = 4  # stacks; beyond, clean pairs are counted rather than listed


def pair_of(v: Violation) -> tuple[str, str]:
    return (v.stack, v.other or v.stack)


def text(
    result: Result,
    out: Console,
    *,
    before_verdict: Section | None = None,
    proofs: tuple[bool, str] | None = None,
    quiet: bool = False,
    skipped: Sequence[str] = (),
    applied: Applied | None = None,
    soft_fail: bool = False,
) -> None:
    """The rules report; `before_verdict` prints more sections (the proofs) before the final
    line, and `proofs` (ok, summary) joins the proofs' outcome to that line. `quiet`: only what
    fails. `skipped` (--skip-check) and `applied` (the baseline) are always reported."""
    if not quiet:
        out.print(
            f"envfence check: {len(result.stacks)} stack(s): {', '.join(result.stacks)}; "
            f"{len(result.rules)} rules"
        )
        if len(result.stacks) > DETAILED_UP_TO:
            total = sum(result.checked.get(stack, 0) for stack in result.stacks)
            out.print(f"  {total} resources checked")
        else:
            for stack in result.stacks:
                out.print(f"  {stack}: {result.checked.get(stack, 0)} resources checked")
    groups: dict[tuple[str, str], list[Violation]] = defaultdict(list)
    for v in result.violations:
        groups[pair_of(v)].append(v)
    pairs = sorted({(a, b) for a in result.stacks for b in result.stacks} | set(groups))
    # Beyond a few stacks, clean pairs are counted, not listed (the JSON lists every finding).
    many = len(result.stacks) > DETAILED_UP_TO
    if many and not quiet:
        clean = sum(1 for pair in pairs if not groups.get(pair))
        out.print(f"\n[bold]{clean}/{len(pairs)} stacks and pairs[/bold]: [green]clean[/green]")
    for a, b in pairs:
        vs = groups.get((a, b), [])
        if (quiet or many) and not vs:
            continue
        label = f"{a}" if a == b else f"{a} -> {b}"
        status = "[green]clean[/green]" if not vs else f"[red]{len(vs)} violation(s)[/red]"
        out.print(f"\n[bold]{label}[/bold]: {status}")
        for v in vs:
            out.print(
                f"  [red]{v.rule}[/red] {v.severity:8} {v.urn.rsplit('::', 1)[-1]}: {v.message}"
            )
            out.print(f"         fix: {v.fix}")
    if result.warnings and not quiet:
        out.print(f"\n[bold]warnings[/bold] ({len(result.warnings)}, not failing this run)")
        for v in result.warnings:
            out.print(f"  [yellow]{v.rule}[/yellow] {v.stack}: {v.message}")
            out.print(f"         fix: {v.fix}")
    if applied is not None:
        if applied.accepted:
            out.print(f"\n[bold]accepted by the baseline[/bold] ({len(applied.accepted)})")
            for acc in applied.accepted:
                v = acc.violation
                out.print(f"  {v.rule} {v.stack} {v.urn.rsplit('::', 1)[-1]}: {acc.entry.reason}")
        for e in applied.expired:
            out.print(
                f"  [red]baseline entry {e.describe()} expired on {e.expires}[/red]: its "
                "finding fails again"
            )
        for e in applied.stale:
            out.print(
                f"  [yellow]baseline entry {e.describe()} matches no finding[/yellow]: remove it"
            )
    if skipped:
        out.print(f"\n[bold]skipped checks[/bold] (--skip-check): {', '.join(skipped)}")
    if result.flows and not quiet:
        out.print("\n[bold]declared flows in use[/bold]")
        for f in sorted({(f.flow, f.detail) for f in result.flows}):
            out.print(f"  {f[0]}: {f[1]}")
    if before_verdict is not None:
        before_verdict()
    total = len(result.violations)
    passed = not total and (proofs is None or proofs[0])
    line = f"{'' if quiet else chr(10)}{'PASS' if passed else 'FAIL'}: {total} violation(s), "
    if result.warnings:
        line += f"{len(result.warnings)} warning(s), "
    if applied is not None and applied.accepted:
        line += f"{len(applied.accepted)} accepted by the baseline, "
    line += f"{len({f.flow for f in result.flows})} declared flow(s) in use"
    if proofs is not None:
        line += f"; {proofs[1]}"
    if skipped:
        line += f"; {len(skipped)} check(s) skipped"
    if soft_fail:
        line += " (--soft-fail: exit code 0)"
    out.print(line)


def to_json(
    result: Result, *, skipped: Sequence[str] = (), applied: Applied | None = None
) -> dict[str, Any]:
    doc = _json(result)
    doc["skipped"] = list(skipped)
    doc["accepted"] = [
        {**a.violation.to_dict(), "reason": a.entry.reason, "baselineEntry": a.entry.index}
        for a in (applied.accepted if applied else [])
    ]
    doc["baseline"] = {
        "stale": [_entry(e) for e in (applied.stale if applied else [])],
        "expired": [_entry(e) for e in (applied.expired if applied else [])],
    }
    doc["error"] = None
    return doc


def _entry(e: Any) -> dict[str, Any]:
    return {
        "index": e.index,
        "rule": e.rule,
        "stack": e.stack,
        "resource": e.resource,
        "reason": e.reason,
        "expires": e.expires.isoformat() if e.expires else None,
    }


def error_json(message: str, exit_code: int = 2) -> dict[str, Any]:
    """The JSON report of a run stopped by bad input: the same keys as a report, nothing found,
    and `error` set (a consumer reading only `violations` must not read an empty success)."""
    return {
        "error": {"message": message, "exitCode": exit_code},
        "exitCode": exit_code,
        "stacks": [],
        "rules": [],
        "violations": [],
        "warnings": [],
        "flows": [],
        "skipped": [],
        "accepted": [],
        "baseline": {"stale": [], "expired": []},
        "summary": {"violations": 0, "warnings": 0, "checked": {}},
    }


def _json(result: Result) -> dict[str, Any]:
    return {
        "stacks": result.stacks,
        "rules": [
            {"id": r.id, "name": r.name, "title": r.title, "severity": r.severity}
            for r in result.rules
        ],
        "violations": [v.to_dict() for v in result.violations],
        "warnings": [v.to_dict() for v in result.warnings],
        "flows": [
            {"flow": f.flow, "stack": f.stack, "urn": f.urn, "detail": f.detail}
            for f in result.flows
        ],
        "summary": {
            "violations": len(result.violations),
            "warnings": len(result.warnings),
            "checked": result.checked,
        },
    }


def to_sarif(result: Result) -> dict[str, Any]:
    """The rules' SARIF log, without proofs, for this process (`envfence.sarif.document`, which
    the CLI calls itself with the run's invocation, proofs and state files)."""
    import sys
    from datetime import UTC, datetime
    from pathlib import Path

    from envfence import sarif
    from envfence.project import ProjectFileError, find_root

    try:
        root: Path | None = find_root()
    except ProjectFileError:
        root = None
    now = datetime.now(UTC)
    code = 1 if result.violations else 0
    invocation = sarif.Invocation(sys.argv[1:], Path.cwd(), now, now, code)
    return sarif.document(result, None, invocation=invocation, project_root=root)
