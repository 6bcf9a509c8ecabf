"""The cache of evaluated stacks and the parallel evaluation (issue 12).

A second run with nothing changed reads every stack from the cache and evaluates nothing; any
change to what an evaluation reads misses it; an entry that cannot be trusted is ignored; the
states read back check exactly like fresh ones; `--no-cache` bypasses it. Parallel evaluation
gives the same states as evaluation one by one, and a failing stack stops it with its message.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from envfence import cache
from envfence import evaluate as evaluation
from envfence.cli import main
from envfence.evaluate import EvaluationError, evaluate_many
from envfence.model import StackState
from envfence.project import Project, load_project
from envfence.rules import run_all

Stacks = dict[str, StackState]


@pytest.fixture
def cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("ENVFENCE_CACHE_DIR", str(directory))
    monkeypatch.delenv("ENVFENCE_NO_CACHE")
    return directory


class Counting:
    """`evaluate` that serves the session's states and counts the stacks it is asked for."""

    def __init__(self, stacks: Stacks) -> None:
        self.stacks = stacks
        self.calls: list[str] = []

    def __call__(self, stack: str, project: Any = None, **_: Any) -> StackState:
        self.calls.append(stack)
        return self.stacks[stack]


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch, stacks: Stacks) -> Counting:
    fake = Counting(stacks)
    monkeypatch.setattr(evaluation, "evaluate", fake)
    return fake


def identity(state: StackState) -> dict[str, Any]:
    return {
        "document": state.to_document(),
        **{
            f.name: getattr(state, f.name)
            for f in dataclasses.fields(state)
            if f.name != "resources"
        },
    }


def test_a_second_run_reads_every_stack_from_the_cache(
    cached: Path, counting: Counting, project: Project, stacks: Stacks
) -> None:
    names = project.stacks()
    first = evaluate_many(names, project)
    assert counting.calls == names
    assert sorted(p.name.split("-")[0] for p in (cached / "states").glob("*.json")) == sorted(names)
    seen: list[tuple[str, bool]] = []
    again = evaluate_many(names, project, done=lambda name, hit: seen.append((name, hit)))
    assert counting.calls == names  # nothing evaluated the second time
    assert sorted(seen) == sorted((name, True) for name in names)
    for fresh, read in zip(first, again, strict=True):
        assert identity(read) == identity(fresh)


def test_states_read_back_check_exactly_like_fresh_ones(
    cached: Path, counting: Counting, project: Project, stacks: Stacks
) -> None:
    names = project.stacks()
    evaluate_many(names, project)
    read = evaluate_many(names, project)
    assert [s.source for s in read] == ["evaluate"] * len(names)
    fresh, again = run_all(stacks.values(), project), run_all(read, project)
    assert [dataclasses.astuple(v) for v in again.violations] == [
        dataclasses.astuple(v) for v in fresh.violations
    ]
    assert (again.flows, again.checked, again.warnings) == (
        fresh.flows,
        fresh.checked,
        fresh.warnings,
    )


def test_the_cache_directory_ignores_itself(
    cached: Path, counting: Counting, project: Project
) -> None:
    evaluate_many(["prod"], project)
    assert (cached / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (
        (cached / "CACHEDIR.TAG")
        .read_text()
        .startswith("Signature: 8a477f597d28d172789f06886806bc55")
    )


@pytest.mark.parametrize(
    "entry",
    [
        "not json",
        json.dumps({"envfenceCache": 999, "document": {}}),
        json.dumps({"envfenceCache": 1}),
        "[]",
    ],
    ids=["garbage", "another format", "no document", "not an entry"],
)
def test_an_entry_that_cannot_be_trusted_is_evaluated_again(
    cached: Path, counting: Counting, project: Project, entry: str
) -> None:
    evaluate_many(["prod"], project)
    path = cache.Keys(project).path("prod")
    path.write_text(entry)
    evaluate_many(["prod"], project)
    assert counting.calls == ["prod", "prod"]
    assert cache.load(cache.Keys(project), "prod") is not None  # written again


def test_an_entry_of_another_stack_is_not_read(
    cached: Path, counting: Counting, project: Project
) -> None:
    evaluate_many(["prod"], project)
    keys = cache.Keys(project)
    keys.path("experiment").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(keys.path("prod"), keys.path("experiment"))
    assert cache.load(keys, "experiment") is None


def test_no_cache_evaluates(
    cached: Path, counting: Counting, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluate_many(["prod"], project)
    evaluate_many(["prod"], project, use_cache=False)
    monkeypatch.setenv("ENVFENCE_NO_CACHE", "1")
    evaluate_many(["prod"], project)
    assert counting.calls == ["prod", "prod", "prod"]


def test_the_cli_takes_no_cache(
    cached: Path, counting: Counting, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--summary", "--stack", "prod"]) == 0
    assert main(["plan", "--summary", "--stack", "prod"]) == 0
    assert main(["plan", "--summary", "--stack", "prod", "--no-cache"]) == 0
    assert counting.calls == ["prod", "prod"]
    assert "stack prod: tier production" in capsys.readouterr().out


def test_check_after_plan_evaluates_each_stack_once(
    cached: Path, counting: Counting, project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make check`: `envfence plan --summary`, then `envfence check`."""
    assert main(["plan", "--summary"]) == 0
    assert main(["check", "--no-prove"]) == 0
    assert sorted(counting.calls) == sorted(project.stacks())


# -- what the key covers ------------------------------------------------------------------------


@pytest.fixture
def little(tmp_path: Path) -> Project:
    """A project directory with one file of every kind the key reads."""
    root = tmp_path / "project"
    root.mkdir()
    repo = load_project()
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml", "Pulumi.experiment.yaml", ".dockerignore"):
        shutil.copy(repo.root / name, root / name)
    for top in cache.PROGRAM_INPUTS:
        (root / top / "sub").mkdir(parents=True)
        (root / top / "sub" / "file.py").write_text("x = 1\n")
    return load_project(root)


@pytest.mark.parametrize(
    "change",
    [
        "Pulumi.yaml",
        "Pulumi.prod.yaml",
        "Pulumi.experiment.yaml",
        ".dockerignore",
        "infra/sub/file.py",
        "app/sub/file.py",
        "db/sub/file.py",
        "a new stack file",
        "a new file in infra",
    ],
)
def test_any_change_to_what_an_evaluation_reads_changes_the_key(
    little: Project, change: str
) -> None:
    before = {s: cache.Keys(little).key(s) for s in ("prod", "experiment")}
    if change == "a new stack file":
        (little.root / "Pulumi.experiment-x.yaml").write_text("config: {}\n")
    elif change == "a new file in infra":
        (little.root / "infra" / "new.py").write_text("")
    else:
        with (little.root / change).open("a") as handle:
            handle.write("\n# changed\n")
    after = {s: cache.Keys(little).key(s) for s in ("prod", "experiment")}
    assert all(after[s] != before[s] for s in before)


def test_bytecode_does_not_change_the_key(little: Project) -> None:
    before = cache.Keys(little).key("prod")
    (little.root / "infra" / "sub" / "__pycache__").mkdir()
    (little.root / "infra" / "sub" / "__pycache__" / "file.cpython-311.pyc").write_bytes(b"x")
    assert cache.Keys(little).key("prod") == before


def test_versions_code_and_working_directory_change_the_key(
    little: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = cache.Keys(little).key("prod")
    assert cache.Keys(little).key("experiment") != before
    monkeypatch.setattr(cache, "_version", lambda dist: "0.0.0" if dist == "pulumi-aws" else "x")
    assert cache.Keys(little).key("prod") != before
    monkeypatch.undo()
    package = tmp_path / "envfence-copy"
    shutil.copytree(cache._PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "_PACKAGE", package)
    assert cache.Keys(little).key("prod") == before
    with (package / "evaluate.py").open("a") as handle:
        handle.write("\n# changed\n")
    assert cache.Keys(little).key("prod") != before
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert cache.Keys(little).key("prod") != before


def test_an_unwritable_cache_is_no_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, counting: Counting, project: Project
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ENVFENCE_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.delenv("ENVFENCE_NO_CACHE")
    assert [s.stack for s in evaluate_many(["prod"], project)] == ["prod"]
    assert [s.stack for s in evaluate_many(["prod"], project)] == ["prod"]
    assert counting.calls == ["prod", "prod"]


# -- parallel evaluation ---------------------------------------------------------------------


def test_parallel_evaluation_gives_the_same_states(
    monkeypatch: pytest.MonkeyPatch, project: Project, stacks: Stacks
) -> None:
    monkeypatch.setenv("ENVFENCE_JOBS", "2")
    names = project.stacks()
    states = evaluate_many(names, project, use_cache=False)
    assert [s.stack for s in states] == names
    for state in states:
        assert identity(state) == identity(stacks[state.stack])


def test_a_failing_stack_stops_a_parallel_evaluation_with_its_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The workers evaluate for real (a worker may be forked from a fork server, which this
    test's patches would not reach): a copy of the project whose experiment stack file has a
    bad CIDR."""
    repo = load_project()
    root = tmp_path / "project"
    root.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml", "Pulumi.experiment.yaml", ".dockerignore"):
        shutil.copy(repo.root / name, root / name)
    shutil.copytree(
        repo.root / "infra", root / "infra", ignore=shutil.ignore_patterns("__pycache__")
    )
    for top in ("app", "db"):
        (root / top).symlink_to(repo.root / top)
    stack_file = root / "Pulumi.experiment.yaml"
    stack_file.write_text(
        stack_file.read_text().replace("cidr: 10.20.0.0/16", "cidr: 10.20.0.0/99")
    )
    monkeypatch.setenv("ENVFENCE_JOBS", "2")
    with pytest.raises(EvaluationError, match=r"experiment.*envfence:network.*cidr"):
        evaluate_many(["prod", "experiment"], load_project(root), use_cache=False)


def test_a_bad_jobs_value_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENVFENCE_JOBS", "many")
    assert main(["plan", "--summary"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ENVFENCE_JOBS='many'" in err[0] and "1 or more" in err[0], err
