"""The environment registry (Pulumi.yaml `envfence.environments`) decides what a stack is.

Each case edits a copy of the repository the way a user would: a stack file that claims another
tier or account, a stack the registry does not name, a malformed registry. Every one stops with
exit code 2 and one message naming the file or key; the unchanged copy is the control.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from sarif_schema import assert_valid_sarif

import envfence.cli as cli_module
import envfence.evaluate as evaluate_module
from envfence.cli import main as cli_main
from envfence.evaluate import EvaluationError, evaluate
from envfence.model import StackState
from envfence.project import Project, ProjectFileError, load_project
from envfence.registry import RegistryError, parse_registry
from envfence.rules import run_all
from envfence.rules.context import build_context

ROOT = Path(__file__).resolve().parent.parent  # the repository under test

PULUMI_YAML = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
REGISTRY = PULUMI_YAML["envfence"]
PROD_ACCOUNT, EXP_ACCOUNT = "123456789012", "210987654321"


def _copy(tmp_path: Path, *, program: bool = False) -> Path:
    for path in ROOT.glob("Pulumi*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    if program:
        shutil.copytree(
            ROOT / "infra", tmp_path / "infra", ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


def _edit(path: Path, **config: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["config"].update(config)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _cli(project: Project, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(evaluate_module, "load_project", lambda: project)
    monkeypatch.setattr(cli_module, "_repository", lambda: project)
    return cli_main(list(argv))


# -- the registry itself ----------------------------------------------------------------------


def test_the_repository_registry_names_both_stacks_and_the_pattern() -> None:
    registry = load_project().registry
    assert [(e.name, e.tier, e.accounts) for e in registry.entries] == [
        ("prod", "production", (PROD_ACCOUNT,)),
        ("experiment", "experiment", (EXP_ACCOUNT,)),
        ("experiment-*", "experiment", (EXP_ACCOUNT,)),
    ]
    assert registry.entry("experiment-abtest").name == "experiment-*"
    assert registry.entry("experiment").name == "experiment"  # exact beats the pattern
    assert (registry.baseline(PROD_ACCOUNT), registry.baseline(EXP_ACCOUNT)) == (
        "prod",
        "experiment",
    )
    assert registry.quota(EXP_ACCOUNT, "vpcs") == 5


def _broken(change: Any) -> dict[str, Any]:
    section = copy.deepcopy(REGISTRY)
    change(section)
    return section


def _env(section: dict[str, Any]) -> dict[str, Any]:
    return section["environments"]


BAD_REGISTRIES = {
    "missing": (lambda s: s.clear(), "environments"),
    "production pattern": (
        lambda s: _env(s).update({"prod-*": {"tier": "production", "accounts": [PROD_ACCOUNT]}}),
        "production stacks are named one by one",
    ),
    "experiment in the production account": (
        lambda s: _env(s)["experiment-*"].update(accounts=[EXP_ACCOUNT, PROD_ACCOUNT]),
        "experiments never share an account with production data",
    ),
    "unknown tier": (lambda s: _env(s)["prod"].update(tier="staging"), "production | experiment"),
    "unquoted account": (
        lambda s: _env(s)["prod"].update(accounts=[123456789012]),
        "12-digit account ids",
    ),
    "two baselines": (
        lambda s: _env(s).update(
            {"lab": {"tier": "experiment", "accounts": [EXP_ACCOUNT], "accountBaseline": True}}
        ),
        "exactly one entry with accountBaseline",
    ),
    "no baseline": (
        lambda s: _env(s)["experiment"].pop("accountBaseline"),
        "exactly one entry with accountBaseline",
    ),
    "baseline pattern": (
        lambda s: _env(s)["experiment-*"].update(accountBaseline=True),
        "exact stack name",
    ),
    "unknown entry key": (lambda s: _env(s)["prod"].update(owner="x"), "environments.prod.owner"),
    "unknown section key": (lambda s: s.update(stacks={}), "one of the keys"),
    "bad quota": (lambda s: s["quotas"]["default"].update(vpcs=0), "quotas.default.vpcs"),
    "unknown quota": (lambda s: s["quotas"]["default"].update(subnets=9), "quotas.default.subnets"),
    "bad archive": (lambda s: s["archive"].update(expireAfterDays=0), "archive.expireAfterDays"),
}


@pytest.mark.parametrize("case", list(BAD_REGISTRIES), ids=str)
def test_a_malformed_registry_is_refused_naming_the_key(case: str) -> None:
    change, expected = BAD_REGISTRIES[case]
    with pytest.raises(RegistryError) as info:
        parse_registry(_broken(change) if case != "missing" else None)
    assert "Pulumi.yaml" in str(info.value)
    assert expected in str(info.value)


def test_the_unchanged_registry_parses() -> None:
    assert parse_registry(copy.deepcopy(REGISTRY)).archive_expire_days == 365


def test_a_malformed_registry_stops_the_cli_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(tmp_path)
    doc = yaml.safe_load((root / "Pulumi.yaml").read_text())
    doc["envfence"]["environments"]["experiment-*"]["accounts"] = [PROD_ACCOUNT]
    (root / "Pulumi.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ProjectFileError) as info:
        load_project(root)
    assert "experiments never share an account with production data" in str(info.value)


# -- stack files that contradict the registry ------------------------------------------------


@pytest.mark.usefixtures("restore_program_modules")
def test_prod_edited_into_an_experiment_stops_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The edit the issue describes: tier experiment, an id and a 30-day retention in
    Pulumi.prod.yaml. `pulumi up` would have unprotected production; now nothing runs."""
    root = _copy(tmp_path, program=True)
    _edit(
        root / "Pulumi.prod.yaml",
        **{
            "envfence:tier": "experiment",
            "envfence:experimentId": "oops",
            "envfence:retention": {"expireAfterDays": 30},
        },
    )
    project = load_project(root)
    with pytest.raises(EvaluationError) as info:
        evaluate("prod", project)
    assert "stack 'prod': config envfence:tier is \"experiment\"" in str(info.value)
    assert "the environment registry (Pulumi.yaml, envfence.environments.prod)" in str(info.value)
    assert _cli(project, monkeypatch, "check", "--stack", "prod") == 2
    err = capsys.readouterr().err
    assert err.startswith("envfence: error: stack 'prod': config envfence:tier")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.usefixtures("restore_program_modules")
def test_an_unregistered_stack_stops_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(tmp_path, program=True)
    staging = root / "Pulumi.staging.yaml"
    shutil.copy(root / "Pulumi.experiment.yaml", staging)
    _edit(staging, **{"envfence:network": {"cidr": "10.40.0.0/16"}})
    project = load_project(root)
    assert _cli(project, monkeypatch, "check") == 2
    err = capsys.readouterr().err
    assert "stack 'staging' is not in the environment registry" in err
    assert "registered are prod, experiment, experiment-*" in err
    assert err.count("\n") == 1


@pytest.mark.usefixtures("restore_program_modules")
def test_an_account_the_registry_does_not_allow_stops_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(tmp_path, program=True)
    _edit(root / "Pulumi.experiment.yaml", **{"envfence:allowedAccountIds": [PROD_ACCOUNT]})
    project = load_project(root)
    assert _cli(project, monkeypatch, "plan", "--stack", "experiment") == 2
    err = capsys.readouterr().err
    assert f'config envfence:allowedAccountIds is ["{PROD_ACCOUNT}"]' in err
    assert f"one of {EXP_ACCOUNT}" in err


@pytest.mark.usefixtures("restore_program_modules")
def test_the_unchanged_copy_evaluates_with_the_registry_tier(tmp_path: Path) -> None:
    """The control: the copy as it is evaluates, its tier read from the registry (the stack
    files do not state it)."""
    project = load_project(_copy(tmp_path, program=True))
    assert "envfence:tier" not in project.stack_config("prod")
    assert evaluate("prod", project).tier == "production"


def test_a_state_of_an_unregistered_stack_is_bad_input(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = []
    for name, state in stacks.items():
        text = json.dumps(state.to_document())
        doc = json.loads(text.replace("urn:pulumi:experiment::", "urn:pulumi:lab::"))
        doc.get("envfence", {})["stack"] = "lab" if name == "experiment" else name
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        docs.append(str(path))
    args = [arg for d in docs for arg in ("--state", d)]
    assert cli_main(["check", "--no-prove", *args]) == 2
    err = capsys.readouterr().err
    assert "experiment.json: stack 'lab' is not in the environment registry" in err


def test_rules_take_the_tier_from_the_registry_not_from_the_state(
    stacks: dict[str, StackState], project: Project
) -> None:
    """A prod state claiming to be an experiment (its config and its default tags) is still
    production to the rules, so its tags contradict its tier (EF502)."""
    prod = copy.deepcopy(stacks["prod"])
    prod.tier = "experiment"
    prod.config["envfence:tier"] = "experiment"
    provider = next(r for r in prod.resources if r.type == "pulumi:providers:aws")
    raw = provider.inputs["defaultTags"]
    tags = json.loads(raw) if isinstance(raw, str) else copy.deepcopy(raw)
    tags["tags"]["tier"] = "experiment"
    provider.inputs["defaultTags"] = json.dumps(tags) if isinstance(raw, str) else tags
    ctx = build_context([prod, stacks["experiment"]], project)
    assert ctx.env("prod").tier == "production"
    assert ctx.env("prod").claimed_tier == "experiment"
    result = run_all([prod, stacks["experiment"]], project)
    assert "EF502" in {v.rule for v in result.violations if v.stack == "prod"}
    quiet = run_all(stacks.values(), project)
    assert not [v for v in quiet.violations if v.rule == "EF502"]


# -- an expired experiment: a warning in pull requests, a failure when scheduled --------------


def _expired(stacks: dict[str, StackState]) -> list[StackState]:
    exp = copy.deepcopy(stacks["experiment"])
    exp.config["envfence:expiresOn"] = "2026-11-30"
    return [stacks["prod"], exp]


def test_an_expired_experiment_warns_by_default_and_fails_when_enforced(
    stacks: dict[str, StackState], project: Project
) -> None:
    states = _expired(stacks)
    ctx_today = dt.date.today()
    assert dt.date(2026, 11, 30) < ctx_today
    warned = run_all(states, project)
    assert not [v for v in warned.violations if v.rule == "EF504"]
    [warning] = [v for v in warned.warnings if v.rule == "EF504"]
    assert "expired on 2026-11-30" in warning.message
    assert "conclude it: envfence experiment conclude shared" in warning.message
    assert "still exists" not in warning.message
    enforced = run_all(states, project, enforce_advisories=True)
    assert [v.rule for v in enforced.violations] == ["EF504"]
    assert not enforced.warnings
    assert not run_all(stacks.values(), project).warnings  # not expired: quiet


def test_check_exits_0_with_a_warning_and_1_with_expired_fail(
    stacks: dict[str, StackState],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = []
    for state in _expired(stacks):
        path = tmp_path / f"{state.stack}.json"
        path.write_text(json.dumps(state.to_document()))
        paths += ["--state", str(path)]
    assert cli_main(["check", "--no-prove", *paths]) == 0
    out = capsys.readouterr().out
    assert "warnings (1, not failing this run)" in out
    assert "PASS: 0 violation(s), 1 warning(s)" in out
    assert cli_main(["check", "--no-prove", "--expired", "fail", *paths]) == 1
    assert "FAIL: 1 violation(s)" in capsys.readouterr().out
    assert cli_main(["check", "--no-prove", "--format", "sarif", *paths]) == 0
    sarif = json.loads(capsys.readouterr().out)
    assert_valid_sarif(sarif)
    [result] = sarif["runs"][0]["results"]
    assert (result["ruleId"], result["level"]) == ("EF504", "warning")
