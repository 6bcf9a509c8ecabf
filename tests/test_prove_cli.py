"""`envfence prove` and the proofs inside `envfence check`: formats, exit codes, bad input.

State files are written the way the real tools write them (see test_check_cli.py); a bare
`pulumi stack export` has no config, so its declared flows come from the repository's stack
files.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from sarif_schema import assert_github_ready
from test_check_cli import write
from test_prove_iam import flow_widened_to_delete

from envfence.cli import main
from envfence.model import StackState

Stacks = dict[str, StackState]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def states(paths: list[str]) -> list[str]:
    return [arg for p in paths for arg in ("--state", p)]


def leaky(stacks: Stacks) -> Stacks:
    """prod's pipeline may also delete what the experiment results flow only lets it read."""
    s = copy.deepcopy(stacks)
    flow_widened_to_delete(s)
    return s


@pytest.mark.parametrize("shape", ["plan", "export"])
def test_clean_pair_is_proved(
    shape: str, stacks: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["prove", *states(write(tmp_path, stacks, shape))], capsys)
    assert code == 0, out + err
    assert "experiment -> prod: iam proved" in out
    assert "prod -> experiment: iam proved" in out
    assert "declared flow: prod/pipeline may read experiment/results" in out
    assert re.fullmatch(
        r"PROVED: 2/2 iam pair\(s\), 2/2 network pair\(s\) proved isolated, "
        r"(\d+)/\1 real-request control\(s\) hold",
        out.rstrip().splitlines()[-1],
    ), out.rstrip().splitlines()[-1]


def test_leaky_pair_is_refuted_with_the_counterexample(
    stacks: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["prove", *states(write(tmp_path, leaky(stacks), "export"))], capsys)
    assert code == 1
    assert "prod -> experiment: iam refuted" in out
    assert "experiment -> prod: iam proved" in out
    assert "may s3:DeleteObject on arn:aws:s3:::envfence-experiment-results-" in out
    assert "LeakDeleteExperimentResults" in out
    assert out.rstrip().splitlines()[-1].startswith("NOT PROVED: 1/2 iam pair(s)")


def test_json_format(stacks: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["prove", *states(write(tmp_path, leaky(stacks), "plan")), "--format", "json"], capsys
    )
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    pairs = {(p["source"], p["target"]): p for p in doc["iam"]["pairs"]}
    assert pairs[("experiment", "prod")]["status"] == "proved"
    refuted = pairs[("prod", "experiment")]
    assert refuted["status"] == "refuted"
    [ce] = [c for c in refuted["counterexamples"] if c["action"] == "s3:DeleteObject"]
    assert ce["principal"] == "arn:aws:iam::123456789012:role/envfence-prod-pipeline"
    assert ce["target"] == "experiment/store-results (Bucket)"
    assert any("LeakDeleteExperimentResults" in s for s in ce["statements"])
    assert all(c["found"] for c in doc["iam"]["controls"])
    assert {(n["source"], n["target"], n["status"]) for n in doc["network"]} >= {
        ("prod", "experiment", "proved"),
        ("experiment", "prod", "proved"),
    }
    assert doc["failures"] == ["iam prod -> experiment: refuted"]


def test_check_fails_on_a_refuted_proof_alone(
    stacks: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flow widened on both sides is a leak the proof finds; `check` fails on it."""
    paths = write(tmp_path, leaky(stacks), "plan")
    code, out, _ = run(["check", *states(paths), "--format", "json"], capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc["proofs"]["ok"] is False
    code, out, _ = run(["check", *states(paths), "--no-prove", "--format", "json"], capsys)
    assert "proofs" not in json.loads(out)


def test_check_sarif_reports_the_refuted_pair(
    stacks: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write(tmp_path, leaky(stacks), "plan")
    code, out, _ = run(["check", *states(paths), "--format", "sarif"], capsys)
    assert code == 1
    doc = json.loads(out)
    assert_github_ready(doc)
    results = doc["runs"][0]["results"]
    [proof] = [r for r in results if r["ruleId"] == "EFP01"]
    assert proof["message"]["text"].startswith("prod -> experiment: refuted.")
    assert "s3:DeleteObject" in proof["message"]["text"]


def test_unknown_stack_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["prove", "--stack", "staging"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "staging" in err
    assert "Traceback" not in err


def test_malformed_state_file_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "prod.json"
    bad.write_text("{not json")
    code, out, err = run(["prove", "--state", str(bad)], capsys)
    assert code == 2 and out == ""
    assert str(bad) in err and "Traceback" not in err
