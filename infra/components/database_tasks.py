"""One-off database tasks: apply the migrations, and (experiments) expire old rows every day.

Both run the worker's image (which carries `db/`) as a Fargate task in the application subnets
with the application security group, the only group the database admits: no bastion, no NAT,
no widening of the fence. ECS hands the task the RDS-managed master password (`secrets`,
fetched with the `migrator` execution role, the only role that may read that secret); the task
itself gets no IAM role and no AWS credentials.

- `migrate`: run by `pulumi up` itself (`MigrationRun`) before the worker's service is rolled
  out, and whenever the migrations change; `migrateCommand` (a stack output) runs it by hand.
- `retention` (experiment tier only): EventBridge Scheduler starts the same task daily with the
  command `db.retention ... --older-than-days <retention.expireAfterDays>`, so experiment rows
  expire with the experiment's objects. Production rows are never expired (db/retention.py and
  migration 0004 refuse it as well).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.settings import Settings
from infra.components.containers import hardened_container
from infra.components.migration_run import CONTAINER, MigrationRun
from infra.components.policies import document, statement

DB_DIR = Path(__file__).resolve().parents[2] / "db"
MASTER_USER = "envfence_admin"
DB_NAME = "envfence"
# The image's copy of the RDS CA bundle (app/Dockerfile): verify-full checks the server's name.
SSL_ROOT_CERT = "/etc/ssl/certs/rds-global-bundle.pem"
RETENTION_SCHEDULE = "cron(17 3 * * ? *)"  # daily, 03:17 UTC
RETENTION_GROUP = "default"


def retention_schedule_arn(s: Settings) -> str:
    """The retention schedule's ARN: the encryption context of every KMS call for its payload
    (`aws:scheduler:schedule:arn`, "Encryption at rest in EventBridge Scheduler", CloudTrail
    event example: https://docs.aws.amazon.com/scheduler/latest/UserGuide/encryption-rest.html)."""
    name = f"{naming.prefix(s.project, s.stack)}-retention"
    return f"arn:aws:scheduler:{s.region}:{s.account}:schedule/{RETENTION_GROUP}/{name}"


def migrations_checksum(db_dir: Path = DB_DIR) -> str:
    """What `pulumi up` re-runs the migration for: the SQL files and the runner."""
    digest = hashlib.sha256()
    for path in sorted([*db_dir.glob("migrations/*.sql"), *db_dir.glob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def identity_args(s: Settings) -> list[str]:
    args = ["--environment", s.stack, "--tier", s.tier]
    if s.experiment_id:
        args += ["--experiment-id", s.experiment_id]
    return args


def migrate_command(s: Settings) -> list[str]:
    return ["db.migrate", *identity_args(s)]


def retention_command(s: Settings) -> list[str]:
    days = s.retention.expire_after_days or 30
    return ["db.retention", *identity_args(s), "--older-than-days", str(days)]


@dataclass
class DatabaseTasksArgs:
    settings: Settings
    key_arn: pulumi.Input[str]
    image: pulumi.Input[str]
    cluster_arn: pulumi.Input[str]
    migrator_role_arn: pulumi.Input[str]
    boundary_arn: pulumi.Input[str]
    db_address: pulumi.Input[str]
    master_secret_arn: pulumi.Input[str]
    app_subnet_ids: list[pulumi.Input[str]]
    app_security_group_id: pulumi.Input[str]


class DatabaseTasks(pulumi.ComponentResource):
    log_group: aws.cloudwatch.LogGroup
    task: aws.ecs.TaskDefinition
    migration: MigrationRun
    command: pulumi.Output[str]

    def __init__(
        self, name: str, args: DatabaseTasksArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("envfence:index:DatabaseTasks", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        prefix = naming.prefix(s.project, s.stack)
        self.log_group = aws.cloudwatch.LogGroup(
            "db-task-logs",
            name=naming.log_group_name(s.project, s.stack, "db-tasks"),
            kms_key_id=args.key_arn,
            retention_in_days=s.log_retention_days,
            opts=child,
        )
        container = hardened_container(
            CONTAINER,
            args.image,
            self.log_group.name,
            s.region,
            "db",
            # `python -m <command>`: the schedule overrides only `command` (db.retention).
            entryPoint=["python", "-m"],
            command=migrate_command(s),
            environment=[
                {"name": "PGHOST", "value": args.db_address},
                {"name": "PGPORT", "value": "5432"},
                {"name": "PGDATABASE", "value": DB_NAME},
                {"name": "PGUSER", "value": MASTER_USER},
                {"name": "PGSSLMODE", "value": "verify-full"},
                {"name": "PGSSLROOTCERT", "value": SSL_ROOT_CERT},
                {"name": "PGCONNECT_TIMEOUT", "value": "15"},
            ],
            # The RDS-managed secret is JSON {"username", "password"}: take the password key.
            # https://docs.aws.amazon.com/AmazonECS/latest/developerguide/secrets-envvar-secrets-manager.html
            secrets=[
                {
                    "name": "PGPASSWORD",
                    "valueFrom": pulumi.Output.concat(args.master_secret_arn, ":password::"),
                }
            ],
        )
        self.task = aws.ecs.TaskDefinition(
            "db-task",
            family=f"{prefix}-db",
            requires_compatibilities=["FARGATE"],
            network_mode="awsvpc",
            cpu="256",
            memory="512",
            execution_role_arn=args.migrator_role_arn,
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
            container_definitions=pulumi.Output.json_dumps([container]),
            opts=child,
        )
        network = {
            "subnets": args.app_subnet_ids,
            "securityGroups": [args.app_security_group_id],
        }
        self.migration = MigrationRun(
            "db-migration",
            {
                "region": s.region,
                "account": s.account,
                "cluster": args.cluster_arn,
                "taskDefinition": self.task.arn,
                "migrationsChecksum": migrations_checksum(),
                "logGroup": self.log_group.name,
                **network,
            },
            opts=child,
        )
        self.command = pulumi.Output.all(
            args.cluster_arn, self.task.arn, args.app_subnet_ids, args.app_security_group_id
        ).apply(lambda v: run_task_command(s.region, v[0], v[1], v[2], v[3]))
        if not s.is_production:
            self._retention_schedule(s, args, network)
        self.register_outputs({"migrateCommand": self.command})

    def _retention_schedule(
        self, s: Settings, args: DatabaseTasksArgs, network: Mapping[str, object]
    ) -> None:
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            "role-scheduler",
            name=naming.role_name(s.project, s.stack, naming.SCHEDULER_ROLE),
            description=f"envfence {s.stack}: starts the daily experiment-row retention task",
            # Confused deputy: only schedules of this account may assume it.
            # https://docs.aws.amazon.com/scheduler/latest/UserGuide/cross-service-confused-deputy-prevention.html
            assume_role_policy=document(
                statement(
                    "SchedulesOfThisAccount",
                    "Allow",
                    ["sts:AssumeRole"],
                    principal={"Service": "scheduler.amazonaws.com"},
                    condition={"StringEquals": {"aws:SourceAccount": s.account}},
                )
            ),
            permissions_boundary=args.boundary_arn,
            max_session_duration=3600,
            tags={"role": naming.SCHEDULER_ROLE},
            opts=child,
        )
        # https://docs.aws.amazon.com/scheduler/latest/UserGuide/setting-up.html#setting-up-execution-role
        aws.iam.RolePolicy(
            "policy-scheduler",
            role=role.id,
            policy=document(
                statement(
                    "RunTheDatabaseTask",
                    "Allow",
                    ["ecs:RunTask"],
                    [pulumi.Output.concat(_family_arn(self.task.arn), ":*")],
                    condition={"ArnEquals": {"ecs:cluster": args.cluster_arn}},
                ),
                statement(
                    "PassTheMigratorRole",
                    "Allow",
                    ["iam:PassRole"],
                    [args.migrator_role_arn],
                    condition={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
                ),
                # The payload is encrypted with the environment's key: Scheduler decrypts it
                # with this role at each invocation.
                # https://docs.aws.amazon.com/scheduler/latest/UserGuide/encryption-rest.html
                statement(
                    "DecryptThePayload",
                    "Allow",
                    ["kms:Decrypt"],
                    [args.key_arn],
                    condition={
                        "StringEquals": {
                            "kms:EncryptionContext:aws:scheduler:schedule:arn": (
                                retention_schedule_arn(s)
                            )
                        }
                    },
                ),
            ),
            opts=child,
        )
        aws.scheduler.Schedule(
            "retention-schedule",
            name=f"{naming.prefix(s.project, s.stack)}-retention",
            group_name=RETENTION_GROUP,
            description=f"envfence {s.stack}: expire experiment rows older than retention",
            # The payload (the task's overrides) under the environment's key, not an AWS-owned
            # one; the key policy lets the deployer encrypt it and this role decrypt it.
            kms_key_arn=args.key_arn,
            schedule_expression=RETENTION_SCHEDULE,
            flexible_time_window={"mode": "OFF"},
            target={
                "arn": args.cluster_arn,
                "role_arn": role.arn,
                "ecs_parameters": {
                    "task_definition_arn": self.task.arn,
                    "launch_type": "FARGATE",
                    "network_configuration": {
                        "subnets": network["subnets"],
                        "security_groups": network["securityGroups"],
                        "assign_public_ip": False,
                    },
                },
                # For an ECS target the input is RunTask's overrides.
                # https://docs.aws.amazon.com/scheduler/latest/UserGuide/managing-targets-templated.html
                "input": json.dumps(
                    {"containerOverrides": [{"name": CONTAINER, "command": retention_command(s)}]}
                ),
                "retry_policy": {"maximum_retry_attempts": 2},
            },
            opts=child,
        )


def _family_arn(task_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    """arn:...:task-definition/family:3 -> arn:...:task-definition/family"""
    return pulumi.Output.from_input(task_arn).apply(lambda a: a.rsplit(":", 1)[0])


def run_task_command(
    region: str, cluster: str, task: str, subnets: list[str], security_group: str
) -> str:
    config = (
        f"awsvpcConfiguration={{subnets=[{','.join(subnets)}],"
        f"securityGroups=[{security_group}],assignPublicIp=DISABLED}}"
    )
    return shlex.join(
        [
            "aws",
            "ecs",
            "run-task",
            "--region",
            region,
            "--cluster",
            cluster,
            "--task-definition",
            task,
            "--launch-type",
            "FARGATE",
            "--network-configuration",
            config,
        ]
    )
