"""The GitHub Actions workflows (.github/workflows/) are valid, pinned, least-privileged, and take
every stack and role from `envfence stacks`, never from a list written in a workflow.

Validation is offline, against a packaged copy of SchemaStore's GitHub workflow schema
(tests/schemas/github-workflow.json; provenance in tests/schemas/README.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from envfence import experiments
from envfence.ci import stack_matrix
from envfence.project import Project, load_project

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "github-workflow.json"
EXPECTED = {"pull-request.yml", "deploy.yml", "scheduled.yml"}

# `uses: owner/repo[/path]@<40-hex commit> # vX.Y.Z`, nothing else
PINNED = re.compile(
    r"^\s*(?:-\s+)?uses:\s*(?P<action>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_./-]+)?)"
    r"@(?P<sha>[0-9a-f]{40})\s+#\s*(?P<version>v\d+\.\d+\.\d+)\s*$"
)
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:")
SAME_REPO = "github.event.pull_request.head.repo.full_name == github.repository"
ARN_ACCOUNT = re.compile(r"^arn:aws:iam::(\d{12}):role/\S+$")


class _WorkflowLoader(yaml.SafeLoader):
    """YAML as GitHub reads it: only true/false are booleans (PyYAML's YAML 1.1 would turn the
    `on:` key into True, and the schema would rightly refuse that document)."""


_WorkflowLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_WorkflowLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$"), list("tf")
)


def load(path: Path) -> dict[str, Any]:
    doc = yaml.load(path.read_text(), Loader=_WorkflowLoader)  # a SafeLoader
    assert isinstance(doc, dict), f"{path.name}: not a mapping"
    return doc


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict[str, Any]]:
    return {p.name: load(p) for p in workflow_files()}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return doc


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def jobs(workflows: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, doc in workflows.items():
        for key, job in doc["jobs"].items():
            yield name, key, job


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps") or [])


def scripts(job: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in steps(job))


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def commands(job: dict[str, Any], program: str) -> list[str]:
    """The shell commands of a job that run `program` (continuation lines joined, comments out)."""
    text = scripts(job).replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        line for line in lines if not line.startswith("#") and re.search(rf"\b{program}\b", line)
    ]


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


# --------------------------------------------------------------------------------------------
# the schema, and every workflow against it


def test_the_schema_is_offline_and_of_the_draft_it_declares(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft7Validator
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    remote = [r for r in refs if not r.startswith("#")]
    assert refs and remote == [], f"references outside the packaged schema: {remote}"


def test_the_schema_is_the_copy_its_readme_records() -> None:
    recorded = (SCHEMA_FILE.parent / "README.md").read_text()
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert f"`{digest}`" in recorded, "tests/schemas/README.md records another file"


def test_the_workflows_are_the_three_of_the_readme() -> None:
    assert {p.name for p in workflow_files()} == EXPECTED


def test_the_loader_reads_on_as_github_does() -> None:
    doc = load(WORKFLOWS / "pull-request.yml")
    assert "on" in doc and True not in doc


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_workflow_validates(name: str, validator: jsonschema.protocols.Validator) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(load(WORKFLOWS / name))
    ]
    assert errors == []


BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "a job without runs-on": lambda d: next(iter(d["jobs"].values())).pop("runs-on"),
    "a misspelt event": lambda d: d["on"].update({"pull_requests": None}),
    "a misspelt job key": lambda d: next(iter(d["jobs"].values())).update({"enviroment": "x"}),
    "a permission level that does not exist": lambda d: d["permissions"].update(
        {"contents": "admin"}
    ),
    "a step that both uses and runs": lambda d: next(iter(d["jobs"].values()))["steps"][0].update(
        {"run": "true"}
    ),
    "`on` read as YAML 1.1 (True)": lambda d: d.update({True: d.pop("on")}),
    "a timeout that is not a number": lambda d: next(iter(d["jobs"].values())).update(
        {"timeout-minutes": "long"}
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_workflow_is_rejected(
    breakage: str, validator: jsonschema.protocols.Validator
) -> None:
    doc = load(WORKFLOWS / "pull-request.yml")
    assert validator.is_valid(doc)
    broken = copy.deepcopy(doc)
    BREAKAGES[breakage](broken)
    assert not validator.is_valid(broken), f"the schema accepted {breakage}"


def test_no_expression_is_pasted_into_a_script(workflows: dict[str, dict[str, Any]]) -> None:
    """`${{ }}` in a `run:` is text pasted into a shell script (script injection); values reach
    the scripts through `env:`."""
    pasted = [
        f"{name}: {key}: {s.get('name', s['run'][:40])}"
        for name, key, job in jobs(workflows)
        for s in steps(job)
        if "${{" in str(s.get("run", ""))
    ]
    assert pasted == []


# --------------------------------------------------------------------------------------------
# pinning


def test_every_action_is_pinned_to_a_commit_with_its_version(
    workflows: dict[str, dict[str, Any]],
) -> None:
    bad = []
    for path in workflow_files():
        lines = [line for line in path.read_text().splitlines() if USES_LINE.match(line)]
        bad += [f"{path.name}: {line.strip()}" for line in lines if not PINNED.match(line)]
        doc = workflows[path.name]
        parsed = [
            s["uses"] for _, _, job in jobs({path.name: doc}) for s in steps(job) if "uses" in s
        ]
        parsed += [job["uses"] for job in doc["jobs"].values() if "uses" in job]
        # every `uses` the runner sees is on a line of its own, where the pattern can see it
        assert parsed and len(lines) == len(parsed), path.name
    assert bad == [], "not `owner/repo@<40-hex sha> # vX.Y.Z`"


def test_one_version_one_commit() -> None:
    """The same action at the same version is pinned to the same commit everywhere."""
    seen: dict[tuple[str, str], set[str]] = {}
    for path in workflow_files():
        for line in path.read_text().splitlines():
            m = PINNED.match(line)
            if m:
                repo = "/".join(m["action"].split("/")[:2])
                seen.setdefault((repo, m["version"]), set()).add(m["sha"])
                seen.setdefault((repo, m["sha"]), set()).add(m["version"])
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}


# --------------------------------------------------------------------------------------------
# matrices: from `envfence stacks`, never a list


# `matrix: ${{ fromJSON(needs.stacks.outputs.matrix_<group>) }}`, the output a {"include": [...]}
# object: the form SchemaStore's and Checkov's workflow schemas both read as a matrix (Checkov
# skips a workflow whose `include:` is an expression, so it would scan none of it).
MATRIX = re.compile(r"^\$\{\{ fromJSON\(needs\.stacks\.outputs\.matrix_(\w+)\) \}\}$")


def test_every_matrix_comes_from_envfence_stacks(
    workflows: dict[str, dict[str, Any]], project: Project
) -> None:
    found = 0
    for name, key, job in jobs(workflows):
        matrix = (job.get("strategy") or {}).get("matrix")
        if matrix is None:
            continue
        found += 1
        where = f"{name}: {key}"
        m = MATRIX.match(matrix) if isinstance(matrix, str) else None
        assert m, f"{where}: matrix is not fromJSON(needs.stacks.outputs.matrix_<group>)"
        needs = job["needs"] if isinstance(job["needs"], list) else [job["needs"]]
        assert "stacks" in needs, where
        producer = workflows[name]["jobs"]["stacks"]
        assert f"matrix_{m[1]}" in producer["outputs"], f"{where}: no output matrix_{m[1]}"
        assert "envfence stacks --format json" in scripts(producer)
        assert not set(strings(matrix)) & set(project.stacks()), where
    assert found >= 4  # preview, three deploy groups, drift


def test_no_stack_is_named_in_a_workflow(
    workflows: dict[str, dict[str, Any]], project: Project
) -> None:
    names = set(project.stacks())
    for name, key, job in jobs(workflows):
        for text in strings(job):
            assert text not in names, f"{name}: {key} names stack {text!r}"
        for line in commands(job, "pulumi") + commands(job, "envfence"):
            for m in re.finditer(r"--stack[ =](\S+)", line):
                assert m[1] == '"$STACK"', f"{name}: {key}: {line}"


def test_the_stacks_job_is_the_same_in_every_workflow(
    workflows: dict[str, dict[str, Any]],
) -> None:
    producers = {name: doc["jobs"]["stacks"] for name, doc in workflows.items()}
    assert len(producers) == len(EXPECTED)
    first = next(iter(producers.values()))
    assert all(job == first for job in producers.values())


def _run_matrix_step(root: Path, tmp_path: Path) -> dict[str, Any]:
    """Run the stacks job's matrix step, as the runner runs it (bash -eo pipefail), against the
    project at `root`: `.venv/bin/envfence` is a shim onto this interpreter's envfence."""
    if shutil.which("jq") is None or shutil.which("bash") is None:
        pytest.skip("jq and bash are needed to run the workflow's matrix step")
    step = next(
        s
        for s in load(WORKFLOWS / "pull-request.yml")["jobs"]["stacks"]["steps"]
        if s.get("id") == "matrix"
    )
    work = tmp_path / "runner"
    (work / ".venv" / "bin").mkdir(parents=True)
    shim = work / ".venv" / "bin" / "envfence"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m envfence -C "{root}" "$@"\n')
    shim.chmod(0o755)
    (work / "step.sh").write_text(step["run"])
    output = work / "github-output"
    output.touch()
    env = {**os.environ, "GITHUB_OUTPUT": str(output), "PYTHONPATH": str(ROOT)}
    subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "step.sh"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    values = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return {k: json.loads(v) for k, v in values.items()}


def _check_groups(groups: dict[str, Any], project: Project) -> None:
    every = [row["stack"] for row in groups["all"]]
    assert sorted(every) == project.stacks()
    deployed = [
        row["stack"] for g in ("production", "baselines", "experiments") for row in groups[g]
    ]
    assert sorted(deployed) == sorted(every), "every stack is deployed by exactly one job"
    assert all(row["protected"] for row in groups["production"])
    assert all(row["baseline"] and not row["protected"] for row in groups["baselines"])
    assert not any(row["baseline"] or row["protected"] for row in groups["experiments"])
    for row in groups["all"]:
        assert None not in row.values(), 'a null matrix value (the step makes them "")'
    for group in ("all", "production", "baselines", "experiments"):
        assert groups[f"matrix_{group}"] == {"include": groups[group]}, group


def test_the_matrix_step_deploys_every_stack_once(project: Project, tmp_path: Path) -> None:
    _check_groups(_run_matrix_step(project.root, tmp_path), project)


# --------------------------------------------------------------------------------------------
# roles: each stack's own, from the matrix


def test_every_role_is_the_stacks_own(workflows: dict[str, dict[str, Any]]) -> None:
    for name in workflows:
        text = (WORKFLOWS / name).read_text()
        assert not re.search(r"secrets\.\w*ROLE", text), f"{name}: a role from a secret"
    assumed = 0
    for name, key, job in jobs(workflows):
        for step in uses(job, "aws-actions/configure-aws-credentials"):
            assumed += 1
            given = step["with"]
            deploys = any("pulumi up" in c or "--refresh" in c for c in commands(job, "pulumi"))
            role = "deployRole" if deploys else "previewRole"
            assert given["role-to-assume"] == f"${{{{ matrix.{role} }}}}", f"{name}: {key}"
            assert given["allowed-account-ids"] == "${{ matrix.account }}", f"{name}: {key}"
            assert given["aws-region"] == "${{ matrix.region }}", f"{name}: {key}"
            perms = job.get("permissions") or {}
            assert perms.get("id-token") == "write", f"{name}: {key}: OIDC needs id-token"
    assert assumed >= 5


def test_the_preview_job_assumes_the_preview_role(workflows: dict[str, dict[str, Any]]) -> None:
    job = workflows["pull-request.yml"]["jobs"]["preview"]
    (step,) = uses(job, "aws-actions/configure-aws-credentials")
    assert step["with"]["role-to-assume"] == "${{ matrix.previewRole }}"
    # a stack without a preview role is skipped with a notice, never previewed with another role
    assert step["if"] == "matrix.previewRole != ''"
    skipped = [s for s in steps(job) if s.get("if") == "matrix.previewRole == ''"]
    assert skipped and "::notice" in skipped[0]["run"]


# --------------------------------------------------------------------------------------------
# deploying


def _deploy_jobs(workflows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        key: job
        for name, key, job in jobs(workflows)
        if any("pulumi up" in c for c in commands(job, "pulumi"))
    }


def test_deploys_happen_only_on_main(workflows: dict[str, dict[str, Any]]) -> None:
    assert set(_deploy_jobs(workflows)) <= set(workflows["deploy.yml"]["jobs"])
    assert workflows["deploy.yml"]["on"] == {"push": {"branches": ["main"]}}


def test_every_deploy_job_has_its_stacks_concurrency_and_environment(
    workflows: dict[str, dict[str, Any]],
) -> None:
    deploy = _deploy_jobs(workflows)
    groups = {MATRIX.match(job["strategy"]["matrix"])[1] for job in deploy.values()}
    assert groups == {"production", "baselines", "experiments"}
    for key, job in deploy.items():
        assert job["concurrency"] == {
            "group": "pulumi-${{ matrix.stack }}",
            "cancel-in-progress": False,
        }, key
        assert job["environment"] == "${{ matrix.environment }}", key
        (up,) = [c for c in commands(job, "pulumi") if "pulumi up" in c]
        for flag in ("--yes", '--stack "$STACK"', "--policy-pack policy"):
            assert flag in up, f"{key}: {up}"
        assert "--policy-pack-config policy/config.json" in up, key


def test_experiments_deploy_after_the_baselines(workflows: dict[str, dict[str, Any]]) -> None:
    deploy = workflows["deploy.yml"]["jobs"]
    assert "baselines" in deploy["experiments"]["needs"]
    assert "needs.baselines.result != 'failure'" in deploy["experiments"]["if"]
    # production waits for its reviewers alone: nothing else waits for it
    assert not any("production" in (job.get("needs") or []) for job in deploy.values())


# --------------------------------------------------------------------------------------------
# pull requests: previews, the cross-stack check on them, forks, the comment


def test_every_preview_feeds_the_cross_stack_check(workflows: dict[str, dict[str, Any]]) -> None:
    pr = workflows["pull-request.yml"]["jobs"]
    preview = pr["preview"]
    runs = commands(preview, "pulumi")
    assert any(
        "pulumi preview" in c
        and "--policy-pack policy" in c
        and "--policy-pack-config policy/config.json" in c
        for c in runs
    )
    assert any(
        "pulumi preview" in c and "--json" in c and '> "previews/$STACK.json"' in c for c in runs
    )
    (kept,) = uses(preview, "actions/upload-artifact")
    assert kept["with"]["name"] == "preview-${{ matrix.stack }}"
    assert kept["with"]["path"].rstrip("/") == "previews"

    checkers = [k for k, job in pr.items() if "preview" in (job.get("needs") or [])]
    checks = [
        k
        for k in checkers
        if any(
            "envfence check" in c and "--state" in scripts(pr[k])
            for c in commands(pr[k], "envfence")
        )
    ]
    assert checks == ["state-check"]
    (fetched,) = uses(pr["state-check"], "actions/download-artifact")
    assert fetched["with"]["pattern"] == "preview-*"
    assert 'args+=(--state "previews/$stack.json")' in scripts(pr["state-check"])
    # and it is the one required check for the previews: it fails when any of them did
    gate = [s for s in steps(pr["state-check"]) if "needs.preview.result" in str(s.get("env"))]
    assert gate and "exit 1" in gate[0]["run"]


def test_the_sarif_upload_cannot_fail_a_fork(workflows: dict[str, dict[str, Any]]) -> None:
    uploads = [
        (name, key, step)
        for name, key, job in jobs(workflows)
        for step in uses(job, "github/codeql-action/upload-sarif")
    ]
    assert uploads
    for name, key, step in uploads:
        assert SAME_REPO in str(step.get("if", "")) or step.get("continue-on-error") is True
        assert "if" not in workflows[name]["jobs"][key] or SAME_REPO not in str(
            workflows[name]["jobs"][key]["if"]
        ), "the offline check itself runs on forks"


def test_jobs_with_secrets_skip_forks(workflows: dict[str, dict[str, Any]]) -> None:
    pr = workflows["pull-request.yml"]["jobs"]
    for key, job in pr.items():
        needs_secrets = "secrets." in json.dumps(job) or "pull-requests" in (
            job.get("permissions") or {}
        )
        if needs_secrets or key == "state-check":
            assert SAME_REPO in str(job.get("if", "")), key


def test_one_comment_updated_in_place(workflows: dict[str, dict[str, Any]]) -> None:
    job = workflows["pull-request.yml"]["jobs"]["comment"]
    assert set(job["needs"]) >= {"preview", "state-check"}
    assert job["permissions"] == {"pull-requests": "write"}
    (step,) = uses(job, "actions/github-script")
    script = step["with"]["script"]
    assert re.search(r"<!-- envfence-ci:[\w-]+ -->", script)
    for call in ("listComments", "updateComment", "createComment", "changeSummary", "mandatory"):
        assert call in script
    assert "${{" not in script, "values reach the script through env, never by interpolation"


# --------------------------------------------------------------------------------------------
# scheduled


def test_drift_and_expired_experiments_run_daily(workflows: dict[str, dict[str, Any]]) -> None:
    doc = workflows["scheduled.yml"]
    assert doc["on"]["schedule"]
    drift = [
        c
        for job in doc["jobs"].values()
        for c in commands(job, "pulumi")
        if "pulumi preview" in c and "--refresh" in c and "--expect-no-changes" in c
    ]
    assert len(drift) == 1
    assert not any(
        "pulumi up" in c for job in doc["jobs"].values() for c in commands(job, "pulumi")
    )
    expired = [
        c
        for job in doc["jobs"].values()
        for c in commands(job, "envfence")
        if "experiment list" in c
    ]
    assert expired and all("--fail-on-expired" in c for c in expired)


# --------------------------------------------------------------------------------------------
# least privilege


def _needs_write(job: dict[str, Any], permission: str) -> bool:
    if permission == "id-token":
        return bool(uses(job, "aws-actions/configure-aws-credentials"))
    if permission == "security-events":
        return bool(uses(job, "github/codeql-action/upload-sarif"))
    if permission == "pull-requests":
        return any(
            "createComment" in s["with"]["script"] for s in uses(job, "actions/github-script")
        )
    return False


def test_permissions_are_least(workflows: dict[str, dict[str, Any]]) -> None:
    for name, doc in workflows.items():
        assert doc["permissions"] == {"contents": "read"}, name
    for name, key, job in jobs(workflows):
        perms = job.get("permissions")
        if perms is None:
            continue
        assert isinstance(perms, dict), f"{name}: {key}: read-all/write-all"
        for permission, level in perms.items():
            if level == "write":
                assert _needs_write(job, permission), f"{name}: {key}: {permission}: write"
            if permission == "actions":
                assert level == "read" and uses(job, "github/codeql-action/upload-sarif")
    for name, key, job in jobs(workflows):
        for permission in ("id-token", "security-events", "pull-requests"):
            if _needs_write(job, permission):
                assert (job.get("permissions") or {}).get(permission) == "write", (name, key)


def test_checkouts_keep_no_token(workflows: dict[str, dict[str, Any]]) -> None:
    for name, key, job in jobs(workflows):
        for step in uses(job, "actions/checkout"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{name}: {key}"


# --------------------------------------------------------------------------------------------
# the matrix itself: envfence.ci.stack_matrix


def _assert_own_roles(rows: list[dict[str, Any]], project: Project) -> None:
    by_stack = {row["stack"]: row for row in rows}
    assert sorted(by_stack) == project.stacks()
    for stack, row in by_stack.items():
        assert row["account"] in project.registry.entry(stack).accounts, stack
        for role in ("previewRole", "deployRole"):
            if row[role] is None:
                assert role == "previewRole", f"{stack}: no deployer"
                continue
            m = ARN_ACCOUNT.match(row[role])
            assert m and m[1] == row["account"], f"{stack}: {role} {row[role]} of another account"
        assert row["environment"] == ("prod" if row["protected"] else "experiments")
        assert row["protected"] == (row["tier"] == "production")
    accounts = {row["account"] for row in rows}
    for account in accounts:
        roles = {row["deployRole"] for row in rows if row["account"] == account}
        others = {row["deployRole"] for row in rows if row["account"] != account}
        assert not roles & others, "two accounts share a role"


def test_the_matrix_has_every_stack_file_with_its_accounts_roles() -> None:
    project = load_project()
    rows = stack_matrix(project)
    _assert_own_roles(rows, project)
    assert [r["baseline"] for r in rows] == sorted((r["baseline"] for r in rows), reverse=True)


def test_a_new_stack_file_joins_every_matrix_without_a_workflow_change(
    repo: Project, tmp_path: Path
) -> None:
    before = {p.name: p.read_text() for p in workflow_files()}
    experiments.new(repo, "citest", owner="ci@example.com", expires="2099-12-31")
    project = load_project(repo.root)
    assert "experiment-citest" in project.stacks()
    rows = stack_matrix(project)
    _assert_own_roles(rows, project)
    (row,) = [r for r in rows if r["stack"] == "experiment-citest"]
    assert row["experimentId"] == "citest" and not row["baseline"] and not row["protected"]

    groups = _run_matrix_step(repo.root, tmp_path)
    _check_groups(groups, project)
    assert [r["stack"] for r in groups["experiments"]] == ["experiment-citest"]
    assert {p.name: p.read_text() for p in workflow_files()} == before
