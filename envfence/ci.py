"""What CI needs to know about the repository's stacks: `envfence stacks --format json`.

The workflows build their job matrices from this, not from a hard-coded list: every stack with a
stack file (short-lived `experiment-<id>` stacks included), its account and region from the
environment registry and its validated config, and the two roles CI assumes for it, read from
the stack's own file (`envfence:access.previewRole` for `pulumi preview` on pull requests,
`envfence:access.deployer` for `pulumi up` on main) — one role per stack's account, never one
role for two accounts.

Every stack is validated as `pulumi up` would validate it; a stack file with a bad value stops
the listing (exit 2) rather than dropping the stack from the matrix.
"""

from __future__ import annotations

from typing import Any

from envfence.project import Project
from envfence.settings import settings_for


def stack_matrix(project: Project) -> list[dict[str, Any]]:
    """One entry per stack, account baselines first (their trail records the others' data
    events), then by name. Raises ConfigError/ProjectFileError on a stack that does not
    validate."""
    rows: list[dict[str, Any]] = []
    for stack in project.stacks():
        settings = settings_for(project, stack, project.stack_config(stack))
        entry = project.registry.entry(stack)
        production = settings.tier == "production"
        rows.append(
            {
                "stack": stack,
                "tier": settings.tier,
                "account": settings.allowed_account_ids[0],
                "region": settings.region,
                "experimentId": settings.experiment_id,
                "baseline": entry.account_baseline and not entry.is_pattern,
                # production stacks deploy behind a protected GitHub environment of the same name
                "environment": stack if production else "experiments",
                "protected": production,
                "previewRole": settings.preview_role or None,
                "deployRole": settings.deployer,
                "expiresOn": settings.expires_on.isoformat() if settings.expires_on else None,
            }
        )
    rows.sort(key=lambda r: (not r["baseline"], r["stack"]))
    return rows


__all__ = ["stack_matrix"]
