"""The environment's containers: its own image repository, cluster, task and service.

The worker image is built from `app/` with pulumi-docker and pushed to this environment's own
ECR repository (or, with `container.build: false`, a prebuilt image of that same repository is
used). The task runs as the environment's service role, non-root, on a read-only root
filesystem, in the application subnets with no public IP: an experiment container has no route,
role or credential that reaches production, and vice versa.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker

from envfence import naming
from envfence.settings import Settings
from infra.components.containers import PULL_ACTIONS, hardened_container
from infra.components.database_tasks import DatabaseTasks, DatabaseTasksArgs, run_task_command
from infra.components.policies import document, statement

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "app"
# What the image is built from (the build context is the repository, narrowed by .dockerignore
# to these): the worker and the database migrations it runs as a one-off task.
IMAGE_SOURCES = ("app", "db")
PUSH_ACTIONS = [
    "ecr:PutImage",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:BatchDeleteImage",
]


def source_tag(root: Path = ROOT) -> str:
    """A tag derived from the image's sources: tags are immutable, so a change needs a new one,
    and the same sources give the same tag in every checkout (CI after a laptop)."""
    digest = hashlib.sha256()
    for top in (".dockerignore", *IMAGE_SOURCES):
        base = root / top
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in paths:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return f"src-{digest.hexdigest()[:16]}"


def build_paths(root: Path = ROOT, cwd: Path | None = None) -> tuple[str, str]:
    """Build context and Dockerfile relative to where `pulumi up` runs. The docker provider
    keeps both in the state: absolute paths differ between a laptop and CI, so every run from
    another checkout would show a change, rebuild, and push the same tag again into an
    immutable repository, which refuses it."""
    base = Path(os.path.relpath(root, cwd or Path.cwd()))
    return base.as_posix(), (base / "app" / "Dockerfile").as_posix()


PIPELINE_CONTAINER = "pipeline"


@dataclass
class ComputeArgs:
    settings: Settings
    key_arn: pulumi.Input[str]
    service_role_arn: pulumi.Input[str]
    execution_role_arn: pulumi.Input[str]
    app_subnet_ids: list[pulumi.Input[str]]
    app_security_group_id: pulumi.Input[str]
    environment: dict[str, pulumi.Input[str]]
    migrator_role_arn: pulumi.Input[str]
    boundary_arn: pulumi.Input[str]
    db_address: pulumi.Input[str]
    master_secret_arn: pulumi.Input[str]
    # Pipeline runs (app/worker/run.py), as the `pipeline` role: its variables, and the role.
    # None when the stack has no `curated` or no `results` store.
    pipeline_role_arn: pulumi.Input[str] | None = None
    pipeline_environment: dict[str, pulumi.Input[str]] | None = None


class Compute(pulumi.ComponentResource):
    repository: aws.ecr.Repository
    log_group: aws.cloudwatch.LogGroup
    image_ref: pulumi.Output[str]
    db_tasks: DatabaseTasks
    pipeline_command: pulumi.Output[str] | None

    def __init__(self, name: str, args: ComputeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("envfence:index:Compute", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        prefix = naming.prefix(s.project, s.stack)

        self.repository = aws.ecr.Repository(
            "repository",
            name=s.repository_name,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": args.key_arn}],
            force_delete=not s.is_production,
            opts=child,
        )
        env_roles = [
            naming.role_arn(s.project, s.stack, r, s.account)
            for r in (*naming.ROLES, *naming.SUPPORT_ROLES)
        ]
        deployer = [s.deployer] if s.deployer else []
        repo_statements = [
            statement(
                "DenyPullsOutsideThisEnvironment",
                "Deny",
                PULL_ACTIONS,
                principal="*",
                # `docker push` checks layers with BatchCheckLayerAvailability: the deployer,
                # which builds and pushes the image, must pass this statement too.
                # https://docs.aws.amazon.com/AmazonECR/latest/userguide/image-push-iam.html
                condition={"ArnNotEquals": {"aws:PrincipalArn": [*env_roles, *deployer]}},
            ),
        ]
        if deployer:
            repo_statements.append(
                statement(
                    "OnlyTheDeployerPushes",
                    "Deny",
                    PUSH_ACTIONS,
                    principal="*",
                    condition={"ArnNotEquals": {"aws:PrincipalArn": deployer}},
                )
            )
        aws.ecr.RepositoryPolicy(
            "repository-policy",
            repository=self.repository.name,
            policy=document(*repo_statements),
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            "repository-lifecycle",
            repository=self.repository.name,
            policy=pulumi.Output.json_dumps(
                {
                    "rules": [
                        {
                            "rulePriority": 1,
                            "description": "untagged images go after 7 days",
                            "selection": {
                                "tagStatus": "untagged",
                                "countType": "sinceImagePushed",
                                "countUnit": "days",
                                "countNumber": 7,
                            },
                            "action": {"type": "expire"},
                        },
                        {
                            "rulePriority": 2,
                            "description": "keep the newest tagged images",
                            "selection": {
                                "tagStatus": "any",
                                "countType": "imageCountMoreThan",
                                "countNumber": 30 if s.is_production else 10,
                            },
                            "action": {"type": "expire"},
                        },
                    ]
                }
            ),
            opts=child,
        )

        if s.container.build:
            token = aws.ecr.get_authorization_token_output(
                registry_id=self.repository.registry_id,
                opts=pulumi.InvokeOutputOptions(parent=self),
            )
            context, dockerfile = build_paths()
            image = docker.Image(
                "worker-image",
                image_name=pulumi.Output.concat(self.repository.repository_url, ":", source_tag()),
                build={
                    "context": context,
                    "dockerfile": dockerfile,
                    "platform": "linux/amd64",
                },
                registry={
                    "server": self.repository.repository_url,
                    "username": token.user_name,
                    "password": token.password,
                },
                opts=child,
            )
            # The digest, not the tag: the task runs exactly the image that was pushed.
            self.image_ref = image.repo_digest
        else:
            self.image_ref = pulumi.Output.from_input(str(s.container.image))

        cluster = aws.ecs.Cluster(
            "cluster",
            name=prefix,
            settings=[{"name": "containerInsights", "value": "enabled"}],
            opts=child,
        )
        # Migrations first: the worker refuses to start against an unmigrated database.
        self.db_tasks = DatabaseTasks(
            "db-tasks",
            DatabaseTasksArgs(
                settings=s,
                key_arn=args.key_arn,
                image=self.image_ref,
                cluster_arn=cluster.arn,
                migrator_role_arn=args.migrator_role_arn,
                boundary_arn=args.boundary_arn,
                db_address=args.db_address,
                master_secret_arn=args.master_secret_arn,
                app_subnet_ids=args.app_subnet_ids,
                app_security_group_id=args.app_security_group_id,
            ),
            child,
        )
        self.log_group = aws.cloudwatch.LogGroup(
            "worker-logs",
            name=naming.log_group_name(s.project, s.stack, "worker"),
            kms_key_id=args.key_arn,
            retention_in_days=s.log_retention_days,
            opts=child,
        )
        task = self._image_task(
            args, "worker-task", f"{prefix}-worker", args.service_role_arn, "worker",
            args.environment,
        )  # fmt: skip
        self.pipeline_command = None
        if args.pipeline_role_arn is not None and args.pipeline_environment is not None:
            self.pipeline_command = self._pipeline_task(args, cluster.arn, prefix)
        aws.ecs.Service(
            "worker-service",
            name=f"{prefix}-worker",
            cluster=cluster.arn,
            task_definition=task.arn,
            desired_count=s.container.desired_count,
            launch_type="FARGATE",
            # No interactive shell into the container: ECS Exec would be a path around the roles.
            enable_execute_command=False,
            network_configuration={
                "subnets": args.app_subnet_ids,
                "security_groups": [args.app_security_group_id],
                "assign_public_ip": False,
            },
            deployment_circuit_breaker={"enable": True, "rollback": True},
            # `pulumi up` succeeds only once the new tasks are running and stable; a worker that
            # cannot start (exit 2/3: config, database) trips the circuit breaker, the
            # deployment rolls back and `pulumi up` fails instead of reporting success.
            # https://www.pulumi.com/registry/packages/aws/api-docs/ecs/service/#waitforsteadystate_python
            wait_for_steady_state=True,
            propagate_tags="SERVICE",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.db_tasks.migration]),
        )
        self.register_outputs({"image": self.image_ref, "clusterArn": cluster.arn})

    def _image_task(
        self,
        args: ComputeArgs,
        name: str,
        family: str,
        task_role_arn: pulumi.Input[str] | None,
        container_name: str,
        environment: dict[str, pulumi.Input[str]],
        **container: object,
    ) -> aws.ecs.TaskDefinition:
        """A Fargate task of the worker's image, hardened (`hardened_container`), as
        `task_role_arn`, logging to the worker's group under the container's name, with the
        stack's container size and a writable /tmp only."""
        s = args.settings
        definition = hardened_container(
            container_name,
            self.image_ref,
            self.log_group.name,
            s.region,
            container_name,
            environment=[{"name": k, "value": v} for k, v in sorted(environment.items())],
            mountPoints=[{"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}],
            **container,
        )
        return aws.ecs.TaskDefinition(
            name,
            family=family,
            requires_compatibilities=["FARGATE"],
            network_mode="awsvpc",
            cpu=str(s.container.cpu),
            memory=str(s.container.memory),
            execution_role_arn=args.execution_role_arn,
            task_role_arn=task_role_arn,
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
            volumes=[{"name": "tmp"}],
            container_definitions=pulumi.Output.json_dumps([definition]),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _pipeline_task(
        self, args: ComputeArgs, cluster_arn: pulumi.Output[str], prefix: str
    ) -> pulumi.Output[str]:
        """The task definition of pipeline runs (`python -m worker.run`): the worker's image,
        hardened the same way, as the environment's `pipeline` role, logging to the worker's
        group under the prefix `pipeline`. Returns the command that starts a run."""
        s = args.settings
        env = dict(args.pipeline_environment or {})
        # The image by digest, recorded in every run's manifest.
        env["ENVFENCE_IMAGE"] = self.image_ref
        task = self._image_task(
            args,
            "pipeline-task",
            f"{prefix}-pipeline-run",
            args.pipeline_role_arn,
            PIPELINE_CONTAINER,
            env,
            # The module is fixed: an override can change the run's arguments only, never run
            # another module as the pipeline role (overrides cannot change entryPoint,
            # https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerOverride.html).
            entryPoint=["python", "-m", "worker.run"],
            command=["--help"],
        )
        overrides = json.dumps(
            {
                "containerOverrides": [
                    {
                        "name": PIPELINE_CONTAINER,
                        "command": ["--input", "<prefix>", "--run-id", "<run-id>"],
                    }
                ]
            },
            separators=(",", ":"),
        )
        return pulumi.Output.all(
            cluster_arn, task.arn, args.app_subnet_ids, args.app_security_group_id
        ).apply(
            lambda v: (
                run_task_command(s.region, v[0], v[1], v[2], v[3])
                + " --overrides "
                + shlex.quote(overrides)
            )
        )
