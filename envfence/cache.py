"""A cache of evaluated stacks: run `envfence check` twice with nothing changed, evaluate once.

An offline evaluation (`envfence.evaluate`) is a function of what it reads, and the cache key
is a SHA-256 over all of it:

- the program and what it reads: every file under `infra/`, `app/` and `db/`, and
  `.dockerignore` (the image tag and the migrations' checksum are hashes of those:
  `infra/components/compute.py`, `infra/components/database_tasks.py`);
- the project file (the registry) and every stack file (a stack reads its peers' files:
  `settings.read_peers`), found the way `Project.stacks` finds them;
- envfence's own code (the mocks, settings, naming, registry: every `.py` file of the
  package), the Python version, and the installed versions of pulumi, pulumi-aws and
  pulumi-docker;
- the working directory relative to the project (the image's build context is written
  relative to it: `compute.build_paths`), and the stack's name.

An entry is the stack's plan document (`StackState.to_document`, what `envfence plan --format
json` writes), read back through the same loader as `--state` files. The cache is only ever an
optimisation: an entry that cannot be read, is of another format, or names another stack is
ignored and the stack is evaluated; a failed write leaves nothing behind; `--no-cache` (or
`ENVFENCE_NO_CACHE=1`) bypasses it. It lives in `.envfence-cache/` at the project root (which
ignores itself for git), or in `$ENVFENCE_CACHE_DIR`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

from envfence.model import StackState
from envfence.project import Project

FORMAT = 1
DIRECTORY = ".envfence-cache"
PROGRAM_INPUTS = ("infra", "app", "db")
DISTRIBUTIONS = ("pulumi", "pulumi-aws", "pulumi-docker")
_PACKAGE = Path(__file__).resolve().parent


def enabled() -> bool:
    return os.environ.get("ENVFENCE_NO_CACHE", "") in ("", "0")


def directory(project: Project) -> Path:
    override = os.environ.get("ENVFENCE_CACHE_DIR")
    return Path(override) if override else project.root / DIRECTORY


def _files(base: Path) -> list[Path]:
    if base.is_file():
        return [base]
    if not base.is_dir():
        return []
    return sorted(
        p
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


class Keys:
    """The cache keys of a project's stacks, from one reading of what they depend on."""

    def __init__(self, project: Project) -> None:
        self.project = project
        digest = hashlib.sha256()

        def add(label: str, data: bytes) -> None:
            digest.update(f"{label}\0{len(data)}\0".encode())
            digest.update(data)

        add("format", str(FORMAT).encode())
        add("python", sys.version.encode())
        for dist in DISTRIBUTIONS:
            add(f"dist:{dist}", _version(dist).encode())
        for path in sorted(_PACKAGE.rglob("*.py")):
            if "__pycache__" not in path.parts:
                add(f"envfence:{path.relative_to(_PACKAGE).as_posix()}", path.read_bytes())
        root = project.root
        inputs = [root / "Pulumi.yaml", root / ".dockerignore"]
        inputs += sorted(root.glob("Pulumi.*.yaml"))
        for top in PROGRAM_INPUTS:
            inputs += _files(root / top)
        for path in inputs:
            if path.is_file():
                add(f"project:{path.relative_to(root).as_posix()}", path.read_bytes())
        add("cwd", os.path.relpath(root, Path.cwd()).encode())
        self._base = digest.hexdigest()

    def key(self, stack: str) -> str:
        return hashlib.sha256(f"{self._base}\0{stack}".encode()).hexdigest()[:32]

    def path(self, stack: str) -> Path:
        return directory(self.project) / "states" / f"{stack}-{self.key(stack)}.json"


def load(keys: Keys, stack: str) -> StackState | None:
    """The cached evaluation of `stack`, or None (absent, unreadable, not this stack's)."""
    from envfence.state import StateError, load_document

    path = keys.path(stack)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("envfenceCache") != FORMAT:
        return None
    try:
        state = load_document(doc["document"], str(path))
    except (StateError, KeyError, TypeError, ValueError):
        return None
    if state.stack != stack or state.project != keys.project.name:
        return None
    state.source = "evaluate"
    return state


def store(keys: Keys, state: StackState) -> None:
    """Write the entry atomically (a reader never sees half of one); on any failure, none."""
    path = keys.path(state.stack)
    text = json.dumps({"envfenceCache": FORMAT, "document": state.to_document()})
    tmp: str | None = None
    try:
        _prepare(path.parent.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{state.stack}-*.json"):  # this stack's stale entries
            with contextlib.suppress(OSError):
                old.unlink()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{state.stack}-", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _prepare(base: Path) -> None:
    """The cache directory ignores itself for git and is tagged as a cache for backup tools."""
    base.mkdir(parents=True, exist_ok=True)
    ignore = base / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# envfence's cache of evaluated stacks (envfence/cache.py)\n*\n")
    tag = base / "CACHEDIR.TAG"
    if not tag.exists():
        tag.write_text(
            "Signature: 8a477f597d28d172789f06886806bc55\n"
            "# envfence's cache of evaluated stacks: safe to delete.\n"
        )
