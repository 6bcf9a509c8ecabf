"""Regenerate the README's diagram: the repository's stacks, evaluated offline, drawn by
`envfence.diagram.to_mermaid` (what `envfence plan --format mermaid` prints), written between
the README's `<!-- envfence:mermaid:begin -->` and `<!-- envfence:mermaid:end -->` markers.

    .venv/bin/python scripts/update-readme-diagram.py          # rewrite the block
    .venv/bin/python scripts/update-readme-diagram.py --check  # exit 1 when it is stale

`tests/test_diagram.py` fails when the block differs from the evaluated stacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from envfence.diagram import readme_block, to_mermaid, update_readme
from envfence.evaluate import evaluate_all
from envfence.project import load_project

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is stale")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    text = to_mermaid(evaluate_all(load_project(ROOT)))
    if args.check:
        stale = readme_block(args.readme.read_text(encoding="utf-8")) != text
        print(f"{args.readme}: diagram {'is stale' if stale else 'is up to date'}")
        return 1 if stale else 0
    changed = update_readme(args.readme, text)
    print(f"{args.readme}: diagram {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
