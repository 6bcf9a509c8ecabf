"""The envfence command line.

    envfence plan  [--stack NAME ...] [--format table|json]
    envfence check [--stack NAME ...] [--state FILE ...] [--format text|json|sarif] [--no-prove]
    envfence prove [--stack NAME ...] [--state FILE ...] [--format text|json]
    envfence experiment new <id> --owner O --expires YYYY-MM-DD | list | conclude <id>

`check` runs every rule and then every proof; `prove` runs only the proofs.

A proof is between environments, so one stack alone proves nothing: with one `--stack`, the
proofs pair it with every other stack of the repository, both ways (the rules still run on it
alone); with none, every stack is proved against every other. A repository with a single stack,
or a single `--state` file (real state is never mixed with offline evaluations), is bad input
for the proofs (`check --no-prove` runs the rules on it alone).

Exit codes: 0 clean (and proved), 1 violations found or a proof refuted or broken, 2 bad input
(unknown stack, config error, unreadable or malformed state file, nothing to prove a stack
against). Bad input prints one line naming the key or file; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from envfence.model import StackState
from envfence.summary import summarize

if TYPE_CHECKING:
    from envfence.project import Project
    from envfence.prove.run import ProofReport

EXIT_OK, EXIT_VIOLATIONS, EXIT_BAD_INPUT = 0, 1, 2

ONE_STACK_HELP = (
    "A proof is between environments: with one --stack, it is proved against every other "
    "stack of the repository, both ways; a single --state file is refused (give every "
    "stack's state)."
)


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

    check = sub.add_parser(
        "check",
        help="run every isolation rule across stacks",
        description="Run every rule, then every proof. " + ONE_STACK_HELP + " With --no-prove "
        "one stack or one state file is enough.",
    )
    check.add_argument(
        "--stack",
        action="append",
        metavar="NAME",
        help="evaluate only these stacks (repeatable; default: all); the proofs pair a single "
        "stack with every other stack of the repository",
    )
    check.add_argument(
        "--state",
        action="append",
        metavar="FILE",
        help="check real state instead: pulumi stack export, pulumi preview "
        "--json, or envfence plan --format json output (repeatable; the proofs need two or "
        "more)",
    )
    check.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    check.add_argument(
        "--no-prove",
        action="store_true",
        help="run the rules only, not the isolation proofs",
    )
    check.add_argument(
        "--expired",
        choices=("warn", "fail"),
        default="warn",
        help="an experiment past its expiresOn (EF504): a warning (default, pull requests) or "
        "a failure (the scheduled job)",
    )

    prove = sub.add_parser(
        "prove",
        help="prove that no principal or packet of one environment reaches another",
        description="Prove, for every ordered pair of environments, that no principal or "
        "packet of one reaches the other's data. " + ONE_STACK_HELP,
    )
    prove.add_argument(
        "--stack",
        action="append",
        metavar="NAME",
        help="evaluate only these stacks (repeatable; default: all); a single stack is proved "
        "against every other stack of the repository, both ways",
    )
    prove.add_argument(
        "--state",
        action="append",
        metavar="FILE",
        help="prove real state instead: pulumi stack export, pulumi preview --json, or "
        "envfence plan --format json output (repeatable; two or more)",
    )
    prove.add_argument("--format", choices=("text", "json"), default="text")

    exp = sub.add_parser(
        "experiment",
        help="create, list and conclude short-lived experiment stacks",
        description="An experiment's life, one command each: new writes its stack file, list "
        "shows every experiment and its expiry, conclude archives, destroys and checks that "
        "nothing is left.",
    )
    esub = exp.add_subparsers(dest="experiment_command", required=True, metavar="ACTION")
    new = esub.add_parser(
        "new",
        help="write Pulumi.experiment-<id>.yaml from the template",
        description="Write Pulumi.experiment-<id>.yaml from infra/experiment-template.yaml with "
        "a CIDR no other stack uses and no flows, validate it as `pulumi up` would, and print "
        "the next commands. Example: envfence experiment new abtest --owner team@example.com "
        "--expires 2027-01-31",
    )
    new.add_argument("id", help="2-16 of a-z, 0-9 and '-'; the stack is experiment-<id>")
    new.add_argument("--owner", required=True, help="team or e-mail (the owner tag)")
    new.add_argument("--expires", required=True, metavar="YYYY-MM-DD", help="a future date")
    new.add_argument("--account", help="one of the registry's experiment accounts")
    new.add_argument("--region", help="default: the account baseline stack's region")
    new.add_argument(
        "--promote-to",
        metavar="STACK",
        help="declare that STACK's pipeline may read this experiment's results (add the "
        "printed line to STACK's file too: a flow holds only when both declare it)",
    )
    lst = esub.add_parser(
        "list",
        help="every experiment stack with owner, account, CIDR, expiry and state",
        description="List every experiment stack of the registry: active, expiring (7 days or "
        "fewer), expired, or no expiry. Exit 1 with --fail-on-expired when one has expired.",
    )
    lst.add_argument("--format", choices=("table", "json"), default="table")
    lst.add_argument(
        "--fail-on-expired",
        action="store_true",
        help="exit 1 and print the conclude command when an experiment has expired (the "
        "scheduled CI job)",
    )
    end = esub.add_parser(
        "conclude",
        help="archive, destroy, check for residue and remove an experiment stack",
        description="End an experiment: (1) refuse unless it is a registered experiment and "
        "not its account's baseline; (2) archive its final DB snapshot and its results store "
        "to the account's archive; (3) pulumi destroy (Automation API; without the CLI the "
        "command is printed and conclude stops); (4) check that nothing tagged with its id "
        "remains; (5) remove its stack file. Each step is idempotent: re-run after a failure.",
    )
    end.add_argument("id", help="the experiment id (or its stack name experiment-<id>)")
    end.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    end.add_argument(
        "--skip-destroy",
        action="store_true",
        help="the stack is already destroyed (e.g. by `pulumi destroy` run by hand)",
    )
    end.add_argument("--profile", help="AWS profile of the experiment account's deployer")
    end.add_argument(
        "--wait-delay",
        type=float,
        default=30.0,
        help="seconds between polls while the final snapshot is created (default 30)",
    )
    return p


def _load_stacks(names: Sequence[str] | None, project: Project | None = None) -> list[StackState]:
    from envfence.evaluate import EvaluationError, evaluate_all

    try:
        return evaluate_all(project, stacks=list(dict.fromkeys(names)) if names else None)
    except EvaluationError as exc:
        raise UsageError(str(exc)) from None


def _repository() -> Project:
    """The project whose stacks `--stack` names (the repository envfence runs in)."""
    from envfence.project import ProjectFileError, load_project

    try:
        return load_project()
    except ProjectFileError as exc:
        raise UsageError(str(exc)) from None


def cmd_plan(args: argparse.Namespace, out: Console) -> int:
    states = _load_stacks(args.stack, _repository())
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
        return _load_stacks(args.stack, _repository())
    try:
        states = [load_file(path) for path in args.state]
    except StateError as exc:
        raise UsageError(str(exc)) from None
    names = [s.stack for s in states]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"several state files for stack {', '.join(dupes)}; give one each")
    _registered(states, args.state)
    return states


def _registered(states: list[StackState], paths: Sequence[str]) -> None:
    """A state of this repository's project must be of a registered stack: the registry, not the
    state, says what an environment is (its tier then comes from the registry)."""
    from envfence.project import ProjectFileError, find_root, load_project
    from envfence.registry import RegistryError

    try:
        root = find_root()
    except ProjectFileError:
        return  # no repository here: states of another project are read on their own terms
    try:
        project = load_project(root)
    except ProjectFileError as exc:
        raise UsageError(str(exc)) from None
    for state, path in zip(states, paths, strict=True):
        if state.project != project.name:
            continue
        try:
            project.registry.entry(state.stack)
        except RegistryError as exc:
            raise UsageError(f"{path}: {exc}") from None


@dataclasses.dataclass
class _ProofInput:
    """What the proofs run on: `states`, and `focus`, the stacks whose pairs are reported
    (None: every pair), with a line saying so."""

    states: list[StackState]
    focus: set[str] | None = None
    note: str = ""


def _proof_input(
    args: argparse.Namespace, checked: list[StackState], *, rules_too: bool
) -> _ProofInput:
    """The states the proofs need, given the ones the command checks. One stack is no proof: a
    single `--stack` is paired with every other stack of the repository (evaluated here); a
    single `--state` file, or a repository of one stack, is bad input."""
    alone = "; `check --no-prove` runs the rules on it alone" if rules_too else ""
    if args.state:
        if len(checked) < 2:
            raise UsageError(
                f"{args.state[0]}: one state proves nothing: isolation is proved between "
                "environments; give the state of every other stack too (--state FILE, "
                f"repeatable){alone}"
            )
        return _ProofInput(checked)
    selected = list(dict.fromkeys(args.stack or []))
    if len(selected) >= 2:
        return _ProofInput(checked)
    project = _repository()
    everything = project.stacks()
    if not selected:
        if len(everything) < 2:
            raise UsageError(
                f"the repository has {len(everything)} stack(s) ({', '.join(everything)}): "
                f"nothing to prove isolated from anything else{alone}"
            )
        return _ProofInput(checked)
    [stack] = selected
    others = [name for name in everything if name != stack]
    if not others:
        raise UsageError(
            f"stack '{stack}' is the only stack of the repository: there is no other "
            f"environment to prove it isolated from{alone}"
        )
    states = checked + _load_stacks(others, project)
    note = (
        f"stack {stack} is proved against every other stack of the repository, both ways: "
        + ", ".join(others)
    )
    return _ProofInput(states, {stack}, note)


def _focused(report: ProofReport, focus: set[str] | None) -> ProofReport:
    """Only the pairs that involve a stack of `focus` (controls stay: every stack left is in
    a pair, and its control decides that pair)."""
    if focus is None:
        return report

    def wanted(source: str, target: str) -> bool:
        return source == target or source in focus or target in focus

    iam = dataclasses.replace(
        report.iam, pairs=[p for p in report.iam.pairs if wanted(p.source, p.target)]
    )
    network = [n for n in report.network if wanted(n.source, n.target)]
    return dataclasses.replace(report, iam=iam, network=network)


def cmd_check(args: argparse.Namespace, out: Console) -> int:
    from envfence import report
    from envfence.rules import run_all

    states = _states(args)
    result = run_all(states, enforce_advisories=args.expired == "fail")
    if args.no_prove:
        report.render(result, args.format, out)
        return EXIT_VIOLATIONS if result.violations else EXIT_OK
    from envfence.prove import run as proofs

    given = _proof_input(args, states, rules_too=True)
    proof = _focused(proofs.prove(given.states), given.focus)
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
            if given.note:
                out.print(f"envfence prove: {given.note}")
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

    given = _proof_input(args, _states(args), rules_too=False)
    proof = _focused(proofs.prove(given.states), given.focus)
    if args.format == "json":
        print(json.dumps(proofs.to_json(proof), indent=2))
    else:
        if given.note:
            out.print(f"envfence prove: {given.note}")
        proofs.text(proof, out)
    return EXIT_OK if proof.ok else EXIT_VIOLATIONS


def cmd_experiment(args: argparse.Namespace) -> int:
    from envfence import experiments

    try:
        return experiments.main(args, _repository(), lambda line: print(line, flush=True))
    except experiments.ExperimentError as exc:
        raise UsageError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    try:
        if args.command == "plan":
            return cmd_plan(args, out)
        if args.command == "prove":
            return cmd_prove(args, out)
        if args.command == "experiment":
            return cmd_experiment(args)
        return cmd_check(args, out)
    except UsageError as exc:
        print(f"envfence: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `envfence plan | head`: the reader left; not an error of ours
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
