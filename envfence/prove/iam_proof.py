"""The IAM proof: no principal of one environment can touch another environment's data.

For every ordered pair of environments (A, B), A != B:

1. The principals of A are A's roles, closed under role assumption (`sts:AssumeRole` allowed by
   the caller's policies *and* the role's trust policy) and under `iam:PassRole` into a service
   (the service then acts with the passed role's permissions). A chain that reaches a role of B
   counts as A.
2. For each such principal, one question over every data resource of B: is there any action,
   any ARN of those resources, any value of the condition keys the caller controls, that is
   allowed? Declared flows are exempt — and only the reads they declare, on the store they name
   (and the target's key, to decrypt it): anything wider is a counterexample.
3. Each question is answered twice, by the SMT encoding (`envfence.prove.smt`) and by the class
   method (`envfence.prove.classes`); they must agree.

Controls, which must *find* access or the proof is broken, not passed: each environment's
`service`, `pipeline` and `analyst` roles can do their jobs on their own environment's data
(`JOBS`), and each declared flow's role can do what the flow declares.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envfence import iam, naming
from envfence.prove import classes, smt
from envfence.prove.query import Exemption, Query, Witness, role_target, shape_text
from envfence.prove.relevance import ANYONE, Relevance, grantee_keys
from envfence.prove.smt import ProofError
from envfence.prove.world import Role, Target, World, compatible
from envfence.rules import classify
from envfence.rules.policies import READ_ACTIONS
from envfence.rules.providers import aws

PROVED, REFUTED, BROKEN = "proved", "refuted", "broken"

# Encoding controls: what each role of an environment must be able to do to its own data. A
# proof whose encoding loses these is wrong, whatever it says about other environments. The
# worker's (`service`) come from its recorded request contract (`EncodingJob`s built by
# `envfence.prove.controls`); these are the jobs no recorded call covers: processing jobs
# (`pipeline`) and people (`analyst`). Each of them is also decided as a concrete request there.
JOBS: dict[str, tuple[tuple[str, str], ...]] = {
    "pipeline": (
        ("sqs:SendMessage", "queue:ingest"),
        ("s3:GetObject", "store:raw"),
        ("s3:PutObject", "store:curated"),
        ("s3:PutObject", "store:results"),
        ("rds-db:connect", "database"),
    ),
    "analyst": (
        ("s3:GetObject", "store:curated"),
        ("s3:GetObject", "store:results"),
        ("kms:Decrypt", "key"),
        ("rds-db:connect", "database"),
    ),
}
_QUEUE = classify.token(aws.sqs.Queue)
_KEY = classify.token(aws.kms.Key)
_PROFILE = classify.token(aws.appconfig.ConfigurationProfile)
_DATABASES = (classify.token(aws.rds.Instance), classify.token(aws.rds.Cluster))
Solver = Callable[[Query], Witness | None]


@dataclass(frozen=True)
class EncodingJob:
    """One concrete request a role of `stack` really makes (action on resource): the solvers
    must find some allowed request of that action on that resource's target."""

    stack: str
    what: str
    role: str  # role ARN
    action: str
    resource: str


@dataclass(frozen=True)
class Hop:
    role: str  # label stack/name
    via: str  # "start", "sts:AssumeRole" or "iam:PassRole"
    statements: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.via == "start":
            return self.role
        return f"--{self.via} [{', '.join(self.statements)}]--> {self.role}"


@dataclass(frozen=True)
class Counterexample:
    chain: tuple[Hop, ...]
    principal: str
    action: str
    resource: str
    target: str
    target_urn: str
    context: Mapping[str, Any]
    session_tags: Mapping[str, str]
    statements: tuple[str, ...]

    @classmethod
    def of(cls, chain: tuple[Hop, ...], w: Witness) -> Counterexample:
        return cls(
            chain=chain,
            principal=w.principal,
            action=w.action,
            resource=w.resource,
            target=w.target.label,
            target_urn=w.target.urn,
            context=dict(w.context),
            session_tags=dict(w.session_tags),
            statements=tuple(w.statements()),
        )

    def lines(self) -> list[str]:
        chain = " ".join(h.describe() for h in self.chain)
        out = [
            f"principal {self.principal} (via {chain})",
            f"  may {self.action} on {self.resource}",
            f"  target {self.target}",
            f"  context {dict(self.context) or '{}'}"
            + (f", forged session tags {dict(self.session_tags)}" if self.session_tags else ""),
            f"  allowed by {', '.join(self.statements) or '(no statement named)'}",
        ]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": [
                {"role": h.role, "via": h.via, "statements": list(h.statements)} for h in self.chain
            ],
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "target": self.target,
            "targetUrn": self.target_urn,
            "context": dict(self.context),
            "sessionTags": dict(self.session_tags),
            "statements": list(self.statements),
        }


@dataclass
class PairProof:
    source: str
    target: str
    status: str = PROVED
    seconds: float = 0.0
    principals: int = 0
    resources: int = 0
    counterexamples: list[Counterexample] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def counterexamples_of(self, principal: str) -> list[Counterexample]:
        return [c for c in self.counterexamples if c.principal == principal]


@dataclass
class Control:
    stack: str
    what: str
    found: bool
    detail: str = ""


@dataclass
class IamProof:
    pairs: list[PairProof]
    controls: list[Control]
    seconds: float
    notes: list[str] = field(default_factory=list)


class _Both:
    """Ask both methods; they must agree."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.queries = 0

    def __call__(self, query: Query) -> Witness | None:
        self.queries += 1
        try:
            by_smt = smt.solve(query)
        except ProofError as exc:
            raise ProofError(f"SMT: {exc}") from None
        by_classes = classes.search(query)
        if (by_smt is None) != (by_classes is None):
            found = by_smt or by_classes
            assert found is not None
            raise ProofError(
                f"the two methods disagree for {query.principal.label}: "
                f"{'SMT' if by_smt else 'the class method'} found {found.action} on "
                f"{found.resource}, the other found nothing"
            )
        return by_smt if query.readable else by_classes


def trust_keys(role: Role) -> set[str]:
    """Index keys of the principals `role`'s trust policy may name (`relevance.grantee_keys`);
    `*` for anything not read exactly."""
    if role.trust is None:
        return set()
    try:
        statements = [stmt for _, stmt in iam._statements(role.trust)]
    except Exception:  # unreadable: anyone, so `_trust_names` meets it
        return {ANYONE}
    out: set[str] = set()
    for stmt in statements:
        out |= grantee_keys(stmt) or set()
    return out


def _trust_names(role: Role, caller: Role) -> bool:
    if role.trust is None:
        return False
    for _, stmt in iam._statements(role.trust):
        if isinstance(stmt, dict) and stmt.get("Effect") == "Allow":
            try:
                named = iam.principal_match(
                    stmt, caller.principal(), has_boundary=caller.boundary is not None
                )
            except (iam.Unsupported, ValueError):
                return True  # let the proof methods fail closed on it
            if named is not None:
                return True
    return False


def _may_allow(caller: Role, action: str, arn: str) -> bool:
    """Some identity statement of the caller names this action and could name this ARN
    (conditions aside). Without one, no request of that action on that ARN is allowed."""
    for policy in caller.identity:
        for _, stmt in iam._statements(policy):
            if not isinstance(stmt, dict) or stmt.get("Effect") != "Allow":
                continue
            if "Action" in stmt:
                actions = iam._strings(stmt["Action"], "Action")
                if not any(iam.action_matches(a, action) for a in actions):
                    continue
            if "Resource" in stmt:
                patterns = iam._strings(stmt["Resource"], "Resource")
                if not any("${" in p or compatible(p, (arn,)) for p in patterns):
                    continue
            return True
    return False


def _trusts_a_service(role: Role) -> bool:
    if role.trust is None:
        return False
    for _, stmt in iam._statements(role.trust):
        principal = stmt.get("Principal") if isinstance(stmt, dict) else None
        if stmt.get("Effect") == "Allow" and (
            principal == "*" or (isinstance(principal, dict) and "Service" in principal)
        ):
            return True
    return False


def _tag_session_outsiders(role: Role, modelled: set[str]) -> bool:
    """The trust policy lets someone outside the modelled roles tag sessions of this role."""
    if role.trust is None:
        return False
    for _, stmt in iam._statements(role.trust):
        if not isinstance(stmt, dict) or stmt.get("Effect") != "Allow":
            continue
        actions = iam._strings(stmt.get("Action", []), "Action")
        if "NotAction" in stmt or any(iam.action_matches(a, "sts:TagSession") for a in actions):
            principal = stmt.get("Principal", "*")
            if principal == "*" or "NotPrincipal" in stmt:
                return True
            values = principal.get("AWS", []) if isinstance(principal, dict) else []
            values = values if isinstance(values, list) else [values]
            if any(v not in modelled for v in values):
                return True
            if isinstance(principal, dict) and set(principal) - {"AWS"}:
                return True
    return False


class Prover:
    def __init__(self, world: World, project: str, solver: Solver | None = None) -> None:
        self.world = world
        self.project = project
        self.ask = solver or _Both()
        self.forgeable: dict[str, bool] = {}
        self.edges: dict[str, list[tuple[Role, str, tuple[str, ...]]]] = {}
        self.errors: dict[str, list[str]] = {}  # stack -> errors met while reasoning about it
        self._relevance: Relevance | None = None
        self._trust_index: dict[str, list[Role]] | None = None
        self._by_account: dict[str, list[Role]] | None = None

    def setup(self, edges: bool = True) -> None:
        """What every environment's proof reads: which roles' sessions can carry forged tags,
        and (unless `edges` is False: each environment then asks its own, `own_edges`)
        which roles can become which (`closure`)."""
        self._compute_forgeable()
        if edges:
            self._compute_edges()

    def own_edges(self, stack: str) -> list[str]:
        """Ask the edges of every role of `stack`; the errors met (the stack's own, to be
        joined to every pair of the stack: `finalize`)."""
        for role in self.world.roles_of(stack):
            self._edges_of(role)
        return list(self.errors.get(stack, []))

    # -- the principal closure ----------------------------------------------------------------
    def _error(self, stack: str, message: str) -> None:
        self.errors.setdefault(stack, []).append(message)

    def _trusting(self) -> dict[str, list[Role]]:
        """Index key (`relevance.grantee_keys`: `*`, `acct:<id>`, `arn:<ARN>`) -> the roles
        whose trust policy has an Allow statement that may name principals of that key."""
        if self._trust_index is None:
            index: dict[str, list[Role]] = {}
            for role in self.world.roles.values():
                for key in trust_keys(role):
                    index.setdefault(key, []).append(role)
            self._trust_index = index
        return self._trust_index

    def _trusted_by(self, caller: Role) -> list[Role]:
        """Roles whose trust policy may name `caller` (a superset; `_trust_names` decides), in
        the world's order."""
        index = self._trusting()
        found = {
            r.arn: r
            for key in (ANYONE, f"acct:{caller.account}", f"arn:{caller.arn}")
            for r in index.get(key, [])
        }
        return [r for r in self.world.roles.values() if r.arn in found]

    def _callers_of(self, target: Role) -> list[Role]:
        """Roles `target`'s trust policy may name (a superset), in the world's order."""
        keys = trust_keys(target)
        if ANYONE in keys:
            return list(self.world.roles.values())
        return [
            r
            for r in self.world.roles.values()
            if f"acct:{r.account}" in keys or f"arn:{r.arn}" in keys
        ]

    def _compute_forgeable(self) -> None:
        roles = list(self.world.roles.values())
        modelled = {r.arn for r in roles}
        self.forgeable = {r.arn: _tag_session_outsiders(r, modelled) for r in roles}
        changed = True
        while changed:
            changed = False
            for target in roles:
                if self.forgeable[target.arn]:
                    continue
                for caller in self._callers_of(target):
                    if caller.arn == target.arn or not _trust_names(target, caller):
                        continue
                    q = Query(
                        caller,
                        (role_target(target),),
                        action="sts:TagSession",
                        tags_forgeable=self.forgeable[caller.arn],
                    )
                    try:
                        if self.ask(q) is not None:
                            self.forgeable[target.arn] = changed = True
                            break
                    except ProofError as exc:
                        self._error(caller.stack, f"sts:TagSession on {target.label}: {exc}")

    def _compute_edges(self) -> None:
        for caller in self.world.roles.values():
            self._edges_of(caller)

    def _edges_of(self, caller: Role) -> list[tuple[Role, str, tuple[str, ...]]]:
        """The roles `caller` can become (sts:AssumeRole) or hand to a service (iam:PassRole),
        asked once (errors go to the caller's stack)."""
        known = self.edges.get(caller.arn)
        if known is not None:
            return known
        if self._by_account is None:
            self._by_account = {}
            for role in self.world.roles.values():
                self._by_account.setdefault(role.account, []).append(role)
        out: list[tuple[Role, str, tuple[str, ...]]] = []
        # Only roles that may trust the caller (sts:AssumeRole) or that the caller may pass
        # (iam:PassRole: its own account's roles) can be an edge.
        near = {r.arn for r in self._trusted_by(caller)}
        near |= {r.arn for r in self._by_account.get(caller.account, [])}
        for target in self.world.roles.values():
            if target.arn == caller.arn or target.arn not in near:
                continue
            questions: list[tuple[str, Target]] = []
            if _trust_names(target, caller):
                questions.append(("sts:AssumeRole", role_target(target)))
            if (
                target.account == caller.account
                and _trusts_a_service(target)
                and _may_allow(caller, "iam:PassRole", target.arn)
            ):
                # iam:PassRole has no resource policy: the trust policy is not asked.
                passed = dataclasses.replace(role_target(target), policy=None, kind="generic")
                questions.append(("iam:PassRole", passed))
            for action, resource in questions:
                q = Query(
                    caller,
                    (resource,),
                    action=action,
                    tags_forgeable=self.forgeable.get(caller.arn, False),
                )
                try:
                    w = self.ask(q)
                except ProofError as exc:
                    self._error(caller.stack, f"{action} on {target.label}: {exc}")
                    continue
                if w is not None:
                    out.append((target, action, tuple(w.statements())))
                    break
        self.edges[caller.arn] = out
        return out

    def closure(self, stack: str) -> list[tuple[Role, tuple[Hop, ...]]]:
        """Every role a principal of `stack` can act as, with the shortest chain to it."""
        seen: dict[str, tuple[Role, tuple[Hop, ...]]] = {}
        frontier: list[tuple[Role, tuple[Hop, ...]]] = [
            (r, (Hop(r.label, "start"),)) for r in self.world.roles_of(stack)
        ]
        for role, chain in frontier:
            seen[role.arn] = (role, chain)
        while frontier:
            nxt: list[tuple[Role, tuple[Hop, ...]]] = []
            for role, chain in frontier:
                for target, via, stmts in self._edges_of(role):
                    if target.arn not in seen:
                        entry = (target, (*chain, Hop(target.label, via, stmts)))
                        seen[target.arn] = entry
                        nxt.append(entry)
            frontier = nxt
        return list(seen.values())

    # -- flows ------------------------------------------------------------------------------
    def _exemptions(self, principal: Role, source: str, target: str) -> tuple[Exemption, ...]:
        out = []
        for f in self.world.flows:
            if f.source != source or f.target != target or principal.stack != source:
                continue
            if principal.name != naming.role_name(self.project, source, f.role):
                continue
            stores = [
                t
                for t in self.world.targets.get(target, [])
                if t.store == f.store and t.type == "aws:s3/bucket:Bucket"
            ]
            keys = self.world.keys_of(target)
            out.append(
                Exemption(
                    flow=f.describe(),
                    actions=frozenset(a.lower() for a in READ_ACTIONS),
                    targets=tuple(stores + keys),
                    stack=target,
                )
            )
        return tuple(out)

    # -- the proof ----------------------------------------------------------------------------
    def _job_targets(self, stack: str, which: str) -> tuple[Target, ...]:
        """The targets a job names: `store:<name>`, `queue:<purpose>`, `database`, `key`,
        `flags`."""
        targets = self.world.targets.get(stack, [])
        kind, _, name = which.partition(":")
        if kind == "store":
            return tuple(t for t in targets if t.store == name)
        if kind == "queue":
            queue = naming.queue_name(self.project, stack, name)
            return tuple(
                t
                for t in targets
                if t.type == _QUEUE and (t.shapes[0][0] or "").endswith(f":{queue}")
            )
        types = {"database": _DATABASES, "key": (_KEY,), "flags": (_PROFILE,)}[kind]
        return tuple(t for t in targets if t.type in types)

    def _control(self, stack: str, what: str, query: Query) -> Control:
        try:
            w = self.ask(query)
        except ProofError as exc:
            return Control(stack, what, False, str(exc))
        if w is None:
            return Control(stack, what, False, "not allowed")
        return Control(stack, what, True, f"{w.action} on {w.resource}")

    def encoding_controls(self, jobs: Iterable[EncodingJob]) -> list[Control]:
        out = []
        for job in jobs:
            role = self.world.roles.get(job.role)
            target = next(
                (t for t in self.world.targets.get(job.stack, []) if t.matches(job.resource)),
                None,
            )
            if role is None or target is None:
                missing = f"no role {job.role}" if role is None else f"no target {job.resource}"
                out.append(Control(job.stack, job.what, False, missing))
                continue
            q = Query(
                role,
                (target,),
                action=job.action,
                tags_forgeable=self.forgeable.get(role.arn, False),
                resource_tags="realistic",
                readable=False,
            )
            out.append(self._control(job.stack, job.what, q))
        return out

    def controls(self, stacks: Iterable[str] | None = None) -> list[Control]:
        """The job controls of `stacks` (default: all), then the flow controls of the flows
        they are the source of."""
        wanted = list(self.world.stacks if stacks is None else stacks)
        return self.job_controls(wanted) + self.flow_controls(wanted)

    def job_controls(self, stacks: Iterable[str]) -> list[Control]:
        """Each environment's `pipeline` and `analyst` roles can do their jobs (`JOBS`)."""
        wanted = list(stacks)
        out = []
        for stack in wanted:
            for kind, jobs in JOBS.items():
                name = naming.role_name(self.project, stack, kind)
                role = next((r for r in self.world.roles_of(stack) if r.name == name), None)
                for action, which in jobs:
                    targets = self._job_targets(stack, which)
                    if which.startswith("store:") and not targets:
                        continue  # a store this stack does not configure
                    what = f"{stack}/{kind} may {action} on {stack}'s {which}"
                    if role is None or not targets:
                        out.append(Control(stack, what, False, f"no role {name} or no {which}"))
                        continue
                    q = Query(
                        role,
                        targets,
                        action=action,
                        tags_forgeable=self.forgeable.get(role.arn, False),
                        resource_tags="realistic",
                        readable=False,
                    )
                    out.append(self._control(stack, what, q))
        return out

    def flow_controls(self, stacks: Iterable[str]) -> list[Control]:
        """Each declared flow whose source is one of `stacks` is usable by its role."""
        wanted = set(stacks)
        out = []
        for f in self.world.flows:
            if f.source not in wanted:
                continue
            name = naming.role_name(self.project, f.source, f.role)
            role = next((r for r in self.world.roles_of(f.source) if r.name == name), None)
            what = f"declared flow {f.describe()} is usable"
            exemptions = self._exemptions(role, f.source, f.target) if role else ()
            if role is None or not exemptions:
                out.append(Control(f.source, what, False, f"no role {name} or no store {f.store}"))
                continue
            # The store itself must be readable: the target's key alone does not count.
            stores = tuple(
                t for e in exemptions for t in e.targets if t.type == "aws:s3/bucket:Bucket"
            )
            q = Query(
                role,
                stores,
                exemptions=exemptions,
                only_exempt=True,
                tags_forgeable=self.forgeable.get(role.arn, False),
                resource_tags="realistic",
                readable=False,
            )
            out.append(self._control(f.source, what, q))
        return out

    def environment(self, source: str, *, finish: bool = True) -> list[PairProof]:
        """One proof of `source` against everything outside it: per principal of its closure,
        one question over every other environment's data that an Allow statement could reach
        (`relevance.Relevance`). A witness names the environment it reaches; that
        environment's data then leaves the question and it is asked again, until nothing is
        allowed: the result, pair by pair, is what `pair` finds for each other environment
        (a test holds the two to agreement on every leak case)."""
        started = time.perf_counter()
        others = [b for b in self.world.stacks if b != source]
        results = {b: self._pair_result(source, b) for b in others}
        principals = self.closure(source)
        relevance = self.relevance()
        for role, chain in principals:
            exemptions = tuple(e for b in others for e in self._exemptions(role, source, b))
            pending = relevance.outside(role, source)
            while True:
                q = Query(
                    role,
                    tuple(pending),
                    exemptions=exemptions,
                    tags_forgeable=self.forgeable.get(role.arn, False),
                )
                try:
                    w = self.ask(q)
                except ProofError:
                    # Which environment the error is about is not known: ask each on its own,
                    # as `pair` does, so the error (or a witness) lands on the right pairs.
                    done = {b for b, r in results.items() if r.counterexamples_of(role.arn)}
                    for b in others:
                        if b not in done:
                            self._ask_pair(results[b], role, chain)
                    break
                if w is None:
                    break
                hit = w.target.stack
                results[hit].counterexamples.append(Counterexample.of(chain, w))
                pending = [t for t in pending if t.stack != hit]
                if not pending:
                    break
        seconds = time.perf_counter() - started
        out = []
        for b in others:
            r = results[b]
            r.principals = len(principals)
            if finish:
                self._finish(r)
            r.seconds = seconds
            out.append(r)
        return out

    def relevance(self) -> Relevance:
        if self._relevance is None:
            self._relevance = Relevance(self.world)
        return self._relevance

    def _pair_result(self, source: str, target: str) -> PairProof:
        result = PairProof(source, target)
        result.resources = len(self.world.targets.get(target, []))
        result.flows = [
            f.describe() for f in self.world.flows if f.source == source and f.target == target
        ]
        for stack in (source, target):
            for gap in self.world.gaps.get(stack, []):
                result.details.append(f"{stack}: {gap}")
        return result

    def _ask_pair(self, result: PairProof, role: Role, chain: tuple[Hop, ...]) -> None:
        """The question of one principal against one other environment's data (all of it)."""
        q = Query(
            role,
            tuple(self.world.targets.get(result.target, [])),
            exemptions=self._exemptions(role, result.source, result.target),
            tags_forgeable=self.forgeable.get(role.arn, False),
        )
        try:
            w = self.ask(q)
        except ProofError as exc:
            result.details.append(f"{role.label}: {exc}")
            return
        if w is not None:
            result.counterexamples.append(Counterexample.of(chain, w))

    def _finish(self, result: PairProof) -> None:
        finalize(result, self.errors)

    def pair(self, source: str, target: str) -> PairProof:
        """The question of every principal of `source` against `target`'s data: one per pair,
        the way the proof was first run (`environment` is what `prove_iam` runs; tests compare
        the two)."""
        started = time.perf_counter()
        result = self._pair_result(source, target)
        principals = self.closure(source)
        result.principals = len(principals)
        for role, chain in principals:
            self._ask_pair(result, role, chain)
        self._finish(result)
        result.seconds = time.perf_counter() - started
        return result


def finalize(result: PairProof, errors: Mapping[str, list[str]]) -> None:
    """A pair's verdict: broken by what could not be read or asked about either of its
    environments (its details, the errors met asking their roles' edges), else refuted by a
    counterexample, else proved."""
    for stack in (result.source, result.target):
        result.details += [f"{stack}: {e}" for e in errors.get(stack, [])]
    if result.details:
        result.status = BROKEN
    elif result.counterexamples:
        result.status = REFUTED


def prove_iam(
    world: World,
    project: str,
    solver: Solver | None = None,
    *,
    pairs: Iterable[tuple[str, str]] | None = None,
    per_pair: bool = False,
    controls: bool = True,
    encoding_jobs: Iterable[EncodingJob] = (),
) -> IamProof:
    """Prove every environment against everything outside it (`Prover.environment`), or
    only `pairs`, or every pair one by one (`per_pair`: the way the proof first ran, kept
    to hold the two to agreement), with the controls (a result without them can only be
    partial: tests use that to look at one pair)."""
    started = time.perf_counter()
    prover = Prover(world, project, solver)
    prover.setup()
    found = (prover.controls() + prover.encoding_controls(encoding_jobs)) if controls else []
    if pairs is not None or per_pair:
        wanted = (
            list(pairs)
            if pairs is not None
            else [(a, b) for a in world.stacks for b in world.stacks if a != b]
        )
        results = [prover.pair(a, b) for a, b in wanted]
    else:
        results = [r for a in world.stacks for r in prover.environment(a)]
    return finish(world, results, found, time.perf_counter() - started)


def finish(
    world: World, results: list[PairProof], found: list[Control], seconds: float
) -> IamProof:
    """The proof of every pair, each broken while a control of either of its environments
    fails (an encoding that misses what must be allowed proves nothing by finding nothing)."""
    failed: dict[str, list[Control]] = {}
    for c in found:
        if not c.found:
            failed.setdefault(c.stack, []).append(c)
    for p in results:
        broken = failed.get(p.source, []) + failed.get(p.target, [])
        if broken:
            p.status = BROKEN
            p.details += [f"control failed: {c.what} ({c.detail})" for c in broken]
    notes = [f"{r.label}: {n}" for r in world.roles.values() for n in r.notes]
    return IamProof(results, found, seconds, notes)


def describe_shapes(target: Target) -> str:
    return ", ".join(shape_text(s) for s in target.shapes)
