"""`envfence.diagram.to_mermaid`: the fence at a glance (`envfence plan --format mermaid`).

The diagram is checked structurally, without a Mermaid renderer: every line is one of the few
statements the generator may write, subgraphs are balanced, ids are unique and alphanumeric,
every edge joins declared ids, labels hold only safe characters and entities. Then for what it
says: each environment's VPC, stores and roles inside its own subgraph; the declared flow as an
edge that comes and goes with the declaration; and the README's copy of it, which cannot drift.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from envfence import experiments
from envfence.diagram import (
    README_BEGIN,
    README_END,
    REGENERATE,
    label,
    readme_block,
    to_mermaid,
    update_readme,
)
from envfence.evaluate import evaluate
from envfence.model import UNKNOWN, StackState
from envfence.project import Project
from tests import mutations

ROOT = Path(__file__).resolve().parent.parent
FLOW = "prod/pipeline may read experiment/results"

ID = r"[A-Za-z0-9_]+"
LABEL = r'"([^"]*)"'
SHAPES = {"[": "]", "[(": ")]", "([": "])", "[[": "]]", "{{": "}}"}
NODE_RE = re.compile(
    rf"^(?P<id>{ID})(?P<open>\[\(|\(\[|\[\[|\{{\{{|\[){LABEL}(?P<close>\)\]|\]\)|\]\]|\}}\}}|\])"
    rf"(?::::(?P<css>{ID}))?$"
)
EDGE_RE = re.compile(
    rf"^(?P<source>{ID}) (?P<arrow>==>|-->|-\.->|<-->)\|{LABEL}\| (?P<target>{ID})$"
)
SUBGRAPH_RE = re.compile(rf"^subgraph (?P<id>{ID})\[{LABEL}\]$")
STYLES = r"[a-z-]+:[^\s,]+(?: [^\s,]+)*(?:,[a-z-]+:[^\s,]+(?: [^\s,]+)*)*"
CLASSDEF_RE = re.compile(rf"^classDef (?P<name>{ID}) {STYLES}$")
STYLE_RE = re.compile(rf"^style (?P<id>{ID}) {STYLES}$")
LINKSTYLE_RE = re.compile(rf"^linkStyle (?P<n>\d+) {STYLES}$")
# Inside a quoted label: plain characters, Mermaid entities, and line breaks. No `"`, no `|`,
# no `#` that is not an entity, no markup but <br/>.
SAFE_LABEL = re.compile(r"(?:[A-Za-z0-9 .,:/()+=@*'_-]|#\d+;|<br/>)*")
# Words the flowchart lexer reads as keywords at the start of a token.
KEYWORDS = ("end", "subgraph", "graph", "flowchart", "style", "class", "click", "default")


@dataclass
class Diagram:
    """What a Mermaid flowchart declares, read back from its text."""

    nodes: dict[str, str] = field(default_factory=dict)  # id -> label
    parent: dict[str, str | None] = field(default_factory=dict)  # node id -> subgraph id
    subgraphs: dict[str, str] = field(default_factory=dict)  # id -> title
    edges: list[tuple[str, str, str, str]] = field(default_factory=list)  # src, arrow, text, dst
    classes: set[str] = field(default_factory=set)

    def inside(self, subgraph: str) -> list[str]:
        """Labels of the nodes of one subgraph."""
        return [self.nodes[n] for n, p in self.parent.items() if p == subgraph]

    def named(self, subgraph: str | None, text: str) -> str:
        """The id of the one node of `subgraph` whose label is `text`."""
        hits = [n for n, p in self.parent.items() if p == subgraph and self.nodes[n] == text]
        assert len(hits) == 1, f"{len(hits)} nodes {text!r} in {subgraph}"
        return hits[0]


def parse(text: str) -> Diagram:
    """Read a diagram back, asserting that it is structurally valid Mermaid."""
    assert text.endswith("\n") and "\t" not in text
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    d = Diagram()
    stack: list[str] = []
    used_classes: set[str] = set()
    styled: list[str] = []
    link_styles: list[int] = []
    labels: list[str] = []

    def declare(ident: str) -> None:
        assert ident not in d.nodes and ident not in d.subgraphs, f"id {ident} declared twice"
        assert not ident.lower().startswith(KEYWORDS), f"id {ident} starts with a keyword"

    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        where = f"line {number}: {raw!r}"
        if not line or line.startswith("%%"):
            continue
        assert "direction" not in line, where  # the lexer takes any such line as a statement
        if m := SUBGRAPH_RE.match(line):
            declare(m["id"])
            d.subgraphs[m["id"]] = m[2]
            labels.append(m[2])
            stack.append(m["id"])
        elif line == "end":
            assert stack, f"{where}: end without subgraph"
            stack.pop()
        elif m := NODE_RE.match(line):
            assert SHAPES[m["open"]] == m["close"], where
            declare(m["id"])
            d.nodes[m["id"]] = m[3]
            d.parent[m["id"]] = stack[-1] if stack else None
            labels.append(m[3])
            if m["css"]:
                used_classes.add(m["css"])
        elif m := EDGE_RE.match(line):
            d.edges.append((m["source"], m["arrow"], m[3], m["target"]))
            labels.append(m[3])
        elif m := CLASSDEF_RE.match(line):
            d.classes.add(m["name"])
        elif m := STYLE_RE.match(line):
            styled.append(m["id"])
        elif m := LINKSTYLE_RE.match(line):
            link_styles.append(int(m["n"]))
        else:
            pytest.fail(f"{where}: not a statement the diagram may hold")
    assert stack == [], f"unclosed subgraphs {stack}"
    declared = set(d.nodes) | set(d.subgraphs)
    for source, _, _, target in d.edges:
        assert source in declared and target in declared, f"edge {source} -> {target}"
    assert set(styled) <= set(d.subgraphs)
    assert used_classes <= d.classes
    assert sorted(link_styles) == list(range(len(d.edges)))
    for text_ in labels:
        assert SAFE_LABEL.fullmatch(text_), f"unsafe label {text_!r}"
    return d


def plain(text: str) -> str:
    """A label as a reader sees it: lines joined by ' / ', entities decoded."""
    return re.sub(r"#(\d+);", lambda m: chr(int(m[1])), text.replace("<br/>", " / "))


def flows_removed(state: StackState, keep: Callable[[str], bool] = lambda _: False) -> None:
    """Take the declared flow out of a state: its output and its config, as a new deployment
    without the declaration would have them."""
    state.outputs["declaredFlows"] = [f for f in state.outputs["declaredFlows"] if keep(f)]
    state.config["envfence:flows"] = json.dumps([])


# --------------------------------------------------------------------------------------------
# Structure


def test_the_repository_diagram_is_valid_mermaid(stacks: dict[str, StackState]) -> None:
    d = parse(to_mermaid(list(stacks.values())))
    assert set(d.subgraphs) == {"env_prod", "env_experiment"}
    assert all(re.fullmatch(ID, i) for i in [*d.nodes, *d.subgraphs])


def test_ids_stay_unique_when_stack_names_sanitize_alike(
    stack_copy: Callable[[str], StackState],
) -> None:
    a, b = stack_copy("experiment"), stack_copy("experiment")
    a.stack, b.stack = "x-y", "x_y"
    d = parse(to_mermaid([a, b]))
    assert sorted(d.subgraphs.values())[0].startswith("x-y, ")
    assert sorted(d.subgraphs) == ["env_x_y", "env_x_y_2"]
    assert len(d.inside("env_x_y")) == len(d.inside("env_x_y_2")) > 10


def test_labels_escape_what_mermaid_would_read() -> None:
    text = label('a "quoted" | pipe #1; <b> `tick` é', "second line")
    assert text.startswith('"') and text.endswith('"') and '"' not in text[1:-1]
    assert SAFE_LABEL.fullmatch(text[1:-1])
    assert plain(text[1:-1]) == 'a "quoted" | pipe #1; <b> `tick` é / second line'


# --------------------------------------------------------------------------------------------
# What it says


def test_each_environment_holds_its_network_stores_and_roles(
    stacks: dict[str, StackState],
) -> None:
    d = parse(to_mermaid(list(stacks.values())))
    prod, experiment = d.inside("env_prod"), d.inside("env_experiment")
    assert d.subgraphs["env_prod"] == ("prod, tier production, account 123456789012, eu-west-1")
    assert d.subgraphs["env_experiment"].startswith(
        "experiment, tier experiment, account 210987654321, eu-west-1"
    )
    for nodes, cidr, stack in (
        (prod, "10.10.0.0/16", "prod"),
        (experiment, "10.20.0.0/16", "experiment"),
    ):
        assert any(n.startswith(f"VPC {cidr}<br/>") for n in nodes), nodes
        assert any("no peering, no transit gateway" in n for n in nodes)
        assert f"KMS key<br/>alias/envfence/{stack}" in nodes
        for store in ("raw", "curated", "results"):
            assert f"S3 {store}" in nodes
        for role in ("service", "pipeline", "analyst"):
            assert f"role {role}" in nodes
        assert any(n.startswith("RDS postgres 16") for n in nodes)
        assert "SQS ingest, ingest-dlq" in nodes
        assert any(n.startswith(f"audit trail<br/>CloudTrail envfence-{stack}") for n in nodes)
        # grouped per kind: no subnets, route tables, policies, one node for the support roles
        assert not any(re.search(r"subnet|route|polic", n, re.IGNORECASE) for n in nodes)
        assert sum(n.startswith("support roles") for n in nodes) == 1
    assert (
        "VPC 10.20.0.0/16<br/>1 NAT gateway, 1 internet gateway<br/>no peering, no transit gateway"
        in experiment
    )
    assert (
        "VPC 10.10.0.0/16<br/>no NAT, no internet gateway<br/>no peering, no transit gateway"
        in prod
    )
    assert any(n.startswith("archive") for n in experiment)
    assert not any(n.startswith("archive") for n in prod)
    assert any("object lock 365 d" in n for n in prod)


def test_the_declared_flow_is_the_one_edge(stacks: dict[str, StackState]) -> None:
    d = parse(to_mermaid(list(stacks.values())))
    role = d.named("env_prod", "role pipeline")
    store = d.named("env_experiment", "S3 results")
    assert d.edges == [(role, "==>", "read results", store)]


def test_the_edge_goes_with_the_declaration(stack_copy: Callable[[str], StackState]) -> None:
    prod, experiment = stack_copy("prod"), stack_copy("experiment")
    flows_removed(prod)
    one_sided = parse(to_mermaid([prod, experiment]))
    assert [(a, t) for _, a, t, _ in one_sided.edges] == [
        ("-.->", "read results, declared by experiment only: not in force")
    ]
    flows_removed(experiment)
    assert parse(to_mermaid([prod, experiment])).edges == []


def test_a_flow_read_from_the_output_alone(stack_copy: Callable[[str], StackState]) -> None:
    """A bare `pulumi stack export` has no config: the exported `declaredFlows` suffice."""
    states = [stack_copy("prod"), stack_copy("experiment")]
    for s in states:
        s.config = {}
        assert s.outputs["declaredFlows"] == [FLOW]
    d = parse(to_mermaid(states))
    assert [(a, t) for _, a, t, _ in d.edges] == [("==>", "read results")]


def test_a_flow_to_a_stack_outside_the_diagram(stacks: dict[str, StackState]) -> None:
    d = parse(to_mermaid([stacks["prod"]]))
    outside = d.named(None, "experiment results<br/>not in this diagram")
    assert d.edges == [(d.named("env_prod", "role pipeline"), "==>", "read results", outside)]


def test_a_peering_is_drawn_and_named_in_both_vpcs(
    stack_copy: Callable[[str], StackState],
) -> None:
    states = {"prod": stack_copy("prod"), "experiment": stack_copy("experiment")}
    mutations.vpc_peering(states)
    d = parse(to_mermaid(list(states.values())))
    peering = [(s, t) for s, a, t, _ in d.edges if a == "<-->"]
    assert len(peering) == 1 and peering[0][1].startswith("VPC peering pcx")
    for env in ("env_prod", "env_experiment"):
        vpc = next(n for n in d.inside(env) if n.startswith("VPC "))
        assert vpc.endswith("1 VPC peering connection"), vpc
    assert {d.parent[s] for s, a, *_ in d.edges if a == "<-->"} == {"env_prod"}


def test_a_transit_gateway_attachment_is_drawn(stack_copy: Callable[[str], StackState]) -> None:
    states = {"prod": stack_copy("prod"), "experiment": stack_copy("experiment")}
    mutations.transit_gateway_attachment(states)
    d = parse(to_mermaid(list(states.values())))
    tgw = d.named(None, "transit gateway tgw-0123456789abcdef0")
    vpc = next(n for n in d.parent if d.parent[n] == "env_prod" and d.nodes[n].startswith("VPC "))
    assert (vpc, "<-->", "attached", tgw) in d.edges
    assert d.nodes[vpc].endswith("<br/>1 transit gateway attachment")


def test_a_peering_in_a_preview_is_not_called_absent(
    stack_copy: Callable[[str], StackState],
) -> None:
    """A preview does not know ids yet: the peering is still counted in its stack's VPC."""
    states = {"prod": stack_copy("prod"), "experiment": stack_copy("experiment")}
    peering = mutations.vpc_peering(states)
    for key in ("vpcId", "peerVpcId"):
        peering.set(key, UNKNOWN)
    d = parse(to_mermaid(list(states.values())))
    vpc = next(n for n in d.inside("env_prod") if n.startswith("VPC "))
    assert vpc.endswith("<br/>1 VPC peering connection"), vpc
    assert not any(a == "<-->" for _, a, _, _ in d.edges)  # nothing to draw it between


def test_a_short_lived_experiment_is_audited_by_its_baseline(
    repo: Project, restore_program_modules: None, stacks: dict[str, StackState]
) -> None:
    experiments.new(repo, "abtest", owner="ab-team@example.com", expires="2099-12-31")
    short = evaluate("experiment-abtest", repo)
    assert short.outputs["trailOwner"] == "experiment"
    d = parse(to_mermaid([*stacks.values(), short]))
    env = "env_experiment_abtest"
    assert d.subgraphs[env].startswith(
        "experiment-abtest, tier experiment, account 210987654321, eu-west-1, experiment abtest"
    )
    assert not any(n.startswith(("audit trail", "archive")) for n in d.inside(env))
    audit = next(n for n in d.parent if d.nodes[n].startswith("audit trail"))
    assert d.parent[audit] == "env_experiment"
    assert (env, "-.->", "audited by", audit) in d.edges
    assert len(d.edges) == 2  # the flow, and the audit: no edge is invented


# --------------------------------------------------------------------------------------------
# Deterministic


def test_the_same_states_draw_the_same_text(
    stacks: dict[str, StackState], stack_copy: Callable[[str], StackState]
) -> None:
    first = to_mermaid(list(stacks.values()))
    assert to_mermaid(list(stacks.values())) == first
    shuffled = [stack_copy(name) for name in sorted(stacks, reverse=True)]
    for i, state in enumerate(shuffled):
        random.Random(i).shuffle(state.resources)
    assert to_mermaid(shuffled) == first


def test_several_states_of_one_stack_are_refused(stacks: dict[str, StackState]) -> None:
    with pytest.raises(ValueError, match="several states for stack prod"):
        to_mermaid([stacks["prod"], stacks["prod"]])


# --------------------------------------------------------------------------------------------
# The README's copy


def test_the_readme_diagram_is_the_evaluated_stacks(stacks: dict[str, StackState]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme_block(readme)
    assert block is not None, f"README.md has no {README_BEGIN} ... {README_END} block"
    assert block == to_mermaid(list(stacks.values())), (
        f"README.md's diagram is stale: regenerate it with `.venv/bin/{REGENERATE}` "
        "(the output of `envfence plan --format mermaid`) and commit README.md"
    )


def test_update_readme_rewrites_only_the_block(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(f"# t\n\nbefore\n{README_BEGIN}\nold\n{README_END}\nafter\n")
    assert update_readme(path, "flowchart LR\n")
    assert path.read_text() == (
        f"# t\n\nbefore\n{README_BEGIN}\n```mermaid\nflowchart LR\n```\n{README_END}\nafter\n"
    )
    assert readme_block(path.read_text()) == "flowchart LR\n"
    assert not update_readme(path, "flowchart LR\n")
    path.write_text("# no block\n")
    with pytest.raises(ValueError, match="no <!-- envfence:mermaid:begin -->"):
        update_readme(path, "flowchart LR\n")
