"""`envfence experiment new | list`: an experiment's stack file from one command, and every
experiment's expiry at a glance. (`conclude` against a moto server: tests/test_conclude.py.)"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml

import envfence.cli as cli_module
from envfence import experiments, naming
from envfence.cli import main as cli_main
from envfence.model import StackState
from envfence.project import Project

TODAY = dt.date(2026, 12, 2)


def _new(project: Project, ident: str, **kwargs: str) -> Path:
    options = {"owner": "ab-team@example.com", "expires": "2027-01-31"} | kwargs
    path, _ = experiments.new(project, ident, today=TODAY, **options)  # type: ignore[arg-type]
    return path


def test_new_writes_a_valid_stack_file_with_a_free_cidr_and_no_flows(repo: Project) -> None:
    path = _new(repo, "abtest")
    assert path == repo.root / "Pulumi.experiment-abtest.yaml"
    config = yaml.safe_load(path.read_text())["config"]
    assert config["envfence:experimentId"] == "abtest"
    assert config["envfence:expiresOn"] == "2027-01-31"
    assert config["envfence:owner"] == "ab-team@example.com"
    assert config["envfence:allowedAccountIds"] == ["210987654321"]  # the registry's account
    assert config["envfence:flows"] == []
    assert "envfence:tier" not in config  # the registry's, not the file's
    assert config["envfence:network"]["cidr"] == "10.30.0.0/16"
    second = yaml.safe_load(_new(repo, "second").read_text())["config"]
    assert second["envfence:network"]["cidr"] == "10.31.0.0/16"  # 10.30 is taken now


def test_new_with_promote_to_declares_the_flow_on_its_side(repo: Project) -> None:
    config = yaml.safe_load(_new(repo, "promo", promote_to="prod").read_text())["config"]
    assert config["envfence:flows"] == [
        {
            "from": "prod",
            "to": "experiment-promo",
            "role": "pipeline",
            "store": "results",
            "access": "read",
        }
    ]


@pytest.mark.parametrize(
    ("ident", "kwargs", "message"),
    [
        ("AB_test", {}, "experiment id 'AB_test' is not allowed"),
        ("a", {}, "2-16 of lowercase letters"),
        ("abtest", {"expires": "2026-12-02"}, "is not in the future (today is 2026-12-02)"),
        ("abtest", {"expires": "2027-13-01"}, "is not a date YYYY-MM-DD"),
        ("abtest", {"account": "123456789012"}, "is not one of 210987654321"),
        ("shared", {}, "stack 'experiment' already uses experiment id 'shared'"),
        ("abtest", {"promote_to": "nowhere"}, "--promote-to 'nowhere'"),
    ],
)
def test_new_refuses_bad_input_and_writes_nothing(
    repo: Project, ident: str, kwargs: dict[str, str], message: str
) -> None:
    before = sorted(p.name for p in repo.root.iterdir())
    with pytest.raises(experiments.ExperimentError) as info:
        _new(repo, ident, **kwargs)
    assert message in str(info.value)
    assert sorted(p.name for p in repo.root.iterdir()) == before


def test_new_refuses_a_taken_id(repo: Project) -> None:
    _new(repo, "abtest")
    with pytest.raises(experiments.ExperimentError) as info:
        _new(repo, "abtest")
    assert "experiment id 'abtest' is taken: Pulumi.experiment-abtest.yaml exists" in str(
        info.value
    )


def test_new_removes_a_file_the_program_would_refuse(repo: Project) -> None:
    """The written file is validated as `pulumi up` would (an owner of 200 characters is not a
    valid tag value); a refused file is removed again."""
    with pytest.raises(experiments.ExperimentError) as info:
        _new(repo, "abtest", owner="x" * 200)
    assert "config envfence:owner" in str(info.value)
    assert not (repo.root / "Pulumi.experiment-abtest.yaml").exists()


def test_new_through_the_cli_prints_the_next_commands(
    repo: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_module, "_repository", lambda: repo)
    code = cli_main(
        ["experiment", "new", "abtest", "--owner", "team@example.com", "--expires", "2099-01-01"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "wrote Pulumi.experiment-abtest.yaml: experiment abtest, account 210987654321" in out
    assert "pulumi stack init experiment-abtest" in out
    assert "pulumi up --stack experiment-abtest" in out
    assert cli_main(["experiment", "new", "abtest", "--owner", "t", "--expires", "2099-01-01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("envfence: error: experiment id 'abtest' is taken")


# -- list ------------------------------------------------------------------------------------


def test_list_shows_every_experiment_with_its_state(repo: Project) -> None:
    _new(repo, "soon", expires="2026-12-05")
    _new(repo, "later", expires="2027-03-01")
    path = _new(repo, "old", expires="2026-12-03")
    doc = yaml.safe_load(path.read_text())
    doc["config"]["envfence:expiresOn"] = "2026-11-20"  # written earlier, expired since
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    found = {r.stack: r for r in experiments.rows(repo, today=TODAY)}
    assert "prod" not in found  # production is not an experiment
    assert (found["experiment"].state, found["experiment"].days_left) == ("no expiry", None)
    assert (found["experiment-soon"].state, found["experiment-soon"].days_left) == ("expiring", 3)
    assert (found["experiment-later"].state, found["experiment-later"].days_left) == ("active", 89)
    assert (found["experiment-old"].state, found["experiment-old"].days_left) == ("expired", -12)
    assert found["experiment-later"].owner == "ab-team@example.com"
    assert found["experiment-later"].cidr == "10.31.0.0/16"


def test_list_json_and_fail_on_expired(
    repo: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_module, "_repository", lambda: repo)
    path = _new(repo, "old", expires="2026-12-03")
    assert cli_main(["experiment", "list", "--fail-on-expired"]) == 0  # nothing expired yet
    capsys.readouterr()
    doc = yaml.safe_load(path.read_text())
    doc["config"]["envfence:expiresOn"] = "2026-11-20"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli_main(["experiment", "list", "--format", "json"]) == 0  # a listing never fails
    rows = {r["stack"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["experiment-old"]["state"] == "expired"
    assert rows["experiment-old"]["expires"] == "2026-11-20"
    assert cli_main(["experiment", "list", "--fail-on-expired"]) == 1
    out = capsys.readouterr().out
    assert "experiment-old expired on 2026-11-20" in out
    assert "conclude it: envfence experiment conclude old" in out


def test_list_reports_an_invalid_stack_file_instead_of_failing(repo: Project) -> None:
    path = _new(repo, "broken")
    path.write_text(path.read_text().replace("cidr: 10.30.0.0/16", "cidr: 10.10.0.0/16"))
    [row] = [r for r in experiments.rows(repo, today=TODAY) if r.stack == "experiment-broken"]
    assert row.state == "invalid"
    assert "does not overlap stack 'prod'" in (row.problem or "")


# -- ids that would read as the shared stack's names ------------------------------------------


def test_the_reserved_words_are_every_first_word_of_the_shared_stacks_names(
    stacks: dict[str, StackState],
) -> None:
    """Every physical name of the shared `experiment` stack, `envfence-experiment-<word>...`:
    each <word> is a reserved word or one of its data stores (so the list cannot drift)."""
    text = json.dumps([(r.inputs, r.outputs) for r in stacks["experiment"].resources])
    words = set(re.findall(r"envfence-experiment-([a-z0-9]+)", text))
    stores = {"raw", "curated", "results"}
    assert words - stores == set(naming.NAME_WORDS) - {"final"}  # `-final`: the snapshot name


@pytest.mark.parametrize("ident", ["ingest", "ingest-dlq", "raw", "service-x", "audit"])
def test_an_id_that_reads_as_a_shared_stack_name_is_refused(repo: Project, ident: str) -> None:
    with pytest.raises(experiments.ExperimentError) as info:
        _new(repo, ident)
    assert f"stack 'experiment' names its resources <project>-experiment-{ident.split('-')[0]}" in (
        str(info.value)
    )


def test_an_id_that_only_starts_like_a_word_is_accepted(repo: Project) -> None:
    assert _new(repo, "ingestion").name == "Pulumi.experiment-ingestion.yaml"
