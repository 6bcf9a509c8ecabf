"""What the rules know about environments: who owns which ARN, CIDR, account and name.

An `Env` is built from a StackState (evaluated, exported or previewed) or, for the CrossGuard
pack which sees one stack at a time, from a repository stack file. Either way it lists the
*representative ARNs* of the environment — its roles, buckets and objects, key, database,
boundary, log groups — so a rule can ask "could this policy pattern match anything of another
environment?" by matching the pattern against those ARNs.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from envfence import naming
from envfence.model import SECRET, UNKNOWN, Resource, StackState, unreadable, why_unreadable
from envfence.project import Project, ProjectFileError
from envfence.registry import Registry
from envfence.settings import Flow, PeerStack, Settings, parse_settings, read_peers

EXTRA_ROLES = naming.SUPPORT_ROLES  # roles AWS services assume for the environment


class Unknown(Exception):
    """A value a rule needs is unknown (preview) or a secret it cannot read (an export without
    `--show-secrets`). The rule fails closed: EF902."""

    def __init__(self, resource: Resource, key: str):
        if unreadable(resource.get(key)) == "secret":
            message = why_unreadable(f"{key} of {resource.name} ({resource.type})", "secret")
        else:
            message = f"{key} of {resource.name} is unknown until deployment"
        super().__init__(message)
        self.resource = resource
        self.key = key


def is_unknown(value: Any) -> bool:
    """The value, or something in it, is not known yet or is a secret that cannot be read."""
    if value in (UNKNOWN, SECRET):
        return True
    if isinstance(value, dict):
        return any(is_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(is_unknown(v) for v in value)
    return False


def need(resource: Resource, key: str, default: Any = None) -> Any:
    """A property a rule must know; raises Unknown when it is not known yet."""
    value = resource.get(key, default)
    if is_unknown(value):
        raise Unknown(resource, key)
    return value


def wildcard_match(pattern: str, value: str, *, case_insensitive: bool = False) -> bool:
    """IAM wildcards: `*` any run of characters (including ':' and '/'), `?` exactly one."""
    return _wildcard(pattern, case_insensitive).fullmatch(value) is not None


@functools.lru_cache(maxsize=16384)
def _wildcard(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    """The compiled form of an IAM wildcard pattern (the rules match the same few hundred
    patterns against every ARN of every other environment)."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.IGNORECASE if case_insensitive else 0
    return re.compile(rx, flags | re.DOTALL)


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def parse_policy(resource: Resource, key: str) -> dict[str, Any] | None:
    raw = need(resource, key)
    if raw in (None, ""):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return {"Statement": [], "_malformed": True}
    return raw if isinstance(raw, dict) else None


def statements(policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not policy:
        return []
    return [s for s in as_list(policy.get("Statement")) if isinstance(s, dict)]


def provider_tags(state: StackState) -> dict[str, str]:
    for r in state.resources:
        if r.type == "pulumi:providers:aws":
            raw = r.inputs.get("defaultTags")
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError:
                    return {}
            if isinstance(raw, dict):
                tags = raw.get("tags")
                return dict(tags) if isinstance(tags, dict) else {}
    return {}


def provider_account(state: StackState) -> tuple[str | None, str | None]:
    """(first allowed account id, region) of the stack's explicit AWS provider. Explicit
    provider inputs arrive as strings: the account list is a JSON string."""
    for r in state.resources:
        if r.type == "pulumi:providers:aws":
            accounts = r.inputs.get("allowedAccountIds")
            if isinstance(accounts, str):
                try:
                    accounts = json.loads(accounts)
                except json.JSONDecodeError:
                    accounts = None
            account = str(accounts[0]) if isinstance(accounts, list) and accounts else None
            region = r.inputs.get("region")
            return account, region if isinstance(region, str) else None
    return None, None


# The representative ARNs of an environment depend on these values only: computed once each
# (the rules ask for them for every statement of every other environment).
@functools.cache
def _role_arns(project: str, stack: str, account: str) -> tuple[str, ...]:
    return tuple(naming.role_arn(project, stack, r, account) for r in (*naming.ROLES, *EXTRA_ROLES))


@functools.cache
def _bucket_arns(
    project: str, stack: str, account: str, stores: tuple[str, ...]
) -> tuple[str, ...]:
    return tuple(naming.bucket_arn(project, stack, s, account) for s in stores)


@dataclass
class Env:
    stack: str
    project: str
    tier: str | None
    account: str | None
    region: str | None
    cidr: ipaddress.IPv4Network | None
    stores: tuple[str, ...]
    experiment_id: str | None = None
    expires_on: dt.date | None = None
    flows: tuple[Flow, ...] = ()
    key_arns: set[str] = field(default_factory=set)
    arns: set[str] = field(default_factory=set)  # concrete ARNs seen in its state
    vpc_ids: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)  # every resource id of the stack
    deployer: str | None = None  # the role that runs `pulumi up` (envfence:access.deployer)
    # What the environment registry (Pulumi.yaml) says of the stack, when one is in hand:
    # `registered` None means no registry was available; the tier above is the registry's.
    registered: bool | None = None
    registry_accounts: tuple[str, ...] = ()
    claimed_tier: str | None = None  # what the state itself says (config or tags)
    trail_owner: str | None = None  # the stack owning this account's trail (registry)
    trail_prefixes: tuple[str, ...] = ()  # baseline: other stacks' bucket prefixes it records
    nat_gateways: int | None = None  # from its settings (one Elastic IP each), when known

    # Representative ARNs -------------------------------------------------------------------
    def role_arns(self) -> list[str]:
        if not self.account:
            return []
        return list(_role_arns(self.project, self.stack, self.account))

    def bucket_arns(self) -> list[str]:
        if not self.account:
            return []
        return list(_bucket_arns(self.project, self.stack, self.account, self.stores))

    def data_arns(self) -> list[str]:
        """ARNs a data action on this environment could target."""
        out = []
        for b in self.bucket_arns():
            out += [b, f"{b}/object"]
        out += sorted(self.key_arns) or (
            [f"arn:aws:kms:{self.region}:{self.account}:key/00000000-{self.stack}"]
            if self.account
            else []
        )
        if self.account and self.region:
            ident = naming.db_identifier(self.project, self.stack)
            out += [
                f"arn:aws:rds:{self.region}:{self.account}:db:{ident}",
                f"arn:aws:logs:{self.region}:{self.account}:log-group:"
                f"{naming.log_group_prefix(self.project, self.stack)}/x",
            ]
        out += sorted(a for a in self.arns if not a.startswith("arn:aws:iam::"))
        return out

    def principal_arns(self) -> list[str]:
        return self.role_arns()

    def owns_arn(self, arn: str) -> bool:
        return (
            arn in self.arns
            or arn in self.role_arns()
            or any(arn == b or arn.startswith(f"{b}/") for b in self.bucket_arns())
            or arn in self.key_arns
        )

    def flow_for(
        self, source: str, role: str | None, target: str, store: str | None
    ) -> Flow | None:
        """The flow this environment declares for `role` of `source` on `store` of `target`.

        A flow names one role: a principal that is no role of `source` (`role` None: an account
        root, a user, a role outside the environment) matches no flow. `store` None matches any
        store, for what serves every store of `target` (its key)."""
        if role is None:
            return None
        for f in self.flows:
            if (
                f.source == source
                and f.target == target
                and f.role == role
                and (store is None or f.store == store)
            ):
                return f
        return None


def _registry(project: Project | None, state_project: str) -> Registry | None:
    """The repository's environment registry, when `project` is the stack's project. A broken
    registry is bad input (the CLI stops on it before the rules run), never a silent pass."""
    if project is None or project.name != state_project:
        return None
    return project.registry


def _has_config(config: dict[str, str]) -> bool:
    return any(k.startswith("envfence:") for k in config)


def env_from_state(state: StackState, project: Project | None = None) -> Env:
    """Environment facts from a stack's state: its config, else the repository's stack file
    for it, else what its resources show (which knows no declared flow). The tier and accounts
    are the environment registry's whenever the repository is in hand."""
    registry = _registry(project, state.project)
    settings: Settings | None = None
    config = state.config
    if not _has_config(config) and project is not None and project.name == state.project:
        # A bare `pulumi stack export`, or a preview without its config, carries no config:
        # the stack file is what the stack was deployed from.
        try:
            config = project.stack_config(state.stack)
        except ProjectFileError:
            config = {}
    entry = registry.entry(state.stack) if registry and registry.knows(state.stack) else None
    if _has_config(config) and (registry is None or entry is not None):
        peers: dict[str, PeerStack] = {}
        if project is not None:
            try:
                peers = read_peers(project, state.stack)
            except ProjectFileError:
                peers = {}
        try:
            settings = parse_settings(state.project, state.stack, config, peers, registry)
        except Exception:
            settings = None
    tags = provider_tags(state)
    account = region = None
    account, region = provider_account(state)
    cidr = None
    vpc_ids: set[str] = set()
    for r in state.of_type("aws:ec2/vpc:Vpc"):
        if r.id:
            vpc_ids.add(r.id)
        block = r.get("cidrBlock")
        if isinstance(block, str) and not is_unknown(block):
            try:
                cidr = ipaddress.IPv4Network(block, strict=False)
            except ValueError:
                cidr = None
    stores = tuple(
        str(r.get("tags", {}).get(naming.TAG_DATA_STORE))
        for r in state.of_type("aws:s3/bucket:Bucket")
        if isinstance(r.get("tags"), dict) and r.get("tags").get(naming.TAG_DATA_STORE)
    )
    arns = {
        str(r.get("arn"))
        for r in state.resources
        if isinstance(r.get("arn"), str)
        and r.get("arn").startswith("arn:")
        and not is_unknown(r.get("arn"))
    }
    key_arns = {
        str(r.get("arn"))
        for r in state.of_type("aws:kms/key:Key")
        if isinstance(r.get("arn"), str) and not is_unknown(r.get("arn"))
    }
    env = Env(
        stack=state.stack,
        project=state.project,
        tier=entry.tier if entry is not None else state.tier or tags.get(naming.TAG_TIER),
        account=settings.account if settings else account,
        region=settings.region if settings else region,
        cidr=settings.network.cidr if settings else cidr,
        stores=settings.data_stores if settings else stores,
        experiment_id=state.experiment_id,
        expires_on=settings.expires_on if settings else None,
        flows=settings.flows if settings else (),
        key_arns=key_arns,
        arns=arns,
        vpc_ids=vpc_ids,
        ids={r.id for r in state.resources if r.id and r.custom},
        deployer=settings.deployer if settings else None,
        registered=None if registry is None else entry is not None,
        registry_accounts=entry.accounts if entry is not None else (),
        claimed_tier=state.tier or tags.get(naming.TAG_TIER),
        trail_owner=settings.trail_owner or state.stack if settings else None,
        trail_prefixes=settings.trail_prefixes if settings else (),
        nat_gateways=settings.network.nat_gateways if settings else None,
    )
    return env


def env_from_stack_file(project: Project, stack: str) -> Env | None:
    """Facts of a stack that is not in hand (CrossGuard sees one stack): from its stack file."""
    try:
        raw = project.stack_config(stack)
        registry = project.registry
        s = parse_settings(project.name, stack, raw, read_peers(project, stack), registry)
    except Exception:
        return None
    return Env(
        stack=stack,
        project=project.name,
        tier=s.tier,
        account=s.account,
        region=s.region,
        cidr=s.network.cidr,
        stores=s.data_stores,
        experiment_id=s.experiment_id,
        expires_on=s.expires_on,
        flows=s.flows,
        deployer=s.deployer,
        registered=True,
        registry_accounts=registry.entry(stack).accounts,
        claimed_tier=s.tier,
        trail_owner=s.trail_owner or stack,
        trail_prefixes=s.trail_prefixes,
        nat_gateways=s.network.nat_gateways,
    )


@dataclass
class Context:
    """Every environment the rules compare against, plus the states in hand."""

    states: dict[str, StackState]
    envs: dict[str, Env]
    today: dt.date = field(default_factory=dt.date.today)
    registry: Registry | None = None  # the repository's environment registry, when in hand
    # Advisory rules (EF504, an expired experiment) fail the run instead of warning: the
    # scheduled CI job sets it (`envfence check --expired fail`); pull requests only warn.
    enforce_advisories: bool = False
    # Indexes the rules build once per run over every environment (`policies.ArnIndex`).
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def env(self, stack: str) -> Env:
        return self.envs[stack]

    def others(self, stack: str) -> Iterator[Env]:
        return (e for name, e in self.envs.items() if name != stack)

    def owner_of_arn(self, arn: str) -> str | None:
        for env in self.envs.values():
            if env.owns_arn(arn):
                return env.stack
        return None

    def owner_of_id(self, rid: str, exclude: str | None = None) -> str | None:
        for name, env in self.envs.items():
            if name != exclude and rid in env.ids:
                return name
        return None

    def accounts_of_others(self, stack: str) -> set[str]:
        own = self.envs[stack].account
        return {e.account for e in self.others(stack) if e.account and e.account != own}


def build_context(
    states: Iterable[StackState], project: Project | None = None, extra_stacks: Iterable[str] = ()
) -> Context:
    states = list(states)
    envs = {s.stack: env_from_state(s, project) for s in states}
    if project is not None:
        for name in extra_stacks:
            if name not in envs:
                env = env_from_stack_file(project, name)
                if env is not None:
                    envs[name] = env
    registry = None
    if project is not None:
        try:
            registry = project.registry
        except ProjectFileError:
            registry = None
    return Context(states={s.stack: s for s in states}, envs=envs, registry=registry)
