"""Flag sets for the worker's tests, built the way a stack builds them: `envfence:flags` settings
through `envfence.flagset.feature_flags_document` (the document AppConfig gets), loaded by the
worker's `FlagSet` with its version label."""

from __future__ import annotations

import datetime as dt

from app.worker.flagset import FlagSet
from envfence.flagset import feature_flags_document, flag_set_version
from envfence.settings import FeatureFlag, FlagVariant, Targeting

OWNER = "data-science@example.com"
ENDS = dt.date(2027, 3, 31)

# `curate_v2` as the stacks declare it: experimental, off (production's default) or on for
# every record (an experiment stack's default).
CURATE_OFF = FeatureFlag("curate_v2", "v2 curation", experimental=True, enabled=False)
CURATE_ON = FeatureFlag("curate_v2", "v2 curation", experimental=True, enabled=True)


def live_experiment(percent: int = 10, groups: tuple[str, ...] = ("internal",)) -> FeatureFlag:
    """Production's live experiment: the internal group, plus `percent` % of users, get v2."""
    variants = []
    if groups:
        variants.append(FlagVariant("internal", True, (Targeting(groups=groups),)))
    variants.append(FlagVariant("treatment", True, (Targeting(split=(0, percent * 100)),)))
    return FeatureFlag(
        "curate_v2",
        "v2 curation",
        experimental=True,
        enabled=False,
        variants=tuple(variants),
        owner=OWNER,
        ends_on=ENDS,
    )


def document(*flags: FeatureFlag) -> tuple[str, str]:
    """(FLAG_SET, FLAG_SET_VERSION) as the task definition carries them."""
    text = feature_flags_document(flags)
    return text, flag_set_version(text)


def flag_set(*flags: FeatureFlag) -> FlagSet:
    return FlagSet.load(*document(*flags))
