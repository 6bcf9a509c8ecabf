"""Shared fixtures: every stack of the repository evaluated once per session, offline.

Tests that mutate a stack take a deep copy (`stack_copy`), so the session's states stay clean.
"""

from __future__ import annotations

import copy
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envfence.evaluate import evaluate
from envfence.model import StackState
from envfence.project import Project, load_project

ROOT = Path(__file__).resolve().parent.parent  # the repository under test


@pytest.fixture(autouse=True)
def _no_ci_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI prints progress lines on standard error when $CI is set (envfence.progress);
    tests that read standard error run as on a developer's machine, wherever the suite runs
    (tests/test_cli_conventions.py sets the mode explicitly)."""
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture(autouse=True)
def _no_evaluation_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every evaluation in a test evaluates, in its own process (tests that patch the program
    or the mocks must see their patch; tests/test_cache.py turns the cache and the parallel
    workers on where it tests them)."""
    monkeypatch.setenv("ENVFENCE_NO_CACHE", "1")
    monkeypatch.setenv("ENVFENCE_JOBS", "1")


@pytest.fixture(scope="session")
def project() -> Project:
    return load_project()


@pytest.fixture(scope="session")
def stacks(project: Project) -> dict[str, StackState]:
    return {name: evaluate(name, project) for name in project.stacks()}


@pytest.fixture(scope="session")
def prod(stacks: dict[str, StackState]) -> StackState:
    return stacks["prod"]


@pytest.fixture(scope="session")
def experiment(stacks: dict[str, StackState]) -> StackState:
    return stacks["experiment"]


@pytest.fixture
def stack_copy(stacks: dict[str, StackState]) -> Callable[[str], StackState]:
    """A deep copy of an evaluated stack, safe to mutate."""
    return lambda name: copy.deepcopy(stacks[name])


@pytest.fixture
def repo(tmp_path: Path) -> Project:
    """A copy of the repository's project and stack files, the program (infra/) by symlink:
    for tests that add, edit or remove stack files."""
    for path in ROOT.glob("Pulumi*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "infra").symlink_to(ROOT / "infra")
    return load_project(tmp_path)


@pytest.fixture
def restore_program_modules() -> Iterator[None]:
    """Running a copied program imports `infra` from the copy and prepends it to sys.path;
    put the repository's modules back for the rest of the session."""
    path = list(sys.path)
    modules = {k: v for k, v in sys.modules.items() if k == "infra" or k.startswith("infra.")}
    yield
    sys.path[:] = path
    for name in [k for k in sys.modules if k == "infra" or k.startswith("infra.")]:
        del sys.modules[name]
    sys.modules.update(modules)
