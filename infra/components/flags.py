"""The environment's feature flags in AWS AppConfig: multi-variant flags with targeting rules.

Each environment has its own application, so a flag flipped for an experiment can never switch a
feature on in production. Flags marked `experimental` are on only in experiment stacks unless
the stack's config says otherwise; in production an experimental flag reaches only the records
its variants target (settings.py refuses a 100 % rollout and wants an owner and an end date).

The document is AppConfig's AWS.AppConfig.FeatureFlags type: flags under `flags`, their values
and `_variants` under `values`, the default variant last and without a rule
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-type-reference-feature-flags.html,
https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-procedures.html).
Each variant's rule is written in AppConfig's rule language
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-rules-operators.html):
`(in $group [...])`, `(in $region [...])`, and a percentage as a slice of one stable split of
`$userId` seeded with the flag's name (`split` thresholds with one seed nest, so the slice
[lo, hi) is `(and (split pct::hi) (not (split pct::lo)))`). Every variant carries the attribute
`experimental` (rows it produces must be marked) and, when declared, `owner`; an end date is
the flag's `_deprecation` date.

AppConfig's SDK calls return no variant data (only its Agent evaluates rules), so the worker
evaluates this same document itself: the task definition hands it over in `FLAG_SET`, with
`FLAG_SET_VERSION` the label of this hosted configuration version (`flag_set_version`). The
provider stores the content as a secret; the label, a hash of it, is not, and `envfence check`
(EF505) holds the task definition's copy to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.flagset import feature_flags_document, flag_set_version
from envfence.settings import Settings


@dataclass
class FlagsArgs:
    settings: Settings


class Flags(pulumi.ComponentResource):
    application: aws.appconfig.Application
    environment: aws.appconfig.Environment
    profile: aws.appconfig.ConfigurationProfile
    configuration_arn: pulumi.Output[str]
    document: str  # the flag set this stack deploys (the worker's FLAG_SET)
    version_label: str  # its hosted configuration version's label (FLAG_SET_VERSION)

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
        self.document = feature_flags_document(s.flags)
        self.version_label = flag_set_version(self.document)
        version = aws.appconfig.HostedConfigurationVersion(
            "flags-version",
            application_id=self.application.id,
            configuration_profile_id=self.profile.configuration_profile_id,
            content_type="application/json",
            content=self.document,
            # The worker's FLAG_SET_VERSION: it stamps every row with it.
            version_label=self.version_label,
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
