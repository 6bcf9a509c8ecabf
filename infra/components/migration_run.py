"""Run the database migration task during `pulumi up`, before the worker's service rolls out.

A Pulumi dynamic resource: its provider runs in the deployer's `pulumi up` process, with the
deployer's AWS credentials (the same chain the AWS CLI uses), and calls ECS RunTask on the
environment's migration task definition, waits for the task to stop and fails the update
unless the container exited 0. It runs again whenever the migrations or the task definition
change, so the worker never starts against a schema older than its image.

Why not `aws ecs run-task` after `pulumi up`: the worker exits when its database is not
migrated, and a service that waits for a steady state would fail the very `pulumi up` that
created the database. The same command is exported as `migrateCommand` for re-runs by hand.

What the deployer needs for it: ecs:RunTask on the task definition, ecs:DescribeTasks,
iam:PassRole on the migrator role, sts:GetCallerIdentity
(https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-iam-roles.html).
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

# The inputs whose change means "migrate again".
RERUN_ON = ("taskDefinition", "migrationsChecksum")
CONTAINER = "db"
# Migrations take seconds; image pull and ENI set-up take most of a Fargate task's start.
WAIT_DELAY_SECONDS = 6
WAIT_ATTEMPTS = 150  # 15 minutes


class MigrationFailed(Exception):
    """The migration task did not start, or stopped with a non-zero exit code."""


def run_migration(props: dict[str, Any], ecs: Any = None, sts: Any = None) -> str:
    """Run the task once and return its ARN; raise MigrationFailed with the reason otherwise.
    `ecs`/`sts` are boto3 clients (made from the default credential chain when None)."""
    if ecs is None or sts is None:
        import boto3  # type: ignore[import-untyped]

        session = boto3.session.Session(region_name=props["region"])
        ecs = ecs or session.client("ecs")
        sts = sts or session.client("sts")
    caller = sts.get_caller_identity()["Account"]
    if caller != props["account"]:
        raise MigrationFailed(
            f"the AWS credentials are for account {caller}, not {props['account']} of this stack"
        )
    resp = ecs.run_task(
        cluster=props["cluster"],
        taskDefinition=props["taskDefinition"],
        launchType="FARGATE",
        count=1,
        startedBy="envfence-pulumi-up",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": list(props["subnets"]),
                "securityGroups": list(props["securityGroups"]),
                "assignPublicIp": "DISABLED",
            }
        },
    )
    if resp.get("failures") or not resp.get("tasks"):
        reasons = "; ".join(
            f"{f.get('arn', '')} {f.get('reason', '')} {f.get('detail', '')}".strip()
            for f in resp.get("failures", [])
        )
        raise MigrationFailed(f"the migration task did not start: {reasons or 'no task'}")
    task_arn = str(resp["tasks"][0]["taskArn"])
    ecs.get_waiter("tasks_stopped").wait(
        cluster=props["cluster"],
        tasks=[task_arn],
        WaiterConfig={"Delay": WAIT_DELAY_SECONDS, "MaxAttempts": WAIT_ATTEMPTS},
    )
    task = ecs.describe_tasks(cluster=props["cluster"], tasks=[task_arn])["tasks"][0]
    container: dict[str, Any] = next(
        (c for c in task.get("containers", []) if c.get("name") == CONTAINER), {}
    )
    code = container.get("exitCode")
    if code != 0:
        raise MigrationFailed(
            f"migration task {task_arn} stopped with exit code {code} "
            f"({task.get('stoppedReason') or container.get('reason') or 'no reason given'}); "
            f"its output is in the log group {props['logGroup']}"
        )
    return task_arn


class MigrationRunProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        task_arn = run_migration(props)
        return CreateResult(id_=task_arn, outs={**props, "taskArn": task_arn})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in RERUN_ON if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "taskArn": run_migration(news)})

    # Deleting the record of a run deletes nothing: the schema stays with its database.


class MigrationRun(Resource, module="envfence", name="MigrationRun"):
    """Type `pulumi-python:dynamic/envfence:MigrationRun`; outputs the ARN of the task run."""

    task_arn: pulumi.Output[str]

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(MigrationRunProvider(), name, {**props, "taskArn": None}, opts)
