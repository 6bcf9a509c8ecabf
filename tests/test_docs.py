"""The README and Pulumi.yaml stay true: every rule and every config key is documented."""

from __future__ import annotations

from pathlib import Path

from envfence.rules import all_rules
from envfence.settings import KNOWN_KEYS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PULUMI_YAML = (ROOT / "Pulumi.yaml").read_text()


def test_readme_shows_the_two_commands_first() -> None:
    first_block = README.split("```")[1]
    assert "make check" in first_block and "make test" in first_block


def test_every_rule_is_in_the_readme_table() -> None:
    missing = [r.id for r in all_rules() if f"| {r.id} | `{r.name}` |" not in README]
    assert missing == []


def test_every_config_key_is_documented() -> None:
    for key in KNOWN_KEYS:
        assert f"| `{key}" in README, f"README config table lacks {key}"
        assert f"envfence:{key}" in PULUMI_YAML, f"Pulumi.yaml does not document {key}"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
