"""One isolated environment: the component every stack builds exactly once.

Children are created in dependency order: the key (everything is encrypted with it), the
identity (boundary and roles, which everything else names), the network, the data, the
ingestion pipeline, the feature flags, the audit trail (only in the stack that owns the
account's trail: see `infra/components/audit.py`), the containers, and last the permissions that
name all of those resources.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from envfence import naming
from envfence.settings import Settings
from infra.components.audit import Audit, AuditArgs
from infra.components.compute import Compute, ComputeArgs
from infra.components.data import Data, DataArgs
from infra.components.flags import Flags, FlagsArgs
from infra.components.identity import (
    TRAIL_ROLE,
    EnvironmentResources,
    Identity,
    IdentityArgs,
    Permissions,
    PermissionsArgs,
)
from infra.components.keys import Keys, KeysArgs
from infra.components.network import Network, NetworkArgs
from infra.components.pipeline import Pipeline, PipelineArgs


@dataclass
class EnvironmentArgs:
    settings: Settings


class Environment(pulumi.ComponentResource):
    keys: Keys
    identity: Identity
    network: Network
    data: Data
    pipeline: Pipeline
    flags: Flags
    audit: Audit | None  # None: the account's trail is another stack's (settings.trail_owner)
    compute: Compute

    def __init__(
        self, name: str, args: EnvironmentArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("envfence:index:Environment", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self.keys = Keys("keys", KeysArgs(settings=s), child)
        key_arn = self.keys.key.arn
        self.identity = Identity("identity", IdentityArgs(settings=s, key_arn=key_arn), child)
        roles = self.identity.roles
        self.network = Network(
            "network",
            NetworkArgs(settings=s, key_arn=key_arn, flow_logs_role_arn=roles["flowlogs"].arn),
            child,
        )
        self.data = Data(
            "data",
            DataArgs(
                settings=s,
                key_arn=key_arn,
                role_arns={r: role.arn for r, role in roles.items()},
                data_subnet_ids=[sn.id for sn in self.network.data_subnets],
                db_security_group_id=self.network.db_security_group.id,
            ),
            child,
        )
        self.pipeline = Pipeline("pipeline", PipelineArgs(settings=s, key_arn=key_arn), child)
        self.flags = Flags("flags", FlagsArgs(settings=s), child)
        self.audit = None
        if s.owns_trail:
            self.audit = Audit(
                "audit",
                AuditArgs(
                    settings=s,
                    key_arn=key_arn,
                    trail_role_arn=roles[TRAIL_ROLE].arn,
                    # The archive too: an experiment account's baseline keeps concluded
                    # experiments' results there; no stack prefix may cover its name (a baseline
                    # with no short-lived stacks in its account has none).
                    data_bucket_arns=[
                        b.arn
                        for b in (
                            *self.data.buckets.values(),
                            *([self.data.archive] if self.data.archive is not None else []),
                        )
                    ],
                ),
                child,
            )
        worker_env: dict[str, pulumi.Input[str]] = {
            "ENVFENCE_ENVIRONMENT": s.stack,
            "ENVFENCE_TIER": s.tier,
            "QUEUE_URL": self.pipeline.queue.url,
            "RAW_BUCKET": self.data.buckets["raw"].bucket if "raw" in self.data.buckets else "",
            "DB_HOST": self.data.database.address,
            "DB_PORT": "5432",
            "DB_NAME": "envfence",
            "DB_USER": "worker",
            "AWS_REGION": s.region,
            "APPCONFIG_APPLICATION": self.flags.application.id,
            "APPCONFIG_ENVIRONMENT": self.flags.environment.environment_id,
            "APPCONFIG_PROFILE": self.flags.profile.configuration_profile_id,
            # The flag set the worker evaluates per record (AppConfig's SDK returns no variant
            # data): the hosted version's content, and its label (infra/components/flags.py).
            "FLAG_SET": self.flags.document,
            "FLAG_SET_VERSION": self.flags.version_label,
        }
        if s.experiment_id:
            worker_env["ENVFENCE_EXPERIMENT_ID"] = s.experiment_id
        # Pipeline runs (app/worker/run.py) read `curated` and write `results` with manifests.
        runs = "curated" in self.data.buckets and "results" in self.data.buckets
        pipeline_env: dict[str, pulumi.Input[str]] = {
            k: worker_env[k]
            for k in (
                "ENVFENCE_ENVIRONMENT",
                "ENVFENCE_TIER",
                "ENVFENCE_EXPERIMENT_ID",
                "AWS_REGION",
                "FLAG_SET",
                "FLAG_SET_VERSION",
            )
            if k in worker_env
        }
        if runs:
            pipeline_env["INPUT_BUCKET"] = self.data.buckets["curated"].bucket
            pipeline_env["RESULTS_BUCKET"] = self.data.buckets["results"].bucket
        self.compute = Compute(
            "compute",
            ComputeArgs(
                settings=s,
                key_arn=key_arn,
                service_role_arn=roles["service"].arn,
                execution_role_arn=roles["execution"].arn,
                app_subnet_ids=[sn.id for sn in self.network.app_subnets],
                app_security_group_id=self.network.app_security_group.id,
                environment=worker_env,
                migrator_role_arn=roles[naming.MIGRATOR_ROLE].arn,
                boundary_arn=self.identity.boundary.arn,
                db_address=self.data.database.address,
                master_secret_arn=self.data.master_secret_arn,
                pipeline_role_arn=roles["pipeline"].arn if runs else None,
                pipeline_environment=pipeline_env if runs else None,
            ),
            child,
        )
        Permissions(
            "permissions",
            PermissionsArgs(
                settings=s,
                roles=roles,
                resources=EnvironmentResources(
                    key_arn=key_arn,
                    bucket_arns={k: b.arn for k, b in self.data.buckets.items()},
                    db_resource_id=self.data.database.resource_id,
                    flow_log_group_arn=self.network.flow_log_group.arn,
                    queue_arn=self.pipeline.queue.arn,
                    dead_letter_queue_arn=self.pipeline.dead_letter_queue.arn,
                    repository_arn=self.compute.repository.arn,
                    worker_log_group_arn=self.compute.log_group.arn,
                    trail_log_group_arn=self.audit.log_group.arn if self.audit else None,
                    flags_configuration_arn=self.flags.configuration_arn,
                    master_secret_arn=self.data.master_secret_arn,
                    db_tasks_log_group_arn=self.compute.db_tasks.log_group.arn,
                ),
            ),
            child,
        )
        self.register_outputs({})
