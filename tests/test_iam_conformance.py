"""Conformance: the examples of the AWS documentation, decided by `envfence.iam.evaluate`.

The cases live in `iam_cases.py`, each with the title and URL of the page it comes from and the
decision that page says AWS makes. Both directions are present (allowed and denied), and where
the page implies why a request is denied the exact `Decision.reason` is checked too.
"""

from __future__ import annotations

import pytest
from iam_cases import Case, conformance_cases

from envfence.iam import evaluate

CASES = conformance_cases()


def test_table_is_large_and_two_sided() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
    allowed = sum(case.allowed for case in CASES)
    assert 15 <= allowed <= len(CASES) - 15  # enough of each outcome to catch a constant answer
    assert all(case.source[1].startswith("https://docs.aws.amazon.com/") for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_aws_documented_decision(case: Case) -> None:
    decision = evaluate(case.request, case.policies)
    assert decision.allowed is case.allowed, f"{case.source[0]} <{case.source[1]}>: {decision}"
    if case.reason is not None:
        assert decision.reason == case.reason
    if decision.allowed:
        assert decision.allow_statements and not decision.deny_statements
    elif decision.reason == "explicit deny":
        assert decision.deny_statements
