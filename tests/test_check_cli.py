"""`envfence check` on state files: the three shapes it reads, its three formats, exit codes.

States are the repository's evaluated stacks written the way the real tools write them:

- plan: `StackState.to_document()` (a `pulumi stack export` plus an `envfence` section, what
  `envfence plan --format json` prints);
- export: a bare `pulumi stack export` (`version` + `deployment.resources` only: the tier comes
  from the provider's default tags, and there is no config);
- preview: a `pulumi preview --json` (`steps` with `newState`), with or without its `config`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mutations as m
import pytest
from sarif_schema import assert_github_ready

from envfence.cli import main
from envfence.model import StackState
from envfence.rules import all_rules

SHAPES = ("plan", "export", "preview", "preview+config")


def document(state: StackState, shape: str) -> dict[str, Any]:
    doc = state.to_document()
    resources = doc["deployment"]["resources"]
    if shape == "plan":
        return doc
    if shape == "export":
        return {"version": 3, "deployment": {"resources": resources}}
    steps = [{"op": "create", "urn": r["urn"], "newState": r} for r in resources]
    if shape == "preview":
        return {"steps": steps}
    assert shape == "preview+config"
    return {"config": dict(state.config), "steps": steps}


def by_urn(state: StackState) -> dict[str, dict[str, Any]]:
    docs = {r.urn: r.to_dict() for r in state.resources}
    for doc in docs.values():
        doc["dependencies"] = sorted(doc["dependencies"])
        doc["propertyDependencies"] = {k: sorted(v) for k, v in doc["propertyDependencies"].items()}
    return docs


def write(tmp_path: Path, stacks: dict[str, StackState], shape: str) -> list[str]:
    paths = []
    for name, state in sorted(stacks.items()):
        path = tmp_path / f"{name}.{shape}.json"
        path.write_text(json.dumps(document(state, shape), indent=1))
        paths.append(str(path))
    return paths


def check(
    paths: list[str], fmt: str, capsys: pytest.CaptureFixture[str], *, prove: bool = False
) -> tuple[int, str, str]:
    """`envfence check` on state files; the proofs only when asked (tests/test_prove_cli.py
    covers them, this file the rules)."""
    argv = ["check"] if prove else ["check", "--no-prove"]
    for p in paths:
        argv += ["--state", p]
    code = main([*argv, "--format", fmt])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------
# Clean and leaky pairs


@pytest.mark.parametrize("shape", SHAPES)
def test_clean_pair_passes(
    shape: str, stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(write(tmp_path, stacks, shape), "json", capsys)
    report = json.loads(out)
    assert report["violations"] == [], [v["message"] for v in report["violations"]]
    assert code == 0
    assert err == ""
    assert report["stacks"] == ["experiment", "prod"]
    assert {f["flow"] for f in report["flows"]} == {"prod/pipeline may read experiment/results"}


@pytest.mark.parametrize("shape", ["export", "preview"])
def test_tier_comes_from_the_provider_default_tags(
    shape: str, stacks: dict[str, StackState], tmp_path: Path
) -> None:
    from envfence.state import load_file

    for path in write(tmp_path, stacks, shape):
        state = load_file(path)
        assert state.config == {}
        assert state.tier == stacks[state.stack].tier
        assert state.experiment_id == stacks[state.stack].experiment_id
        # the plan lists resources (and their dependencies) in a stable order, not as evaluated
        assert by_urn(state) == by_urn(stacks[state.stack])


@pytest.mark.parametrize("shape", SHAPES)
def test_leaky_pair_fails_with_the_violation(
    shape: str, stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaky = m.mutated(stacks, m.vpc_peering)
    code, out, err = check(write(tmp_path, leaky, shape), "json", capsys)
    report = json.loads(out)
    assert code == 1
    assert err == ""
    violations = report["violations"]
    assert violations
    for v in violations:
        assert {"rule", "severity", "stack", "urn", "message"} <= set(v)
        assert v["urn"].startswith(f"urn:pulumi:{v['stack']}::")
    peering = [v for v in violations if v["rule"] == "EF101"]
    assert violations == peering
    [v] = peering
    assert v["stack"] == "prod" and v["otherStack"] == "experiment"
    assert v["severity"] == "critical"
    assert v["urn"] == leaky["prod"].named("peer-experiment").urn
    assert "connects this VPC to another network" in v["message"]
    assert report["summary"]["violations"] == len(violations)


def test_sarif_output_is_sarif_2_1_0(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaky = m.mutated(stacks, m.vpc_peering, m.key_rotation_off)
    code, out, _ = check(write(tmp_path, leaky, "plan"), "sarif", capsys, prove=True)
    assert code == 1
    sarif = json.loads(out)
    assert_github_ready(sarif)
    assert sarif["version"] == "2.1.0"
    assert "sarif" in sarif["$schema"] and "2.1.0" in sarif["$schema"]
    [run] = sarif["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "envfence"
    rules = driver["rules"]
    # the rules, then the proofs and the real-request controls (run by `check` too)
    assert [r["id"] for r in rules] == [r.id for r in all_rules()] + ["EFP01", "EFP02", "EFP03"]
    for r in rules:
        assert r["shortDescription"]["text"] and r["help"]["text"]
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note", "none")
    results = run["results"]
    assert {res["ruleId"] for res in results} == {"EF101", "EF402"}
    for res in results:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note", "none")
        assert res["message"]["text"]
        [loc] = res["locations"]
        assert loc["logicalLocations"][0]["fullyQualifiedName"].startswith("urn:pulumi:")
    levels = {res["ruleId"]: res["level"] for res in results}
    assert levels == {"EF101": "error", "EF402": "warning"}  # critical, medium


def test_sarif_of_a_clean_pair_has_no_results(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = check(write(tmp_path, stacks, "plan"), "sarif", capsys)
    assert code == 0
    sarif = json.loads(out)
    assert_github_ready(sarif)
    assert sarif["runs"][0]["results"] == []


def test_text_output_groups_by_environment_pair(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaky = m.mutated(stacks, m.vpc_peering, m.key_rotation_off)
    code, out, _ = check(write(tmp_path, leaky, "plan"), "text", capsys)
    assert code == 1
    lines = out.splitlines()
    header = lines.index("prod -> experiment: 1 violation(s)")
    assert "EF101" in lines[header + 1] and "peer-experiment" in lines[header + 1]
    peering = next(r for r in all_rules() if r.id == "EF101")
    assert lines[header + 2].strip() == f"fix: {peering.fix}"
    assert "prod: 1 violation(s)" in lines  # EF402 is about prod alone
    assert "experiment -> prod: clean" in lines
    assert "experiment: clean" in lines
    assert lines[-1].startswith("FAIL: 2 violation(s)")


def test_text_output_of_a_clean_pair(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = check(write(tmp_path, stacks, "plan"), "text", capsys, prove=True)
    assert code == 0
    assert "prod -> experiment: clean" in out.splitlines()
    assert "prod/pipeline may read experiment/results" in out
    assert re.fullmatch(
        r"PASS: 0 violation\(s\), 1 declared flow\(s\) in use; "
        r"PROVED: 2/2 iam pair\(s\), 2/2 network pair\(s\) proved isolated, "
        r"(\d+)/\1 real-request control\(s\) hold",
        out.splitlines()[-1],
    ), out.splitlines()[-1]


# --------------------------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr naming the file, no traceback


def _bad(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_FILES = {
    "malformed-json": ('{"version": 3, "deployment": ', "not valid JSON"),
    "not-a-state": ('{"foo": 1}', "not a Pulumi state"),
    "empty-deployment": ('{"version": 3, "deployment": {"resources": []}}', "no resources"),
    "not-an-object": ("[1, 2]", "expected a JSON object"),
    "bad-urn": (
        '{"version": 3, "deployment": {"resources": [{"urn": "x", "type": "t"}]}}',
        "not a Pulumi URN",
    ),
}


def assert_one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("envfence: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_state_file(
    case: str, stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, needle = BAD_FILES[case]
    good = write(tmp_path, {"prod": stacks["prod"]}, "plan")
    bad = _bad(tmp_path, f"{case}.json", text)
    code, out, err = check([*good, bad], "json", capsys)
    assert code == 2
    assert_one_error_line(err, bad, needle)
    # the machine format still writes its document, holding the error (CI uploads it)
    doc = json.loads(out)
    assert doc["exitCode"] == 2 and doc["violations"] == []
    assert bad in doc["error"]["message"] and needle in doc["error"]["message"]


def test_missing_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nowhere.json")
    code, out, err = check([missing], "text", capsys)
    assert code == 2
    assert out == ""
    assert_one_error_line(err, missing, "cannot be read")


def test_two_files_for_one_stack(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [plan] = write(tmp_path, {"prod": stacks["prod"]}, "plan")
    [export] = write(tmp_path, {"prod": stacks["prod"]}, "export")
    code, _, err = check([plan, export], "json", capsys)
    assert code == 2
    assert_one_error_line(err, "prod")


def test_unknown_stack(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--stack", "nope"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert_one_error_line(err, "nope")


def test_stack_and_state_together(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [f] = write(tmp_path, {"prod": stacks["prod"]}, "plan")
    code = main(["check", "--stack", "prod", "--state", f])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert_one_error_line(err, "--stack", "--state")


# --------------------------------------------------------------------------------------------
# The repository itself


def test_check_on_the_repository_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check"])
    out, err = capsys.readouterr()
    assert code == 0, out
    assert err == ""
    assert out.splitlines()[-1].startswith("PASS: 0 violation(s)")
    assert "prod -> experiment: clean" in out.splitlines()
