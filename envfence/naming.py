"""Names, tag keys and ARNs: the one place where envfence decides what things are called.

Both halves of the project read this module: `infra/` to name what it declares, `envfence/` to
recognise what belongs to which environment. It imports nothing from Pulumi, so the checker can
use it on exported state without the SDK's runtime.

Physical names are deterministic per (project, stack, account) rather than Pulumi auto-names:
another stack must be able to name a resource in a declared flow without a StackReference, and a
checker must be able to tell which environment an ARN belongs to from the ARN alone. They never
collide across stacks because every name contains the stack name, and bucket names (global in
S3) also contain the account id.
"""

from __future__ import annotations

import re

# Tag keys, applied to every resource through the provider's default tags.
TAG_ENVIRONMENT = "environment"
TAG_TIER = "tier"
TAG_CLASSIFICATION = "data-classification"
TAG_EXPERIMENT_ID = "experiment-id"
TAG_OWNER = "owner"
TAG_MANAGED_BY = "managed-by"
TAG_PROJECT = "project"
TAG_DATA_STORE = "data-store"

REQUIRED_TAGS = (
    TAG_ENVIRONMENT,
    TAG_TIER,
    TAG_CLASSIFICATION,
    TAG_OWNER,
    TAG_MANAGED_BY,
    TAG_PROJECT,
)

TIER_PRODUCTION = "production"
TIER_EXPERIMENT = "experiment"
TIERS = (TIER_PRODUCTION, TIER_EXPERIMENT)

CLASSIFICATION = {TIER_PRODUCTION: "production", TIER_EXPERIMENT: "experimental"}

# The per-environment roles. Order matters only for stable output.
ROLES = ("service", "pipeline", "analyst")
# Roles that AWS services assume for the environment (flow logs, ECS image pulls, CloudTrail).
MIGRATOR_ROLE = (
    "migrator"  # runs the database tasks (migrate, retention): image, logs, master secret
)
SUPPORT_ROLES = ("flowlogs", "execution", "trail", MIGRATOR_ROLE)
# Experiment stacks only: EventBridge Scheduler starts the daily retention task with it.
SCHEDULER_ROLE = "scheduler"

# Ports on which data is served; a rule admitting these from outside the VPC is a leak.
DATA_PORTS = (5432,)

STACK_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,26}[a-z0-9]$")
STORE_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def prefix(project: str, stack: str) -> str:
    """The prefix of every physical name of one environment: `<project>-<stack>`."""
    return f"{project}-{stack}"


def role_name(project: str, stack: str, role: str) -> str:
    return f"{prefix(project, stack)}-{role}"


def role_arn(project: str, stack: str, role: str, account: str) -> str:
    return f"arn:aws:iam::{account}:role/{role_name(project, stack, role)}"


def boundary_name(project: str, stack: str) -> str:
    return f"{prefix(project, stack)}-boundary"


def boundary_arn(project: str, stack: str, account: str) -> str:
    return f"arn:aws:iam::{account}:policy/{boundary_name(project, stack)}"


def bucket_name(project: str, stack: str, store: str, account: str) -> str:
    # At most 8 + 1 + 28 + 1 + 12 + 1 + 12 = 63 characters: S3's limit.
    return f"{prefix(project, stack)}-{store}-{account}"


def bucket_arn(project: str, stack: str, store: str, account: str) -> str:
    return f"arn:aws:s3:::{bucket_name(project, stack, store, account)}"


def key_alias(project: str, stack: str) -> str:
    return f"alias/{project}/{stack}"


def db_identifier(project: str, stack: str) -> str:
    return prefix(project, stack)


def repository_name(project: str, stack: str) -> str:
    return f"{prefix(project, stack)}-worker"


def trail_name(project: str, stack: str) -> str:
    return prefix(project, stack)


def queue_name(project: str, stack: str, purpose: str) -> str:
    return f"{prefix(project, stack)}-{purpose}"


def audit_bucket_name(project: str, stack: str, account: str) -> str:
    return f"{prefix(project, stack)}-audit-{account}"


def archive_bucket_name(project: str, stack: str, account: str) -> str:
    """The archive of concluded experiments, in an experiment account's baseline stack."""
    return f"{prefix(project, stack)}-archive-{account}"


def archive_key_alias(project: str, stack: str) -> str:
    """The archive's own key: it outlives the baseline's environment key."""
    return f"alias/{project}/{stack}-archive"


# Bucket words of the stack's own buckets that are not data stores: a store may not take them.
RESERVED_STORES = ("audit", "archive")

# The first word after `<project>-<stack>-` in every physical name a stack gives its resources
# (tests/test_experiment_cli.py checks the list against an evaluated stack). A short-lived
# `experiment-<id>` stack next to the shared `experiment` stack has the prefix
# `envfence-experiment-<id>`: an id starting with one of these words (`ingest`, `raw-x`) would
# make its names read as the shared stack's (`envfence-experiment-ingest` is its queue), so
# such ids are refused.
NAME_WORDS = frozenset(
    {
        "alerts",
        "analyst",
        "app",
        "archive",
        "audit",
        "boundary",
        "data",
        "db",
        "denied",
        "execution",
        "final",
        "flags",
        "flowlogs",
        "ingest",
        "migrator",
        "pipeline",
        "public",
        "retention",
        "scheduler",
        "service",
        "trail",
        "worker",
    }
)


def log_group_prefix(project: str, stack: str) -> str:
    """Every log group of an environment lives under this path."""
    return f"/{project}/{stack}"


def log_group_name(project: str, stack: str, purpose: str) -> str:
    return f"{log_group_prefix(project, stack)}/{purpose}"


def rds_log_group_name(db_identifier: str, log: str = "postgresql") -> str:
    """The group RDS exports a DB instance's log to; its name is fixed by RDS."""
    return f"/aws/rds/instance/{db_identifier}/{log}"
