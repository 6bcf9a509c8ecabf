"""The per-environment proofs and the per-pair proofs agree on every leak case (issue 12).

`prove_iam` and `prove_network` prove each environment against everything outside it at once
(one question per principal, one network query per environment), and name the environment a
witness reaches; the per-pair proofs (`per_pair=True`) ask one question per ordered pair, as
the proofs first ran. With two stacks the two ask the same questions, so every case here runs
with a third environment (`test_prove_network.third`: the experiment stack under another name,
account, CIDR and network ids) — once as a bystander, once carrying the leak itself — and
both must give, pair by pair, the same verdict: for the IAM proof the same principals with a
counterexample, each reaching the pair's target, and the same reasons a pair is broken; for the
network proof the same status, a packet exactly where there is one, and the same detail.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import mutations as m
import pytest
import test_prove_iam as iam_cases
import test_prove_network as net_cases

from envfence.model import StackState
from envfence.project import Project
from envfence.prove.iam_proof import PROVED, REFUTED, IamProof, prove_iam
from envfence.prove.network import prove_network
from envfence.prove.world import build_world
from envfence.rules.context import build_context

Stacks = dict[str, StackState]
X = net_cases.X


@pytest.fixture(scope="module")
def shared(stacks: Stacks) -> Stacks:
    out = copy.deepcopy(stacks)
    iam_cases.share_account(out)
    m.drop_statement(
        iam_cases.boundary(out[iam_cases.EXP]), "DenyResourcesTaggedForOtherEnvironments"
    )
    return out


def iam_verdicts(
    proof: IamProof,
) -> dict[tuple[str, str], tuple[str, frozenset[str], frozenset[str]]]:
    out = {}
    for p in proof.pairs:
        assert all(
            c.target_urn.split("::")[0] == f"urn:pulumi:{p.target}" for c in p.counterexamples
        ), (
            p.source,
            p.target,
            [c.target_urn for c in p.counterexamples],
        )
        out[(p.source, p.target)] = (
            p.status,
            frozenset(c.principal for c in p.counterexamples),
            frozenset(p.details),
        )
    return out


def assert_iam_agree(s: Stacks, project: Project, *, expect_refuted: bool) -> None:
    ctx = build_context(s.values(), iam_cases.one_account_allowed(project))
    world = build_world(s, {name: env.flows for name, env in ctx.envs.items()})
    per_env = prove_iam(world, project.name, controls=False)
    per_pair = prove_iam(world, project.name, per_pair=True, controls=False)
    got, want = iam_verdicts(per_env), iam_verdicts(per_pair)
    assert set(got) == {(a, b) for a in s for b in s if a != b}
    assert got == want
    assert any(v[0] == REFUTED for v in got.values()) == expect_refuted, got


# Every leak and near miss with the third environment as a bystander; every leak also with the
# third environment copying the leaky experiment stack (a near miss copied stays one).
IAM_CASES = [
    (leak.name, leak.apply, leak.shared, True, third)
    for leak in iam_cases.LEAKS
    for third in ("bystander", "copies the leak")
] + [
    (f"near miss {f.__name__} ({base})", f, base == "one-account", False, "bystander")
    for f in iam_cases.NEAR_MISSES
    for base in ("two-accounts", "one-account")
]


@pytest.mark.parametrize(
    ("name", "apply", "one_account", "leaks", "third"),
    IAM_CASES,
    ids=[f"{c[4]}-{c[0]}" for c in IAM_CASES],
)
def test_iam_per_environment_and_per_pair_agree(
    name: str,
    apply: Callable[[Stacks], None],
    one_account: bool,
    leaks: bool,
    third: str,
    stacks: Stacks,
    shared: Stacks,
    project: Project,
) -> None:
    base = copy.deepcopy(shared if one_account else stacks)
    if third == "bystander":
        s = net_cases.third(base)
        apply(s)
    else:
        apply(base)
        s = net_cases.third(base)
    assert_iam_agree(s, project, expect_refuted=leaks)


def test_iam_clean_stacks_agree_with_a_third_environment(stacks: Stacks, project: Project) -> None:
    assert_iam_agree(net_cases.third(stacks), project, expect_refuted=False)
    proof = iam_cases.prove(net_cases.third(stacks), project)
    assert {p.status for p in proof.pairs} == {PROVED}


def test_iam_a_leak_into_two_environments_names_both(stacks: Stacks, project: Project) -> None:
    """One principal that reaches two other environments: the question of its environment
    finds both (the first one found leaves the question, which is asked again)."""
    s = net_cases.third(stacks)
    prod = s[m.PROD]
    for sid in ("DenyDataStoresOfOtherEnvironments", "DenyResourcesTaggedForOtherEnvironments"):
        m.drop_statement(iam_cases.boundary(prod), sid)
    for target in (m.EXPERIMENT, X):
        # The leak suite's own leak, with `target` in experiment's place.
        iam_cases.bucket_grant_other_account({m.EXPERIMENT: s[target], m.PROD: prod})
    assert_iam_agree(s, project, expect_refuted=True)
    proof = iam_cases.prove(s, project, controls=False)
    refuted = sorted((p.source, p.target) for p in proof.pairs if p.status == REFUTED)
    assert refuted == [(m.PROD, X), (m.PROD, m.EXPERIMENT)]
    for p in proof.pairs:
        if p.status == REFUTED:
            assert [c.target for c in p.counterexamples] == [f"{p.target}/store-results (Bucket)"]


# -- network -----------------------------------------------------------------------------------


def net_verdicts(stacks: Stacks, per_pair: bool) -> dict[tuple[str, str], tuple[str, bool, str]]:
    return {
        (r.source, r.target): (r.status, r.packet is not None, r.detail)
        for r in prove_network(stacks, per_pair=per_pair)
    }


def over_the_internet(stacks: Stacks) -> Stacks:
    """prod's VPC gets an internet gateway and its database group admits 0.0.0.0/0;
    experiment's application may send anywhere: through its NAT gateway and the internet, a
    packet reaches a public address of an ENI in prod's VPC."""
    out = m.mutated(stacks, m.ingress_from_anywhere, at=m.PROD)
    prod, exp = out[m.PROD], out[m.EXPERIMENT]
    igw = exp.named("igw", "aws:ec2/internetGateway:InternetGateway")
    m.clone(prod, m.vpc(prod), type_=igw.type, name="igw-leak", inputs={"vpcId": m.vpc(prod).id})
    net_cases.app_egress_to(out, m.EXPERIMENT, "0.0.0.0/0")
    return out


def test_the_internet_path_is_a_leak(stacks: Stacks) -> None:
    r = net_cases.results(over_the_internet(stacks))[(m.EXPERIMENT, m.PROD)]
    assert r.status == "refuted", r.detail
    assert any("internet, to a public address" in hop for hop in r.path), r.path
    assert any("(public)" in hop for hop in r.path), r.path


NET_CASES: list[tuple[str, Callable[[Stacks], Stacks], bool]] = [
    (name, build, True) for name, (build, *_rest) in net_cases.LEAKS.items()
] + [(name, (lambda s, name=name: net_cases._half(s, name)), False) for name in net_cases.HALVES]
NET_CASES.append(("over the internet", over_the_internet, True))


@pytest.mark.parametrize(("name", "build", "leaks"), NET_CASES, ids=[c[0] for c in NET_CASES])
@pytest.mark.parametrize("third", ["bystander", "copies the leak"])
def test_network_per_environment_and_per_pair_agree(
    name: str, build: Callable[[Stacks], Stacks], leaks: bool, third: str, stacks: Stacks
) -> None:
    s = build(net_cases.third(stacks)) if third == "bystander" else net_cases.third(build(stacks))
    got, want = net_verdicts(s, per_pair=False), net_verdicts(s, per_pair=True)
    assert set(got) == {(a, b) for a in s for b in s}
    assert got == want
    assert any(v[0] == "refuted" for v in got.values()) == leaks, got


def test_network_shared_ids_and_clean_agree(stacks: Stacks) -> None:
    for s in (net_cases.third(stacks), net_cases.third(stacks, own_ids=False)):
        assert net_verdicts(s, per_pair=False) == net_verdicts(s, per_pair=True)
