"""The envfence command line.

    envfence plan  [--stack NAME ...] [--format table|json]
    envfence check [--stack NAME ...] [--state FILE ...] [--format text|json|sarif] [--no-prove]
    envfence prove [--stack NAME ...] [--state FILE ...] [--format text|json]

`check` runs every rule and then every proof; `prove` runs only the proofs.

Exit codes: 0 clean (and proved), 1 violations found or a proof refuted or broken, 2 bad input
(unknown stack, config error, unreadable or malformed state file). Bad input prints one line
naming the key or file; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from envfence.model import StackState
from envfence.summary import summarize

EXIT_OK, EXIT_VIOLATIONS, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="envfence",
        description="Declare isolated AWS environments with Pulumi and check they stay apart.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = sub.add_parser("plan", help="evaluate stacks offline and show what they declare")
    plan.add_argument(
        "--stack",
        action="append",
        metavar="NAME",
        help="a stack with a Pulumi.NAME.yaml (repeatable; default: all)",
    )
    plan.add_argument("--format", choices=("table", "json"), default="table")
    plan.add_argument(
        "--summary",
        action="store_true",
        help="print one summary per stack instead of the full table",
    )

    check = sub.add_parser("check", help="run every isolation rule across stacks")
    check.add_argument(
        "--stack",
        action="append",
        metavar="NAME",
        help="evaluate only these stacks (repeatable; default: all)",
    )
    check.add_argument(
        "--state",
        action="append",
        metavar="FILE",
        help="check real state instead: pulumi stack export, pulumi preview "
        "--json, or envfence plan --format json output (repeatable)",
    )
    check.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    check.add_argument(
        "--no-prove",
        action="store_true",
        help="run the rules only, not the isolation proofs",
    )

    prove = sub.add_parser(
        "prove", help="prove that no principal or packet of one environment reaches another"
    )
    prove.add_argument(
        "--stack",
        action="append",
        metavar="NAME",
        help="evaluate only these stacks (repeatable; default: all)",
    )
    prove.add_argument(
        "--state",
        action="append",
        metavar="FILE",
        help="prove real state instead: pulumi stack export, pulumi preview --json, or "
        "envfence plan --format json output (repeatable)",
    )
    prove.add_argument("--format", choices=("text", "json"), default="text")
    return p


def _load_stacks(names: Sequence[str] | None) -> list[StackState]:
    from envfence.evaluate import EvaluationError, evaluate_all

    try:
        return evaluate_all(stacks=list(names) if names else None)
    except EvaluationError as exc:
        raise UsageError(str(exc)) from None


def cmd_plan(args: argparse.Namespace, out: Console) -> int:
    states = _load_stacks(args.stack)
    if args.format == "json":
        docs = [s.to_document() for s in states]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, sort_keys=False))
        return EXIT_OK
    for state in states:
        print_plan(state, out, full=not args.summary)
    return EXIT_OK


def print_plan(state: StackState, out: Console, *, full: bool = True) -> None:
    title = f"stack {state.stack}: tier {state.tier}"
    if state.experiment_id:
        title += f", experiment {state.experiment_id}"
    expires = state.config.get("envfence:expiresOn")
    if expires:
        title += f", expires {expires}"
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("type")
    table.add_column("name")
    table.add_column("key settings")
    custom = state.custom()
    for r in custom:
        table.add_row(r.type, r.name, summarize(r))
    if full:
        out.print(table)
    counts = Counter(r.type.split(":")[1].split("/")[0] for r in custom)
    protected = sum(1 for r in custom if r.protect)
    out.print(
        f"{title}: {len(custom)} resources "
        f"({', '.join(f'{n} {svc}' for svc, n in sorted(counts.items()))}); "
        f"{protected} protected"
    )
    flows = state.outputs.get("declaredFlows") or []
    for flow in flows:
        out.print(f"  declared flow: {flow}")


def _states(args: argparse.Namespace) -> list[StackState]:
    """The stacks a command works on: evaluated offline (`--stack`), or read (`--state`)."""
    from envfence.state import StateError, load_file

    if args.state and args.stack:
        raise UsageError("use either --stack (evaluate offline) or --state (real state), not both")
    if not args.state:
        return _load_stacks(args.stack)
    try:
        states = [load_file(path) for path in args.state]
    except StateError as exc:
        raise UsageError(str(exc)) from None
    names = [s.stack for s in states]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"several state files for stack {', '.join(dupes)}; give one each")
    return states


def cmd_check(args: argparse.Namespace, out: Console) -> int:
    from envfence import report
    from envfence.rules import run_all

    states = _states(args)
    result = run_all(states)
    if args.no_prove:
        report.render(result, args.format, out)
        return EXIT_VIOLATIONS if result.violations else EXIT_OK
    from envfence.prove import run as proofs

    proof = proofs.prove(states)
    if args.format == "json":
        doc = report.to_json(result)
        doc["proofs"] = proofs.to_json(proof)
        print(json.dumps(doc, indent=2))
    elif args.format == "sarif":
        doc = report.to_sarif(result)
        proofs.add_to_sarif(doc, proof)
        print(json.dumps(doc, indent=2))
    else:

        def proof_section() -> None:
            out.print()
            proofs.text(proof, out)

        report.text(
            result,
            out,
            before_verdict=proof_section,
            proofs=(proof.ok, proofs.summary(proof)),
        )
    return EXIT_VIOLATIONS if result.violations or not proof.ok else EXIT_OK


def cmd_prove(args: argparse.Namespace, out: Console) -> int:
    from envfence.prove import run as proofs

    proof = proofs.prove(_states(args))
    if args.format == "json":
        print(json.dumps(proofs.to_json(proof), indent=2))
    else:
        proofs.text(proof, out)
    return EXIT_OK if proof.ok else EXIT_VIOLATIONS


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    try:
        if args.command == "plan":
            return cmd_plan(args, out)
        if args.command == "prove":
            return cmd_prove(args, out)
        return cmd_check(args, out)
    except UsageError as exc:
        print(f"envfence: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `envfence plan | head`: the reader left; not an error of ours
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
