"""The worker's configuration, read from environment variables and checked before anything runs.

The first missing or invalid variable stops the worker with one message that names it
(`python -m worker` exits with status 2). Nothing here touches AWS or the database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .flagset import FlagSet, FlagSetError
from .pipeline import Identity

# The same rules as envfence/settings.py: the image does not ship the Pulumi program.
STACK_RE = re.compile(r"^[a-z][a-z0-9-]{0,26}[a-z0-9]$")
EXPERIMENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,14}[a-z0-9]$")
TIERS = ("production", "experiment")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
QUEUE_URL_RE = re.compile(r"^https://[A-Za-z0-9.-]+/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\d{1,3}(\.\d{1,3}){3}$")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
APPCONFIG_ID_RE = re.compile(r"^[A-Za-z0-9_. -]{1,128}$")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_SSLROOTCERT = "/etc/ssl/certs/rds-global-bundle.pem"

REQUIRED = (
    "ENVFENCE_ENVIRONMENT",
    "ENVFENCE_TIER",
    "QUEUE_URL",
    "RAW_BUCKET",
    "DB_HOST",
    "DB_NAME",
    "AWS_REGION",
    "APPCONFIG_APPLICATION",
    "APPCONFIG_ENVIRONMENT",
    "APPCONFIG_PROFILE",
    "FLAG_SET",
    "FLAG_SET_VERSION",
)


class ConfigError(Exception):
    """One environment variable is missing or invalid; `variable` names it."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable} {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Config:
    identity: Identity
    queue_url: str
    raw_bucket: str
    region: str
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    db_password: str | None
    db_sslmode: str
    db_sslrootcert: str
    appconfig_application: str
    appconfig_environment: str
    appconfig_profile: str
    # The flag set the worker evaluates per record (flagset.py): the AppConfig document the stack
    # deploys, checked against its version label.
    flag_set: FlagSet = field(compare=False)
    wait_seconds: int = 20
    max_messages: int = 10
    flags_poll_seconds: int = 60
    log_level: str = "INFO"

    def variables(self) -> dict[str, str | None]:
        """The value each environment variable took, defaults applied (the request contract
        names configuration values by these variables)."""
        return {
            "ENVFENCE_ENVIRONMENT": self.identity.environment,
            "ENVFENCE_EXPERIMENT_ID": self.identity.experiment_id,
            "QUEUE_URL": self.queue_url,
            "RAW_BUCKET": self.raw_bucket,
            "AWS_REGION": self.region,
            "DB_HOST": self.db_host,
            "DB_PORT": str(self.db_port),
            "DB_NAME": self.db_name,
            "DB_USER": self.db_user,
            "APPCONFIG_APPLICATION": self.appconfig_application,
            "APPCONFIG_ENVIRONMENT": self.appconfig_environment,
            "APPCONFIG_PROFILE": self.appconfig_profile,
            "FLAG_SET_VERSION": self.flag_set.version,
        }


def load_config(environ: Mapping[str, str]) -> Config:
    """Build the Config from `environ`; raise ConfigError naming the first bad variable."""

    def get(name: str, default: str | None = None) -> str | None:
        value = environ.get(name, "").strip()
        if value:
            return value
        if name in REQUIRED:
            raise ConfigError(name, "is not set")
        return default

    def matching(name: str, pattern: re.Pattern[str], what: str, default: str | None = None) -> str:
        value = get(name, default)
        if value is None or not pattern.match(value):
            raise ConfigError(name, f"must be {what}, got {value!r}")
        return value

    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = get(name, str(default))
        try:
            value = int(raw or "")
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ConfigError(name, f"must be an integer from {low} to {high}, got {raw!r}")
        return value

    environment = matching(
        "ENVFENCE_ENVIRONMENT",
        STACK_RE,
        "a stack name (2-28 lowercase letters, digits and '-', starting with a letter)",
    )
    tier = get("ENVFENCE_TIER") or ""
    if tier not in TIERS:
        raise ConfigError("ENVFENCE_TIER", f"must be one of {', '.join(TIERS)}, got {tier!r}")
    experiment_id = get("ENVFENCE_EXPERIMENT_ID")
    if tier == "production":
        if experiment_id is not None:
            raise ConfigError(
                "ENVFENCE_EXPERIMENT_ID",
                f"must not be set for the production tier, got {experiment_id!r}",
            )
    else:
        if experiment_id is None:
            raise ConfigError("ENVFENCE_EXPERIMENT_ID", "is not set (required for tier experiment)")
        if not EXPERIMENT_ID_RE.match(experiment_id):
            raise ConfigError(
                "ENVFENCE_EXPERIMENT_ID",
                f"must be 2-16 lowercase letters, digits and '-', got {experiment_id!r}",
            )
    if environment.startswith("experiment-") and experiment_id != environment[11:]:
        raise ConfigError(
            "ENVFENCE_EXPERIMENT_ID",
            f"must be {environment[11:]!r}, the id in ENVFENCE_ENVIRONMENT={environment!r}; "
            f"got {experiment_id!r}",
        )

    sslmode = get("DB_SSLMODE", "verify-full") or ""
    if sslmode not in SSLMODES:
        raise ConfigError("DB_SSLMODE", f"must be one of {', '.join(SSLMODES)}, got {sslmode!r}")
    log_level = (get("LOG_LEVEL", "INFO") or "").upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    version = get("FLAG_SET_VERSION") or ""
    try:
        flag_set = FlagSet.load(get("FLAG_SET") or "", version)
    except FlagSetError as exc:
        raise ConfigError("FLAG_SET", f"is not a usable flag set: {exc}") from None

    return Config(
        identity=Identity(environment, tier, experiment_id),
        queue_url=matching("QUEUE_URL", QUEUE_URL_RE, "an SQS queue URL (https://sqs.<region>...)"),
        raw_bucket=matching("RAW_BUCKET", BUCKET_RE, "an S3 bucket name"),
        region=matching("AWS_REGION", REGION_RE, "an AWS region such as eu-west-1"),
        db_host=matching("DB_HOST", HOST_RE, "a host name or IPv4 address"),
        db_port=integer("DB_PORT", 5432, 1, 65535),
        db_name=matching("DB_NAME", NAME_RE, "a database name"),
        db_user=matching("DB_USER", NAME_RE, "a database user name", default="worker"),
        db_password=environ.get("DB_PASSWORD") or None,
        db_sslmode=sslmode,
        db_sslrootcert=get("DB_SSLROOTCERT", DEFAULT_SSLROOTCERT) or DEFAULT_SSLROOTCERT,
        appconfig_application=matching(
            "APPCONFIG_APPLICATION", APPCONFIG_ID_RE, "an AppConfig application name or id"
        ),
        appconfig_environment=matching(
            "APPCONFIG_ENVIRONMENT", APPCONFIG_ID_RE, "an AppConfig environment name or id"
        ),
        appconfig_profile=matching(
            "APPCONFIG_PROFILE", APPCONFIG_ID_RE, "an AppConfig configuration profile name or id"
        ),
        flag_set=flag_set,
        wait_seconds=integer("POLL_WAIT_SECONDS", 20, 0, 20),
        max_messages=integer("MAX_MESSAGES", 10, 1, 10),
        flags_poll_seconds=integer("FLAGS_POLL_SECONDS", 60, 15, 86400),
        log_level=log_level,
    )
