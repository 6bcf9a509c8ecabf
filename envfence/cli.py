"""The envfence command line.

    envfence [-C DIR] plan  [--stack NAME ...] [--format table|json|mermaid] [--summary]
    envfence [-C DIR] check [--stack NAME ...] [--state FILE ...] [--format text,json,sarif]
                            [--output-file FILE ...] [--soft-fail] [--skip-check EF...]
                            [--baseline FILE] [--quiet] [--no-prove] [--expired warn|fail]
    envfence [-C DIR] prove [--stack NAME ...] [--state FILE ...] [--format text|json]
    envfence [-C DIR] stacks [--format table|json]
    envfence [-C DIR] experiment new <id> --owner O --expires YYYY-MM-DD | list | conclude <id>

Like the Pulumi CLI, envfence works on the project around the working directory (the nearest
`Pulumi.yaml` above it), or around `-C/--cwd DIR`; `--stack` takes `stack`, `org/stack` or
`org/project/stack`.

`check` runs every rule and then every proof; `prove` runs only the proofs. A proof is between
environments, so one stack alone proves nothing: with one `--stack`, the proofs pair it with every
other stack of the repository, both ways (the rules still run on it alone); with none, every stack
is proved against every other. A repository with a single stack, or a single `--state` stack
(real state is never mixed with offline evaluations), is bad input for the proofs (`check
--no-prove` runs the rules on it alone).

Exit codes: 0 clean (and proved), 1 violations found or a proof refuted or broken, 2 bad input
(unknown stack, config error, unreadable or malformed state or baseline file, nothing to prove a
stack against). Bad input prints one line naming the key or file; never a traceback. With a
machine format (json, sarif), the document is still written, holding the error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.table import Table

from envfence.model import StackState
from envfence.progress import MODES as PROGRESS_MODES
from envfence.progress import Progress
from envfence.summary import summarize

if TYPE_CHECKING:
    from envfence.baseline import Applied
    from envfence.project import Project
    from envfence.prove.run import ProofReport
    from envfence.rules.engine import Result

EXIT_OK, EXIT_VIOLATIONS, EXIT_BAD_INPUT = 0, 1, 2

CHECK_FORMATS = ("text", "json", "sarif")
MACHINE_FORMATS = ("json", "sarif")
EXTENSIONS = {"text": "txt", "json": "json", "sarif": "sarif"}

ONE_STACK_HELP = (
    "A proof is between environments: with one --stack, it is proved against every other "
    "stack of the repository, both ways; a single --state stack is refused (give every "
    "stack's state)."
)

EXIT_CODES = """exit codes:
  0  clean{proved}
  1  {one}
  2  bad input: unknown stack, config error, unreadable or malformed file (one line on
     standard error naming the key or file; machine formats still hold the error)"""


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def _epilog(examples: str, *, proved: bool = False, one: str = "") -> str:
    codes = EXIT_CODES.format(
        proved=" and proved" if proved else "",
        one=one or "violations found, or a proof refuted or not proved",
    )
    return f"{codes}\n\nexamples:\n{examples}"


def _version() -> str:
    from importlib import metadata

    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    deps = ", ".join(
        f"{d} {v(d)}" for d in ("pulumi", "pulumi-aws", "pulumi-docker", "pulumi-policy", "cvc5")
    )
    return f"envfence {v('envfence')} (python {sys.version.split()[0]}; {deps})"


def _split(values: Sequence[str] | None) -> list[str]:
    """Repeatable options that also take comma-separated lists (`--format json,sarif`)."""
    return [part.strip() for v in values or () for part in v.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    # -C/--cwd is accepted before and after the command, as Pulumi accepts it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-C",
        "--cwd",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="run as if started in DIR: the project is the nearest Pulumi.yaml at or above it; "
        "relative file arguments are relative to DIR",
    )
    p = argparse.ArgumentParser(
        prog="envfence",
        parents=[common],
        formatter_class=_Formatter,
        description="Declare isolated AWS environments with Pulumi and check they stay apart.\n"
        "Works on the project around the working directory (the nearest Pulumi.yaml above it), "
        "like the Pulumi CLI.",
        epilog="run `envfence COMMAND --help` for a command's options, exit codes and examples",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stack_option(cmd: argparse.ArgumentParser, extra: str = "") -> None:
        cmd.add_argument(
            "-s",
            "--stack",
            action="append",
            metavar="NAME",
            help="a stack with a Pulumi.NAME.yaml: NAME, org/NAME or org/project/NAME, as Pulumi "
            "takes it (repeatable; default: every stack)" + extra,
        )
        cmd.add_argument(
            "--no-cache",
            action="store_true",
            help="evaluate every stack, ignoring the cache of evaluated stacks "
            "(.envfence-cache/, kept per content of infra/, app/, db/, the project and stack "
            "files and the installed versions; also ENVFENCE_NO_CACHE=1)",
        )

    def state_option(cmd: argparse.ArgumentParser, verb: str) -> None:
        cmd.add_argument(
            "--state",
            action="append",
            metavar="FILE",
            help=f"{verb} real state instead of evaluating offline: `pulumi stack export`, "
            "`pulumi preview --json`, or `envfence plan --format json` output (one stack or a "
            "list of them; repeatable)",
        )

    def progress_option(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--progress",
            choices=PROGRESS_MODES,
            default="auto",
            help="progress on standard error: a spinner on a terminal for runs over a second "
            "(tty), one line per step (plain: the default when $CI is set), or none; "
            "default: auto",
        )

    plan = sub.add_parser(
        "plan",
        parents=[common],
        formatter_class=_Formatter,
        help="evaluate stacks offline and show what they declare",
        description="Evaluate each stack's Pulumi program offline (Pulumi's mock runtime: no "
        "CLI, no cloud account) and show what it declares.\n\n"
        "  table    every resource with its key settings (--summary: one line per stack)\n"
        "  json     the stacks as `pulumi stack export` documents (a list for several stacks),\n"
        "           resources in a stable order; `envfence check --state` reads it\n"
        "  mermaid  a flowchart of each environment's VPC, stores and roles and the flows\n"
        "           declared between environments (the README's diagram)",
        epilog=_epilog(
            "  envfence plan --summary\n"
            "  envfence plan --stack prod --format json > prod.plan.json\n"
            "  envfence plan --format json --output-file plan.json && envfence check --state "
            "plan.json\n"
            "  envfence plan --format mermaid",
            one="not used by plan",
        ),
    )
    stack_option(plan)
    plan.add_argument(
        "--format", choices=("table", "json", "mermaid"), default="table", help="default: table"
    )
    plan.add_argument(
        "--summary",
        action="store_true",
        help="table format: one summary line per stack instead of the full table",
    )
    plan.add_argument(
        "-o", "--output-file", metavar="FILE", help="write to FILE instead of standard output"
    )
    progress_option(plan)

    check = sub.add_parser(
        "check",
        parents=[common],
        formatter_class=_Formatter,
        help="run every isolation rule and proof across stacks",
        description="Run every rule (EF...), then every proof (EFP...). "
        + ONE_STACK_HELP
        + " With --no-prove one stack or one state file is enough.\n\n"
        "Formats: text (for people), json, sarif (GitHub code scanning). Several formats in "
        "one run need --output-file: one file per format in the same order ('-' is standard "
        "output), or one directory (envfence.txt, envfence.json, envfence.sarif in it).",
        epilog=_epilog(
            "  envfence check\n"
            "  envfence check --stack prod --quiet\n"
            "  envfence check --format text,sarif --output-file -,envfence.sarif\n"
            "  envfence check --state prod.preview.json --state experiment.preview.json\n"
            "  envfence check --baseline .envfence-baseline.yaml --skip-check EF504",
            proved=True,
        ),
    )
    stack_option(
        check,
        "; the proofs pair a single stack with every other stack of the repository",
    )
    state_option(check, "check")
    check.add_argument(
        "-f",
        "--format",
        action="append",
        metavar="FORMAT",
        help="text, json or sarif; repeatable or comma-separated for several (default: text)",
    )
    check.add_argument(
        "-o",
        "--output-file",
        action="append",
        metavar="FILE",
        help="where each format goes, in --format order ('-' for standard output: write "
        "--output-file=-,FILE), or one directory for all; repeatable or comma-separated "
        "(default: standard output)",
    )
    check.add_argument(
        "--soft-fail",
        action="store_true",
        help="exit 0 even when a rule or proof fails (bad input still exits 2): report only",
    )
    check.add_argument(
        "--skip-check",
        action="append",
        metavar="ID",
        help="do not report these rules: ids (EF203) or patterns (EF5*); repeatable or "
        "comma-separated; the skipped rules are named in every report. Proofs are not skipped "
        "one by one (use --no-prove)",
    )
    check.add_argument(
        "--baseline",
        metavar="FILE",
        help="accepted findings (rule, stack, resource, reason, optional expires): they are "
        "reported with their reason and do not fail the run",
    )
    check.add_argument(
        "--create-baseline",
        metavar="FILE",
        help="write the current findings to FILE as a baseline with empty reasons (fill them "
        "in: the file is refused until then), and exit 0",
    )
    check.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="text format: only what fails (violations, proofs not proved, the verdict)",
    )
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
    progress_option(check)

    prove = sub.add_parser(
        "prove",
        parents=[common],
        formatter_class=_Formatter,
        help="prove that no principal or packet of one environment reaches another",
        description="Prove, for every ordered pair of environments, that no principal or "
        "packet of one reaches the other's data; a refuted pair prints a concrete "
        "counterexample. " + ONE_STACK_HELP,
        epilog=_epilog(
            "  envfence prove\n"
            "  envfence prove --stack experiment-abtest\n"
            "  envfence prove --format json --state prod.json --state experiment.json",
            proved=True,
            one="a proof refuted, or not proved (something could not be read: named)",
        ),
    )
    stack_option(prove, "; a single stack is proved against every other stack of the repository")
    state_option(prove, "prove")
    prove.add_argument("--format", choices=("text", "json"), default="text", help="default: text")
    progress_option(prove)

    stacks = sub.add_parser(
        "stacks",
        parents=[common],
        formatter_class=_Formatter,
        help="every stack with its tier, account, region and CI roles (CI's job matrix)",
        description="List every stack of the repository (one per Pulumi.<stack>.yaml, "
        "experiment-<id> stacks included), validated as `pulumi up` validates it, with its "
        "tier, account and region from the registry and the roles CI assumes for it "
        "(envfence:access.previewRole, envfence:access.deployer). The workflows build their "
        "matrices from `--format json`.",
        epilog=_epilog(
            "  envfence stacks\n  envfence stacks --format json",
            one="not used by stacks",
        ),
    )
    stacks.add_argument(
        "--format", choices=("table", "json"), default="table", help="default: table"
    )

    exp = sub.add_parser(
        "experiment",
        parents=[common],
        formatter_class=_Formatter,
        epilog=_epilog(
            "  envfence experiment new abtest --owner team@example.com --expires 2027-01-31\n"
            "  envfence experiment list --fail-on-expired\n"
            "  envfence experiment conclude abtest --profile experiment-deployer",
            one="list --fail-on-expired: an experiment has expired; conclude: a step failed "
            "(re-run it)",
        ),
        help="create, list and conclude short-lived experiment stacks",
        description="An experiment's life, one command each: new writes its stack file, list "
        "shows every experiment and its expiry, conclude archives, destroys and checks that "
        "nothing is left.",
    )
    esub = exp.add_subparsers(dest="experiment_command", required=True, metavar="ACTION")
    new = esub.add_parser(
        "new",
        parents=[common],
        formatter_class=_Formatter,
        epilog=_epilog(
            "  envfence experiment new abtest --owner team@example.com --expires 2027-01-31\n"
            "  envfence experiment new uplift --owner ml@example.com --expires 2027-02-15 "
            "--promote-to prod",
            one="not used by new",
        ),
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
        parents=[common],
        formatter_class=_Formatter,
        epilog=_epilog(
            "  envfence experiment list\n  envfence experiment list --format json\n"
            "  envfence experiment list --fail-on-expired",
            one="--fail-on-expired and an experiment has expired",
        ),
        help="every experiment stack with owner, account, CIDR, expiry and state",
        description="List every experiment stack of the registry: active, expiring (7 days or "
        "fewer), expired, or no expiry. Exit 1 with --fail-on-expired when one has expired.",
    )
    lst.add_argument("--format", choices=("table", "json"), default="table", help="default: table")
    lst.add_argument(
        "--fail-on-expired",
        action="store_true",
        help="exit 1 and print the conclude command when an experiment has expired (the "
        "scheduled CI job)",
    )
    end = esub.add_parser(
        "conclude",
        parents=[common],
        formatter_class=_Formatter,
        epilog=_epilog(
            "  envfence experiment conclude abtest\n"
            "  envfence experiment conclude abtest --yes --profile experiment-deployer\n"
            "  envfence experiment conclude abtest --skip-destroy   # after pulumi destroy",
            one="a step failed, or residue remains (re-run after fixing it)",
        ),
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


def _repository() -> Project:
    """The project whose stacks `--stack` names: the nearest Pulumi.yaml at or above the working
    directory (after -C), as the Pulumi CLI finds it."""
    from envfence.project import ProjectFileError, load_project

    try:
        return load_project()
    except ProjectFileError as exc:
        raise UsageError(str(exc)) from None


def _stack_names(names: Sequence[str] | None, project: Project) -> list[str] | None:
    """`--stack` values as stack names: `stack`, `org/stack` or `org/project/stack` (Pulumi's
    forms; the organization is the backend's business, the project must be this one)."""
    if not names:
        return None
    out: list[str] = []
    for value in names:
        parts = value.split("/")
        if len(parts) > 3 or not all(parts):
            raise UsageError(f"--stack {value}: expected NAME, org/NAME or org/project/NAME")
        if len(parts) == 3 and parts[1] != project.name:
            raise UsageError(
                f"--stack {value}: project '{parts[1]}' is not this repository's project "
                f"'{project.name}' ({project.root / 'Pulumi.yaml'})"
            )
        out.append(parts[-1])
    return list(dict.fromkeys(out))


def _load_stacks(
    names: Sequence[str] | None,
    project: Project,
    progress: Progress | None = None,
    args: argparse.Namespace | None = None,
) -> list[StackState]:
    from envfence.evaluate import EvaluationError, evaluate_many

    progress = progress or Progress("none")
    wanted = list(names) if names else project.stacks()
    if not wanted:
        raise UsageError(f"no Pulumi.<stack>.yaml files in {project.root}")
    count = 0

    def done(name: str, cached: bool) -> None:
        nonlocal count
        count += 1
        how = "read from the cache" if cached else "evaluated"
        progress.note(f"{how}: stack {name} ({count}/{len(wanted)})")

    use_cache = not getattr(args, "no_cache", False)

    def meanwhile() -> None:
        # The checker's own modules (rules, proofs, cvc5) load while workers evaluate.
        import envfence.prove.run
        import envfence.rules  # noqa: F401

    try:
        with progress.step(f"evaluated {len(wanted)} stack(s)"):
            return evaluate_many(
                wanted, project, use_cache=use_cache, done=done, meanwhile=meanwhile
            )
    except EvaluationError as exc:
        raise UsageError(str(exc)) from None


def _write(dest: Path | None, text: str) -> None:
    if dest is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        raise UsageError(f"{dest}: cannot be written: {exc.strerror}") from None


def cmd_plan(args: argparse.Namespace, out: Console, progress: Progress) -> int:
    project = _repository()
    states = _load_stacks(_stack_names(args.stack, project), project, progress, args)
    progress.close()
    dest = Path(args.output_file) if args.output_file else None
    if args.format == "json":
        docs = [s.to_document() for s in states]
        # A list for several stacks (check --state reads both); keys sorted, resources in a
        # stable order (model.stable_order): plans diff cleanly and serve as golden files.
        _write(dest, json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, sort_keys=True))
        return EXIT_OK
    if args.format == "mermaid":
        from envfence.diagram import to_mermaid

        _write(dest, to_mermaid(states))
        return EXIT_OK
    with _console(dest, out) as console:
        for state in states:
            print_plan(state, console, full=not args.summary)
    return EXIT_OK


@contextmanager
def _console(dest: Path | None, out: Console) -> Iterator[Console]:
    """`out` for standard output, else a plain console writing to `dest`."""
    if dest is None:
        yield out
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle: TextIO = dest.open("w")
    except OSError as exc:
        raise UsageError(f"{dest}: cannot be written: {exc.strerror}") from None
    with handle:
        yield Console(file=handle, width=160, color_system=None, highlight=False, soft_wrap=True)


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


def _states(
    args: argparse.Namespace, progress: Progress
) -> tuple[list[StackState], dict[str, Path]]:
    """The stacks a command works on: evaluated offline (`--stack`), or read (`--state`, with
    the file each stack came from)."""
    from envfence.state import StateError, load_states

    if args.state and args.stack:
        raise UsageError("use either --stack (evaluate offline) or --state (real state), not both")
    if not args.state:
        project = _repository()
        return _load_stacks(_stack_names(args.stack, project), project, progress, args), {}
    states: list[StackState] = []
    files: dict[str, Path] = {}
    paths: list[str] = []
    for path in args.state:
        try:
            found = load_states(path)
        except StateError as exc:
            raise UsageError(str(exc)) from None
        for state in found:
            if state.stack in files:
                raise UsageError(
                    f"several states of stack {state.stack} ({files[state.stack]}, {path}); "
                    "give one each"
                )
            files[state.stack] = Path(path)
            states.append(state)
            paths.append(path)
    _registered(states, paths)
    return states, files


def _registered(states: list[StackState], paths: Sequence[str]) -> None:
    """A state of this repository's project must be of a registered stack: the registry, not the
    state, says what an environment is (its tier then comes from the registry)."""
    from envfence.project import ProjectFileError, find_root, load_project
    from envfence.registry import RegistryError

    try:
        root = find_root()
    except ProjectFileError:
        # No repository here: the states are read on their own terms, without the registry
        # and the stack files (what is missing fails closed, named in the report).
        print(
            f"envfence: note: no Pulumi.yaml at or above {Path.cwd()}: the states are checked "
            "without the project's registry and stack files; run inside the checkout or give "
            "-C DIR",
            file=sys.stderr,
        )
        return
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
    args: argparse.Namespace,
    checked: list[StackState],
    *,
    rules_too: bool,
    progress: Progress | None = None,
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
    project = _repository()
    selected = _stack_names(args.stack, project) or []
    if len(selected) >= 2:
        return _ProofInput(checked)
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
    states = checked + _load_stacks(others, project, progress, args)
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


@dataclasses.dataclass
class _Outcome:
    """What `check` found, after --skip-check and the baseline."""

    result: Result
    proof: ProofReport | None
    note: str
    skipped: list[str]
    applied: Applied | None
    failed: bool
    files: dict[str, Path]  # --state: the file each stack came from


def _outputs(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    """(format, destination) pairs; destination None is standard output."""
    formats = list(dict.fromkeys(_split(args.format))) or ["text"]
    for fmt in formats:
        if fmt not in CHECK_FORMATS:
            raise UsageError(f"--format {fmt}: allowed: {', '.join(CHECK_FORMATS)}")
    files = _split(args.output_file)
    if not files:
        if len(formats) > 1:
            raise UsageError(
                f"--format {','.join(formats)}: several formats need --output-file (one file "
                "per format in the same order, '-' for standard output, or one directory)"
            )
        return [(formats[0], None)]
    if len(files) == 1 and (Path(files[0]).is_dir() or files[0].endswith(("/", os.sep))):
        directory = Path(files[0])
        return [(f, directory / f"envfence.{EXTENSIONS[f]}") for f in formats]
    if len(files) != len(formats):
        raise UsageError(
            f"--output-file {','.join(files)}: {len(files)} file(s) for {len(formats)} "
            f"format(s) ({','.join(formats)}); give one per format, or one directory"
        )
    pairs = [
        (f, None if name == "-" else Path(name)) for f, name in zip(formats, files, strict=True)
    ]
    if sum(dest is None for _, dest in pairs) > 1:
        raise UsageError("--output-file: only one format can go to standard output ('-')")
    return pairs


def _skipped(patterns: Sequence[str], rule_ids: Sequence[str]) -> list[str]:
    """The rule ids `--skip-check` names: exact ids or `EF5*` patterns, each matching a rule."""
    import difflib
    import fnmatch

    skipped: list[str] = []
    for pattern in patterns:
        if pattern.upper().startswith("EFP"):
            raise UsageError(
                f"--skip-check {pattern}: proofs are not skipped one by one; `--no-prove` "
                "runs the rules without them"
            )
        matched = [r for r in rule_ids if fnmatch.fnmatchcase(r, pattern.upper())]
        if not matched:
            close = difflib.get_close_matches(pattern.upper(), rule_ids, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(
                f"--skip-check {pattern}: matches no rule{hint}; rules are EF101..EF"
                f'{max(rule_ids)[2:]} (envfence check --help, README "Rules")'
            )
        skipped += matched
    return sorted(set(skipped))


def _check(args: argparse.Namespace, progress: Progress) -> _Outcome:
    from envfence import baseline
    from envfence.rules import all_rules, run_all

    rule_ids = [r.id for r in all_rules()]
    skipped = _skipped(_split(args.skip_check), rule_ids)
    entries: list[baseline.Entry] = []
    if args.baseline:
        try:
            entries = baseline.load(args.baseline)
        except baseline.BaselineError as exc:
            raise UsageError(str(exc)) from None
    states, files = _states(args, progress)
    found: list[Any] = []

    def rules() -> None:
        with progress.step(f"checked {len(states)} stack(s) against {len(rule_ids)} rules"):
            found.append(run_all(states, enforce_advisories=args.expired == "fail"))

    proof = None
    note = ""
    if not args.no_prove and not args.create_baseline:
        from envfence.prove import run as proofs

        given = _proof_input(args, states, rules_too=True, progress=progress)
        with progress.step(f"proved isolation of {len(given.states)} environments"):
            # The rules run here while the proofs' workers run (else before the proofs).
            proof = _focused(proofs.prove(given.states, meanwhile=rules), given.focus)
        note = given.note
    if not found:
        rules()
    result = found[0]
    if skipped:
        result = dataclasses.replace(
            result,
            violations=[v for v in result.violations if v.rule not in skipped],
            warnings=[v for v in result.warnings if v.rule not in skipped],
        )
    applied = None
    if entries:
        applied = baseline.apply(result.violations, entries)
        result = dataclasses.replace(result, violations=applied.violations)
    failed = bool(result.violations) or (proof is not None and not proof.ok)
    return _Outcome(result, proof, note, skipped, applied, failed, files)


def _invocation(
    argv: Sequence[str], started: dt.datetime, code: int, error: str | None = None
) -> Any:
    from envfence.sarif import Invocation

    return Invocation(
        argv=["envfence", *argv],
        working_directory=Path.cwd(),
        start=started,
        end=dt.datetime.now(dt.UTC),
        exit_code=code,
        error=error,
    )


def _render(
    fmt: str,
    o: _Outcome,
    args: argparse.Namespace,
    out: Console,
    dest: Path | None,
    argv: Sequence[str],
    started: dt.datetime,
    code: int,
) -> None:
    from envfence import report
    from envfence.prove import run as proofs

    if fmt == "text":
        with _console(dest, out) as console:

            def proof_section() -> None:
                if o.proof is None:
                    return
                if not args.quiet:
                    console.print()
                if o.note and not args.quiet:
                    console.print(f"envfence prove: {o.note}")
                proofs.text(o.proof, console, quiet=args.quiet)

            report.text(
                o.result,
                console,
                before_verdict=proof_section,
                proofs=(o.proof.ok, proofs.summary(o.proof)) if o.proof is not None else None,
                quiet=args.quiet,
                skipped=o.skipped,
                applied=o.applied,
                soft_fail=args.soft_fail and o.failed,
            )
        return
    if fmt == "json":
        doc = report.to_json(o.result, skipped=o.skipped, applied=o.applied)
        if o.proof is not None:
            doc["proofs"] = proofs.to_json(o.proof)
        doc["exitCode"] = code
        _write(dest, json.dumps(doc, indent=2))
        return
    from envfence import sarif

    project_root = _project_root()
    doc = sarif.document(
        o.result,
        o.proof,
        invocation=_invocation(argv, started, code),
        project_root=project_root,
        state_files=o.files or None,
    )
    sarif.add_accepted(
        doc, o.applied.accepted if o.applied else [], project_root, state_files=o.files or None
    )
    _write(dest, json.dumps(doc, indent=2))


def _project_root() -> Path | None:
    from envfence.project import ProjectFileError, find_root

    try:
        return find_root()
    except ProjectFileError:
        return None


def cmd_check(
    args: argparse.Namespace,
    out: Console,
    progress: Progress,
    outputs: list[tuple[str, Path | None]],
    argv: Sequence[str],
    started: dt.datetime,
) -> int:
    o = _check(args, progress)
    progress.close()
    if args.create_baseline:
        from envfence import baseline

        _write(Path(args.create_baseline), baseline.render(o.result.violations))
        print(
            f"wrote {args.create_baseline}: {len(o.result.violations)} finding(s) with empty "
            "reasons; fill in each reason, then run envfence check --baseline "
            f"{args.create_baseline}",
            file=sys.stderr,
        )
        return EXIT_OK
    code = EXIT_VIOLATIONS if o.failed and not args.soft_fail else EXIT_OK
    for fmt, dest in outputs:
        _render(fmt, o, args, out, dest, argv, started, code)
    return code


def cmd_prove(args: argparse.Namespace, out: Console, progress: Progress) -> int:
    from envfence.prove import run as proofs

    states, _ = _states(args, progress)
    given = _proof_input(args, states, rules_too=False, progress=progress)
    with progress.step(f"proved isolation of {len(given.states)} environments"):
        proof = _focused(proofs.prove(given.states), given.focus)
    progress.close()
    if args.format == "json":
        _write(None, json.dumps(proofs.to_json(proof), indent=2))
    else:
        if given.note:
            out.print(f"envfence prove: {given.note}")
        proofs.text(proof, out)
    return EXIT_OK if proof.ok else EXIT_VIOLATIONS


def cmd_stacks(args: argparse.Namespace, out: Console) -> int:
    from envfence.ci import stack_matrix
    from envfence.project import ProjectFileError
    from envfence.registry import RegistryError
    from envfence.settings import ConfigError

    project = _repository()
    try:
        rows = stack_matrix(project)
    except (ConfigError, ProjectFileError, RegistryError) as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        _write(None, json.dumps(rows, indent=2))
        return EXIT_OK
    table = Table(title=f"stacks of {project.name} ({project.root})", title_justify="left")
    for column in ("stack", "tier", "account", "region", "baseline", "preview role", "deployer"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["stack"],
            r["tier"],
            r["account"],
            r["region"],
            "yes" if r["baseline"] else "",
            r["previewRole"] or "-",
            r["deployRole"],
        )
    out.print(table)
    return EXIT_OK


def cmd_experiment(args: argparse.Namespace) -> int:
    from envfence import experiments

    try:
        return experiments.main(args, _repository(), lambda line: print(line, flush=True))
    except experiments.ExperimentError as exc:
        raise UsageError(str(exc)) from None


def _error_documents(
    outputs: Sequence[tuple[str, Path | None]],
    message: str,
    argv: Sequence[str],
    started: dt.datetime,
) -> None:
    """Bad input with a machine format: the document is still written, holding the error, so
    CI uploads the error rather than an empty file."""
    from envfence import report

    for fmt, dest in outputs:
        if fmt not in MACHINE_FORMATS:
            continue
        if fmt == "json":
            doc = report.error_json(message, EXIT_BAD_INPUT)
        else:
            from envfence import sarif

            doc = sarif.document(
                None,
                None,
                invocation=_invocation(argv, started, EXIT_BAD_INPUT, message),
                project_root=_project_root(),
            )
        try:
            _write(dest, json.dumps(doc, indent=2))
        except UsageError as exc:  # the error line is already on standard error
            print(f"envfence: error: {exc}", file=sys.stderr)


def _joined(argv: list[str]) -> list[str]:
    """`--output-file -,envfence.sarif` as `--output-file=-,envfence.sarif`: argparse would read
    a value that starts with '-' as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("-o", "--output-file") and i + 1 < len(argv):
            value = argv[i + 1]
            if value.startswith("-") and value != "-" and "," in value:
                out.append(f"--output-file={value}")
                i += 2
                continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(_joined(argv))
    started = dt.datetime.now(dt.UTC)
    out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    progress = Progress(getattr(args, "progress", "none"))
    outputs: list[tuple[str, Path | None]] = []
    home = os.getcwd()
    try:
        cwd = getattr(args, "cwd", None)
        if cwd is not None:
            if not Path(cwd).is_dir():
                raise UsageError(f"--cwd {cwd}: no such directory")
            os.chdir(cwd)
        if args.command == "check":
            outputs = _outputs(args)
            return cmd_check(args, out, progress, outputs, argv, started)
        if args.command == "plan":
            return cmd_plan(args, out, progress)
        if args.command == "prove":
            if args.format == "json":
                outputs = [("json", None)]
            return cmd_prove(args, out, progress)
        if args.command == "stacks":
            return cmd_stacks(args, out)
        return cmd_experiment(args)
    except UsageError as exc:
        progress.close()
        print(f"envfence: error: {exc}", file=sys.stderr)
        _error_documents(outputs, str(exc), argv, started)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `envfence plan | head`: the reader left; not an error of ours
        sys.stderr.close()
        return EXIT_OK
    finally:
        progress.close()
        os.chdir(home)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
