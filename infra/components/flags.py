"""The environment's feature flags in AWS AppConfig.

Each environment has its own application, so a flag flipped for an experiment can never switch a
feature on in production. Flags marked `experimental` are on only in experiment stacks unless
the stack's config says otherwise; the worker reads them through AppConfig Data with the service
role, which may read this environment's configuration profile and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.settings import FeatureFlag, Settings


def feature_flags_document(flags: tuple[FeatureFlag, ...]) -> str:
    """The AWS.AppConfig.FeatureFlags content: flag definitions and this stack's values."""
    return json.dumps(
        {
            "version": "1",
            "flags": {f.name: {"name": f.name, "description": f.description} for f in flags},
            "values": {f.name: {"enabled": f.enabled} for f in flags},
        },
        sort_keys=True,
    )


@dataclass
class FlagsArgs:
    settings: Settings


class Flags(pulumi.ComponentResource):
    application: aws.appconfig.Application
    environment: aws.appconfig.Environment
    profile: aws.appconfig.ConfigurationProfile
    configuration_arn: pulumi.Output[str]

    def __init__(self, name: str, args: FlagsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("envfence:index:Flags", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self.application = aws.appconfig.Application(
            "flags-app",
            name=naming.prefix(s.project, s.stack),
            description=f"envfence {s.stack}: feature flags of this environment only",
            opts=child,
        )
        self.environment = aws.appconfig.Environment(
            "flags-env",
            application_id=self.application.id,
            name=s.stack,
            description=f"envfence {s.stack}",
            opts=child,
        )
        self.profile = aws.appconfig.ConfigurationProfile(
            "flags-profile",
            application_id=self.application.id,
            name="feature-flags",
            location_uri="hosted",
            type="AWS.AppConfig.FeatureFlags",
            opts=child,
        )
        version = aws.appconfig.HostedConfigurationVersion(
            "flags-version",
            application_id=self.application.id,
            configuration_profile_id=self.profile.configuration_profile_id,
            content_type="application/json",
            content=feature_flags_document(s.flags),
            description=f"flags of {s.stack}",
            opts=child,
        )
        strategy = aws.appconfig.DeploymentStrategy(
            "flags-strategy",
            name=f"{naming.prefix(s.project, s.stack)}-flags",
            deployment_duration_in_minutes=0,
            final_bake_time_in_minutes=0 if not s.is_production else 10,
            growth_factor=100,
            growth_type="LINEAR",
            replicate_to="NONE",
            opts=child,
        )
        aws.appconfig.Deployment(
            "flags-deployment",
            application_id=self.application.id,
            environment_id=self.environment.environment_id,
            configuration_profile_id=self.profile.configuration_profile_id,
            configuration_version=version.version_number.apply(str),
            deployment_strategy_id=strategy.id,
            description=f"flags of {s.stack}",
            opts=child,
        )
        # The ARN AppConfig Data authorizes StartConfigurationSession against.
        self.configuration_arn = pulumi.Output.concat(
            f"arn:aws:appconfig:{s.region}:{s.account}:application/",
            self.application.id,
            "/environment/",
            self.environment.environment_id,
            "/configuration/",
            self.profile.configuration_profile_id,
        )
        self.register_outputs({"applicationId": self.application.id})
