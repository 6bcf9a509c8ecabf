"""Run every proof over a set of stacks and report it: a matrix of environment pairs.

`prove(states)` reads the states once (`envfence.prove.world`), runs the IAM proof
(`envfence.prove.iam_proof`) and the network proof (`envfence.prove.network`), and returns a
`ProofReport`: for every ordered pair of environments, per layer, proved / refuted / broken,
the time it took and the counterexamples. `ok` is true only when every pair is proved and
every control found the access it must find.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from envfence.model import StackState
from envfence.project import Project
from envfence.prove import controls as real_controls
from envfence.prove.iam_proof import BROKEN, PROVED, REFUTED, EncodingJob, IamProof, prove_iam
from envfence.prove.network import NetworkResult, prove_network
from envfence.prove.world import World, build_world
from envfence.rules import repository_project
from envfence.rules.context import build_context

STYLE = {PROVED: "green", REFUTED: "red", BROKEN: "yellow"}


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


def prove(states: Iterable[StackState], project: Project | None = None) -> ProofReport:
    states = list(states)
    project = repository_project(project)
    started = time.perf_counter()
    ctx = build_context(states, project)
    by_name = {s.stack: s for s in states}
    world = build_world(by_name, {name: env.flows for name, env in ctx.envs.items()})
    project_name = states[0].project if states else "envfence"
    production = {name: env.tier == "production" for name, env in ctx.envs.items()}
    deployers = {name: env.deployer for name, env in ctx.envs.items()}
    # Outside a checkout there is no worker contract: its controls fail closed, naming it.
    root = project.root if project is not None else Path.cwd()
    real = real_controls.checks(by_name, world, root, production, deployers)
    iam_proof = prove_iam(world, project_name, encoding_jobs=encoding_jobs(real, world))
    network = prove_network(by_name)
    failed: dict[str, list[real_controls.Result]] = {}
    for r in real:
        if not r.ok:
            failed.setdefault(r.stack, []).append(r)
    for p in iam_proof.pairs:
        broken = failed.get(p.source, []) + failed.get(p.target, [])
        if broken:
            p.status = BROKEN
            p.details += [f"{r.group} control failed: {r.what} ({r.detail})" for r in broken]
    return ProofReport(list(by_name), iam_proof, network, time.perf_counter() - started, real)


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
    out.print(
        f"envfence prove: {len(report.stacks)} stack(s): {', '.join(report.stacks)}; "
        f"{report.seconds:.2f} s"
    )
    out.print("\n[bold]controls (must find access)[/bold]")
    for c in report.iam.controls:
        mark = "[green]found[/green]" if c.found else "[yellow]NOT FOUND[/yellow]"
        out.print(f"  iam     {c.what}: {mark} ({c.detail})")
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
                mark = "[green]ok[/green]" if r.ok else "[yellow]BROKEN[/yellow]"
                detail = r.detail
                if r.ok and len(r.check.requests) > 3 and not r.check.denied:
                    detail = f"{len(r.check.requests)} requests allowed"
                out.print(f"    {mark} {r.what.split(': ', 1)[-1]} ({detail})")
    for n in report.network_controls():
        mark = "[green]found[/green]" if n.status != BROKEN else "[yellow]NOT FOUND[/yellow]"
        packet = _packet(n)
        out.print(f"  network {n.source} reaches its own database: {mark} {packet}")
    out.print("\n[bold]environment pairs[/bold]")
    network = {(n.source, n.target): n for n in report.network_pairs()}
    for p in report.iam.pairs:
        net = network.get((p.source, p.target))
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
