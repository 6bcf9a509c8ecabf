"""The environment's ingestion path: an SQS queue feeding the worker, and its dead-letter queue.

Each environment has its own queues, encrypted with its own key, whose policies deny anyone who
is not a role of this environment: an experiment producer cannot enqueue into production's
pipeline, and production records never pass through an experiment's queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.settings import Settings
from infra.components.policies import document, statement

QUEUE_ACTIONS = [
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:PurgeQueue",
]


@dataclass
class PipelineArgs:
    settings: Settings
    key_arn: pulumi.Input[str]


class Pipeline(pulumi.ComponentResource):
    queue: aws.sqs.Queue
    dead_letter_queue: aws.sqs.Queue

    def __init__(self, name: str, args: PipelineArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("envfence:index:Pipeline", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        # Experiment records expire with the experiment's other data: 4 days in either queue.
        # Production keeps 14 days (SQS's maximum) so a failed record can still be replayed.
        retention = 1209600 if s.is_production else 345600  # 14 days / 4 days, in seconds
        self.dead_letter_queue = aws.sqs.Queue(
            "ingest-dlq",
            name=naming.queue_name(s.project, s.stack, "ingest-dlq"),
            kms_master_key_id=args.key_arn,
            kms_data_key_reuse_period_seconds=300,
            message_retention_seconds=retention,
            opts=child,
        )
        self.queue = aws.sqs.Queue(
            "ingest",
            name=naming.queue_name(s.project, s.stack, "ingest"),
            kms_master_key_id=args.key_arn,
            kms_data_key_reuse_period_seconds=300,
            message_retention_seconds=retention,
            visibility_timeout_seconds=120,
            receive_wait_time_seconds=20,
            # After five failed attempts a record parks in the DLQ instead of looping.
            redrive_policy=pulumi.Output.json_dumps(
                {"deadLetterTargetArn": self.dead_letter_queue.arn, "maxReceiveCount": 5}
            ),
            opts=child,
        )
        for logical, queue in (("ingest", self.queue), ("ingest-dlq", self.dead_letter_queue)):
            aws.sqs.QueuePolicy(
                f"{logical}-policy",
                queue_url=queue.url,
                policy=document(
                    statement(
                        "DenyInsecureTransport",
                        "Deny",
                        ["sqs:*"],
                        [queue.arn],
                        principal="*",
                        condition={"Bool": {"aws:SecureTransport": "false"}},
                    ),
                    statement(
                        "DenyPrincipalsOutsideThisEnvironment",
                        "Deny",
                        QUEUE_ACTIONS,
                        [queue.arn],
                        principal="*",
                        condition={"ArnNotEquals": {"aws:PrincipalArn": s.role_arns()}},
                    ),
                ),
                opts=child,
            )
        self.register_outputs({"queueUrl": self.queue.url})
