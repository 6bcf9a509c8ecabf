"""The environment's containers: its own image repository, cluster, task and service.

The worker image is built from `app/` with pulumi-docker and pushed to this environment's own
ECR repository (or, with `container.build: false`, a prebuilt image of that same repository is
used). The task runs as the environment's service role, non-root, on a read-only root
filesystem, in the application subnets with no public IP: an experiment container has no route,
role or credential that reaches production, and vice versa.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker

from infra import naming
from infra.components.policies import document, statement
from infra.settings import Settings

APP_DIR = Path(__file__).resolve().parents[2] / "app"
PULL_ACTIONS = [
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchCheckLayerAvailability",
]
PUSH_ACTIONS = [
    "ecr:PutImage",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:BatchDeleteImage",
]


def source_tag(app_dir: Path = APP_DIR) -> str:
    """A tag derived from the image's sources: tags are immutable, so a change needs a new one."""
    digest = hashlib.sha256()
    for path in sorted(
        p for p in app_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ):
        digest.update(str(path.relative_to(app_dir)).encode())
        digest.update(path.read_bytes())
    return f"src-{digest.hexdigest()[:16]}"


@dataclass
class ComputeArgs:
    settings: Settings
    key_arn: pulumi.Input[str]
    service_role_arn: pulumi.Input[str]
    execution_role_arn: pulumi.Input[str]
    app_subnet_ids: list[pulumi.Input[str]]
    app_security_group_id: pulumi.Input[str]
    environment: dict[str, pulumi.Input[str]]


class Compute(pulumi.ComponentResource):
    repository: aws.ecr.Repository
    log_group: aws.cloudwatch.LogGroup
    image_ref: pulumi.Output[str]

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
        repo_statements = [
            statement(
                "DenyPullsOutsideThisEnvironment",
                "Deny",
                PULL_ACTIONS,
                principal="*",
                condition={
                    "ArnNotEquals": {"aws:PrincipalArn": env_roles + list(s.admin_principals)}
                },
            ),
        ]
        if s.admin_principals:
            repo_statements.append(
                statement(
                    "OnlyAdministratorsPush",
                    "Deny",
                    PUSH_ACTIONS,
                    principal="*",
                    condition={"ArnNotEquals": {"aws:PrincipalArn": list(s.admin_principals)}},
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
            image = docker.Image(
                "worker-image",
                image_name=pulumi.Output.concat(self.repository.repository_url, ":", source_tag()),
                build={
                    "context": str(APP_DIR),
                    "dockerfile": str(APP_DIR / "Dockerfile"),
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
        self.log_group = aws.cloudwatch.LogGroup(
            "worker-logs",
            name=naming.log_group_name(s.project, s.stack, "worker"),
            kms_key_id=args.key_arn,
            retention_in_days=s.log_retention_days,
            opts=child,
        )
        container = {
            "name": "worker",
            "image": self.image_ref,
            "essential": True,
            "user": "10001:10001",
            "readonlyRootFilesystem": True,
            "privileged": False,
            "linuxParameters": {"initProcessEnabled": True, "capabilities": {"drop": ["ALL"]}},
            "environment": [{"name": k, "value": v} for k, v in sorted(args.environment.items())],
            "mountPoints": [{"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}],
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": self.log_group.name,
                    "awslogs-region": s.region,
                    "awslogs-stream-prefix": "worker",
                },
            },
        }
        task = aws.ecs.TaskDefinition(
            "worker-task",
            family=f"{prefix}-worker",
            requires_compatibilities=["FARGATE"],
            network_mode="awsvpc",
            cpu=str(s.container.cpu),
            memory=str(s.container.memory),
            execution_role_arn=args.execution_role_arn,
            task_role_arn=args.service_role_arn,
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
            volumes=[{"name": "tmp"}],
            container_definitions=pulumi.Output.json_dumps([container]),
            opts=child,
        )
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
            propagate_tags="SERVICE",
            opts=child,
        )
        self.register_outputs({"image": self.image_ref, "clusterArn": cluster.arn})
