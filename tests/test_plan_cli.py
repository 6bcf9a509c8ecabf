"""`envfence plan`: the JSON document round-trips into StackState through `envfence.state`, the
table and `--summary` show the stack, its tier and its resource counts, and an unknown stack is
one line on stderr with exit code 2.

Each test runs the real command (`envfence.cli.main`), which evaluates the stack itself; the
session's evaluated stacks (tests/conftest.py) are what the output is compared with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from envfence.cli import main
from envfence.model import StackState
from envfence.state import load_document, load_file

RESOURCE_KEYS = {
    "urn",
    "type",
    "custom",
    "inputs",
    "outputs",
    "dependencies",
    "propertyDependencies",
}


def plan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def plain(value: Any) -> Any:
    """`value` as JSON has it (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def sets(deps: dict[str, list[str]]) -> dict[str, set[str]]:
    return {k: set(v) for k, v in deps.items()}


def summary_line(state: StackState) -> re.Pattern[str]:
    """The plan's summary line for `state`: title, resource count, per-service counts,
    protected count."""
    title = f"stack {state.stack}: tier {state.tier}"
    if state.experiment_id:
        title += f", experiment {state.experiment_id}"
    return re.compile(
        rf"^{re.escape(title)}: (\d+) resources \(([^)]*)\); (\d+) protected$", re.MULTILINE
    )


def counts(state: StackState) -> tuple[int, int]:
    custom = state.custom()
    return len(custom), sum(1 for r in custom if r.protect)


# --------------------------------------------------------------------------------------------
# --format json


def test_plan_json_round_trips_into_stack_state(
    capsys: pytest.CaptureFixture[str], prod: StackState, tmp_path: Path
) -> None:
    code, out, err = plan(capsys, "--stack", "prod", "--format", "json")
    assert (code, err) == (0, "")
    doc = json.loads(out)

    # The shape of `pulumi stack export`, plus the envfence section.
    assert doc["version"] == 3
    resources = doc["deployment"]["resources"]
    assert resources and all(set(r) >= RESOURCE_KEYS for r in resources)
    # Dynamic resources (the migration run) are served by the language host, not a provider.
    cloud = [
        r
        for r in resources
        if r["custom"] and not r["type"].startswith(("pulumi:providers:", "pulumi-python:dynamic"))
    ]
    assert cloud and all("id" in r and "provider" in r for r in cloud)
    assert doc["envfence"]["stack"] == "prod"
    assert doc["envfence"]["project"] == "envfence"
    assert doc["envfence"]["tier"] == "production"
    assert doc["envfence"]["experimentId"] is None
    assert doc["envfence"]["config"] == prod.config

    # Loaded back, from the document and from a file, through the public loaders.
    path = tmp_path / "prod.plan.json"
    path.write_text(out)
    for state in (load_document(doc), load_file(path)):
        assert state.source == "plan"
        assert (state.stack, state.project) == ("prod", "envfence")
        assert (state.tier, state.experiment_id) == (prod.tier, prod.experiment_id)
        assert state.config == prod.config
        assert state.outputs == plain(prod.outputs)

        # Exactly what the plan printed, in its order.
        assert [r.to_dict() for r in state.resources] == resources

        # What the evaluator produced for the session (resources register in no fixed order).
        loaded = state.by_urn()
        evaluated = prod.by_urn()
        assert sorted(loaded) == sorted(evaluated)
        for urn, r in evaluated.items():
            got = loaded[urn]
            assert got.type == r.type, urn
            assert got.custom == r.custom, urn
            assert got.id == r.id, urn
            assert (got.parent, got.provider) == (r.parent, r.provider), urn
            # (dependencies are recorded in the order they resolve, which varies by run)
            assert sorted(got.dependencies) == sorted(r.dependencies), urn
            assert sets(got.property_dependencies) == sets(r.property_dependencies), urn
            assert got.inputs == plain(r.inputs), urn
            assert got.outputs == plain(r.outputs), urn
            assert (got.protect, got.retain_on_delete) == (r.protect, r.retain_on_delete), urn

    # Production data is protected: the flags that crossed were not all False.
    assert {r.name for r in load_document(doc).resources if r.protect} >= {"db", "key"}


# --------------------------------------------------------------------------------------------
# Table and summary


def test_plan_table_names_stack_tier_and_counts(
    capsys: pytest.CaptureFixture[str], prod: StackState
) -> None:
    code, out, err = plan(capsys, "--stack", "prod")
    assert (code, err) == (0, "")
    assert out.startswith("stack prod: tier production\n")  # the table's title

    # One row per cloud resource (neither the stack, components nor providers), by name.
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    # (a long "key settings" cell wraps onto continuation lines with an empty name)
    rows = [line for line in lines if line.startswith("│") and line.split("│")[2].strip()]
    assert re.findall(r"\w[\w ]*\w", header) == ["type", "name", "key settings"]
    total, protected = counts(prod)
    assert len(rows) == total
    names = sorted(line.split("│")[2].strip() for line in rows)
    assert names == sorted(r.name for r in prod.custom())
    vpc = next(line for line in rows if line.split("│")[2].strip() == "vpc")
    assert "cidr 10.10.0.0/16" in vpc

    match = summary_line(prod).search(out)
    assert match, out[-500:]
    assert (int(match[1]), int(match[3])) == (total, protected)
    per_service = [int(n) for n in re.findall(r"(\d+) [\w-]+", match[2])]
    assert sum(per_service) == total
    assert "declared flow: prod/pipeline may read experiment/results" in out


def test_plan_summary_prints_no_table(
    capsys: pytest.CaptureFixture[str], experiment: StackState
) -> None:
    code, out, err = plan(capsys, "--stack", "experiment", "--summary")
    assert (code, err) == (0, "")
    assert "│" not in out and "┃" not in out
    match = summary_line(experiment).search(out)
    assert match, out
    assert out.startswith(match[0])
    assert (int(match[1]), int(match[3])) == counts(experiment)
    assert int(match[3]) == 0  # experiment stacks can be torn down


# --------------------------------------------------------------------------------------------
# Bad input


def test_plan_unknown_stack_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = plan(capsys, "--stack", "nope")
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("envfence: error: ")
    assert "'nope'" in lines[0]
    assert "experiment, prod" in lines[0]  # the stacks that exist
    assert "Traceback" not in err
