"""Issue 8: the database can be migrated in every environment, without widening the fence.

The commands are taken from the evaluated stacks (the `db-task` task definition and, for
experiments, the retention schedule's override) and run here, as ECS would run them in the
image (working directory with `db/`, `python -m ...`, the PG* environment and the master
password ECS injects), against the real PostgreSQL the suite starts. The step `pulumi up` takes
to run the task (`MigrationRun`) is tested against botocore's Stubber with the real ECS and STS
clients: the exact calls and the failure paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from envfence.model import StackState
from infra.components.migration_run import MigrationFailed, run_migration
from tests.pg import Database, PostgresServer

pytest_plugins = ("tests.pg",)

ROOT = Path(__file__).resolve().parents[1]
TASK = "aws:ecs/taskDefinition:TaskDefinition"
SCHEDULE = "aws:scheduler/schedule:Schedule"


def db_container(state: StackState) -> dict[str, Any]:
    task = state.named("db-task", TASK)
    (container,) = json.loads(task.inputs["containerDefinitions"])
    return dict(container)


def task_environment(container: dict[str, Any], db: Database, password: str) -> dict[str, str]:
    """The container's environment as ECS builds it, pointed at the test server: only the host,
    the port and TLS differ (the test server has no RDS certificate)."""
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["PGSSLMODE"] == "verify-full" and env["PGSSLROOTCERT"]
    env.update(PGHOST=db.host, PGPORT=str(db.port), PGDATABASE=db.name, PGSSLMODE="disable")
    (secret,) = container["secrets"]
    assert secret["name"] == "PGPASSWORD" and secret["valueFrom"].endswith(":password::")
    env["PGPASSWORD"] = password
    return env


def run_in_image(container: dict[str, Any], command: list[str], env: dict[str, str]) -> Any:
    assert container["entryPoint"] == ["python", "-m"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,  # the image's WORKDIR holds db/ (app/Dockerfile)
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def master_db(postgres_server: PostgresServer, pg: Database) -> Database:
    """An empty database owned by a master user like RDS's (CREATEROLE, not a superuser)."""
    with pg.connect() as conn:
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'envfence_admin')"
            " THEN CREATE ROLE envfence_admin LOGIN CREATEROLE PASSWORD 'from-the-secret'; END IF;"
            " END $$"
        )
        conn.execute(f'ALTER DATABASE "{pg.name}" OWNER TO envfence_admin')
        conn.execute("ALTER SCHEMA public OWNER TO envfence_admin")
    return pg


@pytest.mark.parametrize("stack", ["prod", "experiment"])
def test_the_migration_task_migrates_its_database(
    stacks: dict[str, StackState], master_db: Database, stack: str
) -> None:
    container = db_container(stacks[stack])
    env = task_environment(container, master_db, "from-the-secret")
    assert env["PGUSER"] == "envfence_admin"
    first = run_in_image(container, container["command"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("db.migrate: applied 0001_schema")
    again = run_in_image(container, container["command"], env)
    assert (again.returncode, again.stdout.strip()) == (0, "db.migrate: up to date")
    with master_db.connect() as conn:
        (environment,) = conn.execute(
            "SELECT environment FROM envfence.environment_identity"
        ).fetchone() or ("",)
    assert environment == stack


def test_the_retention_schedule_runs_the_retention_job(
    stacks: dict[str, StackState], master_db: Database
) -> None:
    state = stacks["experiment"]
    container = db_container(state)
    env = task_environment(container, master_db, "from-the-secret")
    assert run_in_image(container, container["command"], env).returncode == 0
    (schedule,) = state.of_type(SCHEDULE)
    overrides = json.loads(schedule.inputs["target"]["input"])
    (override,) = overrides["containerOverrides"]
    assert override["name"] == container["name"]
    with master_db.connect() as conn:
        conn.execute(
            "INSERT INTO envfence.events (message_id, payload, source, experiment_id, environment,"
            " received_at, flag_set_version, variants) VALUES ('old', '{}', 'experiment',"
            " 'shared', 'experiment', now() - interval '40 days', 'fs-test', '{}'),"
            " ('new', '{}', 'experiment', 'shared', 'experiment', now(), 'fs-test', '{}')"
        )
    done = run_in_image(container, override["command"], env)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 event(s)" in done.stdout
    with master_db.connect() as conn:
        left = [r[0] for r in conn.execute("SELECT message_id FROM envfence.events")]
    assert left == ["new"]


def test_production_has_no_retention_schedule(stacks: dict[str, StackState]) -> None:
    assert not stacks["prod"].of_type(SCHEDULE)


def test_the_database_task_has_no_role_and_reads_only_its_own_secret(
    stacks: dict[str, StackState],
) -> None:
    for state in stacks.values():
        task = state.named("db-task", TASK)
        assert not task.inputs.get("taskRoleArn")  # no AWS credentials in the container
        assert task.inputs["executionRoleArn"].endswith(f":role/envfence-{state.stack}-migrator")
        db = state.of_type("aws:rds/instance:Instance")[0]
        secret = db.outputs["masterUserSecrets"][0]["secretArn"]
        assert db_container(state)["secrets"][0]["valueFrom"] == f"{secret}:password::"


# -- the step `pulumi up` takes: MigrationRun ------------------------------------------------


PROPS = {
    "region": "eu-west-1",
    "account": "123456789012",
    "cluster": "arn:aws:ecs:eu-west-1:123456789012:cluster/envfence-prod",
    "taskDefinition": "arn:aws:ecs:eu-west-1:123456789012:task-definition/envfence-prod-db:3",
    "subnets": ["subnet-1", "subnet-2"],
    "securityGroups": ["sg-app"],
    "logGroup": "/envfence/prod/db-tasks",
    "migrationsChecksum": "abc",
}
TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/envfence-prod/0123"


def clients(account: str = "123456789012") -> tuple[Any, Any, Stubber, Stubber]:
    ecs = boto3.client(
        "ecs", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    sts = boto3.client(
        "sts", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    ecs_stub, sts_stub = Stubber(ecs), Stubber(sts)
    sts_stub.add_response(
        "get_caller_identity",
        {"Account": account, "Arn": f"arn:aws:sts::{account}:assumed-role/d/s", "UserId": "u"},
    )
    return ecs, sts, ecs_stub, sts_stub


def stopped(exit_code: int | None, reason: str = "Essential container in task exited") -> dict:
    container: dict[str, Any] = {"name": "db", "lastStatus": "STOPPED"}
    if exit_code is not None:
        container["exitCode"] = exit_code
    return {
        "tasks": [
            {
                "taskArn": TASK_ARN,
                "lastStatus": "STOPPED",
                "stoppedReason": reason,
                "containers": [container],
            }
        ],
        "failures": [],
    }


def expect_run(ecs_stub: Stubber) -> None:
    ecs_stub.add_response(
        "run_task",
        {"tasks": [{"taskArn": TASK_ARN, "lastStatus": "PROVISIONING"}], "failures": []},
        {
            "cluster": PROPS["cluster"],
            "taskDefinition": PROPS["taskDefinition"],
            "launchType": "FARGATE",
            "count": 1,
            "startedBy": ANY,
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": PROPS["subnets"],
                    "securityGroups": PROPS["securityGroups"],
                    "assignPublicIp": "DISABLED",
                }
            },
        },
    )


def test_migration_run_waits_for_the_task_and_succeeds_on_exit_0() -> None:
    ecs, sts, ecs_stub, sts_stub = clients()
    expect_run(ecs_stub)
    ecs_stub.add_response("describe_tasks", stopped(0))  # the waiter
    ecs_stub.add_response("describe_tasks", stopped(0))  # the verdict
    with ecs_stub, sts_stub:
        assert run_migration(PROPS, ecs, sts) == TASK_ARN
        ecs_stub.assert_no_pending_responses()


def test_migration_run_fails_the_update_on_a_non_zero_exit() -> None:
    ecs, sts, ecs_stub, sts_stub = clients()
    expect_run(ecs_stub)
    ecs_stub.add_response("describe_tasks", stopped(1))
    ecs_stub.add_response("describe_tasks", stopped(1))
    with ecs_stub, sts_stub, pytest.raises(MigrationFailed, match=r"exit code 1 .*db-tasks"):
        run_migration(PROPS, ecs, sts)


def test_migration_run_reports_a_task_that_did_not_start() -> None:
    ecs, sts, ecs_stub, sts_stub = clients()
    ecs_stub.add_response(
        "run_task", {"tasks": [], "failures": [{"arn": "x", "reason": "RESOURCE:ENI"}]}
    )
    with ecs_stub, sts_stub, pytest.raises(MigrationFailed, match="did not start: x RESOURCE:ENI"):
        run_migration(PROPS, ecs, sts)


def test_migration_run_refuses_credentials_of_another_account() -> None:
    ecs, sts, ecs_stub, sts_stub = clients(account="999999999999")
    with ecs_stub, sts_stub, pytest.raises(MigrationFailed, match="account 999999999999"):
        run_migration(PROPS, ecs, sts)
