"""Shared fixtures: every stack of the repository evaluated once per session, offline.

Tests that mutate a stack take a deep copy (`stack_copy`), so the session's states stay clean.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from envfence.evaluate import evaluate
from envfence.model import StackState
from infra.project import Project, load_project


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
