"""The proofs at scale (issue 12): parallel workers change nothing, and the text report stays
readable with many environments.

The proofs of each stack (its controls, its proof against everything outside it) run in forked
workers when several CPUs are free (`envfence.prove.run._parts`); the report must be the one a
single process gives. Forking is only done from a process without other threads (a test
runner's worker has some), so that comparison runs in a subprocess. Beyond a few stacks the text
report counts what holds per environment and lists only what does not (JSON and SARIF keep
everything): with 51 stacks it was 11,798 lines.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from test_prove_iam import flow_widened_to_delete

from envfence import report as rules_report
from envfence.model import StackState
from envfence.project import Project
from envfence.prove import run as proofs
from envfence.rules import run_all

Stacks = dict[str, StackState]
ROOT = Path(__file__).resolve().parent.parent

COMPARE = """
import json, sys, threading
from envfence.project import load_project
from envfence.prove import run
from envfence.state import load_states

def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if k != "seconds"}
    if isinstance(d, list):
        return [strip(x) for x in d]
    return d

project = load_project()
states = [s for path in sys.argv[1:] for s in load_states(path)]
serial = run.prove(states, project, jobs=1)
threads = threading.active_count()
parallel = run.prove(states, project, jobs=2)
same = strip(run.to_json(serial)) == strip(run.to_json(parallel))
print(json.dumps({"threads": threads, "same": same, "ok": parallel.ok}))
"""


def test_parallel_proofs_equal_one_process(stacks: Stacks, tmp_path: Path) -> None:
    """States read from plan files (an evaluation in the process leaves asyncio's executor
    threads behind, and the proofs then run in one process)."""
    paths = []
    for name, state in stacks.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(state.to_document()))
        paths.append(str(path))
    done = subprocess.run(
        [sys.executable, "-c", COMPARE, *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"threads": 1, "same": True, "ok": True}


def render(stacks: Stacks, project: Project) -> str:
    console = Console(width=200, record=True, color_system=None)
    report = proofs.prove(stacks.values(), project)
    rules_report.text(run_all(stacks.values(), project), console)
    proofs.text(report, console)
    return console.export_text()


def test_the_text_report_summarizes_beyond_a_few_stacks(
    stacks: Stacks, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    detailed = render(stacks, project)
    assert "experiment -> prod: iam proved" in detailed
    assert "prod -> experiment: clean" in detailed
    monkeypatch.setattr(proofs, "DETAILED_UP_TO", 1)
    monkeypatch.setattr(rules_report, "DETAILED_UP_TO", 1)
    summary = render(stacks, project)
    assert "experiment -> prod: iam proved" not in summary
    assert "prod -> experiment: clean" not in summary
    assert "4/4 stacks and pairs: clean" in summary
    assert "experiment -> 1 other environment(s): iam 1/1, network 1/1 proved" in summary
    assert "controls find their access" in summary
    assert "network 2/2 stacks reach their own database" in summary
    assert len(summary.splitlines()) < len(detailed.splitlines()) / 2


def test_what_does_not_hold_is_still_listed_one_by_one(
    stacks: Stacks, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaky = copy.deepcopy(stacks)
    flow_widened_to_delete(leaky)
    monkeypatch.setattr(proofs, "DETAILED_UP_TO", 1)
    monkeypatch.setattr(rules_report, "DETAILED_UP_TO", 1)
    out = render(leaky, project)
    assert "prod -> 1 other environment(s): iam 0/1, network 1/1 proved" in out
    assert "prod -> experiment: iam refuted" in out
    assert "LeakDeleteExperimentResults" in out
    assert "experiment -> prod: iam proved" not in out


def test_the_report_holds_every_control_the_iam_proof_runs(
    stacks: Stacks, project: Project
) -> None:
    """`prove` runs the controls stack by stack (in workers); it must hold exactly what the IAM
    proof over every stack runs, in the same order: jobs, flows, then the worker's requests."""
    from envfence.prove.iam_proof import prove_iam
    from envfence.prove.world import build_world
    from envfence.rules.context import build_context

    report = proofs.prove(stacks.values(), project, jobs=1)
    ctx = build_context(stacks.values(), project)
    world = build_world(stacks, {name: env.flows for name, env in ctx.envs.items()})
    whole = prove_iam(world, project.name, encoding_jobs=proofs.encoding_jobs(report.real, world))
    got = [(c.stack, c.what, c.found) for c in report.iam.controls]
    assert got == [(c.stack, c.what, c.found) for c in whole.controls]
    assert (
        "prod",
        "declared flow prod/pipeline may read experiment/results is usable",
        True,
    ) in got
