"""The SMT method: a `Query` encoded to strings and regular expressions, decided by cvc5.

As in Zelkova (Backes et al., FMCAD 2018), every statement becomes a formula over string
variables — the action, the resource ARN, and each caller-controlled condition key — with
IAM wildcards as regular expressions; the policies combine the way AWS combines them
(`envfence.iam.evaluate`, "Policy evaluation logic"). One satisfiability check answers "is
there *any* request, among infinitely many, that is allowed?". `sat` comes with a model, which
is turned into a concrete request and confirmed by the concrete evaluator: an allowed request
that the evaluator refuses means the encoding is wrong, and is reported as such. `unknown`, a
timeout, and any construct not encoded here are failures (`ProofError`), never a pass.

Encoded symbolically: String (`StringEquals`, `StringLike` and negations), Arn (each of the six
colon-separated components matched separately), Bool, Null, `...IfExists`, `ForAnyValue`,
`ForAllValues`, policy variables whose key is fixed by the principal or the resource. Conditions
on fixed keys (the principal's ARN, account and tags; the resource account) are decided by the
concrete evaluator's operator code, whatever the operator. Not encoded (fails closed): the
IgnoreCase, Numeric, Date, IpAddress and Binary operators on caller-controlled keys, and policy
variables that refer to caller-controlled keys.

Multivalued keys have a bounded number of slots: one per set-operator condition on the key
(at least one). An allowed request needs at most one value to satisfy each `ForAnyValue`
condition it relies on, and dropping values only helps `ForAllValues` conditions and `Deny`
statements with `ForAnyValue`, so if any value set is allowed, one that fits the slots is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cvc5 import pythonic as z

from envfence import iam
from envfence.iam import PrincipalMatch
from envfence.prove import logic
from envfence.prove.query import (
    ABSENT,
    EITHER,
    RESOURCE_TAG,
    TAG,
    Query,
    Witness,
    action_fits,
    decide,
    fixed_values,
    key_kind,
    services_for,
    shape_tag_reading,
    target_of,
)
from envfence.prove.world import ANY, Shape, Target, compatible, shape_example
from envfence.rules.policies import RESOURCELESS_ACTIONS


class ProofError(Exception):
    """The question could not be decided: an unsupported construct, `unknown`, a timeout, or
    a model the concrete evaluator refuses."""


_or, _and, _not, _term = logic.any_of, logic.all_of, logic.negate, logic.as_term


def _false() -> Any:
    return False


def _true() -> Any:
    return True


@functools.lru_cache(maxsize=1)
def _any_char() -> Any:
    return z.AllChar()


def _nothing() -> Any:
    return z.Intersect(z.Re(z.StringVal("")), z.Re(z.StringVal("x")))


@functools.lru_cache(maxsize=1)
def _non_colon() -> Any:
    return z.Intersect(z.AllChar(), z.Complement(z.Re(z.StringVal(":"))))


def _concat(parts: list[Any]) -> Any:
    if not parts:
        return z.Re(z.StringVal(""))
    return parts[0] if len(parts) == 1 else z.Concat(*parts)


def _pieces_regex(pieces: iam.Pieces, lower: bool = False, colon_free: bool = False) -> Any:
    """IAM wildcard pieces as a regular expression; with `colon_free`, `*` and `?` do not
    match a colon (an ARN component)."""
    return _pieces_regex_cached(pieces, lower, colon_free)


@functools.lru_cache(maxsize=16384)
def _pieces_regex_cached(pieces: iam.Pieces, lower: bool, colon_free: bool) -> Any:
    # Regular expressions hold no variables: one term serves every query of the process.
    char = _non_colon() if colon_free else _any_char()
    parts: list[Any] = []
    literal = ""
    for text, is_pattern in pieces:
        text = text.lower() if lower else text
        if not is_pattern:
            literal += text
            continue
        for c in text:
            if c in "*?":
                if literal:
                    parts.append(z.Re(z.StringVal(literal)))
                    literal = ""
                parts.append(z.Star(char) if c == "*" else char)
            else:
                literal += c
    if literal:
        parts.append(z.Re(z.StringVal(literal)))
    return _concat(parts)


def _shape_regex(shape: Shape) -> Any:
    return _concat([z.Star(_any_char()) if p is ANY else z.Re(z.StringVal(p)) for p in shape])


@dataclass
class _Key:
    name: str  # as first written
    slots: list[tuple[Any, Any]]  # (present, value)
    multi: bool

    def present(self) -> Any:
        return _or([p for p, _ in self.slots])


class Encoder:
    """Encodes one query. Build once, then `check()`."""

    def __init__(self, query: Query, timeout_ms: int = 20000) -> None:
        self.q = query
        self.timeout_ms = timeout_ms
        self.action = z.String("action")
        self.resource = z.String("resource")
        self.keys: dict[str, _Key] = {}
        self.domain: list[Any] = []
        self._cache: dict[Any, dict[PrincipalMatch, list[Any]]] = {}
        self._scan()

    # -- condition keys ---------------------------------------------------------------------
    def _scan(self) -> None:
        """Find every caller-controlled key, how many slots it needs, and its domain."""
        counts: dict[str, int] = {}
        multi: set[str] = set()
        booleans: set[str] = set()
        names: dict[str, str] = {}
        for policy, _ in self.q.policies():
            for stmt in _statement_dicts(policy):
                for op_name, block in (stmt.get("Condition") or {}).items():
                    op = iam.parse_condition_operator(op_name)
                    for key in block:
                        lower = key.lower()
                        names.setdefault(lower, key)
                        if op.set_operator:
                            multi.add(lower)
                            counts[lower] = counts.get(lower, 0) + 1
                        if op.family == "bool":
                            booleans.add(lower)
        for lower, name in names.items():
            kind = key_kind(lower, self.q)
            if kind == "fixed":
                continue
            n = min(max(counts.get(lower, 1), 1), 4) if lower in multi else 1
            slots = [(z.Bool(f"has[{name}]#{i}"), z.String(f"val[{name}]#{i}")) for i in range(n)]
            key = _Key(name, slots, lower in multi)
            self.keys[lower] = key
            for present, value in slots:
                if key.multi:  # an empty value counts as no value for set operators
                    self.domain.append(z.Implies(present, value != z.StringVal("")))
                if lower in booleans:
                    self.domain.append(
                        z.Implies(
                            present,
                            z.Or(value == z.StringVal("true"), value == z.StringVal("false")),
                        )
                    )
            if kind == "resource-tag":
                self._resource_tag_domain(lower, key)
            if kind == "principal-tag":
                tag = lower.split("/", 1)[1]
                if any(k.lower() == tag for k in self.q.principal.tags):
                    self.domain.append(key.present())  # session tags override, never remove

    def _resource_tag_domain(self, lower: str, key: _Key) -> None:
        """aws:ResourceTag/<tag> as the resource's type supplies it (`query.TAG_SUPPORT`), shape
        by shape: the resource's own tag, absent, or either (the class method reads the same
        table through `query.resource_tag_values`)."""
        tag = lower[len(RESOURCE_TAG) :]
        absent = _and([_not(p) for p, _ in key.slots])
        alternatives = []
        for t in self.q.targets:
            actual = next((v for k, v in t.tags.items() if k.lower() == tag), None)
            if actual is None:
                either = exact = absent
            else:
                own = [_or([_not(p), v == z.StringVal(actual)]) for p, v in key.slots]
                either = _and(own)
                exact = _and([*own, key.present()])
            forms = {TAG: exact, ABSENT: absent, EITHER: either}
            per_shape = []
            for shape in t.shapes:
                reading, creators = shape_tag_reading(self.q.resource_tags, shape)
                value = forms[reading]
                if creators and reading != EITHER:
                    # An action that creates the resource acts before its tags exist.
                    creating = self._action_in(creators)
                    value = _or([_and([creating, either]), _and([_not(creating), value])])
                per_shape.append(_and([z.InRe(self.resource, _shape_regex(shape)), value]))
            alternatives.append(_or(per_shape))
        self.domain.append(_or(alternatives))

    def _action_in(self, actions: frozenset[str]) -> Any:
        """The request's action is one of `actions` (lower-case); a fixed action is the action
        variable's only value (`formula`)."""
        return _or([self.action == z.StringVal(a) for a in sorted(actions)])

    # -- statements ---------------------------------------------------------------------------
    def _fixed(self, target: Target) -> dict[str, list[str]]:
        return fixed_values(self.q, target)

    def _expand(self, raw: str, fixed: dict[str, list[str]], substitute: bool) -> iam.Pieces:
        if substitute and "${" in raw:
            for match in iam._VARIABLE.finditer(raw):
                body = match.group(1)
                if body in ("*", "?", "$"):
                    continue
                key = body.split(",", 1)[0].strip().lower()
                if key not in fixed and key_kind(key, self.q) != "fixed":
                    raise ProofError(
                        f"policy variable ${{{body}}} refers to a caller-controlled key"
                    )
        return iam._expand(raw, fixed, substitute)

    def _action_part(self, stmt: Mapping[str, Any]) -> Any:
        if "Action" in stmt:
            patterns, negate = iam._strings(stmt["Action"], "Action"), False
        else:
            patterns, negate = iam._strings(stmt["NotAction"], "NotAction"), True
        if self.q.action is not None:
            hit = any(iam.action_matches(p, self.q.action) for p in patterns)
            return hit != negate
        term = _or([z.InRe(self.action, _pieces_regex(((p, True),), lower=True)) for p in patterns])
        return _not(term) if negate else term

    def _resource_part(
        self, stmt: Mapping[str, Any], fixed: dict[str, list[str]], substitute: bool
    ) -> Any:
        if "Resource" in stmt:
            patterns, negate = iam._strings(stmt["Resource"], "Resource"), False
        elif "NotResource" in stmt:
            patterns, negate = iam._strings(stmt["NotResource"], "NotResource"), True
        else:
            return _true()
        term = _or(
            [
                z.InRe(self.resource, _pieces_regex(self._expand(p, fixed, substitute)))
                for p in patterns
            ]
        )
        return _not(term) if negate else term

    def _condition(
        self, condition: Mapping[str, Any], fixed: dict[str, list[str]], substitute: bool
    ) -> Any:
        terms = []
        for op_name, block in condition.items():
            op = iam.parse_condition_operator(op_name)
            for key, raw in block.items():
                lower = key.lower()
                if lower not in self.keys:
                    terms.append(iam.condition_matches({op_name: {key: raw}}, fixed, substitute))
                else:
                    terms.append(self._free_key(op, self.keys[lower], raw, fixed, substitute))
        return _and(terms)

    def _free_key(
        self,
        op: iam.ConditionOperator,
        key: _Key,
        raw: object,
        fixed: dict[str, list[str]],
        substitute: bool,
    ) -> Any:
        values = iam._policy_values(raw, op.name, key.name)
        present = key.present()
        if op.family == "null":
            wanted = {iam._parse_bool(v) for v in values}
            return _or(
                [
                    _not(present) if "true" in wanted else _false(),
                    present if "false" in wanted else _false(),
                ]
            )
        hit = self._hit_function(op, key, values, fixed, substitute)
        if op.set_operator == "ForAllValues":
            return _and(
                [_or([_not(p), hit(v) if not op.negated else _not(hit(v))]) for p, v in key.slots]
            )
        if op.set_operator == "ForAnyValue":
            return _or(
                [_and([p, hit(v) if not op.negated else _not(hit(v))]) for p, v in key.slots]
            )
        matched = _or([_and([p, hit(v)]) for p, v in key.slots])
        when_present = _not(matched) if op.negated else matched
        when_missing = op.if_exists or op.negated
        return _or([_and([present, when_present]), _and([_not(present), when_missing])])

    def _hit_function(
        self,
        op: iam.ConditionOperator,
        key: _Key,
        values: list[str],
        fixed: dict[str, list[str]],
        substitute: bool,
    ) -> Callable[[Any], Any]:
        family = op.family
        if family == "string":
            texts = ["".join(t for t, _ in self._expand(v, fixed, substitute)) for v in values]
            return lambda var: _or([var == z.StringVal(t) for t in texts])
        if family == "string_like":
            regexes = [_pieces_regex(self._expand(v, fixed, substitute)) for v in values]
            return lambda var: _or([z.InRe(var, rx) for rx in regexes])
        if family == "bool":
            texts = [
                iam._parse_bool("".join(t for t, _ in self._expand(v, fixed, substitute)))
                for v in values
            ]
            return lambda var: _or([var == z.StringVal(t) for t in texts])
        if family == "arn":
            regexes = [self._arn_regex(v, fixed, substitute) for v in values]
            return lambda var: _or([z.InRe(var, rx) for rx in regexes])
        raise ProofError(
            f"condition operator {op.name} on the caller-controlled key {key.name} is not "
            "encoded for the SMT proof"
        )

    def _arn_regex(self, raw: str, fixed: dict[str, list[str]], substitute: bool) -> Any:
        components = iam._split_arn_pattern(raw)
        if len(components) != 6:
            raise ProofError(f"ARN condition value {raw!r} does not have six components")
        parts: list[Any] = []
        for index, component in enumerate(components):
            pieces = self._expand(component, fixed, substitute)
            if index < 5:
                if any(":" in text for text, _ in pieces):
                    return _nothing()  # a component never contains a colon
                parts.append(_pieces_regex(pieces, colon_free=True))
                parts.append(z.Re(z.StringVal(":")))
            else:
                parts.append(_pieces_regex(pieces))
        return _concat(parts)

    def _body(self, stmt: Mapping[str, Any], fixed: dict[str, list[str]], version: str) -> Any:
        substitute = version == iam.VERSION_2012
        try:
            # Cheapest part first: a condition on a fixed key often decides the statement.
            condition = self._condition(stmt.get("Condition") or {}, fixed, substitute)
            if condition is False:
                return False
            action = self._action_part(stmt)
            if action is False:
                return False
            return _and([action, self._resource_part(stmt, fixed, substitute), condition])
        except iam._Unresolved:  # a variable without a value voids the statement
            return _false()

    # -- policies ---------------------------------------------------------------------------
    def _policy_terms(
        self,
        policy: iam.Policy | None,
        effect: str,
        fixed: dict[str, list[str]],
        principaled: bool,
        target: Target,
    ) -> dict[PrincipalMatch, list[Any]]:
        out: dict[PrincipalMatch, list[Any]] = {how: [] for how in PrincipalMatch}
        if policy is None:
            return out
        cache_key = (id(policy), effect, principaled, id(target))
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        self._cache[cache_key] = out
        version, statements = _parsed(policy, principaled)
        session = self.q.session()
        for stmt in statements:
            if stmt["Effect"] != effect or not _may_touch(stmt, target):
                continue
            how = PrincipalMatch.DIRECT
            if principaled:
                named = iam.principal_match(
                    stmt, session, has_boundary=self.q.principal.boundary is not None
                )
                if named is None:
                    continue
                how = named
            out[how].append(self._body(stmt, fixed, version))
        return out

    def _allowed(self, target: Target) -> Any:
        fixed = self._fixed(target)
        p = self.q.principal
        limited = (*p.identity, *([p.boundary] if p.boundary else []))

        def terms(policy: iam.Policy | None, effect: str, principaled: bool) -> Any:
            return self._policy_terms(policy, effect, fixed, principaled, target)

        identity = _or(
            [t for pol in p.identity for t in terms(pol, "Allow", False)[PrincipalMatch.DIRECT]]
        )
        limits = (
            _or(terms(p.boundary, "Allow", False)[PrincipalMatch.DIRECT])
            if p.boundary is not None
            else _true()
        )
        grants = {how: _or(t) for how, t in terms(target.policy, "Allow", True).items()}
        direct, role, account = (
            grants[PrincipalMatch.DIRECT],
            grants[PrincipalMatch.ROLE],
            grants[PrincipalMatch.ACCOUNT],
        )
        if target.account and p.account and target.account != p.account:
            allow = _and([_or([direct, role, account]), identity, limits])
        elif target.kind in ("kms", "trust"):
            allow = _or([direct, _and([role, limits]), _and([account, identity, limits])])
        else:
            allow = _or([direct, _and([_or([identity, role, account]), limits])])
        if allow is False:
            # Nothing allows a request here: the denies need not be built (across environments
            # this is most targets: no statement of the caller's names them, and their policies
            # name none of its principals).
            return False
        deny = [t for pol in limited for t in terms(pol, "Deny", False)[PrincipalMatch.DIRECT]]
        deny += [t for group in terms(target.policy, "Deny", True).values() for t in group]
        return _and([_not(_or(deny)), allow])

    def _in_target(self, target: Target) -> Any:
        return _or([z.InRe(self.resource, _shape_regex(s)) for s in target.shapes])

    def _fits(self, target: Target) -> Any:
        services = services_for(target)
        if self.q.action is not None:
            return action_fits(self.q.action, target)
        prefixes = _or(
            [
                z.InRe(self.action, z.Concat(z.Re(z.StringVal(f"{svc}:")), z.Star(_any_char())))
                for svc in services
            ]
        )
        # Actions that take no resource (Resource "*" only) cannot name this target.
        resourceless = [
            self.action != z.StringVal(a)
            for a in sorted(RESOURCELESS_ACTIONS)
            if a.split(":")[0] in services
        ]
        return _and([prefixes, *resourceless])

    def _exempt(self, stack: str | None = None) -> Any:
        """The request is one a declared flow exempts (on a target of `stack`)."""
        terms = []
        for e in self.q.exemptions:
            if not e.covers(stack):
                continue
            actions = [self.action == z.StringVal(a) for a in sorted(e.actions)]
            terms.append(_and([_or(actions), _or([self._in_target(t) for t in e.targets])]))
        return _or(terms)

    def formula(self) -> Any:
        per_target = []
        gates: dict[str, Any] = {}
        for t in self.q.targets:
            allowed = self._allowed(t)  # first: it is False for most targets of a wide question
            if allowed is False:
                continue
            # A flow exempts requests on its own target stack's resources only.
            if t.stack not in gates:
                exempt = self._exempt(t.stack)
                gates[t.stack] = exempt if self.q.only_exempt else _not(exempt)
            per_target.append(_and([self._in_target(t), self._fits(t), allowed, gates[t.stack]]))
        parts = [_or(per_target), *self.domain]
        if self.q.action is not None:
            # Statements decide a fixed action in Python; the terms that read the action
            # variable (exemptions, resource tags of creating actions) must see that action.
            parts.append(self.action == z.StringVal(self.q.action.lower()))
        return _and(parts)

    # -- solving ------------------------------------------------------------------------------
    def check(self) -> Witness | None:
        """None when no request is allowed (unsat); a confirmed witness otherwise. Any other
        answer (`unknown`, a timeout) is a `ProofError`, never None."""
        try:
            goal = self.formula()
        except (iam.Unsupported, ValueError) as exc:
            raise ProofError(str(exc)) from None
        if goal is False:
            return None
        solver, shared = _solver(self.timeout_ms)
        if not shared:
            return self._decide(solver, goal)
        solver.push()  # this question's own scope: nothing of it outlives it
        try:
            return self._decide(solver, goal)
        finally:
            while solver.num_scopes() > 0:
                solver.pop()

    def _decide(self, solver: Any, goal: Any) -> Witness | None:
        solver.add(_term(goal))
        verdict = solver.check()
        if verdict == z.unsat:
            return None
        _require_sat(solver, verdict)
        if not self.q.readable:
            return self._witness(solver.model())
        # Prefer an action the policies spell out: a counterexample a person recognises.
        literal = sorted(self._literal_actions())
        if self.q.action is None and literal:
            self._prefer(solver, z.Or(*[self.action == z.StringVal(a) for a in literal]))
        # And a resource that reads like one: `example` for an object key or a log stream.
        examples = sorted({shape_example(shape) for t in self.q.targets for shape in t.shapes})
        self._prefer(solver, z.Or(*[self.resource == z.StringVal(e) for e in examples]))
        return self._witness(solver.model())

    @staticmethod
    def _prefer(solver: Any, wish: Any) -> None:
        """Keep `wish` if the goal allows it; either way the solver ends with a model (`sat`),
        or the question fails: a model read after `unknown` is no witness."""
        solver.push()
        solver.add(wish)
        verdict = solver.check()
        if verdict == z.sat:
            return
        solver.pop()
        _require_sat(solver, solver.check())

    def _literal_actions(self) -> dict[str, str]:
        """Actions the policies spell out, lower-case -> as written."""
        out: dict[str, str] = {}
        for policy, _ in self.q.policies():
            for stmt in _statement_dicts(policy):
                for a in iam._strings(stmt.get("Action", []), "Action"):
                    if "*" not in a and "?" not in a:
                        out.setdefault(a.lower(), a)
        return out

    def _witness(self, model: Any) -> Witness:
        action = self.q.action or _string(model, self.action)
        action = self._literal_actions().get(action, action)  # as a policy spells it
        resource = _string(model, self.resource)
        context: dict[str, Any] = {}
        for key in self.keys.values():
            values = [
                _string(model, v)
                for p, v in key.slots
                if z.is_true(model.eval(p, model_completion=True))
            ]
            if values:
                context[key.name] = values if key.multi else values[0]
        target = target_of(self.q, resource)
        if target is None:
            raise ProofError(f"the solver's resource {resource!r} is in no target")
        decision, tags = decide(self.q, target, action, resource, context)
        if not decision.allowed:
            raise ProofError(
                "the SMT encoding and the concrete evaluator disagree: the solver allows "
                f"{action} on {resource} with {context}, the evaluator says {decision.reason}"
            )
        return Witness(self.q.principal.arn, action, resource, target, context, decision, tags)


_PARSED: dict[tuple[int, bool], tuple[iam.Policy, str, list[Mapping[str, Any]]]] = {}


def _parsed(policy: iam.Policy, principaled: bool) -> tuple[str, list[Mapping[str, Any]]]:
    """Version and validated statements of a policy, once per policy object (the entry keeps
    the policy alive, so its id cannot be reused while cached)."""
    key = (id(policy), principaled)
    hit = _PARSED.get(key)
    if hit is None or hit[0] is not policy:
        if len(_PARSED) > 4096:
            _PARSED.clear()
        statements = [stmt for _, stmt in iam._statements(policy)]
        for stmt in statements:
            iam._validate_statement(stmt, principaled)
        hit = _PARSED[key] = (policy, iam._version(policy), statements)
    return hit[1], hit[2]


def _may_touch(stmt: Mapping[str, Any], target: Target) -> bool:
    """False only when no resource pattern of the statement can name the target: the
    statement is then left out of the target's formula (it could never match)."""
    if "Resource" not in stmt:
        return True
    patterns = iam._strings(stmt["Resource"], "Resource")
    return any("${" in p or any(compatible(p, shape) for shape in target.shapes) for p in patterns)


def _string(model: Any, var: Any) -> str:
    value = model.eval(var, model_completion=True)
    text = value.as_string() if hasattr(value, "as_string") else str(value).strip('"')
    return str(text)


def _statement_dicts(policy: iam.Policy) -> list[Mapping[str, Any]]:
    raw = policy.document.get("Statement", [])
    items = raw if isinstance(raw, list) else [raw]
    return [s for s in items if isinstance(s, Mapping)]


def _new_solver(timeout_ms: int) -> Any:
    solver = z.SolverFor("QF_SLIA")
    solver.set("tlimit-per", timeout_ms)
    return solver


_CVC5_SOLVER = _new_solver
_SHARED: dict[int, Any] = {}


def _solver(timeout_ms: int) -> tuple[Any, bool]:
    """The solver for a question, and whether it is shared. One cvc5 solver per process and
    time limit serves every question, each in its own scope (`push` ... `pop` back to none):
    creating and destroying a solver cost as much as deciding a small question. A replaced
    `_new_solver` (a test's stand-in) gets a new solver per question, as it always did."""
    if _new_solver is not _CVC5_SOLVER:
        return _new_solver(timeout_ms), False
    solver = _SHARED.get(timeout_ms)
    if solver is None:
        solver = _SHARED[timeout_ms] = _new_solver(timeout_ms)
    return solver, True


def _require_sat(solver: Any, verdict: Any) -> None:
    if verdict != z.sat:
        raise ProofError(f"cvc5 answered {verdict} ({solver.reason_unknown()})")


def solve(query: Query, timeout_ms: int = 20000) -> Witness | None:
    try:
        encoder = Encoder(query, timeout_ms)
    except (iam.Unsupported, ValueError) as exc:
        raise ProofError(str(exc)) from None
    return encoder.check()
