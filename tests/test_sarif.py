"""The SARIF log (`envfence.sarif.document`): valid against the packaged SARIF 2.1.0 schema, with
what GitHub code scanning reads (driver version, security severities, lines, fingerprints,
invocations), on findings made by the leaks of tests/mutations.py.

Stack files are written by the tests (copies of the repository's, with traps: a comment and a
value that mention config keys, so a text search would point at the wrong line); state files
the way tests/test_check_cli.py writes them.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import importlib.metadata
import json
import re
import urllib.parse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mutations as m
import pytest
import yaml
from conftest import ROOT
from sarif_schema import assert_github_ready, assert_valid_sarif, errors, schema
from test_check_cli import write
from test_prove_iam import flow_widened_to_delete

from envfence import sarif
from envfence.model import StackState
from envfence.project import Project
from envfence.prove.run import ProofReport, prove
from envfence.rules import all_rules, run_all
from envfence.rules.engine import Result, Violation

Stacks = dict[str, StackState]

START = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
END = START + dt.timedelta(seconds=12)

# The leaks, and the config key each of their rules' findings must point at.
LEAKS = (
    m.vpc_peering,
    m.pab_setting_off,
    m.db_public,
    m.role_without_boundary,
    m.service_public_ip,
    m.trail_single_region,
    m.experiment_expired,
    m.log_group_kept_forever,
    m.flow_one_side,
    m.key_rotation_off,
    m.image_from_other_repository,
)
KEY_OF_RULE = {
    "EF101": "envfence:network",
    "EF106": "envfence:database",
    "EF201": "envfence:database",
    "EF203": "envfence:dataStores",
    "EF206": "envfence:dataStores",
    "EF207": "envfence:dataStores",
    "EF211": "envfence:logRetentionDays",
    "EF301": "envfence:access",
    "EF303": "envfence:access",
    "EF320": "envfence:flows",
    "EF401": "envfence:access",
    "EF402": "config",  # a key's rotation has no config key of its own
    "EF504": "envfence:expiresOn",
    "EF602": "envfence:container",
    "EF603": "envfence:container",
    "EF701": "envfence:audit",
}
TRAP = (
    "# A comment that names envfence:dataStores: envfence:network: envfence:database:\n"
    "# envfence:access: envfence:container: envfence:audit: config: (never a location)\n"
)


def invocation(cwd: Path, code: int = 1, error: str | None = None) -> sarif.Invocation:
    return sarif.Invocation(
        ["envfence", "check", "--format", "sarif"], cwd, START, END, code, error
    )


def stack_files(root: Path) -> Path:
    """The repository's stack files, copied to `root` with the traps (and an `expiresOn` in
    experiment's, where EF504 points)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("prod", "experiment"):
        text = (ROOT / f"Pulumi.{name}.yaml").read_text()
        text = text.replace(
            "config:\n",
            'config:\n  envfence:owner: "envfence:database: is not here"\n'
            + ('  envfence:expiresOn: "2020-01-31"\n' if name == "experiment" else ""),
            1,
        )
        text = re.sub(r"^  envfence:owner: [^\n]*@[^\n]*\n", "", text, count=1, flags=re.M)
        (root / f"Pulumi.{name}.yaml").write_text(TRAP + text)
    return root


@pytest.fixture(scope="module")
def leaky(stacks: Stacks) -> Stacks:
    return m.mutated(stacks, *LEAKS)


@pytest.fixture(scope="module")
def leaky_result(leaky: Stacks, project: Project) -> Result:
    return run_all(leaky.values(), project)


@pytest.fixture(scope="module")
def refuted(stacks: Stacks, project: Project) -> tuple[Stacks, ProofReport]:
    """prod's pipeline may delete experiment results: the IAM pair is refuted (EFP01)."""
    s = copy.deepcopy(stacks)
    flow_widened_to_delete(s)
    return s, prove(s.values(), project)


def results(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["runs"][0]["results"])


def region_of(res: dict[str, Any]) -> tuple[str, int, int]:
    physical = res["locations"][0]["physicalLocation"]
    region = physical["region"]
    return physical["artifactLocation"]["uri"], region["startLine"], region.get("startColumn", 1)


def path_of(uri: str, root: Path) -> Path:
    """The file a result's `artifactLocation.uri` names (relative to `root`, or a file URI)."""
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    return root / urllib.parse.unquote(uri)


def line_at(path: Path, line: int, column: int) -> str:
    return path.read_text().splitlines()[line - 1][column - 1 :]


def fingerprints(doc: dict[str, Any]) -> list[str]:
    return [res["partialFingerprints"][sarif.FINGERPRINT] for res in results(doc)]


# --------------------------------------------------------------------------------------------
# The schema and its validator


def test_the_packaged_schema_is_the_recorded_oasis_file() -> None:
    s = schema()
    assert s["$schema"] == "http://json-schema.org/draft-04/schema#"
    assert s["id"] == sarif.SCHEMA_URI
    digest = hashlib.sha256(sarif.SCHEMA_PATH.read_bytes()).hexdigest()
    assert digest in (sarif.SCHEMA_PATH.parent / "README.md").read_text()


def _minimal() -> dict[str, Any]:
    return {
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "envfence", "rules": [{"id": "EF101"}]}},
                "results": [
                    {
                        "ruleId": "EF101",
                        "message": {"text": "m"},
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": {"uri": "Pulumi.prod.yaml"},
                                    "region": {"startLine": 3},
                                }
                            }
                        ],
                    }
                ],
            }
        ],
    }


def _without_message(d: dict[str, Any]) -> None:
    del d["runs"][0]["results"][0]["message"]


def _bad_version(d: dict[str, Any]) -> None:
    d["version"] = "2.0.0"


def _line_zero(d: dict[str, Any]) -> None:
    d["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0


def _bad_level(d: dict[str, Any]) -> None:
    d["runs"][0]["results"][0]["level"] = "critical"


def _empty_region(d: dict[str, Any]) -> None:
    d["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"] = {"endLine": 2}


def _invocation_without_success(d: dict[str, Any]) -> None:
    d["runs"][0]["invocations"] = [{"exitCode": 2}]


def _bad_time(d: dict[str, Any]) -> None:
    d["runs"][0]["invocations"] = [{"executionSuccessful": True, "startTimeUtc": "yesterday"}]


def _no_driver_name(d: dict[str, Any]) -> None:
    del d["runs"][0]["tool"]["driver"]["name"]


@pytest.mark.parametrize(
    "breaks",
    [
        _without_message,
        _bad_version,
        _line_zero,
        _bad_level,
        _empty_region,
        _invocation_without_success,
        _bad_time,
        _no_driver_name,
    ],
)
def test_the_validator_rejects_an_invalid_log(breaks: Any) -> None:
    doc = _minimal()
    assert_valid_sarif(doc)
    breaks(doc)
    assert errors(doc)
    with pytest.raises(AssertionError, match="not valid SARIF"):
        assert_valid_sarif(doc)


# --------------------------------------------------------------------------------------------
# The driver and its rules


def test_driver_version_is_the_installed_distribution(tmp_path: Path) -> None:
    doc = sarif.document(None, None, invocation=invocation(tmp_path, 2, "x"), project_root=None)
    driver = doc["runs"][0]["tool"]["driver"]
    assert driver["name"] == "envfence"
    assert driver["version"] == importlib.metadata.version("envfence")


BANDS = {"critical": (9.0, 10.0), "high": (7.0, 8.9), "medium": (4.0, 6.9), "low": (0.1, 3.9)}


def test_every_rule_has_its_security_severity_and_tags(tmp_path: Path) -> None:
    doc = sarif.document(None, None, invocation=invocation(tmp_path, 2, "x"), project_root=None)
    rules = doc["runs"][0]["tool"]["driver"]["rules"]
    expected = {r.id: r.severity for r in all_rules()}
    expected.update(EFP01="critical", EFP02="critical", EFP03="high")
    assert [r["id"] for r in rules] == [r.id for r in all_rules()] + ["EFP01", "EFP02", "EFP03"]
    assert set(expected.values()) >= {"critical", "high", "medium"}
    for r in rules:
        severity = expected[r["id"]]
        score = r["properties"]["security-severity"]
        assert isinstance(score, str) and score == sarif.SECURITY_SEVERITY[severity]
        low, high = BANDS[severity]
        assert low <= float(score) <= high, (r["id"], score)
        assert r["properties"]["tags"][0] == "security"
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note")
        assert r["fullDescription"]["text"].startswith(r["shortDescription"]["text"])
        assert r["help"]["markdown"].startswith(f"**{r['id']} `{r['name']}`**")
    levels = {r["id"]: r["defaultConfiguration"]["level"] for r in rules}
    assert (levels["EF101"], levels["EF402"], levels["EF504"]) == ("error", "warning", "warning")
    assert {sarif.SECURITY_SEVERITY[s] for s in BANDS} == {"9.5", "8.0", "5.5", "3.0"}


def test_information_and_help_uri_in_github_actions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In GitHub Actions the README of the checkout, at the commit, with the rule table's
    anchor; a project whose README does not document the rules gets no such link."""
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.example")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/infra")
    monkeypatch.setenv("GITHUB_SHA", "0123abc")
    doc = sarif.document(None, None, invocation=invocation(ROOT, 2, "x"), project_root=ROOT)
    driver = doc["runs"][0]["tool"]["driver"]
    readme = "https://github.example/acme/infra/blob/0123abc/README.md"
    assert driver["informationUri"] == readme
    anchors = sarif.heading_anchors((ROOT / "README.md").read_text())
    assert {"what-is-checked-offline", "what-is-proved"} <= anchors
    helps = {r["id"]: r["helpUri"] for r in driver["rules"]}
    assert helps["EF101"] == f"{readme}#what-is-checked-offline"
    assert helps["EFP01"] == f"{readme}#what-is-proved"
    readme_text = (ROOT / "README.md").read_text()
    for rule in all_rules():  # the anchor's table documents every rule
        assert f"| {rule.id} |" in readme_text, rule.id
    assert_github_ready(doc)

    (tmp_path / "README.md").write_text("# Our infrastructure\n\n## What is checked offline\n")
    other = sarif.document(
        None, None, invocation=invocation(tmp_path, 2, "x"), project_root=tmp_path
    )
    driver = other["runs"][0]["tool"]["driver"]
    assert driver.get("informationUri") == sarif.metadata_url()
    assert not any("helpUri" in r for r in driver["rules"])


def test_no_information_uri_that_is_not_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside GitHub Actions: the package's own project URL if it declares one, else none."""
    for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_SHA"):
        monkeypatch.delenv(name, raising=False)
    doc = sarif.document(None, None, invocation=invocation(ROOT, 2, "x"), project_root=ROOT)
    driver = doc["runs"][0]["tool"]["driver"]
    assert driver.get("informationUri") == sarif.metadata_url()
    assert not any("helpUri" in r for r in driver["rules"])
    assert_valid_sarif(doc)


# --------------------------------------------------------------------------------------------
# Results in stack files: the config key's line


def test_every_result_points_at_its_config_key(
    leaky_result: Result, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = stack_files(tmp_path / "repo")
    doc = sarif.document(leaky_result, None, invocation=invocation(root), project_root=root)
    assert_github_ready(doc)
    run = doc["runs"][0]
    assert run["originalUriBaseIds"] == {"%SRCROOT%": {"uri": root.resolve().as_uri() + "/"}}
    found = results(doc)
    assert {res["ruleId"] for res in found} == set(KEY_OF_RULE)
    for res in found:
        uri, line, column = region_of(res)
        stack = res["properties"]["stack"]
        assert uri == f"Pulumi.{stack}.yaml"
        assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"] == (
            "%SRCROOT%"
        )
        text = line_at(root / uri, line, column)
        assert text.startswith(f"{KEY_OF_RULE[res['ruleId']]}:"), (res["ruleId"], line, text)
        [logical] = res["locations"][0]["logicalLocations"]
        assert logical["fullyQualifiedName"].startswith(f"urn:pulumi:{stack}::")
        assert logical["kind"] == "resource"
    [bucket] = [res for res in found if res["ruleId"] == "EF203"]
    assert bucket["properties"]["urn"].endswith("::store-raw-public-access")
    warnings = [res for res in found if res["level"] == "warning"]
    assert {res["ruleId"] for res in warnings} == {"EF504", "EF402"}  # advisory, medium


def test_a_stack_file_without_the_key_falls_back_to_config_then_line_1(
    leaky_result: Result, tmp_path: Path
) -> None:
    root = stack_files(tmp_path)
    prod = root / "Pulumi.prod.yaml"
    text = prod.read_text()
    prod.write_text(re.sub(r"^  envfence:network:\n(    .*\n)+", "", text, flags=re.M))
    (root / "Pulumi.experiment.yaml").write_text("not: [valid\n")
    doc = sarif.document(leaky_result, None, invocation=invocation(root), project_root=root)
    assert_valid_sarif(doc)
    for res in results(doc):
        uri, line, column = region_of(res)
        if res["ruleId"] == "EF101":  # prod's network key is gone: the config: line
            assert line_at(root / uri, line, column) == "config:"
        if res["properties"]["stack"] == "experiment":  # unparsable: line 1
            assert (line, column) == (1, 1)


def test_a_project_outside_any_checkout_or_without_root(leaky_result: Result) -> None:
    doc = sarif.document(leaky_result, None, invocation=invocation(ROOT), project_root=None)
    assert_github_ready(doc)
    assert "originalUriBaseIds" not in doc["runs"][0]
    for res in results(doc):
        uri, line, _ = region_of(res)
        assert uri == f"Pulumi.{res['properties']['stack']}.yaml" and line == 1


# --------------------------------------------------------------------------------------------
# Results in state files: the URN's line


@pytest.mark.parametrize("inside", [True, False])
def test_state_file_results_point_at_the_urn(
    inside: bool,
    leaky: Stacks,
    refuted: tuple[Stacks, ProofReport],
    project: Project,
    tmp_path: Path,
) -> None:
    from envfence.state import load_file

    root = stack_files(tmp_path / "repo")
    states_dir = (root if inside else tmp_path) / "states"
    states_dir.mkdir()
    paths = write(states_dir, leaky, "preview+config")
    states = [load_file(p) for p in paths]
    files = {s.stack: Path(p) for s, p in zip(states, paths, strict=True)}
    result = run_all(states, project)
    _, proof = refuted
    doc = sarif.document(
        result, proof, invocation=invocation(root), project_root=root, state_files=files
    )
    assert_github_ready(doc)
    found = results(doc)
    assert {res["ruleId"] for res in found} == set(KEY_OF_RULE) | {"EFP01"}
    for res in found:
        artifact = res["locations"][0]["physicalLocation"]["artifactLocation"]
        uri, line, column = region_of(res)
        if inside:
            assert artifact["uriBaseId"] == "%SRCROOT%" and uri.startswith("states/")
        else:
            assert "uriBaseId" not in artifact and uri.startswith("file:///")
        path = path_of(uri, root)
        if res["ruleId"] == "EFP01":  # a pair, not a resource: the source's file
            assert path == files["prod"].resolve() and (line, column) == (1, 1)
            [related] = res["relatedLocations"]
            r_path = path_of(related["physicalLocation"]["artifactLocation"]["uri"], root)
            assert r_path == files["experiment"].resolve()
            urn = related["logicalLocations"][0]["fullyQualifiedName"]
            r_line = related["physicalLocation"]["region"]["startLine"]
            assert line_at(r_path, r_line, 1).strip().startswith(f'"urn": {json.dumps(urn)}')
            continue
        urn = res["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]
        assert path == files[res["properties"]["stack"]].resolve()
        assert line_at(path, line, column).startswith(f'"urn": {json.dumps(urn)}'), res["ruleId"]


def test_a_urn_missing_from_its_state_file_is_line_1(
    stacks: Stacks, tmp_path: Path, project: Project
) -> None:
    [path] = write(tmp_path, {"prod": stacks["prod"]}, "plan")
    v = Violation(
        "EF101", "no-vpc-peering", "critical", "prod", "urn:pulumi:prod::x::t::n", "m", "f"
    )
    result = Result(stacks=["prod"], violations=[v], rules=all_rules())
    doc = sarif.document(
        result,
        None,
        invocation=invocation(tmp_path),
        project_root=None,
        state_files={"prod": Path(path)},
    )
    assert_valid_sarif(doc)
    assert region_of(results(doc)[0])[1:] == (1, 1)


# --------------------------------------------------------------------------------------------
# Fingerprints


def test_fingerprints_are_stable_across_runs_and_reformatting(
    leaky_result: Result, tmp_path: Path
) -> None:
    root = stack_files(tmp_path)
    first = sarif.document(leaky_result, None, invocation=invocation(root), project_root=root)
    again = sarif.document(leaky_result, None, invocation=invocation(root), project_root=root)
    assert fingerprints(first) == fingerprints(again)
    before = {res["properties"]["urn"]: region_of(res) for res in results(first)}

    # Reformat every stack file: other key order, indentation, comments, blank lines.
    for name in ("prod", "experiment"):
        path = root / f"Pulumi.{name}.yaml"
        doc = yaml.safe_load(path.read_text())
        config = dict(reversed(list(doc["config"].items())))
        body = yaml.safe_dump({"config": config}, indent=4, sort_keys=False, width=60)
        path.write_text("\n\n# reformatted\n" + TRAP + "\n" + body)
    reformatted = sarif.document(leaky_result, None, invocation=invocation(root), project_root=root)
    assert_github_ready(reformatted)
    assert fingerprints(reformatted) == fingerprints(first)
    moved = 0
    for res in results(reformatted):
        uri, line, column = region_of(res)
        assert line_at(root / uri, line, column).startswith(f"{KEY_OF_RULE[res['ruleId']]}:")
        moved += (uri, line, column) != before[res["properties"]["urn"]]
    assert moved  # the lines did change; the fingerprints did not


def test_fingerprints_identify_rule_stack_and_resource(
    leaky_result: Result, stacks: Stacks, project: Project, tmp_path: Path
) -> None:
    doc = sarif.document(leaky_result, None, invocation=invocation(tmp_path), project_root=None)
    prints = fingerprints(doc)
    assert len(set(prints)) == len(prints)
    # the same finding with another message (numbers in it) keeps its fingerprint
    v = leaky_result.violations[0]
    changed = Result(
        stacks=leaky_result.stacks,
        violations=[Violation(v.rule, v.name, v.severity, v.stack, v.urn, v.message + " 42", "")],
        rules=leaky_result.rules,
    )
    one = sarif.document(changed, None, invocation=invocation(tmp_path), project_root=None)
    assert fingerprints(one)[0] == prints[0]
    # one leak on two buckets: same rule, two resources, two fingerprints
    both = m.mutated(stacks, m.versioning_suspended)
    m.versioning_suspended(both, store="curated")
    two = run_all(both.values(), project)
    doc2 = sarif.document(two, None, invocation=invocation(tmp_path), project_root=None)
    ef205 = [res for res in results(doc2) if res["ruleId"] == "EF205"]
    assert len(ef205) == 2
    assert len({res["partialFingerprints"][sarif.FINGERPRINT] for res in ef205}) == 2


def test_identical_findings_get_distinct_fingerprints_deterministically(tmp_path: Path) -> None:
    v = Violation("EF207", "n", "critical", "prod", "urn:pulumi:prod::p::aws:s3/b:B::raw", "m", "f")
    result = Result(stacks=["prod"], violations=[v, v, v], rules=all_rules())
    docs = [
        sarif.document(result, None, invocation=invocation(tmp_path), project_root=None)
        for _ in range(2)
    ]
    assert fingerprints(docs[0]) == fingerprints(docs[1])
    assert len(set(fingerprints(docs[0]))) == 3
    assert_github_ready(docs[0])


def test_proof_results_and_their_fingerprints(
    refuted: tuple[Stacks, ProofReport], stacks: Stacks, tmp_path: Path
) -> None:
    s, proof = refuted
    root = stack_files(tmp_path)
    result = Result(stacks=sorted(s), rules=all_rules())
    doc = sarif.document(result, proof, invocation=invocation(root), project_root=root)
    assert_github_ready(doc)
    [res] = results(doc)
    assert res["ruleId"] == "EFP01" and res["level"] == "error"
    assert res["message"]["text"].startswith("prod -> experiment: refuted.")
    uri, line, column = region_of(res)
    assert uri == "Pulumi.prod.yaml"
    assert line_at(root / uri, line, column).startswith("envfence:access:")
    [related] = res["relatedLocations"]
    r_line = related["physicalLocation"]["region"]["startLine"]
    r_uri = related["physicalLocation"]["artifactLocation"]["uri"]
    assert r_uri == "Pulumi.experiment.yaml"
    assert line_at(root / r_uri, r_line, 3).startswith("envfence:dataStores:")
    again = sarif.document(result, proof, invocation=invocation(root), project_root=root)
    assert fingerprints(again) == fingerprints(doc)


# --------------------------------------------------------------------------------------------
# Invocations and the error log


def test_invocation(leaky_result: Result, tmp_path: Path) -> None:
    doc = sarif.document(leaky_result, None, invocation=invocation(tmp_path), project_root=None)
    [inv] = doc["runs"][0]["invocations"]
    assert inv["executionSuccessful"] is True
    assert inv["exitCode"] == 1
    assert inv["commandLine"] == "envfence check --format sarif"
    assert inv["arguments"] == ["check", "--format", "sarif"]
    assert inv["startTimeUtc"] == "2026-01-02T03:04:05.678Z"
    assert inv["endTimeUtc"] == "2026-01-02T03:04:17.678Z"
    assert inv["workingDirectory"]["uri"] == tmp_path.resolve().as_uri() + "/"
    assert "toolExecutionNotifications" not in inv
    # argv without the program; local and naive times are converted to UTC
    local = dt.timezone(dt.timedelta(hours=2))
    other = sarif.Invocation(
        ["check"],
        tmp_path,
        dt.datetime(2026, 1, 2, 5, 0, tzinfo=local),
        dt.datetime(2026, 1, 2, 3, 0, 1),
        0,
    )
    [inv] = sarif.document(None, None, invocation=other, project_root=None)["runs"][0][
        "invocations"
    ]
    assert inv["commandLine"] == "envfence check" and inv["arguments"] == ["check"]
    assert (inv["startTimeUtc"], inv["endTimeUtc"]) == (
        "2026-01-02T03:00:00.000Z",
        "2026-01-02T03:00:01.000Z",
    )


def test_the_error_log_is_valid_sarif_with_the_message(tmp_path: Path) -> None:
    message = "stack 'nope': unknown stack: there is no Pulumi.nope.yaml"
    doc = sarif.document(
        None, None, invocation=invocation(tmp_path, 2, message), project_root=tmp_path
    )
    assert_github_ready(doc)
    [run] = doc["runs"]
    assert run["results"] == []
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == [r.id for r in all_rules()] + [
        "EFP01",
        "EFP02",
        "EFP03",
    ]
    [inv] = run["invocations"]
    assert inv["executionSuccessful"] is False
    assert inv["exitCode"] == 2
    [note] = inv["toolExecutionNotifications"]
    assert note["level"] == "error" and note["message"]["text"] == message


def test_error_json_has_the_report_keys() -> None:
    from envfence import report

    doc = report.error_json("bad input here")
    assert doc["error"] == {"message": "bad input here", "exitCode": 2}
    assert set(doc) >= set(report.to_json(Result(stacks=[], rules=all_rules())))
    assert doc["violations"] == [] and doc["stacks"] == [] and doc["warnings"] == []
    assert report.error_json("x", 3)["error"]["exitCode"] == 3


# --------------------------------------------------------------------------------------------
# Findings accepted by a baseline


def test_accepted_findings_are_suppressed_results_with_their_own_fingerprint(
    leaky_result: Result, tmp_path: Path
) -> None:
    root = stack_files(tmp_path)
    full = sarif.document(leaky_result, None, invocation=invocation(root), project_root=root)
    accepted_v = next(v for v in leaky_result.violations if v.rule == "EF203")
    rest = Result(
        stacks=leaky_result.stacks,
        violations=[v for v in leaky_result.violations if v is not accepted_v],
        warnings=leaky_result.warnings,
        rules=leaky_result.rules,
    )
    doc = sarif.document(rest, None, invocation=invocation(root), project_root=root)
    entry = SimpleNamespace(index=0, reason="reviewed: ticket DATA-1", expires=dt.date(2027, 3, 31))
    sarif.add_accepted(doc, [SimpleNamespace(violation=accepted_v, entry=entry)], root)
    assert_github_ready(doc)
    suppressed = [res for res in results(doc) if "suppressions" in res]
    [res] = suppressed
    assert res["suppressions"] == [
        {"kind": "external", "status": "accepted", "justification": "reviewed: ticket DATA-1"}
    ]
    assert res["properties"]["acceptedUntil"] == "2027-03-31"
    uri, line, column = region_of(res)
    assert line_at(root / uri, line, column).startswith("envfence:dataStores:")
    [same] = [r for r in results(full) if r["properties"]["urn"] == res["properties"]["urn"]]
    assert res["partialFingerprints"] == same["partialFingerprints"]


def test_report_to_sarif_is_the_same_log_without_proofs(leaky_result: Result) -> None:
    from envfence import report

    doc = report.to_sarif(leaky_result)
    assert_github_ready(doc)
    assert fingerprints(doc) == fingerprints(
        sarif.document(leaky_result, None, invocation=invocation(ROOT), project_root=ROOT)
    )


# --------------------------------------------------------------------------------------------
# Through the command line


def test_check_sarif_on_state_files_points_into_them(
    leaky: Stacks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from envfence.cli import main

    paths = write(tmp_path, leaky, "plan")
    argv = ["check", "--no-prove", "--format", "sarif"]
    code = main([*argv, *(arg for p in paths for arg in ("--state", p))])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert_github_ready(doc)
    [inv] = doc["runs"][0]["invocations"]
    assert inv["exitCode"] == 1 and inv["executionSuccessful"] is True
    assert inv["arguments"][:4] == argv
    for res in results(doc):
        uri, line, column = region_of(res)
        urn = res["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]
        assert line_at(path_of(uri, ROOT), line, column).startswith(f'"urn": {json.dumps(urn)}')


def test_check_sarif_on_bad_input_is_the_error_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from envfence.cli import main

    bad = tmp_path / "prod.json"
    bad.write_text("{not json")
    code = main(["check", "--state", str(bad), "--format", "sarif"])
    out, err = capsys.readouterr()
    assert code == 2 and str(bad) in err
    doc = json.loads(out)
    assert_github_ready(doc)
    [run] = doc["runs"]
    assert run["results"] == []
    [inv] = run["invocations"]
    assert inv["executionSuccessful"] is False and inv["exitCode"] == 2
    [note] = inv["toolExecutionNotifications"]
    assert note["level"] == "error" and str(bad) in note["message"]["text"]
