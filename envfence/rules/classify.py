"""Which AWS resource types are data, network, identity, key, or known to be neutral.

Type tokens are data taken from the provider's classes (`aws.s3.Bucket.pulumi_type`), never
hand-typed strings: a misspelled token would make a rule silently never fire. They are read
through `envfence.rules.providers`, which holds them without importing the providers. Coverage
rule EF901 reports any AWS type in a stack that none of these classes lists, so a new resource
type cannot slip past the rules unclassified.
"""

from __future__ import annotations

from typing import Any

from envfence.rules.providers import aws, docker, is_taggable, resource_class

__all__ = ["aws", "docker", "is_taggable", "resource_class"]


def token(cls: Any) -> str:
    return str(cls.pulumi_type)


def tokens(*classes: Any) -> frozenset[str]:
    return frozenset(token(c) for c in classes)


# Resources that hold or serve data of the environment (the proof's data resources too).
DATA = tokens(
    aws.s3.Bucket,
    aws.s3.BucketObjectv2,
    aws.rds.Instance,
    aws.rds.Cluster,
    aws.rds.Snapshot,
    aws.rds.ClusterSnapshot,
    aws.kms.Key,
    aws.secretsmanager.Secret,
    aws.sqs.Queue,
    aws.cloudwatch.LogGroup,
    aws.ecr.Repository,
    aws.appconfig.ConfigurationProfile,
    aws.appconfig.HostedConfigurationVersion,
    aws.dynamodb.Table,
)
BUCKETS = tokens(aws.s3.Bucket)
BUCKET_POLICIES = tokens(aws.s3.BucketPolicy)
DATABASES = tokens(aws.rds.Instance, aws.rds.Cluster)
KEYS = tokens(aws.kms.Key)
SNAPSHOT_SHARING = tokens(
    aws.rds.Snapshot,
    aws.rds.ClusterSnapshot,
    aws.ec2.AmiLaunchPermission,
    aws.ec2.SnapshotCreateVolumePermission,
)

# Bucket configuration resources: they belong to a bucket (their `bucket` input).
BUCKET_CONFIG = tokens(
    aws.s3.BucketPublicAccessBlock,
    aws.s3.BucketOwnershipControls,
    aws.s3.BucketServerSideEncryptionConfiguration,
    aws.s3.BucketVersioning,
    aws.s3.BucketLifecycleConfiguration,
    aws.s3.BucketPolicy,
    aws.s3.BucketObjectLockConfiguration,
    aws.s3.BucketLogging,
    aws.s3.BucketNotification,
)

# Resource policies and where their document lives.
RESOURCE_POLICIES: dict[str, str] = {
    token(aws.s3.BucketPolicy): "policy",
    token(aws.sqs.QueuePolicy): "policy",
    token(aws.secretsmanager.SecretPolicy): "policy",
    token(aws.ecr.RepositoryPolicy): "policy",
    token(aws.sns.TopicPolicy): "policy",
    token(aws.cloudwatch.LogResourcePolicy): "policyDocument",
    token(aws.kms.KeyPolicy): "policy",
}
# Resources that carry an inline resource policy themselves.
INLINE_RESOURCE_POLICIES: dict[str, str] = {
    token(aws.kms.Key): "policy",
    token(aws.sqs.Queue): "policy",
    token(aws.secretsmanager.Secret): "policy",
    token(aws.sns.Topic): "policy",
}
KEY_POLICIES = tokens(aws.kms.Key, aws.kms.KeyPolicy)

# Identity: roles, users, groups and the policies that grant them something.
ROLES = tokens(aws.iam.Role)
IDENTITY_POLICIES: dict[str, str] = {
    token(aws.iam.RolePolicy): "policy",
    token(aws.iam.Policy): "policy",
    token(aws.iam.UserPolicy): "policy",
    token(aws.iam.GroupPolicy): "policy",
}
POLICY_ATTACHMENTS = tokens(
    aws.iam.RolePolicyAttachment,
    aws.iam.PolicyAttachment,
    aws.iam.UserPolicyAttachment,
    aws.iam.GroupPolicyAttachment,
)
IDENTITY = (
    ROLES
    | frozenset(IDENTITY_POLICIES)
    | POLICY_ATTACHMENTS
    | tokens(aws.iam.User, aws.iam.Group, aws.iam.InstanceProfile, aws.iam.ServiceLinkedRole)
)

# Network: what could carry a packet between environments.
PEERING = tokens(
    aws.ec2.VpcPeeringConnection,
    aws.ec2.VpcPeeringConnectionAccepter,
    aws.ec2.PeeringConnectionOptions,
)
TRANSIT = tokens(
    aws.ec2transitgateway.TransitGateway,
    aws.ec2transitgateway.VpcAttachment,
    aws.ec2transitgateway.VpcAttachmentAccepter,
    aws.ec2transitgateway.PeeringAttachment,
    aws.ec2transitgateway.Route,
    aws.ec2.VpnGateway,
    aws.ec2.CustomerGateway,
    aws.ec2.VpnConnection,
)
ROUTES = tokens(aws.ec2.Route)
ROUTE_TABLES = tokens(aws.ec2.RouteTable)
SG_INGRESS_RULES = tokens(aws.vpc.SecurityGroupIngressRule)
SG_RULES = tokens(aws.ec2.SecurityGroupRule)
# The VPC's default group is a group like any other: its inline ingress admits traffic too.
SECURITY_GROUPS = tokens(aws.ec2.SecurityGroup, aws.ec2.DefaultSecurityGroup)
SHARING = tokens(aws.ram.ResourceShare, aws.ram.ResourceAssociation, aws.ram.PrincipalAssociation)
NETWORK = (
    PEERING
    | TRANSIT
    | ROUTES
    | ROUTE_TABLES
    | SG_INGRESS_RULES
    | SG_RULES
    | SECURITY_GROUPS
    | SHARING
    | tokens(
        aws.ec2.Vpc,
        aws.ec2.Subnet,
        aws.ec2.RouteTableAssociation,
        aws.ec2.InternetGateway,
        aws.ec2.NatGateway,
        aws.ec2.Eip,
        aws.ec2.VpcEndpoint,
        aws.ec2.FlowLog,
        aws.vpc.SecurityGroupEgressRule,
        aws.ec2.NetworkAcl,
        aws.ec2.NetworkAclRule,
        aws.ec2.DefaultNetworkAcl,
        aws.ec2.DefaultRouteTable,
        aws.ec2.MainRouteTableAssociation,
        aws.ec2.VpcEndpointPolicy,
    )
)
VPCS = tokens(aws.ec2.Vpc)
SUBNETS = tokens(aws.ec2.Subnet)

# Known neutral: configuration that neither holds data nor opens a path by itself; the rules
# that matter inspect them through the resource they configure.
NEUTRAL = BUCKET_CONFIG | tokens(
    aws.kms.Alias,
    aws.rds.SubnetGroup,
    aws.rds.ParameterGroup,
    aws.rds.ClusterParameterGroup,
    aws.cloudwatch.MetricAlarm,
    aws.cloudwatch.LogMetricFilter,
    aws.sns.Topic,
    aws.sns.TopicSubscription,
    aws.ecs.Cluster,
    aws.ecs.TaskDefinition,
    aws.ecs.Service,
    aws.ecs.ClusterCapacityProviders,
    aws.ecr.LifecyclePolicy,
    aws.sqs.RedrivePolicy,
    aws.appconfig.Application,
    aws.appconfig.Environment,
    aws.appconfig.Deployment,
    aws.appconfig.DeploymentStrategy,
    aws.cloudtrail.Trail,
)

QUEUES = tokens(aws.sqs.Queue)
LOG_GROUPS = tokens(aws.cloudwatch.LogGroup)
REPOSITORIES = tokens(aws.ecr.Repository)
TASK_DEFINITIONS = tokens(aws.ecs.TaskDefinition)
ECS_SERVICES = tokens(aws.ecs.Service)
TRAILS = tokens(aws.cloudtrail.Trail)
IMAGES = tokens(docker.Image)
# A schedule starts a task definition with a role: checked through the task and the role.
SCHEDULES = tokens(aws.scheduler.Schedule)
COMPUTE = TASK_DEFINITIONS | ECS_SERVICES | IMAGES | SCHEDULES | tokens(aws.ecs.Cluster)
AUDIT = TRAILS | tokens(aws.cloudwatch.LogMetricFilter, aws.cloudwatch.MetricAlarm)

CLASSES: dict[str, frozenset[str]] = {
    "data": DATA,
    "resource-policy": frozenset(RESOURCE_POLICIES),
    "network": NETWORK,
    "identity": IDENTITY,
    "key": KEYS,
    "compute": COMPUTE,
    "audit": AUDIT,
    "neutral": NEUTRAL - COMPUTE - AUDIT,
}


def classify(type_: str) -> str | None:
    for name, members in CLASSES.items():
        if type_ in members:
            return name
    return None
