"""Policy documents as data: small builders shared by the components.

Documents are plain dicts that may hold Outputs; `document()` turns one into an
`Output[str]` with `pulumi.Output.json_dumps`, so no policy is ever assembled by string
concatenation and every ARN comes from the resource (or the naming module) it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi

VERSION = "2012-10-17"


def statement(
    sid: str,
    effect: str,
    actions: Sequence[str] | None = None,
    resources: Sequence[Any] | None = None,
    *,
    not_actions: Sequence[str] | None = None,
    not_resources: Sequence[Any] | None = None,
    principal: Any = None,
    condition: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    stmt: dict[str, Any] = {"Sid": sid, "Effect": effect}
    if principal is not None:
        stmt["Principal"] = principal
    if actions is not None:
        stmt["Action"] = list(actions)
    if not_actions is not None:
        stmt["NotAction"] = list(not_actions)
    if resources is not None:
        stmt["Resource"] = list(resources)
    if not_resources is not None:
        stmt["NotResource"] = list(not_resources)
    if condition:
        stmt["Condition"] = condition
    return stmt


def document(*statements: dict[str, Any]) -> pulumi.Output[str]:
    return pulumi.Output.json_dumps({"Version": VERSION, "Statement": list(statements)})


def account_root(account: str) -> str:
    return f"arn:aws:iam::{account}:root"
