"""What every container of an environment shares: the hardening, its log configuration, and
the execution-role statements ECS needs to start it (pull the image, write the logs).

One place, so the worker and the database tasks cannot drift apart (EF601 checks both).
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.components.policies import statement

# Image pulls of a Fargate task's execution role: the managed AmazonECSTaskExecutionRolePolicy
# minus what the environment does not use.
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_execution_IAM_role.html
PULL_ACTIONS = [
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchCheckLayerAvailability",
]


def hardened_container(
    name: str,
    image: pulumi.Input[str],
    log_group: pulumi.Input[str],
    region: str,
    stream_prefix: str,
    **extra: Any,
) -> dict[str, Any]:
    """Non-root (the image's uid 10001), read-only root filesystem, unprivileged, no Linux
    capabilities, logs to the environment's own group."""
    return {
        "name": name,
        "image": image,
        "essential": True,
        "user": "10001:10001",
        "readonlyRootFilesystem": True,
        "privileged": False,
        "linuxParameters": {"initProcessEnabled": True, "capabilities": {"drop": ["ALL"]}},
        **extra,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": log_group,
                "awslogs-region": region,
                "awslogs-stream-prefix": stream_prefix,
            },
        },
    }


def start_task_statements(
    repository_arn: pulumi.Input[str], log_streams: list[pulumi.Input[str]], logs_sid: str
) -> list[dict[str, Any]]:
    """What an execution role needs to start a task of the worker image."""
    return [
        # GetAuthorizationToken acts on no resource: AWS only accepts Resource "*".
        statement("EcrLogin", "Allow", ["ecr:GetAuthorizationToken"], ["*"]),
        statement("PullTheWorkerImage", "Allow", PULL_ACTIONS, [repository_arn]),
        statement(logs_sid, "Allow", ["logs:CreateLogStream", "logs:PutLogEvents"], log_streams),
    ]
