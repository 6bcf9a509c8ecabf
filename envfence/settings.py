"""Typed, validated stack settings: the only module that reads `pulumi.Config`.

`load_settings()` reads the stack's config (namespace `envfence:` plus `aws:region`) and returns a
frozen `Settings`. Every value is checked before any resource is declared; the first bad value
stops the program with a `ConfigError` that names the key, the value and what is allowed.
`parse_settings()` does the same from plain strings, so the checker and the tests validate config
exactly as the program does.

The sibling stack files in the repository are read too: two environments must not share a CIDR,
and a declared flow must name a stack and a data store that exist.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from envfence import naming
from envfence.project import NAMESPACE, Project, ProjectFileError, load_project
from envfence.registry import Registry, RegistryError

# Under the Pulumi CLI a config error must stop the program with one line, not a traceback:
# Pulumi prints a `pulumi.RunError` as its message alone. The program (infra/__main__.py)
# imports pulumi before this module, so there the base is RunError. The checker does not import
# this module's base for nothing: importing pulumi costs a quarter of a second, more than a
# cached `envfence check` spends on its rules, so where pulumi is not loaded yet the base is
# Exception (the checker catches ConfigError itself; tests/test_settings.py holds both).
if "pulumi" in sys.modules:
    from pulumi import RunError as _Base
else:
    _Base = Exception  # type: ignore[misc,assignment]


class ConfigError(_Base):
    """A stack config value is missing or invalid; the message names key, value and allowed."""


T = TypeVar("T")

ACCOUNT_RE = re.compile(r"^\d{12}$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
EXPERIMENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,14}[a-z0-9]$")
OWNER_RE = re.compile(r"^[A-Za-z0-9 _.:/=+@-]{1,128}$")
PRINCIPAL_RE = re.compile(r"^arn:aws:iam::(\d{12}):(role|user)/[A-Za-z0-9+=,.@_/-]+$")
ENGINE_VERSION_RE = re.compile(r"^(1[3-7])(\.\d+)?$")
INSTANCE_CLASS_RE = re.compile(r"^db\.[a-z0-9]+\.[a-z0-9]+$")
# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy).
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
FLOW_ACCESS = ("read",)  # writes across environments are contamination by definition
PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)

# Top-level keys in the envfence namespace, with what each holds (also in README and Pulumi.yaml).
KNOWN_KEYS = (
    "tier",
    "experimentId",
    "expiresOn",
    "owner",
    "allowedAccountIds",
    "network",
    "database",
    "dataStores",
    "retention",
    "access",
    "flows",
    "logRetentionDays",
    "container",
    "flags",
    "audit",
)
FARGATE_CPU = (256, 512, 1024, 2048, 4096)
FLAG_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
DIGEST_OR_TAG_RE = r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})"


@dataclass(frozen=True)
class NetworkSettings:
    cidr: ipaddress.IPv4Network
    az_count: int
    nat_gateways: int

    def subnets(self) -> tuple[list[ipaddress.IPv4Network], ...]:
        """Application, data and public subnets, one of each per AZ.

        The VPC is split in sixteen: applications in 0-3, data in 4-7, public (NAT only) in 8-11,
        so adding an AZ later never renumbers an existing subnet."""
        parts = list(self.cidr.subnets(prefixlen_diff=4))
        n = self.az_count
        return parts[:n], parts[4 : 4 + n], parts[8 : 8 + n]


@dataclass(frozen=True)
class DatabaseSettings:
    engine_version: str
    instance_class: str

    @property
    def auto_minor_version_upgrade(self) -> bool:
        """RDS applies minor upgrades only when the version names the major alone; a pinned
        "16.4" would otherwise be upgraded behind Pulumi's back and the next `pulumi up` would
        try to downgrade it (Terraform aws_db_instance: engine_version / engine_version_actual)."""
        return "." not in self.engine_version

    @property
    def major_version(self) -> str:
        return self.engine_version.split(".")[0]

    allocated_storage: int
    max_allocated_storage: int
    multi_az: bool
    backup_retention_days: int
    deletion_protection: bool


@dataclass(frozen=True)
class RetentionSettings:
    """Lifecycle of data-store objects. Expiry applies to experiment stacks only."""

    expire_after_days: int | None
    archive_after_days: int | None
    noncurrent_archive_days: int | None
    noncurrent_expire_days: int | None
    abort_incomplete_upload_days: int


@dataclass(frozen=True)
class Flow:
    """A declared cross-environment flow: role `role` of stack `source` may `access` store
    `store` of stack `target`. Anything else across environments is a violation."""

    source: str
    target: str
    role: str
    store: str
    access: str

    def describe(self) -> str:
        return f"{self.source}/{self.role} may {self.access} {self.target}/{self.store}"


@dataclass(frozen=True)
class PeerStack:
    """What this stack needs to know of another stack of the repository."""

    name: str
    cidr: ipaddress.IPv4Network | None
    account: str | None
    data_stores: tuple[str, ...]


@dataclass(frozen=True)
class ContainerSettings:
    """The worker's container: built from app/ with Docker, or a prebuilt image of this
    environment's own repository (for deployments without a Docker daemon)."""

    build: bool
    image: str | None
    cpu: int
    memory: int
    desired_count: int


# Context attributes a variant may target, each the name of the key the rule reads from a
# record's context ($group, $region, $userId); see README "Feature flags and live experiments".
FLAG_ATTRIBUTES = ("group", "region", "percent")
VARIANT_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
ATTRIBUTE_VALUE_RE = re.compile(r"^[A-Za-z0-9 _.:/@+=-]{1,128}$")
# The implicit last variant of a flag with variants: everyone no rule targets.
DEFAULT_VARIANT = "default"
MAX_VARIANTS = 31  # AppConfig's schema allows 32 entries in `_variants`, the default included


@dataclass(frozen=True)
class Targeting:
    """One condition of a variant: every attribute given must hold (AND). `percent` takes the
    slice [low, high) of the flag's stable split of user ids (hundredths of a percent)."""

    groups: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None
    split: tuple[int, int] | None = None  # (low, high) in hundredths of a percent

    @property
    def sample_only(self) -> bool:
        """A percentage of whoever is left, without group or region."""
        return self.split is not None and self.groups is None and self.regions is None

    def overlaps(self, later: Targeting) -> bool:
        """Whether this condition takes records a later variant's condition also claims (the
        first match wins, so the later one would lose them unnoticed). Splits take disjoint
        slices of one hash, so two never overlap; a later percentage without group or region
        samples whoever no earlier rule took (the usual "the internal team, plus 10 % of
        everyone else"), so it overlaps nothing. An earlier one does take from a later group."""
        if self.split is not None and later.split is not None:
            return False
        if later.sample_only:
            return False
        if self.split is not None and self.split[0] == self.split[1]:
            return False  # 0 %: takes nothing

        def meet(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> bool:
            return a is None or b is None or bool(set(a) & set(b))

        return meet(self.groups, later.groups) and meet(self.regions, later.regions)


@dataclass(frozen=True)
class FlagVariant:
    name: str
    enabled: bool
    match: tuple[Targeting, ...]  # OR of conditions; never empty


@dataclass(frozen=True)
class FeatureFlag:
    name: str
    description: str
    experimental: bool
    enabled: bool  # resolved for this stack: the default variant (everyone no variant targets)
    variants: tuple[FlagVariant, ...] = ()
    owner: str | None = None
    ends_on: dt.date | None = None

    @property
    def targeted(self) -> bool:
        """Some enabled variant targets a subset of records (the default variant is off)."""
        return any(v.enabled for v in self.variants)

    @property
    def live(self) -> bool:
        """On for at least some records of this stack."""
        return self.enabled or self.targeted


@dataclass(frozen=True)
class AuditSettings:
    alert_emails: tuple[str, ...]
    object_lock_days: int  # 0 = no object lock (experiment); production keeps audit logs locked


@dataclass(frozen=True)
class Settings:
    project: str
    stack: str
    tier: str
    experiment_id: str | None
    expires_on: dt.date | None
    owner: str
    region: str
    account: str
    allowed_account_ids: tuple[str, ...]
    network: NetworkSettings
    database: DatabaseSettings
    data_stores: tuple[str, ...]
    retention: RetentionSettings
    analyst_principals: tuple[str, ...]
    admin_principals: tuple[str, ...]
    flows: tuple[Flow, ...]
    log_retention_days: int
    container: ContainerSettings = ContainerSettings(True, None, 256, 512, 1)
    flags: tuple[FeatureFlag, ...] = ()
    audit: AuditSettings = AuditSettings((), 0)
    peers: Mapping[str, PeerStack] = field(default_factory=dict, compare=False)
    # The role that runs `pulumi up` in this account (README, "Deploying"): every resource
    # policy keeps what the provider needs for it, and no data access.
    deployer: str = ""
    # The read-only role CI assumes for `pulumi preview` of this stack on pull requests ("" when
    # none: the preview job skips the stack and says so). Used by CI only, not by the program.
    preview_role: str = ""
    # Roles outside the environment (the security team's) that read and validate audit logs.
    audit_readers: tuple[str, ...] = ()
    # From the environment registry (envfence/registry.py). The account's one CloudTrail trail and
    # its experiment archive belong to its baseline stack; "" means this stack.
    trail_owner: str = ""
    # Baseline stack only: bucket-name prefixes of the account's other stacks (exact names and
    # patterns such as `experiment-*`) whose data events its trail records too.
    trail_prefixes: tuple[str, ...] = ()
    # Baseline stack only: days the archive keeps a concluded experiment's results.
    archive_expire_days: int = 365

    @property
    def owns_trail(self) -> bool:
        """This stack declares the account's trail (and archive)."""
        return self.trail_owner in ("", self.stack)

    @property
    def is_production(self) -> bool:
        return self.tier == naming.TIER_PRODUCTION

    @property
    def classification(self) -> str:
        return naming.CLASSIFICATION[self.tier]

    def tags(self) -> dict[str, str]:
        """The environment tags every resource carries (the provider's default tags)."""
        tags = {
            naming.TAG_ENVIRONMENT: self.stack,
            naming.TAG_TIER: self.tier,
            naming.TAG_CLASSIFICATION: self.classification,
            naming.TAG_OWNER: self.owner,
            naming.TAG_MANAGED_BY: "pulumi",
            naming.TAG_PROJECT: self.project,
        }
        if self.experiment_id:
            tags[naming.TAG_EXPERIMENT_ID] = self.experiment_id
        return tags

    def role_arn(self, role: str) -> str:
        return naming.role_arn(self.project, self.stack, role, self.account)

    def role_arns(self) -> list[str]:
        return [self.role_arn(r) for r in naming.ROLES]

    def bucket_name(self, store: str) -> str:
        return naming.bucket_name(self.project, self.stack, store, self.account)

    def bucket_arn(self, store: str) -> str:
        return naming.bucket_arn(self.project, self.stack, store, self.account)

    @property
    def repository_name(self) -> str:
        return naming.repository_name(self.project, self.stack)

    def inbound_flows(self) -> list[Flow]:
        return [f for f in self.flows if f.target == self.stack]

    def outbound_flows(self) -> list[Flow]:
        return [f for f in self.flows if f.source == self.stack]


# --------------------------------------------------------------------------------------------
# Reading raw values


class _Reader:
    """Typed access to one object of config, with errors that name the full key."""

    def __init__(self, stack: str, path: str, values: Mapping[str, Any]):
        self.stack = stack
        self.path = path
        self.values = values

    def key(self, name: str) -> str:
        if self.path in (NAMESPACE, "aws"):
            return f"{self.path}:{name}"
        return f"{self.path}.{name}"

    def fail(self, name: str, value: Any, allowed: str) -> ConfigError:
        return config_error(self.stack, self.key(name), value, allowed)

    def has(self, name: str) -> bool:
        return self.values.get(name) is not None

    def reject_unknown(self, known: tuple[str, ...]) -> None:
        for name in self.values:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
                hint = f" (did you mean {self.key(close[0])}?)" if close else ""
                raise config_error(
                    self.stack,
                    self.key(name),
                    self.values[name],
                    f"one of the keys {', '.join(known)}{hint}",
                )

    # A key read with a default or `required=True` always has a value; otherwise it may be None.
    @overload
    def get(
        self,
        name: str,
        parse: Callable[[Any], T],
        allowed: str,
        default: T,
        required: bool = False,
    ) -> T: ...

    @overload
    def get(
        self,
        name: str,
        parse: Callable[[Any], T],
        allowed: str,
        default: None = None,
        *,
        required: Literal[True],
    ) -> T: ...

    @overload
    def get(
        self,
        name: str,
        parse: Callable[[Any], T],
        allowed: str,
        default: None = None,
        required: bool = False,
    ) -> T | None: ...

    def get(
        self,
        name: str,
        parse: Callable[[Any], T],
        allowed: str,
        default: T | None = None,
        required: bool = False,
    ) -> T | None:
        raw = self.values.get(name)
        if raw is None:
            if required:
                raise config_error(self.stack, self.key(name), None, allowed)
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError):
            raise self.fail(name, raw, allowed) from None

    def obj(self, name: str) -> _Reader:
        raw = self.values.get(name)
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise self.fail(name, raw, "an object")
        return _Reader(self.stack, self.key(name), raw)


def config_error(stack: str, key: str, value: Any, allowed: str) -> ConfigError:
    shown = "missing" if value is None else f"is {json.dumps(value, default=str)}"
    return ConfigError(f"stack '{stack}': config {key} {shown}; allowed: {allowed}")


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, str):
            v = int(v.strip())
        if not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError
        return v

    return parse


def _one_of_int(options: tuple[int, ...]) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        value = _int_in(min(options), max(options))(v)
        if value not in options:
            raise ValueError
        return value

    return parse


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ValueError


def _matching(pattern: re.Pattern[str]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or not pattern.match(v):
            raise ValueError
        return v

    return parse


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in options:
            raise ValueError
        return str(v)

    return parse


def _list_of(item: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    def parse(v: Any) -> tuple[T, ...]:
        if not isinstance(v, list):
            raise ValueError
        return tuple(item(x) for x in v)

    return parse


def _date(v: Any) -> dt.date:
    if isinstance(v, dt.date):
        return v
    if not isinstance(v, str):
        raise ValueError
    return dt.date.fromisoformat(v)


def _cidr(v: Any) -> ipaddress.IPv4Network:
    if not isinstance(v, str):
        raise ValueError
    net = ipaddress.IPv4Network(v, strict=True)
    if not 16 <= net.prefixlen <= 24 or not any(net.subnet_of(r) for r in PRIVATE_RANGES):
        raise ValueError
    return net


def _decode(raw: Mapping[str, str]) -> dict[str, Any]:
    """CLI-style strings to values: JSON where the string is JSON, else the string itself."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not key.startswith(f"{NAMESPACE}:"):
            continue
        name = key.split(":", 1)[1]
        text = value.strip() if isinstance(value, str) else value
        if isinstance(text, str) and text[:1] in ("{", "["):
            try:
                out[name] = json.loads(text)
            except json.JSONDecodeError:
                out[name] = value
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------------------------
# Parsing


def parse_settings(
    project: str,
    stack: str,
    raw: Mapping[str, str],
    peers: Mapping[str, PeerStack] | None = None,
    registry: Registry | None = None,
) -> Settings:
    """Validate a stack's config given as CLI-style strings (`envfence:tier` → `experiment`).

    With the environment `registry` (always, for the program and the checker), the tier and the
    accounts are the registry's: the stack file may omit them, and may not contradict them."""
    peers = dict(peers or {})
    if not naming.STACK_NAME_RE.match(stack):
        raise ConfigError(
            f"stack name '{stack}' is not allowed: use 2-28 characters, lowercase letters, digits "
            "and '-', starting with a letter (it becomes part of S3 bucket and IAM role names)"
        )
    values = _decode(raw)
    top = _Reader(stack, NAMESPACE, values)
    top.reject_unknown(KNOWN_KEYS)

    entry = None
    if registry is not None:
        try:
            entry = registry.entry(stack)
        except RegistryError as exc:
            raise ConfigError(str(exc)) from None
    where = f"environments.{entry.name}" if entry is not None else ""

    tier: str | None = top.get(
        "tier", _one_of(naming.TIERS), " | ".join(naming.TIERS), required=entry is None
    )
    if entry is not None:
        if tier is not None and tier != entry.tier:
            raise top.fail(
                "tier",
                tier,
                f"{entry.tier!r} or nothing: the environment registry (Pulumi.yaml, envfence."
                f"{where}) decides the tier, a stack file cannot change it",
            )
        tier = entry.tier
    if tier is None:  # not reached: required without a registry
        raise top.fail("tier", None, " | ".join(naming.TIERS))
    production = tier == naming.TIER_PRODUCTION

    experiment_id: str | None = top.get(
        "experimentId",
        _matching(EXPERIMENT_ID_RE),
        "2-16 lowercase letters, digits and '-' (required for the experiment tier)",
    )
    if production and experiment_id is not None:
        raise top.fail("experimentId", experiment_id, "nothing: forbidden for the production tier")
    if not production and experiment_id is None:
        raise top.fail(
            "experimentId",
            None,
            "2-16 lowercase letters, digits and '-' (required for tier experiment)",
        )
    id_prefix = entry.name[:-1] if entry is not None and entry.is_pattern else "experiment-"
    if stack.startswith(id_prefix) and experiment_id != stack[len(id_prefix) :]:
        raise top.fail(
            "experimentId",
            experiment_id,
            f"'{stack[len(id_prefix) :]}', the id in the stack name",
        )
    if entry is not None and entry.is_pattern and experiment_id is not None:
        clash = id_clash(id_prefix[:-1], experiment_id, peers)
        if clash:
            raise top.fail("experimentId", experiment_id, clash)

    expires_on = top.get("expiresOn", _date, "a date YYYY-MM-DD (experiment tier only)")
    if production and expires_on is not None:
        raise top.fail("expiresOn", str(expires_on), "nothing: production stacks do not expire")

    owner = top.get(
        "owner", _matching(OWNER_RE), "a team or e-mail, 1-128 tag-safe characters", required=True
    )

    region = _Reader(
        stack, "aws", {k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("aws:")}
    )
    region_value = region.get(
        "region", _matching(REGION_RE), "an AWS region such as eu-west-1", required=True
    )

    inherited = entry is not None and len(entry.accounts) == 1
    accounts = top.get(
        "allowedAccountIds",
        _list_of(_matching(ACCOUNT_RE)),
        'a list with one 12-digit AWS account id as a quoted string, e.g. ["123456789012"]'
        + (" (the registry has several for this stack: choose one)" if entry else ""),
        default=entry.accounts if entry is not None and inherited else None,
        required=not inherited,
    )
    if accounts is None:  # not reached: required, or inherited from the registry
        raise top.fail("allowedAccountIds", None, "a list with one 12-digit AWS account id")
    if len(accounts) != 1:
        raise top.fail(
            "allowedAccountIds",
            list(accounts),
            "exactly one account id: an environment lives in one account",
        )
    if entry is not None and accounts[0] not in entry.accounts:
        raise top.fail(
            "allowedAccountIds",
            list(accounts),
            f"one of {', '.join(entry.accounts)}, the accounts the environment registry "
            f"(Pulumi.yaml, envfence.{where}) allows for this stack",
        )

    network = _parse_network(top.obj("network"), stack, peers)
    database = _parse_database(top.obj("database"), production)
    stores: tuple[str, ...] = top.get(
        "dataStores",
        _list_of(_matching(naming.STORE_NAME_RE)),
        'a list of 1-12 character lowercase store names, e.g. ["raw", "curated", "results"]',
        default=("raw", "curated", "results"),
    )
    if not stores or len(set(stores)) != len(stores):
        raise top.fail("dataStores", list(stores), "a non-empty list of distinct store names")
    reserved = sorted(set(stores) & set(naming.RESERVED_STORES))
    if reserved:
        raise top.fail(
            "dataStores",
            list(stores),
            f"store names other than {', '.join(naming.RESERVED_STORES)} (the audit log's and "
            "the experiment archive's buckets use them)",
        )
    retention = _parse_retention(top.obj("retention"), production)

    access = top.obj("access")
    access.reject_unknown(
        ("deployer", "previewRole", "analystPrincipals", "adminPrincipals", "auditReaders")
    )
    principal_help = (
        f"IAM role or user ARNs of account {accounts[0]}, no wildcards "
        f"(e.g. arn:aws:iam::{accounts[0]}:role/data-analysts)"
    )
    own_prefix = f"arn:aws:iam::{accounts[0]}:role/{naming.prefix(project, stack)}-"
    role_in_account = _matching(
        re.compile(rf"^arn:aws:iam::{accounts[0]}:role/[A-Za-z0-9+=,.@_/-]+$")
    )

    def outside_role(name: str, what: str, example: str, *, required: bool = False) -> str:
        """A role of the stack's account that is not one of the environment's own roles."""
        allowed = (
            f"the ARN of {what} in account {accounts[0]} (e.g. "
            f"arn:aws:iam::{accounts[0]}:role/{example}), not a role of the environment"
        )
        arn: str = access.get(name, role_in_account, allowed, default="", required=required)
        if arn.startswith(own_prefix):
            raise access.fail(name, arn, allowed)
        return arn

    deployer = outside_role(
        "deployer", "the role that runs `pulumi up`", "envfence-deployer", required=True
    )
    # CI only (envfence.ci): the read-only role that previews this stack on pull requests.
    preview_role = outside_role(
        "previewRole",
        "a read-only role that CI assumes for `pulumi preview` on pull requests",
        "envfence-preview",
    )
    readers: tuple[str, ...] = access.get(
        "auditReaders", _list_of(_matching(PRINCIPAL_RE)), principal_help, default=()
    )
    analysts: tuple[str, ...] = access.get(
        "analystPrincipals", _list_of(_matching(PRINCIPAL_RE)), principal_help, default=()
    )
    admins: tuple[str, ...] = access.get(
        "adminPrincipals", _list_of(_matching(PRINCIPAL_RE)), principal_help, default=()
    )
    for name, arns in (
        ("analystPrincipals", analysts),
        ("adminPrincipals", admins),
        ("auditReaders", readers),
    ):
        for arn in arns:
            m = PRINCIPAL_RE.match(arn)
            if m and m.group(1) != accounts[0]:
                raise access.fail(name, arn, principal_help)

    log_retention = top.get(
        "logRetentionDays",
        _one_of_int(LOG_RETENTION_DAYS),
        f"one of CloudWatch's retention periods: {', '.join(map(str, LOG_RETENTION_DAYS))}",
        default=365 if production else 30,
    )

    flows = _parse_flows(top, stack, stores, peers)
    container = _parse_container(top.obj("container"), project, stack, accounts[0], region_value)
    flags = _parse_flags(top, production)
    audit = _parse_audit(top.obj("audit"), production)
    trail_owner, archive_days = "", 365
    trail_prefixes: tuple[str, ...] = ()
    if registry is not None:
        trail_owner = registry.baseline(accounts[0])
        archive_days = registry.archive_expire_days
        if trail_owner != stack and (audit.alert_emails or audit.object_lock_days):
            # The account's alarm and audit log are its baseline's: this stack has neither.
            raise _Reader(stack, f"{NAMESPACE}:audit", {}).fail(
                "alertEmails" if audit.alert_emails else "objectLockDays",
                list(audit.alert_emails) or audit.object_lock_days,
                f"nothing: stack '{stack}' has no trail, audit log or alarm of its own; they "
                f"are its account's baseline stack '{trail_owner}''s (set them there)",
            )
        if trail_owner == stack:
            # `experiment-*` → "envfence-experiment-"; `staging` → "envfence-staging-".
            trail_prefixes = tuple(
                naming.prefix(project, e.name[:-1] if e.is_pattern else f"{e.name}-")
                for e in registry.entries
                if e.name != stack and accounts[0] in e.accounts
            )

    return Settings(
        project=project,
        stack=stack,
        tier=tier,
        experiment_id=experiment_id,
        expires_on=expires_on,
        owner=owner,
        region=region_value,
        account=accounts[0],
        allowed_account_ids=tuple(accounts),
        network=network,
        database=database,
        data_stores=tuple(stores),
        retention=retention,
        analyst_principals=tuple(analysts),
        admin_principals=tuple(admins),
        deployer=deployer,
        preview_role=preview_role,
        audit_readers=tuple(readers),
        flows=flows,
        log_retention_days=log_retention,
        container=container,
        flags=flags,
        audit=audit,
        peers=peers,
        trail_owner=trail_owner,
        trail_prefixes=trail_prefixes,
        archive_expire_days=archive_days,
    )


def id_clash(head: str, experiment_id: str, peers: Mapping[str, PeerStack]) -> str | None:
    """Why `experiment_id` cannot follow `<head>-` when a stack named `head` exists (its names
    begin `<project>-<head>-<word>`), or None."""
    word = experiment_id.split("-", 1)[0]
    peer = peers.get(head)
    reserved = set(naming.NAME_WORDS) | set(peer.data_stores if peer else ())
    if peer is not None and word in reserved:
        return (
            f"an id that does not start with {word!r}: stack '{head}' names its resources "
            f"<project>-{head}-{word}..., and stack '{head}-{experiment_id}' would read as its"
        )
    return None


def _parse_container(
    r: _Reader, project: str, stack: str, account: str, region: str
) -> ContainerSettings:
    r.reject_unknown(("build", "image", "cpu", "memory", "desiredCount"))
    build = r.get("build", _bool, "true | false", default=True)
    repo = f"{account}.dkr.ecr.{region}.amazonaws.com/{naming.repository_name(project, stack)}"
    image_help = (
        f"an image of this environment's own repository, {repo}:<tag> or {repo}@sha256:<digest> "
        "(required when build is false)"
    )
    image = r.get(
        "image", _matching(re.compile(f"^{re.escape(repo)}{DIGEST_OR_TAG_RE}$")), image_help
    )
    if not build and image is None:
        raise r.fail("image", None, image_help)
    if build and image is not None:
        raise r.fail("image", image, "nothing while build is true (set build: false to use it)")
    cpu = r.get("cpu", _one_of_int(FARGATE_CPU), " | ".join(map(str, FARGATE_CPU)), default=256)
    low, high = cpu * 2, cpu * 8
    memory = r.get(
        "memory",
        _int_in(low, high),
        f"MiB from {low} to {high} for cpu {cpu} (Fargate)",
        default=low,
    )
    desired = r.get("desiredCount", _int_in(0, 20), "an integer from 0 to 20", default=1)
    return ContainerSettings(
        build=build, image=image, cpu=cpu, memory=memory, desired_count=desired
    )


FLAG_SHAPE = "an object {description, experimental, enabled, owner, endsOn, variants}"


def _percent(v: Any) -> int:
    """A whole percentage from 0 to 100, in hundredths of a percent. Whole numbers only: every
    `pct` AppConfig documents is one, and a value AppConfig would refuse must fail here, not in
    `pulumi up`."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError
    value = Decimal(str(v).strip())
    if not value.is_finite() or not 0 <= value <= 100 or value != value.to_integral():
        raise ValueError
    return int(value) * 100


def _parse_targeting(r: _Reader, start: int) -> tuple[Targeting, int]:
    """One condition of a variant; `start` is where the flag's split has got to."""
    r.reject_unknown(FLAG_ATTRIBUTES)
    if not r.values:
        raise config_error(r.stack, r.path, {}, f"at least one of {', '.join(FLAG_ATTRIBUTES)}")
    names = _list_of(_matching(ATTRIBUTE_VALUE_RE))
    groups = r.get("group", names, "a list of group names (1-128 tag-safe characters)")
    regions = r.get("region", _list_of(_matching(REGION_RE)), "a list of AWS regions")
    for key, values in (("group", groups), ("region", regions)):
        if values is not None and not values:
            raise r.fail(key, [], "a non-empty list (leave the key out to match any)")
    pct = r.get("percent", _percent, "a whole number from 0 to 100")
    split = None
    if pct is not None:
        split = (start, start + pct)
        start += pct
    return Targeting(groups=groups, regions=regions, split=split), start


def _parse_variants(r: _Reader, flag: str) -> tuple[FlagVariant, ...]:
    raw = r.values.get("variants")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise r.fail("variants", raw, "a non-empty list of {name, enabled, match}")
    if len(raw) > MAX_VARIANTS:
        raise r.fail(
            "variants", f"{len(raw)} variants", f"at most {MAX_VARIANTS} (AppConfig's limit)"
        )
    variants: list[FlagVariant] = []
    start = 0  # the percentage splits of one flag take consecutive slices of one hash
    for i, spec in enumerate(raw):
        vr = _Reader(r.stack, f"{r.path}.variants[{i}]", spec if isinstance(spec, Mapping) else {})
        if not isinstance(spec, Mapping):
            raise r.fail(f"variants[{i}]", spec, "an object {name, enabled, match}")
        vr.reject_unknown(("name", "enabled", "match"))
        name = vr.get(
            "name",
            _matching(VARIANT_NAME_RE),
            "a variant name of a-z, 0-9, '_' and '-', starting with a letter, up to 64",
            required=True,
        )
        if name == DEFAULT_VARIANT or any(v.name == name for v in variants):
            raise vr.fail(
                "name",
                name,
                f"a name no other variant of {flag} has, and not {DEFAULT_VARIANT!r} (the "
                "variant of everyone no rule targets)",
            )
        enabled = vr.get("enabled", _bool, "true | false", default=True)
        match_raw = vr.values.get("match")
        conditions = match_raw if isinstance(match_raw, list) else [match_raw]
        if (
            match_raw is None
            or not conditions
            or not all(isinstance(c, Mapping) for c in conditions)
        ):
            raise vr.fail(
                "match",
                match_raw,
                "a targeting rule {group, region, percent} or a list of them (any may match)",
            )
        match: list[Targeting] = []
        for j, cond in enumerate(conditions):
            path = f"{vr.path}.match[{j}]" if isinstance(match_raw, list) else f"{vr.path}.match"
            targeting, start = _parse_targeting(_Reader(r.stack, path, cond), start)
            match.append(targeting)
        if start > 10000:
            raise vr.fail(
                "match",
                match_raw,
                f"percentages of {flag}'s variants that add up to at most 100 (now "
                f"{Decimal(start) / 100})",
            )
        for earlier in variants:
            for a in earlier.match:
                for b in match:
                    if a.overlaps(b):
                        raise vr.fail(
                            "match",
                            match_raw,
                            f"a rule that no record can meet together with variant "
                            f"{earlier.name!r} (a record meeting both would get only the first: "
                            "give them different groups or regions, or both a percentage)",
                        )
        from envfence.flagset import MAX_RULE_LENGTH, variant_rule  # imports this module

        rule = variant_rule(flag, tuple(match))
        if len(rule) > MAX_RULE_LENGTH:
            raise vr.fail(
                "match",
                f"{len(rule)} characters as an AppConfig rule",
                f"a rule of at most {MAX_RULE_LENGTH} characters (AppConfig's limit): fewer "
                "groups or regions",
            )
        variants.append(FlagVariant(name=name, enabled=enabled, match=tuple(match)))
    return tuple(variants)


def _parse_flags(top: _Reader, production: bool) -> tuple[FeatureFlag, ...]:
    raw = top.values.get("flags")
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise top.fail("flags", raw, f"an object {{flagName: {FLAG_SHAPE}}}")
    flags = []
    for name, spec in raw.items():
        if not FLAG_NAME_RE.match(str(name)):
            raise top.fail(f"flags.{name}", spec, "a flag name of a-z, 0-9 and _, up to 64")
        if not isinstance(spec, Mapping):
            raise top.fail(f"flags.{name}", spec, FLAG_SHAPE)
        r = _Reader(top.stack, f"{NAMESPACE}:flags.{name}", spec)
        r.reject_unknown(("description", "experimental", "enabled", "owner", "endsOn", "variants"))
        experimental = r.get("experimental", _bool, "true | false", default=False)
        # Experimental features are on only in experiment stacks unless config says otherwise.
        enabled = r.get("enabled", _bool, "true | false", default=experimental and not production)
        description = r.get(
            "description",
            _matching(re.compile(r"^.{0,256}$")),
            "text of up to 256 characters",
            default="",
        )
        owner = r.get("owner", _matching(OWNER_RE), "a team or e-mail, 1-128 tag-safe characters")
        ends_on = r.get("endsOn", _date, "a date YYYY-MM-DD")
        flag = FeatureFlag(
            name=str(name),
            description=description,
            experimental=experimental,
            enabled=enabled,
            variants=_parse_variants(r, str(name)),
            owner=owner,
            ends_on=ends_on,
        )
        if production and experimental and flag.live:
            # Strategy 3: an experiment in production reaches a subset of users, on purpose,
            # for a while, with someone answerable for it.
            if flag.enabled:
                raise r.fail(
                    "enabled",
                    True,
                    "false: an experimental flag is never on for everyone in production; "
                    "target users with `variants`",
                )
            for key, value in (("owner", owner), ("endsOn", ends_on)):
                if value is None:
                    raise r.fail(
                        key,
                        None,
                        "required for an experimental flag with an enabled variant in production "
                        "(owner: a team or e-mail; endsOn: YYYY-MM-DD)",
                    )
        flags.append(flag)
    from envfence.flagset import MAX_DOCUMENT_BYTES, feature_flags_document

    size = len(feature_flags_document(tuple(flags)).encode("utf-8"))
    if size > MAX_DOCUMENT_BYTES:
        raise top.fail(
            "flags",
            f"a flag set of {size} bytes",
            f"at most {MAX_DOCUMENT_BYTES} bytes as an AppConfig document: it also travels in "
            "the worker's and the pipeline's task definitions, whose size ECS limits",
        )
    return tuple(flags)


def _parse_audit(r: _Reader, production: bool) -> AuditSettings:
    r.reject_unknown(("alertEmails", "objectLockDays"))
    emails: tuple[str, ...] = r.get(
        "alertEmails", _list_of(_matching(EMAIL_RE)), "a list of e-mail addresses", default=()
    )
    if production:
        lock = r.get(
            "objectLockDays",
            _int_in(1, 3650),
            "an integer from 1 to 3650: production audit logs are always locked",
            default=365,
        )
    else:
        # An object-locked (COMPLIANCE) audit bucket cannot be emptied, so `pulumi destroy` of an
        # experiment would fail for as long as the lock lasts: experiments must stay destroyable.
        lock = r.get(
            "objectLockDays",
            _int_in(0, 0),
            "0 or nothing: object lock would block the experiment's own `pulumi destroy`",
            default=0,
        )
    return AuditSettings(alert_emails=tuple(emails), object_lock_days=lock)


def _parse_network(r: _Reader, stack: str, peers: Mapping[str, PeerStack]) -> NetworkSettings:
    r.reject_unknown(("cidr", "azCount", "natGateways"))
    cidr = r.get(
        "cidr",
        _cidr,
        "a private IPv4 CIDR (10/8, 172.16/12 or 192.168/16) from /16 to /24, e.g. 10.20.0.0/16",
        required=True,
    )
    for peer in peers.values():
        if peer.name != stack and peer.cidr is not None and cidr.overlaps(peer.cidr):
            raise r.fail(
                "cidr", str(cidr), f"a CIDR that does not overlap stack '{peer.name}' ({peer.cidr})"
            )
    az_count = r.get("azCount", _int_in(2, 4), "an integer from 2 to 4", default=2)
    nat = r.get(
        "natGateways", _int_in(0, 4), f"an integer from 0 to azCount ({az_count})", default=0
    )
    if nat > az_count:
        raise r.fail("natGateways", nat, f"an integer from 0 to azCount ({az_count})")
    return NetworkSettings(cidr=cidr, az_count=az_count, nat_gateways=nat)


def _parse_database(r: _Reader, production: bool) -> DatabaseSettings:
    r.reject_unknown(
        (
            "engineVersion",
            "instanceClass",
            "allocatedStorage",
            "maxAllocatedStorage",
            "multiAz",
            "backupRetentionDays",
            "deletionProtection",
        )
    )
    allocated = r.get(
        "allocatedStorage",
        _int_in(20, 65536),
        "GiB, an integer from 20 to 65536",
        default=100 if production else 20,
    )
    db = DatabaseSettings(
        engine_version=r.get(
            "engineVersion",
            _matching(ENGINE_VERSION_RE),
            'a PostgreSQL major version from 13 to 17 ("16": minor upgrades applied by RDS), '
            'or major.minor ("16.4": pinned, automatic minor upgrades off)',
            default="16",
        ),
        instance_class=r.get(
            "instanceClass",
            _matching(INSTANCE_CLASS_RE),
            "an RDS instance class such as db.t4g.small",
            default="db.r6g.large" if production else "db.t4g.small",
        ),
        allocated_storage=allocated,
        max_allocated_storage=r.get(
            "maxAllocatedStorage",
            _int_in(allocated, 65536),
            f"GiB, an integer from allocatedStorage ({allocated}) to 65536",
            default=max(allocated, 500 if production else 100),
        ),
        multi_az=r.get("multiAz", _bool, "true | false", default=production),
        backup_retention_days=r.get(
            "backupRetentionDays",
            _int_in(7 if production else 1, 35),
            "an integer from 7 to 35 for production, 1 to 35 for experiments",
            default=14 if production else 1,
        ),
        deletion_protection=r.get("deletionProtection", _bool, "true | false", default=production),
    )
    if production and not db.deletion_protection:
        raise r.fail("deletionProtection", False, "true: production databases are never deletable")
    return db


def _parse_retention(r: _Reader, production: bool) -> RetentionSettings:
    if production:
        r.reject_unknown(("noncurrentVersionArchiveDays", "abortIncompleteUploadDays"))
        return RetentionSettings(
            expire_after_days=None,
            archive_after_days=None,
            noncurrent_archive_days=r.get(
                "noncurrentVersionArchiveDays",
                _int_in(1, 3650),
                "an integer from 1 to 3650",
                default=30,
            ),
            noncurrent_expire_days=None,
            abort_incomplete_upload_days=r.get(
                "abortIncompleteUploadDays", _int_in(1, 365), "an integer from 1 to 365", default=7
            ),
        )
    r.reject_unknown(
        (
            "expireAfterDays",
            "archiveAfterDays",
            "noncurrentVersionExpireDays",
            "abortIncompleteUploadDays",
        )
    )
    expire = r.get("expireAfterDays", _int_in(1, 3650), "an integer from 1 to 3650", default=30)
    archive = r.get(
        "archiveAfterDays",
        _int_in(1, 3650),
        f"an integer from 1 to expireAfterDays - 1 ({expire - 1})",
    )
    if archive is not None and archive >= expire:
        raise r.fail(
            "archiveAfterDays", archive, f"an integer from 1 to expireAfterDays - 1 ({expire - 1})"
        )
    return RetentionSettings(
        expire_after_days=expire,
        archive_after_days=archive,
        noncurrent_archive_days=None,
        noncurrent_expire_days=r.get(
            "noncurrentVersionExpireDays", _int_in(1, 3650), "an integer from 1 to 3650", default=7
        ),
        abort_incomplete_upload_days=r.get(
            "abortIncompleteUploadDays", _int_in(1, 365), "an integer from 1 to 365", default=7
        ),
    )


def _parse_flows(
    top: _Reader, stack: str, stores: tuple[str, ...], peers: Mapping[str, PeerStack]
) -> tuple[Flow, ...]:
    raw = top.values.get("flows")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise top.fail("flows", raw, "a list of {from, to, role, store, access} objects")
    flows = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise top.fail(f"flows[{i}]", item, "an object {from, to, role, store, access}")
        r = _Reader(stack, f"{NAMESPACE}:flows[{i}]", item)
        r.reject_unknown(("from", "to", "role", "store", "access"))
        stacks_known = sorted(set(peers) | {stack})
        stack_help = f"a stack of this repository: {', '.join(stacks_known)}"
        source = r.get("from", _one_of(tuple(stacks_known)), stack_help, required=True)
        target = r.get("to", _one_of(tuple(stacks_known)), stack_help, required=True)
        if source == target:
            raise r.fail("to", target, "a stack other than 'from'")
        if stack not in (source, target):
            raise r.fail(
                "from", source, f"'{stack}' on one side: a stack declares only its own flows"
            )
        role = r.get("role", _one_of(naming.ROLES), " | ".join(naming.ROLES), required=True)
        target_stores = stores if target == stack else peers[target].data_stores
        store = r.get(
            "store",
            _one_of(tuple(target_stores)),
            f"a data store of stack '{target}': {', '.join(target_stores)}",
            required=True,
        )
        access = r.get("access", _one_of(FLOW_ACCESS), " | ".join(FLOW_ACCESS), default="read")
        flows.append(Flow(source=source, target=target, role=role, store=store, access=access))
    return tuple(flows)


# --------------------------------------------------------------------------------------------
# Peers and the entry point


def read_peers(project: Project, stack: str) -> dict[str, PeerStack]:
    """The other stacks of the repository, read leniently: a broken sibling fails on its own."""
    peers: dict[str, PeerStack] = {}
    for name in project.stacks():
        if name == stack:
            continue
        peer = _peer(project, name)
        if peer is not None:
            peers[name] = peer
    return peers


# (project defaults, stack file path, its text) -> what a peer is read as. Every stack reads
# every other stack's file (the rules build each environment this way): with many stacks, the
# same files are read again and again, and only their text can change what they say.
_PEERS: dict[tuple[str, str, str], PeerStack | None] = {}


def _peer(project: Project, name: str) -> PeerStack | None:
    path = project.stack_file(name)
    try:
        text = path.read_text()
    except OSError:
        return None
    key = (json.dumps(project.defaults, sort_keys=True), str(path), text)
    if key in _PEERS:
        return _PEERS[key]
    if len(_PEERS) > 4096:
        _PEERS.clear()
    try:
        values = _decode(project.stack_config(name))
    except ProjectFileError:
        _PEERS[key] = None
        return None
    network = values.get("network")
    cidr = None
    if isinstance(network, Mapping):
        try:
            cidr = ipaddress.IPv4Network(str(network.get("cidr")), strict=False)
        except ValueError:
            cidr = None
    accounts = values.get("allowedAccountIds")
    account = accounts[0] if isinstance(accounts, list) and accounts else None
    stores = values.get("dataStores")
    peer = PeerStack(
        name=name,
        cidr=cidr,
        account=str(account) if account is not None else None,
        data_stores=tuple(stores) if isinstance(stores, list) else ("raw", "curated", "results"),
    )
    _PEERS[key] = peer
    return peer


def settings_for(project: Project, stack: str, raw: Mapping[str, str]) -> Settings:
    """Validate `raw` as the config of `stack` in `project`, sibling stack files and the
    environment registry included."""
    try:
        registry = project.registry
    except ProjectFileError as exc:
        raise ConfigError(str(exc)) from None
    return parse_settings(project.name, stack, raw, read_peers(project, stack), registry)


def load_settings(root: Path) -> Settings:
    """Read and validate the running stack's config (the project at `root`, the program's
    repository). Raises ConfigError on the first bad value."""
    import pulumi
    from pulumi.runtime.config import CONFIG, get_config_env

    raw: dict[str, str] = {}
    for source in (get_config_env(), CONFIG.get()):
        for key, value in source.items():
            if key.startswith((f"{NAMESPACE}:", "aws:")):
                raw[key] = value if isinstance(value, str) else json.dumps(value)
    try:
        project = load_project(root)
    except ProjectFileError as exc:
        raise ConfigError(str(exc)) from None
    return settings_for(project, pulumi.get_stack(), raw)
