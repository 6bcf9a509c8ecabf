"""The fence at a glance: a Mermaid flowchart of environments and the flows between them.

`to_mermaid(states)` draws one `subgraph` per environment (stack): its VPC and CIDR, its KMS
keys, its data stores, database, queues and roles, and its audit trail and archive when it has
them, grouped per kind (no subnets, route tables or policies). The only edges are what the
states declare *between* environments:

- declared flows (`outputs["declaredFlows"]` and the `envfence:flows` config), from the reading
  role to the store it reads, thick when both stacks declare it (a flow holds only then, EF320),
  dotted and marked when only one side does;
- "audited by", dotted, from a stack whose trail is its account baseline's
  (`outputs["trailOwner"]`) to that baseline's audit trail;
- VPC peering connections and transit gateway attachments, when a state has them (a leak the
  rules and proofs refute; drawn because it is declared, never guessed).

Each VPC says in its label that it has no peering and no transit gateway, when it has none.
Nothing else is inferred. The output is deterministic (sorted, independent of resource order),
ids are alphanumeric with underscores, labels quoted with every other character written as a
Mermaid entity. `envfence plan --format mermaid` prints it; the README's diagram between
`README_BEGIN` and `README_END` is this function's output for the repository's stacks
(`update_readme`, `scripts/update-readme-diagram.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envfence import naming
from envfence.model import Resource, StackState, unreadable
from envfence.rules.context import provider_account, provider_tags
from envfence.settings import Flow

README_BEGIN = "<!-- envfence:mermaid:begin -->"
README_END = "<!-- envfence:mermaid:end -->"
REGENERATE = "python scripts/update-readme-diagram.py"

VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
NAT = "aws:ec2/natGateway:NatGateway"
IGW = "aws:ec2/internetGateway:InternetGateway"
PEERING = "aws:ec2/vpcPeeringConnection:VpcPeeringConnection"
TGW_ATTACHMENT = "aws:ec2transitgateway/vpcAttachment:VpcAttachment"
KEY = "aws:kms/key:Key"
ALIAS = "aws:kms/alias:Alias"
BUCKET = "aws:s3/bucket:Bucket"
OBJECT_LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
DATABASE = "aws:rds/instance:Instance"
QUEUE = "aws:sqs/queue:Queue"
ROLE = "aws:iam/role:Role"
TRAIL = "aws:cloudtrail/trail:Trail"

_UNPLACED = "\0unplaced:"  # a key no VPC id can be

# `Flow.describe()`, as the program exports it in `declaredFlows`.
_FLOW_RE = re.compile(
    r"^(?P<source>[^/\s]+)/(?P<role>[^/\s]+) may (?P<access>\S+) "
    r"(?P<target>[^/\s]+)/(?P<store>[^/\s]+)$"
)
# Characters written as they are inside a quoted label; anything else becomes `#<code>;`.
_SAFE = re.compile(r"[A-Za-z0-9 .,:/()+=@*'_-]")

_TIER_STYLE = {
    naming.TIER_PRODUCTION: "fill:#fff1f0,stroke:#cf1322,stroke-width:2px",
    naming.TIER_EXPERIMENT: "fill:#f0f5ff,stroke:#1d39c4,stroke-width:2px",
}
_OTHER_TIER_STYLE = "fill:#fafafa,stroke:#595959,stroke-width:2px"
_CLASSES = {
    "network": "fill:#f6ffed,stroke:#389e0d",
    "key": "fill:#fffbe6,stroke:#d48806",
    "store": "fill:#e6fffb,stroke:#08979c",
    "role": "fill:#f9f0ff,stroke:#531dab",
    "audit": "fill:#f5f5f5,stroke:#434343",
    "outside": "fill:#ffffff,stroke:#8c8c8c,stroke-dasharray:4 4",
}
_EDGE_STYLE = {
    "flow": "stroke:#d46b08,stroke-width:3px",
    "one-sided": "stroke:#d46b08,stroke-width:2px,stroke-dasharray:6 4",
    "audit": "stroke:#595959,stroke-width:1px",
    "route": "stroke:#cf1322,stroke-width:3px",
}


def label(*lines: str) -> str:
    """A quoted Mermaid label: each line escaped, lines joined by `<br/>`."""
    return '"' + "<br/>".join(_escape(line) for line in lines) + '"'


def _escape(text: str) -> str:
    return "".join(c if _SAFE.fullmatch(c) else f"#{ord(c)};" for c in text)


def _text(value: Any, default: str = "?") -> str:
    """A property as label text: readable values as they are, else why not."""
    if value is None or value == "":
        return default
    why = unreadable(value)
    if why:
        return f"({why})"
    return str(value)


def _known(value: Any) -> str | None:
    """A string property usable as a key (an id to match): None when missing or unreadable."""
    return value if isinstance(value, str) and value and not unreadable(value) else None


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def declared_flows(state: StackState) -> set[Flow]:
    """The flows a stack declares: its `declaredFlows` output and its `envfence:flows` config
    (either may be missing: a bare export has no config, a preview may not know its outputs)."""
    found: set[Flow] = set()
    exported = state.outputs.get("declaredFlows")
    for item in exported if isinstance(exported, list) else []:
        match = _FLOW_RE.match(item) if isinstance(item, str) and not unreadable(item) else None
        if match:
            found.add(Flow(**match.groupdict()))
    configured = _json(state.config.get("envfence:flows"))
    for item in configured if isinstance(configured, list) else []:
        if not isinstance(item, dict):
            continue
        parts = [item.get(k) for k in ("from", "to", "role", "store")]
        access = item.get("access", "read")
        if all(_known(p) for p in [*parts, access]):
            source, target, role, store = (str(p) for p in parts)
            found.add(Flow(source=source, target=target, role=role, store=store, access=access))
    return found


def _account_region(state: StackState) -> tuple[str | None, str | None]:
    account, region = provider_account(state)
    if not account:
        ids = _json(state.config.get("envfence:allowedAccountIds"))
        if isinstance(ids, list) and ids and _known(str(ids[0])):
            account = str(ids[0])
    if not region:
        region = _known(state.config.get("aws:region"))
    return account, region


def _short(state: StackState, name: Any) -> str:
    """A physical name without the environment's `<project>-<stack>-` prefix."""
    text = _text(name)
    own = naming.prefix(state.project, state.stack) + "-"
    return text[len(own) :] if text.startswith(own) and len(text) > len(own) else text


@dataclass(frozen=True)
class _Node:
    id: str
    shape: str  # the opening bracket: [ [( ([ [[ {{
    text: str  # the quoted label
    css: str

    def render(self) -> str:
        close = {"[": "]", "[(": ")]", "([": "])", "[[": "]]", "{{": "}}"}[self.shape]
        return f"{self.id}{self.shape}{self.text}{close}:::{self.css}"


@dataclass(frozen=True, order=True)
class _Edge:
    rank: int  # flows first, then audit, then routes
    source: str
    target: str
    arrow: str
    text: str
    style: str

    def render(self) -> str:
        return f"{self.source} {self.arrow}|{self.text}| {self.target}"


@dataclass
class _Ids:
    """Mermaid ids: `[A-Za-z0-9_]`, unique, the same for the same thing in one diagram."""

    given: dict[tuple[str, ...], str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def __call__(self, *key: str) -> str:
        if key not in self.given:
            base = re.sub(r"[^A-Za-z0-9]", "_", "_".join(key))
            candidate, n = base, 1
            while candidate in self.used:
                n += 1
                candidate = f"{base}_{n}"
            self.used.add(candidate)
            self.given[key] = candidate
        return self.given[key]


@dataclass
class _Env:
    """One environment's nodes, and the ids edges need to reach into it."""

    state: StackState
    id: str
    title: str
    style: str
    nodes: list[_Node] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # role -> node id
    stores: dict[str, str] = field(default_factory=dict)  # store -> node id
    vpcs: dict[str, str] = field(default_factory=dict)  # VPC id -> node id
    audit: str | None = None  # audit trail node id


def _env_title(state: StackState) -> str:
    account, region = _account_region(state)
    tier = state.tier or provider_tags(state).get(naming.TAG_TIER)
    parts = [state.stack, f"tier {_text(tier)}", f"account {_text(account)}", _text(region)]
    if state.experiment_id:
        parts.append(f"experiment {_text(state.experiment_id)}")
    expires = state.outputs.get("expiresOn") or state.config.get("envfence:expiresOn")
    if expires:
        parts.append(f"expires {_text(expires)}")
    return ", ".join(parts)


def _sorted(resources: Iterable[Resource]) -> list[Resource]:
    return sorted(resources, key=lambda r: (r.name, r.urn))


def _network_facts(states: Sequence[StackState]) -> dict[str, list[str]]:
    """VPC id -> what connects it: NAT, internet gateway, peering, transit gateway. What cannot
    be placed in a VPC (its id unknown in a preview) is kept under `_UNPLACED + stack` and
    shown in every VPC of that stack, so that no label claims an absence it cannot know."""
    subnet_vpc = {
        r.id: _known(r.get("vpcId")) for s in states for r in s.of_type(SUBNET) if _known(r.id)
    }
    counts: dict[str, dict[str, int]] = {}

    def add(stack: str, vpc: str | None, what: str) -> None:
        key = vpc or _UNPLACED + stack
        counts.setdefault(key, {}).setdefault(what, 0)
        counts[key][what] += 1

    for s in states:
        for r in s.of_type(NAT):
            add(s.stack, subnet_vpc.get(_known(r.get("subnetId")) or ""), "NAT gateway")
        for r in s.of_type(IGW):
            add(s.stack, _known(r.get("vpcId")), "internet gateway")
        for r in s.of_type(PEERING):
            own, peer = _known(r.get("vpcId")), _known(r.get("peerVpcId"))
            add(s.stack, own, "VPC peering connection")
            if peer:
                add(s.stack, peer, "VPC peering connection")
        for r in s.of_type(TGW_ATTACHMENT):
            add(s.stack, _known(r.get("vpcId")), "transit gateway attachment")
    facts: dict[str, list[str]] = {}
    for key, found in counts.items():
        facts[key] = [f"{n} {what}{'' if n == 1 else 's'}" for what, n in sorted(found.items())]
    return facts


def _vpc_lines(state: StackState, r: Resource, facts: dict[str, list[str]]) -> list[str]:
    found = facts.get(_known(r.id) or "", []) + facts.get(_UNPLACED + state.stack, [])
    lines = [f"VPC {_text(r.get('cidrBlock'))}"]
    egress = [f for f in found if "NAT" in f or "internet" in f]
    lines.append(", ".join(egress) if egress else "no NAT, no internet gateway")
    routes = [f for f in found if "peering" in f or "transit" in f]
    lines.append(", ".join(routes) if routes else "no peering, no transit gateway")
    return lines


def _environment(
    state: StackState, ids: _Ids, flows: set[Flow], facts: dict[str, list[str]]
) -> _Env:
    stack = state.stack
    tier = state.tier or provider_tags(state).get(naming.TAG_TIER)
    env = _Env(
        state=state,
        id=ids("env", stack),
        title=_env_title(state),
        style=_TIER_STYLE.get(str(tier), _OTHER_TIER_STYLE),
    )
    for r in _sorted(state.of_type(VPC)):
        node = _Node(
            ids("env", stack, "vpc", r.name), "[", label(*_vpc_lines(state, r, facts)), "network"
        )
        env.nodes.append(node)
        if _known(r.id):
            env.vpcs[str(r.id)] = node.id

    aliases: dict[str, list[str]] = {}
    for a in state.of_type(ALIAS):
        target, name = _known(a.get("targetKeyId")), _known(a.get("name"))
        if target and name:
            aliases.setdefault(target, []).append(name)
    for r in _sorted(state.of_type(KEY)):
        refs = {_known(k) for k in (r.id, r.get("keyId"), r.get("arn"))} - {None}
        names = sorted({n for k in refs if k for n in aliases.get(k, [])})
        text = label("KMS key", *(names or [r.name]))
        env.nodes.append(_Node(ids("env", stack, "key", r.name), "{{", text, "key"))

    stores: dict[str, Resource] = {}
    special: dict[str, list[Resource]] = {"audit": [], "archive": []}
    for r in state.of_type(BUCKET):
        tags = r.get("tags")
        store = tags.get(naming.TAG_DATA_STORE) if isinstance(tags, dict) else None
        store = _known(store) or r.name
        if store in special:
            special[store].append(r)
        else:
            stores.setdefault(store, r)
    for store in sorted(stores):
        node = _Node(ids("env", stack, "store", store), "[(", label(f"S3 {store}"), "store")
        env.nodes.append(node)
        env.stores[store] = node.id

    for r in _sorted(state.of_type(DATABASE)):
        engine = f"{_text(r.get('engine'), 'database')} {_text(r.get('engineVersion'), '')}"
        multi_az = "Multi-AZ" if r.get("multiAz") in (True, "true") else "single AZ"
        text = label(f"RDS {engine.strip()}", f"{_text(r.get('instanceClass'))}, {multi_az}")
        env.nodes.append(_Node(ids("env", stack, "db", r.name), "[(", text, "store"))

    queues = sorted(_short(state, r.get("name") or r.name) for r in state.of_type(QUEUE))
    if queues:
        text = label("SQS " + ", ".join(queues))
        env.nodes.append(_Node(ids("env", stack, "queues"), "[(", text, "store"))

    primary = set(naming.ROLES) | {f.role for f in flows if f.source == stack}
    support: list[str] = []
    roles = sorted(
        {_short(state, r.get("name") or r.name) for r in state.of_type(ROLE)},
        key=lambda n: (naming.ROLES.index(n) if n in naming.ROLES else len(naming.ROLES), n),
    )
    for role in roles:
        if role in primary:
            node = _Node(ids("env", stack, "role", role), "([", label(f"role {role}"), "role")
            env.nodes.append(node)
            env.roles[role] = node.id
        else:
            support.append(role)
    if support:
        text = label("support roles", ", ".join(support))
        env.nodes.append(_Node(ids("env", stack, "support_roles"), "([", text, "role"))

    trails = _sorted(state.of_type(TRAIL))
    if trails or special["audit"]:
        lines = ["audit trail"]
        lines += [f"CloudTrail {_text(t.get('name') or t.name)}" for t in trails]
        for b in _sorted(special["audit"]):
            lock = [
                c.get("rule", {}).get("defaultRetention", {})
                for c in state.of_type(OBJECT_LOCK)
                if c.get("bucket") == b.get("bucket") and isinstance(c.get("rule"), dict)
            ]
            days = next((d.get("days") for d in lock if isinstance(d, dict) and d.get("days")), 0)
            lines.append("S3 audit log" + (f", object lock {_text(days)} d" if days else ""))
        env.audit = ids("env", stack, "audit")
        env.nodes.append(_Node(env.audit, "[[", label(*lines), "audit"))
    if special["archive"]:
        text = label("archive", "concluded experiments")
        env.nodes.append(_Node(ids("env", stack, "archive"), "[[", text, "audit"))
    return env


def to_mermaid(states: Sequence[StackState]) -> str:
    """A Mermaid flowchart of `states`: one subgraph per environment, edges only for what the
    states declare between environments (flows, the account baseline's audit trail, peering
    and transit gateway attachments). Deterministic: the same states in any order, with their
    resources in any order, give the same text."""
    ordered = sorted(states, key=lambda s: s.stack)
    names = [s.stack for s in ordered]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"several states for stack {', '.join(dupes)}")
    ids = _Ids()
    declared = {s.stack: declared_flows(s) for s in ordered}
    flows: set[Flow] = set()
    for found in declared.values():
        flows |= found
    facts = _network_facts(ordered)
    envs = {s.stack: _environment(s, ids, flows, facts) for s in ordered}

    outside: dict[tuple[str, str, str], _Node] = {}

    def elsewhere(stack: str, what: str = "") -> str:
        """A node for a stack (or a part of it) that is not in the diagram."""
        key = ("outside", stack, what)
        if key not in outside:
            text = label(f"{stack} {what}".strip(), "not in this diagram")
            outside[key] = _Node(ids(*key), "[", text, "outside")
        return outside[key].id

    edges: set[_Edge] = set()
    for flow in sorted(flows, key=lambda f: (f.source, f.target, f.role, f.store, f.access)):
        src, dst = envs.get(flow.source), envs.get(flow.target)
        start = (src.roles.get(flow.role) or src.id) if src else elsewhere(flow.source, flow.role)
        end = (dst.stores.get(flow.store) or dst.id) if dst else elsewhere(flow.target, flow.store)
        text = f"{flow.access} {flow.store}"
        by = sorted(s for s in (flow.source, flow.target) if flow in declared.get(s, set()))
        missing = [s for s in (flow.source, flow.target) if s in envs and s not in by]
        if missing:
            text += f", declared by {' and '.join(by)} only: not in force"
            edges.add(_Edge(0, start, end, "-.->", label(text), "one-sided"))
        else:
            edges.add(_Edge(0, start, end, "==>", label(text), "flow"))

    for state in ordered:
        owner = _known(state.outputs.get("trailOwner"))
        if owner and owner != state.stack:
            target = envs.get(owner)
            end = (target.audit or target.id) if target else elsewhere(owner, "audit trail")
            edges.add(_Edge(1, envs[state.stack].id, end, "-.->", label("audited by"), "audit"))

    vpc_nodes = {vpc: node for e in envs.values() for vpc, node in e.vpcs.items()}
    tgws: dict[str, _Node] = {}
    for state in ordered:
        for r in _sorted(state.of_type(PEERING)):
            a = vpc_nodes.get(_known(r.get("vpcId")) or "")
            b = vpc_nodes.get(_known(r.get("peerVpcId")) or "")
            if a and b:
                text = label(f"VPC peering {_text(r.id or r.name)}")
                edges.add(_Edge(2, a, b, "<-->", text, "route"))
        for r in _sorted(state.of_type(TGW_ATTACHMENT)):
            vpc = vpc_nodes.get(_known(r.get("vpcId")) or "")
            tgw = _known(r.get("transitGatewayId"))
            if vpc and tgw:
                if tgw not in tgws:
                    tgws[tgw] = _Node(
                        ids("tgw", tgw), "{{", label(f"transit gateway {tgw}"), "outside"
                    )
                edges.add(_Edge(2, vpc, tgws[tgw].id, "<-->", label("attached"), "route"))

    lines = [
        "flowchart LR",
        "  %% envfence: each environment, and the flows declared between environments.",
        "  %% Generated by envfence plan --format mermaid: do not edit by hand.",
    ]
    for stack in names:
        env = envs[stack]
        lines.append(f"  subgraph {env.id}[{label(env.title)}]")
        lines += [f"    {node.render()}" for node in env.nodes]
        lines.append("  end")
    lines += [f"  {node.render()}" for node in sorted(outside.values(), key=lambda n: n.id)]
    lines += [f"  {node.render()}" for node in sorted(tgws.values(), key=lambda n: n.id)]
    ordered_edges = sorted(edges)
    lines += [f"  {edge.render()}" for edge in ordered_edges]
    lines += [f"  classDef {name} {css}" for name, css in _CLASSES.items()]
    lines += [f"  style {envs[stack].id} {envs[stack].style}" for stack in names]
    for i, edge in enumerate(ordered_edges):
        lines.append(f"  linkStyle {i} {_EDGE_STYLE[edge.style]}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The README's generated diagram


def readme_block(document: str) -> str | None:
    """The Mermaid text of the README's generated block, or None when there is no block."""
    begin, end = document.find(README_BEGIN), document.find(README_END)
    if begin < 0 or end < begin:
        return None
    inner = document[begin + len(README_BEGIN) : end]
    match = re.search(r"```mermaid\n(.*?)```", inner, re.DOTALL)
    return match.group(1) if match else None


def update_readme(path: Path | str, text: str) -> bool:
    """Rewrite the generated block of the README at `path` to hold `text` (a `to_mermaid`
    output); everything outside the markers is left as it is. True when the file changed.
    Raises ValueError when the markers are missing or out of order."""
    path = Path(path)
    document = path.read_text(encoding="utf-8")
    begin, end = document.find(README_BEGIN), document.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path}: no {README_BEGIN} ... {README_END} block")
    body = text if text.endswith("\n") else text + "\n"
    new = document[: begin + len(README_BEGIN)] + "\n```mermaid\n" + body + "```\n" + document[end:]
    if new == document:
        return False
    path.write_text(new, encoding="utf-8")
    return True


__all__ = [
    "README_BEGIN",
    "README_END",
    "REGENERATE",
    "declared_flows",
    "label",
    "readme_block",
    "to_mermaid",
    "update_readme",
]
