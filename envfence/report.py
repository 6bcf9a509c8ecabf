"""Reports: readable text grouped by environment pair, JSON, and SARIF 2.1.0."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from rich.console import Console

from envfence.rules.engine import Result, Violation

SARIF_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}


def render(result: Result, fmt: str, out: Console) -> None:
    if fmt == "json":
        print(json.dumps(to_json(result), indent=2))
    elif fmt == "sarif":
        print(json.dumps(to_sarif(result), indent=2))
    else:
        text(result, out)


Section = Callable[[], None]


def pair_of(v: Violation) -> tuple[str, str]:
    return (v.stack, v.other or v.stack)


def text(
    result: Result,
    out: Console,
    *,
    before_verdict: Section | None = None,
    proofs: tuple[bool, str] | None = None,
) -> None:
    """The rules report; `before_verdict` prints more sections (the proofs) before the final
    line, and `proofs` (ok, summary) joins the proofs' outcome to that line."""
    out.print(
        f"envfence check: {len(result.stacks)} stack(s): {', '.join(result.stacks)}; "
        f"{len(result.rules)} rules"
    )
    for stack in result.stacks:
        out.print(f"  {stack}: {result.checked.get(stack, 0)} resources checked")
    groups: dict[tuple[str, str], list[Violation]] = defaultdict(list)
    for v in result.violations:
        groups[pair_of(v)].append(v)
    pairs = sorted({(a, b) for a in result.stacks for b in result.stacks} | set(groups))
    for a, b in pairs:
        vs = groups.get((a, b), [])
        label = f"{a}" if a == b else f"{a} -> {b}"
        status = "[green]clean[/green]" if not vs else f"[red]{len(vs)} violation(s)[/red]"
        out.print(f"\n[bold]{label}[/bold]: {status}")
        for v in vs:
            out.print(
                f"  [red]{v.rule}[/red] {v.severity:8} {v.urn.rsplit('::', 1)[-1]}: {v.message}"
            )
            out.print(f"         fix: {v.fix}")
    if result.warnings:
        out.print(f"\n[bold]warnings[/bold] ({len(result.warnings)}, not failing this run)")
        for v in result.warnings:
            out.print(f"  [yellow]{v.rule}[/yellow] {v.stack}: {v.message}")
            out.print(f"         fix: {v.fix}")
    if result.flows:
        out.print("\n[bold]declared flows in use[/bold]")
        for f in sorted({(f.flow, f.detail) for f in result.flows}):
            out.print(f"  {f[0]}: {f[1]}")
    if before_verdict is not None:
        before_verdict()
    total = len(result.violations)
    passed = not total and (proofs is None or proofs[0])
    line = f"\n{'PASS' if passed else 'FAIL'}: {total} violation(s), "
    if result.warnings:
        line += f"{len(result.warnings)} warning(s), "
    line += f"{len({f.flow for f in result.flows})} declared flow(s) in use"
    if proofs is not None:
        line += f"; {proofs[1]}"
    out.print(line)


def to_json(result: Result) -> dict[str, Any]:
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
    rules = [
        {
            "id": r.id,
            "name": r.name,
            "shortDescription": {"text": r.title},
            "help": {"text": r.fix},
            "defaultConfiguration": {"level": SARIF_LEVEL[r.severity]},
            "properties": {"severity": r.severity},
        }
        for r in result.rules
    ]
    index = {r.id: i for i, r in enumerate(result.rules)}
    results = []
    warnings = {id(v) for v in result.warnings}
    for v in [*result.violations, *result.warnings]:
        results.append(
            {
                "ruleId": v.rule,
                "ruleIndex": index.get(v.rule, 0),
                "level": "warning" if id(v) in warnings else SARIF_LEVEL[v.severity],
                "message": {"text": f"{v.message} (fix: {v.fix})"},
                "locations": [
                    {
                        "physicalLocation": {"artifactLocation": {"uri": f"Pulumi.{v.stack}.yaml"}},
                        "logicalLocations": [{"fullyQualifiedName": v.urn, "kind": "resource"}],
                    }
                ],
                "properties": {"stack": v.stack, "otherStack": v.other},
            }
        )
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "envfence",
                        "informationUri": "https://github.com/envfence/envfence",
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }
