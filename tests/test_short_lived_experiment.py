"""A short-lived `experiment-<id>` stack next to the repository's two, created as the README
tells a team to: `envfence experiment new abtest --owner ... --expires ...`, which writes its
stack file from the template with its own id, a free CIDR and no flows, in the *same account*
as the shared experiment stack.

Two environments in one account have no account boundary between them: only the boundary,
the resource policies, the key policies and the network keep them apart. The rules must stay
quiet and every one of the six ordered pairs must be proved, with every control finding access.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from envfence import experiments
from envfence.evaluate import evaluate
from envfence.model import StackState
from envfence.project import Project, load_project
from envfence.prove.iam_proof import JOBS
from envfence.prove.run import ProofReport, prove
from envfence.rules import run_all

ROOT = Path(__file__).resolve().parent.parent
SHORT = "experiment-abtest"


def short_lived_stack_file(root: Path) -> None:
    path, _ = experiments.new(
        load_project(root), "abtest", owner="ab-team@example.com", expires="2099-12-31"
    )
    config = yaml.safe_load(path.read_text())["config"]
    assert config["envfence:network"]["cidr"] == "10.30.0.0/16"  # the first free /16
    assert config["envfence:flows"] == []  # nothing leaves this experiment


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, dict[str, StackState]]:
    root = tmp_path_factory.mktemp("repo")
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml", "Pulumi.experiment.yaml"):
        shutil.copy(ROOT / name, root / name)
    (root / "infra").symlink_to(ROOT / "infra")
    (root / "app").symlink_to(ROOT / "app")  # the worker's request contract
    short_lived_stack_file(root)
    project = load_project(root)
    return project, {name: evaluate(name, project) for name in project.stacks()}


@pytest.fixture(scope="module")
def report(three: tuple[Project, dict[str, StackState]]) -> ProofReport:
    project, stacks = three
    return prove(stacks.values(), project)


def test_the_short_lived_stack_shares_the_experiment_account(
    three: tuple[Project, dict[str, StackState]],
) -> None:
    _, stacks = three
    assert sorted(stacks) == ["experiment", SHORT, "prod"]
    short = stacks[SHORT]
    assert short.tier == "experiment" and short.experiment_id == "abtest"
    roles = [str(r.get("arn")) for r in short.of_type("aws:iam/role:Role")]
    assert roles and all(
        a.startswith("arn:aws:iam::210987654321:role/envfence-experiment-abtest-") for a in roles
    )


def test_rules_are_quiet_on_three_stacks(three: tuple[Project, dict[str, StackState]]) -> None:
    project, stacks = three
    result = run_all(stacks.values(), project)
    assert [
        (v.rule, v.stack, v.urn.rsplit("::", 1)[-1], v.message) for v in result.violations
    ] == []


def test_every_pair_of_three_is_proved(report: ProofReport) -> None:
    pairs = {(p.source, p.target): p.status for p in report.iam.pairs}
    assert len(pairs) == 6 and set(pairs.values()) == {"proved"}, [
        (p.source, p.target, p.details, [c.lines() for c in p.counterexamples])
        for p in report.iam.pairs
    ]
    net = {(n.source, n.target): n.status for n in report.network_pairs()}
    assert len(net) == 6 and set(net.values()) == {"proved"}
    assert report.ok, report.failures()


def test_controls_cover_the_short_lived_stack(report: ProofReport) -> None:
    whats = {c.what: c.found for c in report.iam.controls}
    for kind, jobs in JOBS.items():
        for action, which in jobs:
            assert whats[f"{SHORT}/{kind} may {action} on {SHORT}'s {which}"] is True
    assert any(n.source == n.target == SHORT and n.packet for n in report.network_controls())


def test_the_shared_experiments_flow_is_not_the_short_lived_ones(report: ProofReport) -> None:
    flows = {(p.source, p.target): p.flows for p in report.iam.pairs}
    assert flows[("prod", "experiment")] == ["prod/pipeline may read experiment/results"]
    assert flows[("prod", SHORT)] == []
