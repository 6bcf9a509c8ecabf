"""A normal install works: the wheel `pip wheel .` builds holds the whole checker (rules, proofs,
schemas), no top-level `infra` package, and, installed, checks the project around the working
directory, from any directory, without the source tree on the path.

The wheel is built offline from a copy of the source (`--no-build-isolation`: the build backend
is a dev dependency) and installed by unpacking it (a pure-Python wheel is its files).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "envfence", source / "envfence", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    build = ["pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = subprocess.run(
        [sys.executable, "-m", *build, "-w", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [built] = out.glob("envfence-*.whl")
    return built


def test_the_wheel_holds_the_whole_checker_and_no_program(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"envfence"}, top  # no `infra`: the program is the repository's, not ours
    for module in (
        "envfence/cli.py",
        "envfence/settings.py",
        "envfence/naming.py",
        "envfence/project.py",
        "envfence/registry.py",
        "envfence/rules/engine.py",
        "envfence/prove/run.py",
        "envfence/py.typed",
    ):
        assert module in names, module
    # every package of the source tree is in the wheel (a new subpackage must be listed)
    packages = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("envfence/**/*.py")}
    assert packages <= {n.rsplit("/", 1)[0] for n in names}
    schemas = [n for n in names if n.startswith("envfence/schemas/") and n.endswith(".json")]
    assert schemas == sorted(
        f"envfence/schemas/{p.name}" for p in (ROOT / "envfence" / "schemas").glob("*.json")
    )
    assert any(n.endswith("entry_points.txt") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "envfence = envfence.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_installed_wheel_checks_the_project_around_the_working_directory(
    wheel: Path, tmp_path: Path
) -> None:
    """Installed from the wheel, run from a directory inside another checkout: it evaluates and
    checks that checkout's stacks, with its program importing the installed contract."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for path in ROOT.glob("Pulumi*.yaml"):
        shutil.copy(path, checkout / path.name)
    for name in ("infra", "app", "policy"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    inside = checkout / "infra" / "components"
    script = (
        "import sys, envfence\n"
        f"assert envfence.__file__.startswith({str(site)!r}), envfence.__file__\n"
        "from envfence.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)

    def envfence(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = envfence("stacks", "--format", "json", cwd=inside)
    assert listed.returncode == 0, listed.stderr
    assert {r["stack"] for r in json.loads(listed.stdout)} == {"prod", "experiment"}

    # evaluated offline, then checked as state files (rules, proofs, and the real-request
    # controls, which import the checkout's worker code)
    planned = envfence("plan", "--format", "json", "-o", str(tmp_path / "plan.json"), cwd=inside)
    assert planned.returncode == 0, planned.stderr
    checked = envfence("check", "--state", str(tmp_path / "plan.json"), "-q", cwd=inside)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().startswith("PASS") and "PROVED" in checked.stdout

    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    lost = envfence("check", cwd=nowhere)
    assert lost.returncode == 2
    assert "no Pulumi.yaml" in lost.stderr and "Traceback" not in lost.stderr
    found = envfence("-C", str(checkout), "stacks", cwd=nowhere)
    assert found.returncode == 0, found.stderr
