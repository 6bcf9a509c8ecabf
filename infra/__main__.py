"""envfence: one isolated AWS environment per stack (prod, experiment, experiment-<id>).

The composition root: read and validate the stack's settings, create the stack's one AWS
provider (default tags, allowed account), build the Environment under it, export what other
tools need. Stacks differ only by their config.
"""

import sys
from pathlib import Path

# Pulumi runs this file with infra/ on sys.path; the modules import each other as `infra.*`.
# The shared contract (config schema, naming, registry) is the installed `envfence` package
# (requirements.txt installs this repository into the stack's virtualenv).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker

from envfence.settings import load_settings
from infra.components.environment import Environment, EnvironmentArgs

ROOT = Path(__file__).resolve().parent.parent  # the project: Pulumi.yaml and the stack files
settings = load_settings(ROOT)

provider = aws.Provider(
    "aws",
    region=settings.region,
    allowed_account_ids=list(settings.allowed_account_ids),
    default_tags={"tags": settings.tags()},
)

# Builds and pushes the worker image; default providers are disabled, so it is explicit too.
docker_provider = docker.Provider("docker")

env = Environment(
    settings.stack,
    EnvironmentArgs(settings=settings),
    pulumi.ResourceOptions(providers=[provider, docker_provider]),
)

pulumi.export("tier", settings.tier)
pulumi.export("experimentId", settings.experiment_id)
pulumi.export("vpcId", env.network.vpc.id)
pulumi.export("vpcCidr", str(settings.network.cidr))
pulumi.export("keyArn", env.keys.key.arn)
pulumi.export("buckets", {k: b.bucket for k, b in env.data.buckets.items()})
pulumi.export("roles", {k: r.arn for k, r in env.identity.roles.items()})
pulumi.export("dbEndpoint", env.data.database.endpoint)
pulumi.export("declaredFlows", [f.describe() for f in settings.flows])
pulumi.export("queueUrl", env.pipeline.queue.url)
pulumi.export("image", env.compute.image_ref)
# The account's audit bucket and trail are the baseline stack's (`trailOwner`); another stack of
# the account exports None for its bucket.
pulumi.export("auditBucket", env.audit.bucket.bucket if env.audit else None)
pulumi.export("trailOwner", settings.trail_owner or settings.stack)
pulumi.export("migrateCommand", env.compute.db_tasks.command)
# A pipeline run (app/worker/run.py): replace <prefix> and <run-id>; None without curated/results.
pulumi.export("pipelineRunCommand", env.compute.pipeline_command)
# The environment's DVC remote: its own curated store, reachable only with its roles (README).
pulumi.export(
    "dvcRemote",
    env.data.buckets["curated"].bucket.apply(lambda b: f"s3://{b}/dvc")
    if "curated" in env.data.buckets
    else None,
)
pulumi.export("expiresOn", settings.expires_on.isoformat() if settings.expires_on else None)
