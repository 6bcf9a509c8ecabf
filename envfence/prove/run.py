"""Run every proof over a set of stacks and report it: a matrix of environment pairs.

`prove(states)` reads the states once (`envfence.prove.world`), runs the IAM proof
(`envfence.prove.iam_proof`) and the network proof (`envfence.prove.network`), and returns a
`ProofReport`: for every ordered pair of environments, per layer, proved / refuted / broken,
the time it took and the counterexamples. `ok` is true only when every pair is proved and
every control found the access it must find.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from envfence.model import StackState
from envfence.project import Project
from envfence.prove import controls as real_controls
from envfence.prove import network as network_proof
from envfence.prove.iam_proof import (
    BROKEN,
    PROVED,
    REFUTED,
    Control,
    EncodingJob,
    IamProof,
    PairProof,
    Prover,
    finalize,
)
from envfence.prove.iam_proof import finish as finish_iam
from envfence.prove.network import NetworkResult
from envfence.prove.world import World, build_world
from envfence.rules import repository_project
from envfence.rules.context import build_context

STYLE = {PROVED: "green", REFUTED: "red", BROKEN: "yellow"}
DETAILED_UP_TO = 4  # stacks; beyond, the text report summarizes what holds (see `text`)


@dataclass
class ProofReport:
    stacks: list[str]
    iam: IamProof
    network: list[NetworkResult]
    seconds: float
    # Controls that are real requests (`envfence.prove.controls`): the worker's contract, the
    # jobs, AWS services, the deployer.
    real: list[real_controls.Result] = field(default_factory=list)

    def network_pairs(self) -> list[NetworkResult]:
        return [n for n in self.network if n.source != n.target]

    def network_controls(self) -> list[NetworkResult]:
        return [n for n in self.network if n.source == n.target]

    @property
    def ok(self) -> bool:
        return (
            all(p.status == PROVED for p in self.iam.pairs)
            and all(c.found for c in self.iam.controls)
            and all(n.status == PROVED for n in self.network_pairs())
            and all(n.status != BROKEN for n in self.network_controls())
            and all(r.ok for r in self.real)
        )

    def failures(self) -> list[str]:
        out = []
        for p in self.iam.pairs:
            if p.status != PROVED:
                out.append(f"iam {p.source} -> {p.target}: {p.status}")
        for c in self.iam.controls:
            if not c.found:
                out.append(f"iam control {c.what}: {c.detail}")
        for r in self.real:
            if not r.ok:
                out.append(f"{r.group} control {r.what}: {r.detail}")
        for n in self.network:
            if n.source != n.target and n.status != PROVED:
                out.append(f"network {n.source} -> {n.target}: {n.status}")
            if n.source == n.target and n.status == BROKEN:
                out.append(f"network control {n.source}: {n.detail}")
        return out


@dataclass
class _Part:
    """What the proofs find for one stack: its real-request controls, its IAM controls (job,
    flow, encoding), its IAM pairs as a source, its network control and pairs."""

    real: list[real_controls.Result]
    errors: list[str]  # met asking the edges of the stack's roles (`Prover.own_edges`)
    jobs: list[Control]
    flows: list[Control]
    encoding: list[Control]
    pairs: list[PairProof]
    network: tuple[NetworkResult, dict[str, NetworkResult]]


@dataclass
class _Setup:
    """Everything the parts read, built once before them (and inherited by forked workers)."""

    by_name: dict[str, StackState]
    world: World
    prover: Prover
    topology: Any
    root: Path
    production: dict[str, bool]
    deployers: dict[str, str | None]
    owners: dict[str, bool]

    def part(self, stack: str) -> _Part:
        real = real_controls.checks(
            {stack: self.by_name[stack]},
            self.world,
            self.root,
            self.production,
            self.deployers,
            owns_trail=self.owners,
        )
        jobs = self.prover.job_controls([stack])
        flows = self.prover.flow_controls([stack])
        encoding = self.prover.encoding_controls(encoding_jobs(real, self.world))
        errors = self.prover.own_edges(stack)
        pairs = self.prover.environment(stack, finish=False)  # finalized with every stack's
        network = network_proof.environment(self.topology, self.by_name, stack)
        return _Part(real, errors, jobs, flows, encoding, pairs, network)


_SETUP: _Setup | None = None  # for forked workers: set before the fork, read in the child


def _parts_in_child(stacks: list[str]) -> dict[str, _Part]:
    assert _SETUP is not None
    return {stack: _SETUP.part(stack) for stack in stacks}


def _parts(
    setup: _Setup, stacks: list[str], jobs: int, meanwhile: Callable[[], None] | None = None
) -> dict[str, _Part]:
    """Every stack's part: in forked workers when it pays (several stacks, several CPUs, a
    process with no other thread to be caught mid-lock by the fork, Linux), else here. The
    parts depend only on the setup, so where they run changes nothing in what they find."""
    import threading

    workers = min(jobs, len(stacks))
    if workers <= 1 or threading.active_count() > 1 or sys.platform != "linux":
        if meanwhile is not None:
            meanwhile()
        return {stack: setup.part(stack) for stack in stacks}
    import concurrent.futures
    import multiprocessing

    global _SETUP
    _SETUP = setup
    try:
        chunks = [stacks[i::workers] for i in range(workers)]
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = pool.map(_parts_in_child, chunks)  # submitted; the workers start
            if meanwhile is not None:
                meanwhile()  # the caller's own work (the rules) while they run
            found: dict[str, _Part] = {}
            for result in results:
                found.update(result)
        return found
    finally:
        _SETUP = None


def prove(
    states: Iterable[StackState],
    project: Project | None = None,
    *,
    jobs: int | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> ProofReport:
    """Every proof over `states`: per stack, its controls and its proof against everything
    outside it (in `jobs` processes; default: `envfence.evaluate.jobs()`). `meanwhile()` is
    the caller's work, run while the workers run (or before the parts, in one process)."""
    from envfence.evaluate import jobs as default_jobs

    states = list(states)
    project = repository_project(project)
    started = time.perf_counter()
    ctx = build_context(states, project)
    by_name = {s.stack: s for s in states}
    world = build_world(by_name, {name: env.flows for name, env in ctx.envs.items()})
    project_name = states[0].project if states else "envfence"
    # Outside a checkout there is no worker contract: its controls fail closed, naming it.
    root = project.root if project is not None else Path.cwd()
    prover = Prover(world, project_name)
    prover.setup(edges=False)  # each stack's part asks its own roles' edges
    setup = _Setup(
        by_name=by_name,
        world=world,
        prover=prover,
        topology=network_proof.topology(by_name),
        root=root,
        production={name: env.tier == "production" for name, env in ctx.envs.items()},
        deployers={name: env.deployer for name, env in ctx.envs.items()},
        owners=real_controls.trail_owners(by_name, root),
    )
    names = list(by_name)
    parts = _parts(setup, names, default_jobs() if jobs is None else jobs, meanwhile)
    real = [r for name in names for r in parts[name].real]
    found = [c for name in names for c in parts[name].jobs]
    found += [c for name in names for c in parts[name].flows]
    found += [c for name in names for c in parts[name].encoding]
    errors = {name: parts[name].errors for name in names}
    pairs = [p for name in names for p in parts[name].pairs]
    for p in pairs:
        finalize(p, errors)
    iam_proof = finish_iam(world, pairs, found, time.perf_counter() - started)
    network = network_proof.finish(names, {name: parts[name].network for name in names})
    failed: dict[str, list[real_controls.Result]] = {}
    for r in real:
        if not r.ok:
            failed.setdefault(r.stack, []).append(r)
    for p in iam_proof.pairs:
        broken = failed.get(p.source, []) + failed.get(p.target, [])
        if broken:
            p.status = BROKEN
            p.details += [f"{r.group} control failed: {r.what} ({r.detail})" for r in broken]
    return ProofReport(names, iam_proof, network, time.perf_counter() - started, real)


def encoding_jobs(results: Iterable[real_controls.Result], world: World) -> list[EncodingJob]:
    """The real requests of the environments' own roles, as encoding controls: the solvers
    must find what the concrete evaluator allows (one per role, action and resource kind)."""
    out: dict[tuple[str, str, str], EncodingJob] = {}
    for r in results:
        if r.group != real_controls.WORKER:
            continue  # the jobs' encoding controls are iam_proof.JOBS
        for request in r.check.requests:
            role = world.roles.get(request.principal)
            if role is None or role.stack != r.stack:
                continue
            target = next(
                (t for t in world.targets.get(r.stack, []) if t.matches(request.resource)), None
            )
            key = (role.arn, request.action.lower(), target.urn if target else request.resource)
            if key not in out:
                name = target.label if target else request.resource
                what = f"{r.stack}/service may {request.action} on {name} (worker contract)"
                out[key] = EncodingJob(r.stack, what, role.arn, request.action, request.resource)
    return list(out.values())


def to_json(report: ProofReport) -> dict[str, Any]:
    return {
        "stacks": report.stacks,
        "ok": report.ok,
        "seconds": round(report.seconds, 4),
        "iam": {
            "pairs": [
                {
                    "source": p.source,
                    "target": p.target,
                    "status": p.status,
                    "seconds": round(p.seconds, 4),
                    "principals": p.principals,
                    "resources": p.resources,
                    "declaredFlows": p.flows,
                    "details": p.details,
                    "counterexamples": [c.to_json() for c in p.counterexamples],
                }
                for p in report.iam.pairs
            ],
            "controls": [
                {"stack": c.stack, "control": c.what, "found": c.found, "detail": c.detail}
                for c in report.iam.controls
            ],
            "notes": report.iam.notes,
        },
        "realControls": [
            {
                "stack": r.stack,
                "group": r.group,
                "control": r.what,
                "ok": r.ok,
                "detail": r.detail,
                "requests": [
                    {
                        "what": q.what,
                        "principal": q.principal,
                        "action": q.action,
                        "resource": q.resource,
                        "context": dict(q.context),
                        "source": q.source,
                    }
                    for q in r.check.requests
                ],
            }
            for r in report.real
        ],
        "network": [
            {
                "source": n.source,
                "target": n.target,
                "control": n.source == n.target,
                "status": n.status,
                "seconds": round(n.seconds, 4),
                "packet": None if n.packet is None else vars(n.packet),
                "path": list(n.path),
                "detail": n.detail,
            }
            for n in report.network
        ],
        "failures": report.failures(),
    }


def _status(status: str) -> str:
    return f"[{STYLE.get(status, 'white')}]{status}[/{STYLE.get(status, 'white')}]"


def text(report: ProofReport, out: Console, *, quiet: bool = False) -> None:
    """The proofs' report; `quiet`: only what is not proved (and the summary line's verdict,
    printed by the caller)."""
    if quiet:
        _text_failures(report, out)
        return
    # Beyond a few stacks the text lists what holds per stack and environment, and only what
    # does not hold one by one (JSON and SARIF keep every pair and every control).
    many = len(report.stacks) > DETAILED_UP_TO
    out.print(
        f"envfence prove: {len(report.stacks)} stack(s): {', '.join(report.stacks)}; "
        f"{report.seconds:.2f} s"
    )
    out.print("\n[bold]controls (must find access)[/bold]")
    for c in report.iam.controls:
        if many and c.found:
            continue
        mark = "[green]found[/green]" if c.found else "[yellow]NOT FOUND[/yellow]"
        out.print(f"  iam     {c.what}: {mark} ({c.detail})")
    if many:
        found = sum(c.found for c in report.iam.controls)
        out.print(f"  iam     {found}/{len(report.iam.controls)} controls find their access")
    for stack in report.stacks:
        mine = [r for r in report.real if r.stack == stack]
        for group in real_controls.GROUPS:
            of_group = [r for r in mine if r.group == group]
            if not of_group:
                continue
            good = sum(r.ok for r in of_group)
            out.print(
                f"  real    {stack} {real_controls.TITLES[group]}: {good}/{len(of_group)} "
                + ("[green]hold[/green]" if good == len(of_group) else "[yellow]BROKEN[/yellow]")
            )
            for r in of_group:
                if many and r.ok:
                    continue
                mark = "[green]ok[/green]" if r.ok else "[yellow]BROKEN[/yellow]"
                detail = r.detail
                if r.ok and len(r.check.requests) > 3 and not r.check.denied:
                    detail = f"{len(r.check.requests)} requests allowed"
                out.print(f"    {mark} {r.what.split(': ', 1)[-1]} ({detail})")
    for n in report.network_controls():
        if many and n.status != BROKEN:
            continue
        mark = "[green]found[/green]" if n.status != BROKEN else "[yellow]NOT FOUND[/yellow]"
        packet = _packet(n)
        out.print(f"  network {n.source} reaches its own database: {mark} {packet}")
    if many:
        held = sum(n.status != BROKEN for n in report.network_controls())
        out.print(
            f"  network {held}/{len(report.network_controls())} stacks reach their own database"
        )
    out.print("\n[bold]environment pairs[/bold]")
    network = {(n.source, n.target): n for n in report.network_pairs()}
    if many:
        _summarize_sources(report, network, out)
    for p in report.iam.pairs:
        net = network.get((p.source, p.target))
        if many and p.status == PROVED and (net is None or net.status == PROVED):
            continue
        line = (
            f"  {p.source} -> {p.target}: iam {_status(p.status)} ({p.seconds:.2f} s, "
            f"{p.principals} principals, {p.resources} data resources)"
        )
        if net is not None:
            line += f", network {_status(net.status)} ({net.seconds:.2f} s)"
        out.print(line)
        for flow in p.flows:
            out.print(f"      declared flow: {flow} (only these reads are exempt)")
        for d in p.details:
            out.print(f"      [yellow]broken:[/yellow] {d}")
        for cx in p.counterexamples:
            out.print("      [red]counterexample[/red]: " + "\n      ".join(cx.lines()))
        if net is not None and net.status != PROVED:
            out.print(f"      [red]network {net.status}[/red]: {_packet(net)} {net.detail}")
            for hop in net.path:
                out.print(f"        {hop}")
    for note in report.iam.notes:
        out.print(f"  note: {note}")
    out.print(f"\n{summary(report)}")


def _summarize_sources(
    report: ProofReport, network: dict[tuple[str, str], NetworkResult], out: Console
) -> None:
    """One line per environment: how many of its pairs (it as the source) are proved."""
    by_source: dict[str, list[PairProof]] = {}
    for p in report.iam.pairs:
        by_source.setdefault(p.source, []).append(p)
    for source, pairs in by_source.items():
        iam_ok = sum(p.status == PROVED for p in pairs)
        nets = [network[(p.source, p.target)] for p in pairs if (p.source, p.target) in network]
        net_ok = sum(n.status == PROVED for n in nets)
        seconds = max((p.seconds for p in pairs), default=0.0)
        style = "green" if iam_ok == len(pairs) and net_ok == len(nets) else "red"
        out.print(
            f"  {source} -> {len(pairs)} other environment(s): [{style}]iam {iam_ok}/"
            f"{len(pairs)}, network {net_ok}/{len(nets)} proved[/{style}] ({seconds:.2f} s, "
            f"{pairs[0].principals} principals)"
        )


def _text_failures(report: ProofReport, out: Console) -> None:
    for c in report.iam.controls:
        if not c.found:
            out.print(f"  [yellow]control NOT FOUND[/yellow] iam {c.what} ({c.detail})")
    for r in report.real:
        if not r.ok:
            out.print(f"  [yellow]control BROKEN[/yellow] {r.stack} {r.what} ({r.detail})")
    for p in report.iam.pairs:
        if p.status == PROVED:
            continue
        out.print(f"  [red]iam {p.source} -> {p.target}: {p.status}[/red]")
        for cx in p.counterexamples:
            for line in cx.lines():
                out.print(f"    {line}")
        for d in p.details:
            out.print(f"    {d}")
    for n in report.network_controls():
        if n.status == BROKEN:
            out.print(
                f"  [yellow]control NOT FOUND[/yellow] network {n.source} reaches its own "
                f"database {n.detail}"
            )
    for n in report.network_pairs():
        if n.status != PROVED:
            out.print(
                f"  [red]network {n.source} -> {n.target}: {n.status}[/red] {_packet(n)} {n.detail}"
            )
            for hop in n.path:
                out.print(f"    {hop}")


def summary(report: ProofReport) -> str:
    real = (
        f", {sum(r.ok for r in report.real)}/{len(report.real)} real-request control(s) hold"
        if report.real
        else ""
    )
    return (
        f"{'PROVED' if report.ok else 'NOT PROVED'}: "
        f"{sum(p.status == PROVED for p in report.iam.pairs)}/{len(report.iam.pairs)} iam pair(s), "
        f"{sum(n.status == PROVED for n in report.network_pairs())}/"
        f"{len(report.network_pairs())} network pair(s) proved isolated{real}"
    )


def _packet(n: NetworkResult) -> str:
    if n.packet is None:
        return ""
    p = n.packet
    port = f":{p.dst_port}" if p.dst_port is not None else ""
    return f"{p.protocol} {p.src_ip} -> {p.dst_ip}{port}"
