"""`envfence experiment new | list | conclude`: an experiment's whole life, one command each.

    new <id> --owner O --expires YYYY-MM-DD [--account A] [--region R] [--promote-to STACK]
    list [--format table|json] [--fail-on-expired]
    conclude <id> [--yes] [--skip-destroy] [--profile P] [--endpoint-url URL]

`new` writes `Pulumi.experiment-<id>.yaml` from `infra/experiment-template.yaml` with a CIDR no
other stack file uses, no flows (unless `--promote-to`), validates it exactly as `pulumi up`
would (and removes it again if that fails), and prints the next commands.

`list` shows every experiment stack of the registry with its owner, account, CIDR, expiry and
state: `active`, `expiring` (7 days or fewer left), `expired`, `no expiry` (the shared,
long-lived experiment). With `--fail-on-expired` (the scheduled CI job) it exits 1 when one has
expired and prints the command that concludes it.

`conclude` ends an experiment, every step idempotent and safe to re-run after a failure:

1. refuse unless the stack is a registered experiment, and not its account's baseline (which
   owns the account's trail and the archive that outlives every experiment);
2. archive what must outlive it, in the experiment account only: the database's final
   snapshot (tagged with the experiment id, re-encrypted under the archive's key) and the
   `results` store's objects, copied to the baseline's archive bucket, which expires them after
   `archive.expireAfterDays` (Pulumi.yaml); production is never written;
3. `pulumi destroy` of the stack through the Automation API when the Pulumi CLI is installed;
   otherwise print the exact command and stop (re-run `conclude` after it);
4. a residue check through the Resource Groups Tagging API and the services' own list calls:
   nothing tagged with the experiment id may remain but the archive;
5. remove the stack file (commit the removal: CI stops deploying it).

Bad input (an unknown or invalid id, a past date, a taken id, a stack that is not an
experiment) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import shutil
import string
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envfence import naming
from envfence.project import Project, ProjectFileError
from envfence.registry import Entry, RegistryError
from envfence.settings import (
    EXPERIMENT_ID_RE,
    ConfigError,
    Settings,
    id_clash,
    read_peers,
    settings_for,
)

TEMPLATE = "infra/experiment-template.yaml"
EXPIRING_DAYS = 7
# Free CIDRs are /16s of 10.0.0.0/8, searched from 10.30.0.0/16 upwards (then from 10.0).
CIDR_START = 30
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class ExperimentError(Exception):
    """Bad input for an experiment command: one line, exit code 2."""


def stack_of(ident: str) -> str:
    """`abtest` → `experiment-abtest`; a full stack name is taken as it is."""
    return ident if ident.startswith("experiment-") else f"experiment-{ident}"


def _validate_id(ident: str) -> str:
    if not EXPERIMENT_ID_RE.match(ident):
        raise ExperimentError(
            f"experiment id {ident!r} is not allowed: 2-16 of lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (it becomes part of the stack name, DNS "
            "names, bucket and role names)"
        )
    stack = stack_of(ident)
    if not naming.STACK_NAME_RE.match(stack):
        raise ExperimentError(f"stack name {stack!r} would not be a valid stack name")
    return stack


def _entry(project: Project, stack: str) -> Entry:
    try:
        entry = project.registry.entry(stack)
    except (RegistryError, ProjectFileError) as exc:
        raise ExperimentError(str(exc)) from None
    if entry.tier != naming.TIER_EXPERIMENT:
        raise ExperimentError(
            f"stack '{stack}' is registered as {entry.tier} (Pulumi.yaml, entry '{entry.name}'), "
            "not as an experiment"
        )
    return entry


def _used_cidrs(project: Project) -> dict[str, ipaddress.IPv4Network]:
    used: dict[str, ipaddress.IPv4Network] = {}
    for name in project.stacks():
        try:
            raw = project.stack_config(name).get("envfence:network", "{}")
            cidr = json.loads(raw).get("cidr")
            used[name] = ipaddress.IPv4Network(str(cidr), strict=False)
        except (ProjectFileError, ValueError, AttributeError, json.JSONDecodeError):
            continue
    return used


def free_cidr(project: Project) -> ipaddress.IPv4Network:
    used = list(_used_cidrs(project).values())
    for second in [*range(CIDR_START, 256), *range(0, CIDR_START)]:
        candidate = ipaddress.IPv4Network(f"10.{second}.0.0/16")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise ExperimentError("no free /16 left in 10.0.0.0/8: conclude an experiment first")


def _taken(project: Project, ident: str, stack: str) -> str | None:
    if project.stack_file(stack).exists():
        return f"{project.stack_file(stack).name} exists"
    for name in project.stacks():
        try:
            if project.stack_config(name).get("envfence:experimentId") == ident:
                return f"stack '{name}' already uses experiment id {ident!r}"
        except ProjectFileError:
            continue
    return None


def new(
    project: Project,
    ident: str,
    *,
    owner: str,
    expires: str,
    account: str | None = None,
    region: str | None = None,
    promote_to: str | None = None,
    today: dt.date | None = None,
) -> tuple[Path, Settings]:
    """Write and validate `Pulumi.experiment-<id>.yaml`. Raises ExperimentError."""
    today = today or dt.date.today()
    stack = _validate_id(ident)
    entry = _entry(project, stack)
    if not entry.is_pattern:
        raise ExperimentError(
            f"stack '{stack}' is a named entry of the registry; `experiment new` creates "
            "short-lived stacks of a pattern entry such as 'experiment-*'"
        )
    head = entry.name[:-2]
    if project.stack_file(head).exists():
        peer = read_peers(project, stack).get(head)
        clash = id_clash(head, ident, {head: peer} if peer else {})
        if clash:
            raise ExperimentError(f"experiment id {ident!r} is not allowed: use {clash}")
    taken = _taken(project, ident, stack)
    if taken:
        raise ExperimentError(f"experiment id {ident!r} is taken: {taken}")
    try:
        expires_on = dt.date.fromisoformat(expires)
    except ValueError:
        raise ExperimentError(f"--expires {expires!r} is not a date YYYY-MM-DD") from None
    if expires_on <= today:
        raise ExperimentError(
            f"--expires {expires} is not in the future (today is {today.isoformat()})"
        )
    if account is None:
        if len(entry.accounts) != 1:
            raise ExperimentError(
                f"the registry entry '{entry.name}' allows accounts {', '.join(entry.accounts)}: "
                "choose one with --account"
            )
        account = entry.accounts[0]
    elif account not in entry.accounts:
        raise ExperimentError(
            f"--account {account} is not one of {', '.join(entry.accounts)}, the accounts the "
            f"registry (Pulumi.yaml, entry '{entry.name}') allows for experiments"
        )
    baseline = project.registry.baseline(account)
    if region is None:
        region = project.stack_config(baseline).get("aws:region") or "eu-west-1"
    flows: list[dict[str, str]] = []
    if promote_to is not None:
        if promote_to not in project.stacks():
            raise ExperimentError(f"--promote-to {promote_to!r}: no stack file for that stack")
        flows.append(
            {"from": promote_to, "to": stack, "role": "pipeline", "store": "results"}
            | {"access": "read"}
        )
    text = string.Template((project.root / TEMPLATE).read_text()).substitute(
        id=ident,
        created=today.isoformat(),
        owner=json.dumps(owner),
        owner_text=owner,
        expires=expires_on.isoformat(),
        entry=entry.name,
        region=region,
        account=account,
        cidr=str(free_cidr(project)),
        flows=json.dumps(flows),
    )
    path = project.stack_file(stack)
    path.write_text(text)
    try:
        settings = settings_for(project, stack, project.stack_config(stack))
    except (ConfigError, ProjectFileError) as exc:
        path.unlink()
        raise ExperimentError(str(exc)) from None
    return path, settings


# --------------------------------------------------------------------------------------------
# list


@dataclass(frozen=True)
class Row:
    stack: str
    id: str | None
    owner: str | None
    account: str | None
    cidr: str | None
    expires: str | None
    days_left: int | None
    state: str
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "id": self.id,
            "owner": self.owner,
            "account": self.account,
            "cidr": self.cidr,
            "expires": self.expires,
            "daysLeft": self.days_left,
            "state": self.state,
            "problem": self.problem,
        }


def rows(project: Project, today: dt.date | None = None) -> list[Row]:
    today = today or dt.date.today()
    out = []
    for stack in project.stacks():
        try:
            entry = project.registry.entry(stack)
        except RegistryError as exc:
            out.append(Row(stack, None, None, None, None, None, None, "invalid", str(exc)))
            continue
        if entry.tier != naming.TIER_EXPERIMENT:
            continue
        try:
            s = settings_for(project, stack, project.stack_config(stack))
        except (ConfigError, ProjectFileError) as exc:
            out.append(Row(stack, None, None, None, None, None, None, "invalid", str(exc)))
            continue
        days = (s.expires_on - today).days if s.expires_on else None
        if days is None:
            state = "no expiry"
        elif days < 0:
            state = "expired"
        elif days <= EXPIRING_DAYS:
            state = "expiring"
        else:
            state = "active"
        out.append(
            Row(
                stack,
                s.experiment_id,
                s.owner,
                s.account,
                str(s.network.cidr),
                s.expires_on.isoformat() if s.expires_on else None,
                days,
                state,
            )
        )
    return out


def conclude_command(row: Row) -> str:
    return f"envfence experiment conclude {row.id or row.stack}"


# --------------------------------------------------------------------------------------------
# conclude


Printer = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What `conclude` works on, resolved from the registry and the stack file."""

    stack: str
    settings: Settings
    archive_bucket: str
    archive_key: str  # alias ARN of the archive's own key (in the baseline stack)


def plan_conclusion(project: Project, ident: str) -> Plan:
    """Step 1: refuse unless the stack is a registered experiment that is not a baseline."""
    if project.stack_file(ident).exists():
        stack = ident  # a stack name: experiment-<id> (or a stack that `_entry` refuses)
    else:
        stack = _validate_id(
            ident[len("experiment-") :] if ident.startswith("experiment-") else ident
        )
    entry = _entry(project, stack)
    if not project.stack_file(stack).exists():
        raise ExperimentError(
            f"no {project.stack_file(stack).name}: nothing to conclude (a conclusion that got "
            "that far is complete; `envfence experiment list` shows the live ones)"
        )
    try:
        s = settings_for(project, stack, project.stack_config(stack))
    except (ConfigError, ProjectFileError) as exc:
        raise ExperimentError(str(exc)) from None
    baseline = project.registry.baseline(s.account)
    if baseline == stack or entry.account_baseline:
        raise ExperimentError(
            f"stack '{stack}' is the baseline of account {s.account}: it owns the account's "
            "CloudTrail trail and the archive of concluded experiments, so it is not concluded "
            "like an experiment (retire it deliberately, after every experiment of the account)"
        )
    return Plan(
        stack=stack,
        settings=s,
        archive_bucket=naming.archive_bucket_name(s.project, baseline, s.account),
        archive_key=(
            f"arn:aws:kms:{s.region}:{s.account}:{naming.archive_key_alias(s.project, baseline)}"
        ),
    )


def destroy(project: Project, stack: str, say: Printer) -> bool:
    """Step 3: `pulumi destroy` through the Automation API when the CLI is here; otherwise the
    exact command is printed and the procedure stops (False)."""
    command = f"pulumi destroy --stack {stack} --yes --cwd {project.root}"
    if shutil.which("pulumi") is None:
        say(
            "  destroy: the Pulumi CLI is not installed here; run this, then re-run conclude:\n"
            f"    {command}"
        )
        return False
    # The Automation API drives the installed CLI on this project directory: the same program,
    # backend (PULUMI_BACKEND_URL / `pulumi login`) and stack file as `pulumi destroy`.
    # https://www.pulumi.com/docs/iac/using-pulumi/automation-api/
    from pulumi import automation as auto

    try:
        target = auto.select_stack(stack_name=stack, work_dir=str(project.root))
        result = target.destroy(on_output=lambda line: say(f"    {line}"))
    except auto.StackNotFoundError:
        say(f"  destroy: already done (no stack {stack} in the backend)")
        return True
    except auto.CommandError as exc:  # not logged in, a failed delete, a protected resource
        say(f"  destroy: failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")
        say(f"stopped: fix the cause and re-run conclude (or run: {command})")
        return False
    say(f"  destroy: done ({result.summary.result})")
    return True


def main(args: argparse.Namespace, project: Project, out: Printer) -> int:
    if args.experiment_command == "new":
        path, s = new(
            project,
            args.id,
            owner=args.owner,
            expires=args.expires,
            account=args.account,
            region=args.region,
            promote_to=args.promote_to,
        )
        out(
            f"wrote {path.name}: experiment {s.experiment_id}, account {s.account}, "
            f"CIDR {s.network.cidr}, expires {s.expires_on}"
        )
        if s.flows:
            for f in s.flows:
                out(
                    f"  declared flow {f.describe()}: add the same line to Pulumi.{f.source}.yaml "
                    f"(envfence:flows): {json.dumps({'from': f.source, 'to': f.target, 'role': f.role, 'store': f.store, 'access': f.access})}"  # noqa: E501
                )
        out("next:")
        out("  make check                         # the new stack is checked and proved")
        out(f"  git add {path.name} && git commit   # review it like any change")
        out(f"  pulumi stack init {s.stack}")
        out(f"  pulumi up --stack {s.stack}")
        return EXIT_OK
    if args.experiment_command == "list":
        found = rows(project)
        if args.format == "json":
            print(json.dumps([r.to_dict() for r in found], indent=2))
        else:
            _table(found, out)
        expired = [r for r in found if r.state == "expired"]
        if args.fail_on_expired and expired:
            for r in expired:
                out(
                    f"expired: {r.stack} expired on {r.expires} ({-(r.days_left or 0)} day(s) "
                    f"ago); conclude it: {conclude_command(r)}"
                )
            return EXIT_FAILED
        return EXIT_OK
    return conclude(project, args, out)


def _table(found: Sequence[Row], out: Printer) -> None:
    header = ("id", "stack", "owner", "account", "cidr", "expires", "days left", "state")
    lines = [
        (
            r.id or "-",
            r.stack,
            r.owner or "-",
            r.account or "-",
            r.cidr or "-",
            r.expires or "-",
            "-" if r.days_left is None else str(r.days_left),
            r.state if r.problem is None else f"invalid: {r.problem}",
        )
        for r in found
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *lines, strict=False)]
    for line in [header, *lines]:
        out("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _archive_key(session: Any, alias_arn: str) -> tuple[str | None, str]:
    """The archive key's ARN from its alias (RDS records the key ARN on the snapshot)."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    try:
        meta = session.client("kms").describe_key(KeyId=alias_arn)["KeyMetadata"]
    except (ClientError, BotoCoreError) as exc:
        return None, (
            f"the archive key {alias_arn} cannot be read ({exc}); deploy the account's "
            "baseline stack first"
        )
    return str(meta["Arn"]), ""


def conclude(project: Project, args: argparse.Namespace, out: Printer) -> int:
    import boto3  # type: ignore[import-untyped]

    from envfence import lifecycle

    plan = plan_conclusion(project, args.id)
    s = plan.settings
    out(f"concluding {plan.stack} (experiment {s.experiment_id}, account {s.account})")
    if not args.yes and sys.stdin.isatty():
        answer = input(f"archive, destroy and remove {plan.stack}? type its name to go on: ")
        if answer.strip() != plan.stack:
            out("stopped: nothing done")
            return EXIT_FAILED
    session = boto3.Session(profile_name=args.profile, region_name=s.region)
    account = session.client("sts").get_caller_identity()["Account"]
    if account != s.account:
        raise ExperimentError(
            f"the credentials are of account {account}, not {s.account} (experiment "
            f"{s.experiment_id}): use the experiment account's deployer (--profile)"
        )
    key_arn, problem = _archive_key(session, plan.archive_key)
    if key_arn is None:
        out(f"  archive-snapshot: failed: {problem}")
        out("stopped: archiving failed; nothing was destroyed. Fix the cause and re-run.")
        return EXIT_FAILED
    target = lifecycle.Target.for_experiment(
        s.project,
        s.experiment_id or "",
        s.account,
        s.region,
        archive_bucket=plan.archive_bucket,
        archive_key_arn=key_arn,
    )
    steps = [
        lifecycle.archive_snapshot(
            session.client("rds"),
            target,
            expire_after_days=s.archive_expire_days,
            wait_delay=args.wait_delay,
        ),
        lifecycle.archive_results(
            session.client("s3"), target, expire_after_days=s.archive_expire_days
        ),
    ]
    for step in steps:
        out(f"  {step.step}: {step.status}: {step.detail}")
    if not all(step.ok for step in steps):
        out("stopped: archiving failed; nothing was destroyed. Fix the cause and re-run.")
        return EXIT_FAILED
    if args.skip_destroy:
        out("  destroy: skipped (--skip-destroy: the stack was destroyed another way)")
    elif not destroy(project, plan.stack, out):
        return EXIT_FAILED
    left = lifecycle.residue(session, target, keep_arns=[target.snapshot_arn])
    check = lifecycle.residue_result(left, target)
    out(f"  {check.step}: {check.status}: {check.detail}")
    if not check.ok:
        out("stopped: the stack file stays until nothing remains; re-run conclude after fixing")
        return EXIT_FAILED
    step = lifecycle.remove_stack_file(project.stack_file(plan.stack))
    out(f"  {step.step}: {step.status}: {step.detail}")
    if not step.ok:
        return EXIT_FAILED
    out(f"concluded {plan.stack}: commit the removal of {project.stack_file(plan.stack).name}")
    return EXIT_OK
