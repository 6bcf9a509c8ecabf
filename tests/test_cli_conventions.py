"""The CLI behaves like Pulumi's and Checkov's: project discovery (walk-up, -C), `--stack
org/project/stack`, several formats and output files in one run, machine formats on bad input,
--soft-fail, --skip-check, a baseline of accepted findings, --quiet, --version, help with exit
codes and examples, progress on standard error, "did you mean" for config typos, and plans that
`check --state` reads and that diff cleanly.

The rules run on state files written from the session's evaluated stacks (no evaluation per
test); the few tests that evaluate say so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import mutations as m
import pytest
import yaml

from envfence import progress as progress_mod
from envfence.cli import _parser, main
from envfence.model import StackState, stable_order
from envfence.project import Project, ProjectFileError, find_root
from envfence.settings import ConfigError, parse_settings, read_peers

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("envfence: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def plans(tmp_path: Path, states: dict[str, StackState]) -> list[str]:
    """One plan file per stack, as `envfence plan --stack S --format json` writes it."""
    paths = []
    for name, state in sorted(states.items()):
        path = tmp_path / f"{name}.plan.json"
        path.write_text(json.dumps(state.to_document(), indent=2, sort_keys=True))
        paths.append(str(path))
    return paths


def state_args(paths: list[str]) -> list[str]:
    return [arg for p in paths for arg in ("--state", p)]


@pytest.fixture
def leaky_files(stacks: dict[str, StackState], tmp_path: Path) -> list[str]:
    """prod peers with experiment: EF101 fires on prod (and only it)."""
    (tmp_path / "leaky").mkdir()
    return plans(tmp_path / "leaky", m.mutated(stacks, m.vpc_peering))


@pytest.fixture
def clean_files(stacks: dict[str, StackState], tmp_path: Path) -> list[str]:
    (tmp_path / "clean").mkdir()
    return plans(tmp_path / "clean", stacks)


# --------------------------------------------------------------------------------------------
# The project is the one around the working directory (walk-up), or around -C DIR


def test_the_project_is_found_by_walking_up(
    repo: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second checkout reports its own stack files, not those of the checkout envfence was
    installed from: here a copy with one more stack, run from a directory inside it."""
    text = (ROOT / "infra" / "experiment-template.yaml").read_text()
    assert "${" in text  # a template: `experiment new` fills it in; use new here instead
    monkeypatch.chdir(repo.root)
    code, out, err = run(
        ["experiment", "new", "walkup", "--owner", "t@example.com", "--expires", "2099-01-01"],
        capsys,
    )
    assert code == 0, err
    inside = repo.root / "deep" / "er"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    assert find_root() == repo.root.resolve()
    code, out, err = run(["stacks", "--format", "json"], capsys)
    assert code == 0, err
    assert [r["stack"] for r in json.loads(out)] == ["experiment", "prod", "experiment-walkup"]
    # the repository envfence runs from has no such stack
    monkeypatch.chdir(ROOT)
    code, out, _ = run(["stacks", "--format", "json"], capsys)
    assert "experiment-walkup" not in [r["stack"] for r in json.loads(out)]


@pytest.mark.parametrize("where", ["before", "after"])
def test_cwd_option_names_the_project(
    where: str,
    repo: Project,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    argv = (
        ["-C", str(repo.root), "stacks", "--format", "json"]
        if where == "before"
        else ["stacks", "--cwd", str(repo.root / "infra"), "--format", "json"]
    )
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert {r["stack"] for r in json.loads(out)} == {"prod", "experiment"}
    assert Path.cwd() == elsewhere  # -C does not leak out of the command


def test_no_project_and_bad_cwd_are_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["stacks"], capsys)
    assert code == 2 and out == ""
    one_error_line(err, "no Pulumi.yaml", str(tmp_path), "--cwd")
    code, _, err = run(["-C", str(tmp_path / "missing"), "stacks"], capsys)
    assert code == 2
    one_error_line(err, "--cwd", "no such directory")
    with pytest.raises(ProjectFileError):
        find_root(tmp_path)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("acme/other/prod", "project 'other' is not this repository's project 'envfence'"),
        ("acme//prod", "expected NAME, org/NAME or org/project/NAME"),
        ("a/b/c/prod", "expected NAME, org/NAME or org/project/NAME"),
        ("acme/envfence/staging", "unknown stack 'staging'"),
    ],
)
def test_bad_stack_references(value: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", "--no-prove", "--stack", value], capsys)
    assert code == 2 and out == ""
    one_error_line(err, needle)


def test_pulumi_stack_references_are_accepted(
    stacks: dict[str, StackState], capsys: pytest.CaptureFixture[str]
) -> None:
    """`org/stack` and `org/project/stack` name the stack as Pulumi does (evaluates prod)."""
    code, out, err = run(["plan", "--stack", "acme/envfence/prod", "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["envfence"]["stack"] == "prod"
    # evaluated again in this process, it is byte for byte the session's plan: stable order
    assert out == json.dumps(stacks["prod"].to_document(), indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------------------------
# Plans: readable by check --state, stable order


def test_resource_order_does_not_depend_on_registration_order(
    stack_copy: Any,
) -> None:
    state = stack_copy("experiment")
    first = json.dumps(state.to_document(), sort_keys=True)
    for seed in range(3):
        random.Random(seed).shuffle(state.resources)
        assert json.dumps(state.to_document(), sort_keys=True) == first
    # what a resource refers to comes first, as in `pulumi stack export`
    seen: set[str] = set()
    urns = {r.urn for r in state.resources}
    for r in stable_order(state.resources):
        refs = {r.parent, *(r.dependencies or [])} & urns
        assert refs <= seen, (r.urn, refs - seen)
        seen.add(r.urn)


def test_a_plan_of_several_stacks_is_read_by_check_state(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`envfence plan --format json` over every stack is a list; `check --state` reads it (the
    rules and the proofs see both stacks)."""
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps([s.to_document() for _, s in sorted(stacks.items())], indent=2, sort_keys=True)
    )
    code, out, err = run(["check", "--state", str(path), "--format", "json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert sorted(doc["stacks"]) == ["experiment", "prod"]
    assert doc["proofs"]["ok"] is True
    # the same stack twice (a list and a single file) is refused
    single = plans(tmp_path, {"prod": stacks["prod"]})
    code, _, err = run(["check", "--no-prove", "--state", str(path), *state_args(single)], capsys)
    assert code == 2
    one_error_line(err, "several states of stack prod")


# --------------------------------------------------------------------------------------------
# Formats and output files


def test_several_formats_to_several_files(
    leaky_files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, doc = tmp_path / "out" / "report.txt", tmp_path / "out" / "report.json"
    code, out, err = run(
        [
            "check",
            "--no-prove",
            *state_args(leaky_files),
            "--format",
            "text,json",
            "--output-file",
            f"{text},{doc}",
        ],
        capsys,
    )
    assert code == 1 and out == "" and err == ""
    assert "EF101" in text.read_text() and "FAIL" in text.read_text()
    assert [v["rule"] for v in json.loads(doc.read_text())["violations"]] == ["EF101"]


def test_formats_to_a_directory_and_stdout(
    leaky_files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    code, out, _ = run(
        [
            "check",
            "--no-prove",
            *state_args(leaky_files),
            "-f",
            "text",
            "-f",
            "json",
            "--output-file",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 1 and out == ""
    assert sorted(p.name for p in out_dir.iterdir()) == ["envfence.json", "envfence.txt"]
    code, out, _ = run(
        [
            "check",
            "--no-prove",
            *state_args(leaky_files),
            "--format",
            "json,text",
            f"--output-file=-,{out_dir / 'again.txt'}",
        ],
        capsys,
    )
    assert code == 1
    assert json.loads(out)["summary"]["violations"] == 1
    # `--output-file -,FILE` (a value starting with '-') works as written in CI
    code, out, _ = run(
        [
            "check",
            "--no-prove",
            *state_args(leaky_files),
            "--format",
            "json,text",
            "--output-file",
            f"-,{out_dir / 'third.txt'}",
        ],
        capsys,
    )
    assert code == 1 and json.loads(out)["violations"]
    assert "EF101" in (out_dir / "third.txt").read_text()


@pytest.mark.parametrize(
    ("formats", "files", "needle"),
    [
        ("text,json", None, "several formats need --output-file"),
        ("text,json", "a.txt", "1 file(s) for 2 format(s)"),
        ("text,json", "=-,-", "only one format can go to standard output"),
        ("xml", None, "--format xml: allowed: text, json, sarif"),
    ],
)
def test_bad_format_and_output_combinations(
    formats: str,
    files: str | None,
    needle: str,
    clean_files: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["check", "--no-prove", *state_args(clean_files), "--format", formats]
    if files:
        argv += [f"--output-file{files}"] if files.startswith("=") else ["--output-file", files]
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    one_error_line(err, needle)


def test_json_on_bad_input_is_a_document_with_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CI uploads what the run wrote: a config error must not leave an empty file."""
    report = tmp_path / "envfence.json"
    code, out, err = run(
        ["check", "--stack", "staging", "--format", "json", "--output-file", str(report)],
        capsys,
    )
    assert code == 2 and out == ""
    one_error_line(err, "unknown stack 'staging'")
    doc = json.loads(report.read_text())
    assert doc["exitCode"] == 2 and "unknown stack 'staging'" in doc["error"]["message"]
    assert doc["violations"] == [] and doc["stacks"] == []


# --------------------------------------------------------------------------------------------
# --soft-fail, --skip-check, --quiet


def test_soft_fail_reports_but_exits_zero(
    leaky_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["check", "--no-prove", *state_args(leaky_files), "--soft-fail"], capsys)
    assert code == 0
    assert "EF101" in out and "FAIL: 1 violation(s)" in out and "--soft-fail" in out
    # bad input is still bad input
    code, _, _ = run(["check", "--soft-fail", "--stack", "staging"], capsys)
    assert code == 2


def test_skip_check_drops_the_rule_and_says_so(
    leaky_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        ["check", "--no-prove", *state_args(leaky_files), "--skip-check", "EF101"], capsys
    )
    assert code == 0
    assert "skipped checks (--skip-check): EF101" in out and "PASS" in out
    code, out, _ = run(
        ["check", "--no-prove", *state_args(leaky_files), "--skip-check", "EF1*", "-f", "json"],
        capsys,
    )
    assert code == 0
    doc = json.loads(out)
    assert "EF101" in doc["skipped"] and all(s.startswith("EF1") for s in doc["skipped"])
    # another rule skipped: EF101 still fails
    code, _, _ = run(
        ["check", "--no-prove", *state_args(leaky_files), "--skip-check", "EF102"], capsys
    )
    assert code == 1


@pytest.mark.parametrize(
    ("skip", "needle"),
    [
        ("EF1011", "matches no rule (did you mean EF101?)"),
        ("EFP01", "proofs are not skipped one by one"),
    ],
)
def test_skip_check_refuses_what_it_cannot_skip(
    skip: str, needle: str, clean_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        ["check", "--no-prove", *state_args(clean_files), "--skip-check", skip], capsys
    )
    assert code == 2
    one_error_line(err, needle)


def test_quiet_prints_only_what_fails(
    clean_files: list[str], leaky_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["check", "--no-prove", *state_args(clean_files), "--quiet"], capsys)
    assert code == 0
    assert out.strip().splitlines() == [out.strip().splitlines()[-1]]
    assert out.strip().startswith("PASS")
    code, out, _ = run(["check", "--no-prove", *state_args(leaky_files), "-q"], capsys)
    assert code == 1
    assert "EF101" in out and "resources checked" not in out and "clean" not in out


# --------------------------------------------------------------------------------------------
# The baseline of accepted findings


def baseline_file(tmp_path: Path, entries: list[dict[str, Any]]) -> str:
    path = tmp_path / "baseline.yaml"
    path.write_text(yaml.safe_dump({"accepted": entries}))
    return str(path)


PEERING = {"rule": "EF101", "stack": "prod", "resource": "peer-experiment"}


def test_a_baselined_finding_is_reported_with_its_reason_and_passes(
    leaky_files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = baseline_file(tmp_path, [{**PEERING, "reason": "migration window, ticket NET-7"}])
    argv = ["check", "--no-prove", *state_args(leaky_files), "--baseline", path]
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "accepted by the baseline (1)" in out and "migration window, ticket NET-7" in out
    code, out, _ = run([*argv, "--format", "json"], capsys)
    doc = json.loads(out)
    assert doc["violations"] == []
    assert [(a["rule"], a["reason"]) for a in doc["accepted"]] == [
        ("EF101", "migration window, ticket NET-7")
    ]


def test_an_expired_or_unmatched_baseline_entry_is_reported(
    leaky_files: list[str],
    clean_files: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = baseline_file(tmp_path, [{**PEERING, "reason": "temporary", "expires": "2020-01-01"}])
    code, out, _ = run(
        ["check", "--no-prove", *state_args(leaky_files), "--baseline", path], capsys
    )
    assert code == 1  # expired: the finding fails again
    assert "expired on 2020-01-01" in out
    path = baseline_file(tmp_path, [{**PEERING, "reason": "temporary"}])
    code, out, _ = run(
        ["check", "--no-prove", *state_args(clean_files), "--baseline", path], capsys
    )
    assert code == 0
    assert "matches no finding" in out


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({**PEERING}, "accepted[0].reason is missing or empty"),
        ({**PEERING, "reason": "  "}, "accepted[0].reason is missing or empty"),
        ({**PEERING, "reason": "x", "rule": "EFP01"}, "proofs, EFP*, are never baselined"),
        ({**PEERING, "reason": "x", "expires": "soon"}, "accepted[0].expires"),
        ({**PEERING, "reason": "x", "why": "y"}, "unknown key why"),
    ],
)
def test_a_bad_baseline_is_bad_input(
    entry: dict[str, Any],
    needle: str,
    leaky_files: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = baseline_file(tmp_path, [entry])
    code, _, err = run(
        ["check", "--no-prove", *state_args(leaky_files), "--baseline", path], capsys
    )
    assert code == 2
    one_error_line(err, path, needle)


def test_create_baseline_writes_findings_that_need_reasons(
    leaky_files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new-baseline.yaml"
    code, _, err = run(
        ["check", "--no-prove", *state_args(leaky_files), "--create-baseline", str(path)], capsys
    )
    assert code == 0 and "fill in each reason" in err
    doc = yaml.safe_load(path.read_text())
    assert doc["accepted"] == [{**PEERING, "reason": ""}]
    argv = ["check", "--no-prove", *state_args(leaky_files), "--baseline", str(path)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "reason is missing or empty" in err  # refused until reviewed
    doc["accepted"][0]["reason"] = "reviewed"
    path.write_text(yaml.safe_dump(doc))
    assert run(argv, capsys)[0] == 0


# --------------------------------------------------------------------------------------------
# --version, help, progress


def test_version_names_envfence_and_its_engines(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"envfence {metadata.version('envfence')} ")
    assert f"pulumi {metadata.version('pulumi')}" in out and "cvc5" in out


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Any]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(((*path, name), sub))
                found += _commands(sub, (*path, name))
    return found


def test_every_command_documents_its_options_exit_codes_and_an_example() -> None:
    commands = _commands(_parser())
    assert {c[0] for c in commands} >= {
        ("plan",),
        ("check",),
        ("prove",),
        ("stacks",),
        ("experiment",),
        ("experiment", "new"),
        ("experiment", "list"),
        ("experiment", "conclude"),
    }
    for path, sub in commands:
        text = sub.format_help()
        assert sub.description, path
        assert "exit codes:" in text and "examples:" in text, path
        assert f"envfence {' '.join(path)}" in (sub.epilog or "") or path == ("experiment",), path
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, (path, action.dest)


def test_plain_progress_prints_one_line_per_step(
    clean_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["check", "--no-prove", *state_args(clean_files), "--progress", "plain"], capsys
    )
    assert code == 0 and "PASS" in out
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("envfence: checked ") for line in lines)
    code, _, err = run(
        ["check", "--no-prove", *state_args(clean_files), "--progress", "none"], capsys
    )
    assert code == 0 and err == ""


def test_auto_progress_follows_the_terminal_and_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CI", raising=False)
    assert progress_mod.resolve("auto", io.StringIO()) == "none"
    assert progress_mod.resolve("auto", Tty()) == "tty"
    monkeypatch.setenv("CI", "true")
    assert progress_mod.resolve("auto", io.StringIO()) == "plain"
    assert progress_mod.resolve("none", Tty()) == "none"


def test_the_spinner_appears_only_after_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    fast = Tty()
    with progress_mod.Progress("tty", fast) as p, p.step("quick"):
        pass
    assert fast.getvalue() == ""
    monkeypatch.setattr(progress_mod, "DELAY", 0.05)
    slow = Tty()
    with progress_mod.Progress("tty", slow) as p, p.step("evaluating stack prod"):
        time.sleep(0.4)
    assert "evaluating stack prod" in slow.getvalue()


# --------------------------------------------------------------------------------------------
# "did you mean" for config keys


def _config(project: Project, stack: str) -> dict[str, str]:
    return dict(project.stack_config(stack))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("envfence:network", "envfence:netwrok"), "did you mean envfence:network?"),
        (("envfence:dataStores", "envfence:datastores"), "did you mean envfence:dataStores?"),
    ],
)
def test_config_key_typos_suggest_the_key(
    edit: tuple[str, str], needle: str, project: Project
) -> None:
    raw = _config(project, "prod")
    raw[edit[1]] = raw.pop(edit[0])
    with pytest.raises(ConfigError) as exc:
        parse_settings(project.name, "prod", raw, read_peers(project, "prod"), project.registry)
    assert needle in str(exc.value)


def test_nested_config_key_typos_suggest_the_key(project: Project) -> None:
    raw = _config(project, "prod")
    access = json.loads(raw["envfence:access"])
    access["deployr"] = access.pop("deployer")
    raw["envfence:access"] = json.dumps(access)
    with pytest.raises(ConfigError) as exc:
        parse_settings(project.name, "prod", raw, read_peers(project, "prod"), project.registry)
    assert "did you mean envfence:access.deployer?" in str(exc.value)
    # an unrelated word gets no guess
    raw = _config(project, "prod")
    raw["envfence:zzzzqqq"] = "1"
    with pytest.raises(ConfigError) as exc:
        parse_settings(project.name, "prod", raw, read_peers(project, "prod"), project.registry)
    assert "did you mean" not in str(exc.value)


def test_the_cwd_is_restored_after_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = os.getcwd()
    (tmp_path / "Pulumi.yaml").write_text("name: [broken\n")
    code, _, err = run(["-C", str(tmp_path), "stacks"], capsys)
    assert code == 2 and "Pulumi.yaml" in err
    assert os.getcwd() == before
    shutil.rmtree(tmp_path)


def test_sarif_of_a_baselined_run_suppresses_with_the_reason(
    leaky_files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sarif_schema import assert_valid_sarif

    path = baseline_file(tmp_path, [{**PEERING, "reason": "migration window, ticket NET-7"}])
    out_file = tmp_path / "envfence.sarif"
    formats = ["--format", "text,sarif", f"--output-file=-,{out_file}"]
    code, out, _ = run(
        ["check", "--no-prove", *state_args(leaky_files), "--baseline", path, *formats],
        capsys,
    )
    assert code == 0 and "accepted by the baseline (1)" in out
    doc = json.loads(out_file.read_text())
    assert_valid_sarif(doc)
    [result] = doc["runs"][0]["results"]
    assert result["ruleId"] == "EF101"
    assert result["suppressions"][0]["justification"] == "migration window, ticket NET-7"
    # the location points into the state file the stack came from
    uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.endswith("prod.plan.json")


def test_sarif_on_bad_input_is_a_valid_log_holding_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sarif_schema import assert_valid_sarif

    report = tmp_path / "envfence.sarif"
    code, out, err = run(
        ["check", "--stack", "staging", "--format", "text,sarif", f"--output-file=-,{report}"],
        capsys,
    )
    assert code == 2 and out == ""
    one_error_line(err, "unknown stack 'staging'")
    doc = json.loads(report.read_text())
    assert_valid_sarif(doc)
    [inv] = doc["runs"][0]["invocations"]
    assert inv["executionSuccessful"] is False and inv["exitCode"] == 2
    assert "unknown stack 'staging'" in inv["toolExecutionNotifications"][0]["message"]["text"]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        # another account's role: CI would assume it for this stack's preview
        ("arn:aws:iam::210987654321:role/envfence-preview", "config envfence:access.previewRole"),
        # one of the environment's own roles
        ("arn:aws:iam::123456789012:role/envfence-prod-pipeline", "not a role of the environment"),
        ("envfence-preview", "in account 123456789012"),
    ],
)
def test_preview_role_is_a_role_of_the_stacks_account_outside_the_environment(
    value: str, needle: str, project: Project
) -> None:
    raw = _config(project, "prod")
    access = json.loads(raw["envfence:access"])
    settings = parse_settings(
        project.name, "prod", raw, read_peers(project, "prod"), project.registry
    )
    assert settings.preview_role == access["previewRole"]
    access["previewRole"] = value
    raw["envfence:access"] = json.dumps(access)
    with pytest.raises(ConfigError) as exc:
        parse_settings(project.name, "prod", raw, read_peers(project, "prod"), project.registry)
    assert needle in str(exc.value)
    # optional: without it the stack is not previewed, and still valid
    del access["previewRole"]
    raw["envfence:access"] = json.dumps(access)
    assert (
        parse_settings(
            project.name, "prod", raw, read_peers(project, "prod"), project.registry
        ).preview_role
        == ""
    )


def test_quiet_shows_the_refuted_proof_and_its_witness(
    stacks: dict[str, StackState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the proofs: only what is not proved, with its counterexample; no control listing."""
    from test_prove_cli import leaky

    (tmp_path / "iam").mkdir()
    paths = plans(tmp_path / "iam", leaky(stacks))
    code, out, _ = run(["check", *state_args(paths), "--quiet"], capsys)
    assert code == 1
    assert "iam prod -> experiment: refuted" in out
    assert "may s3:DeleteObject on arn:aws:s3:::envfence-experiment-results-" in out
    assert "controls (must find access)" not in out and "environment pairs" not in out
    assert "iam experiment -> prod" not in out  # proved: not shown
    assert "NOT PROVED" in out.strip().splitlines()[-1]
