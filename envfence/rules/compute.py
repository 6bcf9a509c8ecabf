"""EF6xx: containers run as their own environment, hardened, private, from their own images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from envfence import naming
from envfence.model import Resource, StackState
from envfence.rules import classify as c
from envfence.rules.context import Context, as_list, is_unknown, need
from envfence.rules.engine import Finding, rule, undecided


def _containers(r: Resource) -> list[dict[str, Any]]:
    raw = need(r, "containerDefinitions")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return [{"_malformed": True}]
    return [d for d in as_list(raw) if isinstance(d, dict)]


def _own_repositories(state: StackState) -> list[str]:
    return [
        str(r.get("repositoryUrl"))
        for r in state.of_type(*c.REPOSITORIES)
        if r.get("repositoryUrl")
    ]


def _from_own_repository(image: str, state: StackState) -> bool:
    for repo in _own_repositories(state):
        rest = image[len(repo) :] if image.startswith(repo) else None
        if rest is not None and (rest.startswith(":") or rest.startswith("@sha256:")):
            return True
    return False


@rule(
    "EF601",
    "task-hardened",
    title="Task definitions run non-root, read-only, unprivileged, as their own environment",
    severity="critical",
    scope="resource",
    types=c.TASK_DEFINITIONS,
    fix="readonlyRootFilesystem true, a non-root user, privileged false; task and execution "
    "roles and the log group of this environment.",
)
def task_hardened(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    env = ctx.env(state.stack)
    for key in ("taskRoleArn", "executionRoleArn"):
        arn = need(r, key)
        if arn and arn not in env.role_arns():
            yield Finding(
                r.urn,
                f"task {r.name} {key} {arn} is not a role of this environment",
                ctx.owner_of_arn(str(arn)),
            )
        # No task role is allowed: the containers then get no AWS credentials at all (the
        # database tasks need none). An execution role is needed to pull the image.
        if not arn and key == "executionRoleArn":
            yield Finding(r.urn, f"task {r.name} has no {key}")
    own_groups = {str(g.get("name")) for g in state.of_type(*c.LOG_GROUPS)}
    for d in _containers(r):
        if d.get("_malformed"):
            yield Finding(r.urn, f"task {r.name} container definitions are not valid JSON")
            continue
        name = d.get("name", "?")
        if d.get("readonlyRootFilesystem") is not True:
            yield Finding(r.urn, f"container {name} has a writable root filesystem")
        user = str(d.get("user") or "")
        if not user or user.split(":")[0] in ("0", "root"):
            yield Finding(r.urn, f"container {name} runs as root")
        if d.get("privileged") is True:
            yield Finding(r.urn, f"container {name} is privileged")
        group = ((d.get("logConfiguration") or {}).get("options") or {}).get("awslogs-group")
        if group not in own_groups:
            owner = next(
                (
                    o.stack
                    for o in ctx.others(state.stack)
                    if str(group).startswith(f"{naming.log_group_prefix(o.project, o.stack)}/")
                ),
                None,
            )
            yield Finding(
                r.urn,
                f"container {name} logs to {group}, not a log group of this environment"
                + (f" (a log group of stack '{owner}')" if owner else ""),
                owner,
            )


@rule(
    "EF602",
    "service-private",
    title="Services run in their own subnets and security groups, with no public IP or shell",
    severity="critical",
    scope="resource",
    types=c.ECS_SERVICES,
    fix="assignPublicIp false, the environment's app subnets and security group, "
    "enableExecuteCommand false.",
)
def service_private(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    net = need(r, "networkConfiguration") or {}
    if net.get("assignPublicIp") in (True, "true"):
        yield Finding(r.urn, f"service {r.name} gives its tasks public IPs")
    own = {x.id for x in state.resources if x.id}
    for key in ("subnets", "securityGroups"):
        for value in as_list(net.get(key)):
            if is_unknown(value):
                yield undecided(r.urn, "EF602", f"{key} of {r.name}", value)
            elif value not in own:
                yield Finding(
                    r.urn,
                    f"service {r.name} uses {key} {value} of another environment",
                    ctx.owner_of_id(str(value), state.stack),
                )
    if need(r, "enableExecuteCommand") in (True, "true"):
        yield Finding(r.urn, f"service {r.name} allows ECS Exec: a shell around the roles")


@rule(
    "EF603",
    "image-from-own-repository",
    title="Containers run images of their own environment's repository",
    severity="critical",
    scope="resource",
    types=c.TASK_DEFINITIONS | c.IMAGES,
    fix="Build and push the image to this environment's ECR repository, or set "
    "container.image to an image of that repository.",
)
def own_images(r: Resource, state: StackState, ctx: Context) -> Iterator[Finding]:
    if r.type in c.IMAGES:
        verb = "pushes"
        images = [str(need(r, "imageName"))]
    else:
        verb = "runs"
        images = [str(d.get("image")) for d in _containers(r) if not d.get("_malformed")]
    for image in images:
        if not _from_own_repository(image, state):
            owner = next(
                (
                    o.stack
                    for o in ctx.others(state.stack)
                    if o.account
                    and f"{o.project}-{o.stack}-worker"
                    in image.split("/")[-1].split(":")[0].split("@")[0]
                    and o.account in image
                ),
                None,
            )
            yield Finding(
                r.urn,
                f"{r.name} {verb} image {image}, which is not from this environment's repository",
                owner,
            )
