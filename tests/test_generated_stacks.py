"""The benchmark's generated experiment stacks (bench/generate.py) are real, clean stacks.

`make bench` measures the checker on prod, experiment and up to 49 generated experiment stacks,
each in an account of its own. They are evaluated like any stack, so they must be what a team
would have: registered, and clean under every rule. Generating them found a defect: a baseline
stack with no short-lived stacks in its account has no stack prefix for its trail's data-event
selector, and the selector did not name its archive bucket (EF701).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from envfence.evaluate import evaluate
from envfence.project import load_project
from envfence.rules import run_all

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("restore_program_modules")
def test_a_generated_baseline_stack_is_clean_and_records_its_archive(tmp_path: Path) -> None:
    names = _generator().generate(tmp_path / "project", 2)
    assert names == ["prod", "experiment", "exp-01", "exp-02"]
    project = load_project(tmp_path / "project")
    assert set(project.stacks()) == set(names)
    assert project.registry.entry("exp-02").accounts == ("300000000002",)
    state = evaluate("exp-01", project)
    assert state.config["envfence:allowedAccountIds"] == '["300000000001"]'
    trail = state.named("trail", "aws:cloudtrail/trail:Trail")
    [archive] = [b for b in state.of_type("aws:s3/bucket:Bucket") if b.name == "archive"]
    selectors = json.dumps(trail.get("advancedEventSelectors"))
    assert f'"{archive.get("arn")}/"' in selectors, selectors
    result = run_all([state], project)
    assert [(v.rule, v.message) for v in result.violations] == []
