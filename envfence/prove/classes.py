"""The second method: split the request space into classes and ask the concrete evaluator.

It shares nothing with the SMT encoding but the reading of the states: requests are built as
plain strings and decided by `envfence.iam.evaluate`, the evaluator that is tested against the
AWS documentation and against PMapper.

Why a finite set of requests can stand for all of them: whether a statement applies depends on
an action only through which of the policies' action patterns it matches, and likewise for
resources and condition values. So two actions that match the same patterns are decided alike
(the same holds for resources and values), and one witness per class suffices. Witnesses are
drawn from the policies themselves: every pattern instantiated with its wildcards empty and
filled, every condition value, a fresh value that matches no literal, and "absent"; each
candidate is kept only if it lands in a class not seen yet. The classes of different keys are
combined (a product), pruned to the action/resource pairs that some Allow statement could match
at all (no Allow, no access, whatever the conditions).

Where the SMT method covers every string by construction, this one covers the classes its
witnesses reach; the two are run on every question and must agree.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

from envfence import iam
from envfence.prove import logic
from envfence.prove.query import (
    PRINCIPAL_TAG,
    RESOURCE_TAG,
    Query,
    Witness,
    action_fits,
    decide,
    fixed_values,
    key_kind,
    resource_tag_values,
    services_for,
    shape_tag_reading,
)
from envfence.prove.smt import ProofError
from envfence.prove.world import ANY, Target, compatible

FRESH = "zzfresh"
MAX_REQUESTS = 400_000


def _statements(policy: iam.Policy) -> list[Mapping[str, Any]]:
    raw = policy.document.get("Statement", [])
    items = raw if isinstance(raw, list) else [raw]
    return [s for s in items if isinstance(s, Mapping)]


def _instances(pattern: str) -> list[str]:
    """A wildcard pattern with its wildcards empty, and filled."""
    out = [pattern.replace("*", "").replace("?", "z"), pattern.replace("*", "zz").replace("?", "z")]
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=1024)
def _action_classes(
    patterns: tuple[str, ...], candidates: tuple[str, ...], distinct: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """One action per class: classes are the sets of patterns an action matches; an action of
    `distinct` (lower-case: it changes what the request carries) is a class of its own."""
    compiled = [iam.wildcard_to_regex(p, True) for p in patterns]

    def signature(a: str) -> tuple[object, ...]:
        own = a.lower() if a.lower() in distinct else None
        return (own, *(rx.fullmatch(a) is not None for rx in compiled))

    return tuple(logic.first_of_each(candidates, signature))


class Search:
    def __init__(self, query: Query) -> None:
        self.q = query
        self.session = query.session()
        self.evaluated = 0
        self.tag_keys: dict[str, list[str]] = {}  # target urn -> resource-tag keys tested

    # -- candidates ---------------------------------------------------------------------------
    def _action_patterns(self) -> list[str]:
        out: list[str] = []
        for policy, _ in self.q.policies():
            for stmt in _statements(policy):
                for element in ("Action", "NotAction"):
                    out += iam._strings(stmt.get(element, []), element)
        return list(dict.fromkeys(out))

    def actions(self) -> list[str]:
        if self.q.action is not None:
            return [self.q.action]
        patterns = self._action_patterns()
        literal = [p for p in patterns if "*" not in p and "?" not in p]
        candidates = literal + [i for p in patterns for i in _instances(p)]
        services = {p.split(":", 1)[0] for p in patterns if ":" in p}
        services |= {svc for t in self.q.targets for svc in services_for(t)}
        candidates += [f"{s}:{FRESH}" for s in sorted(services)] + [f"{FRESH}:{FRESH}"]
        for e in self.q.exemptions:
            candidates += sorted(e.actions)
        # Actions that change how a resource supplies its tags (`query.TAG_SUPPORT`).
        creators = frozenset(
            a
            for t in self.q.targets
            for shape in t.shapes
            for a in shape_tag_reading(self.q.resource_tags, shape)[1]
        )
        candidates += sorted(creators)
        return list(_action_classes(tuple(patterns), tuple(candidates), creators))

    def _resource_patterns(self) -> list[str]:
        out: list[str] = []
        for policy, _ in self.q.policies():
            for stmt in _statements(policy):
                for element in ("Resource", "NotResource"):
                    out += iam._strings(stmt.get(element, []), element)
        return list(dict.fromkeys(out))

    def resources(self, target: Target) -> list[str]:
        patterns = self._resource_patterns()
        fillers = ["example", "", FRESH]
        candidates: list[str] = []
        for shape in target.shapes:
            holes = sum(1 for p in shape if p is ANY)
            if holes == 0:
                candidates.append("".join(p or "" for p in shape))
                continue
            for fill in fillers:
                candidates.append("".join(fill if p is ANY else p for p in shape))
        fixed = fixed_values(self.q, target)
        expanded = []
        for raw in patterns:
            try:
                text = "".join(t for t, _ in iam._expand(raw, fixed, True))
            except iam._Unresolved:
                text = raw
            # A pattern that cannot name this target splits none of its classes.
            if any(compatible(text, shape) for shape in target.shapes):
                expanded.append(text)
        for p in expanded:
            for inst in _instances(p):
                if target.matches(inst):
                    candidates.append(inst)
            # A pattern's literal tail after a wildcard, grafted onto the target's own prefix:
            # reaches patterns such as `...:dbuser:*/analyst` from the prefix `...:dbuser:db-1/`.
            for index, char in enumerate(p):
                if char != "*":
                    continue
                for tail in _instances(p[index + 1 :]):
                    for shape in target.shapes:
                        if shape and shape[-1] is ANY:
                            head = "".join(x or "" for x in shape[:-1])
                            candidates += [head + tail, head + "zz" + tail]
        candidates = [c for c in candidates if target.matches(c)]
        compiled = [iam.wildcard_to_regex(p, False) for p in expanded]
        return logic.first_of_each(
            candidates, lambda r: tuple(rx.fullmatch(r) is not None for rx in compiled)
        )

    def _conditions(self, target: Target) -> list[tuple[iam.ConditionOperator, str, object, bool]]:
        out = []
        for policy in self._policies_for(target):
            substitute = iam._version(policy) == iam.VERSION_2012
            for stmt in _statements(policy):
                for op_name, block in (stmt.get("Condition") or {}).items():
                    op = iam.parse_condition_operator(op_name)
                    for key, raw in block.items():
                        out.append((op, key, raw, substitute))
        return out

    def _policies_for(self, target: Target) -> list[iam.Policy]:
        p = self.q.principal
        out = list(p.identity)
        if p.boundary is not None:
            out.append(p.boundary)
        if target.policy is not None:
            out.append(target.policy)
        return out

    def contexts(self, target: Target) -> list[dict[str, Any]]:
        """Every combination of one witness per class of each caller-controlled key."""
        fixed = fixed_values(self.q, target)
        conditions = self._conditions(target)
        by_key: dict[str, list[tuple[iam.ConditionOperator, str, object, bool]]] = {}
        for cond in conditions:
            lower = cond[1].lower()
            if key_kind(lower, self.q) != "fixed":
                by_key.setdefault(lower, []).append(cond)
        choices: list[list[tuple[str, Any]]] = []
        self.tag_keys[target.urn] = [
            conds[0][1] for lower, conds in by_key.items() if lower.startswith(RESOURCE_TAG)
        ]
        for lower, conds in by_key.items():
            name = conds[0][1]
            multi = any(op.set_operator for op, *_ in conds)
            boolean = any(op.family == "bool" for op, *_ in conds)
            kind = key_kind(lower, self.q)
            values: list[str] = []
            if kind == "resource-tag":
                tag = lower[len(RESOURCE_TAG) :]
                actual = next((v for k, v in target.tags.items() if k.lower() == tag), None)
                values = [actual] if actual is not None else []
            elif boolean:
                values = ["true", "false"]
            else:
                for _op, _key, raw, substitute in conds:
                    for v in iam._policy_values(raw, _op.name, _key):
                        try:
                            text = "".join(t for t, _ in iam._expand(v, fixed, substitute))
                        except iam._Unresolved:
                            text = v
                        values += (
                            _instances(text) if _op.family in ("string_like", "arn") else [text]
                        )
                values.append(FRESH)
            options: list[Any] = [None] + ([[v] for v in values] if multi else values)
            if kind == "principal-tag":
                tag = lower[len(PRINCIPAL_TAG) :]
                if any(k.lower() == tag for k in self.q.principal.tags):
                    options = options[1:]  # session tags override a tag, never remove it

            def signature(
                value: Any, conds: list[Any] = conds, lower: str = lower
            ) -> tuple[bool, ...]:
                ctx = dict(fixed)
                if value is not None:
                    ctx[lower] = value if isinstance(value, list) else [value]
                sig = []
                for op, key, raw, substitute in conds:
                    try:
                        sig.append(iam._key_matches(op, key, raw, ctx, substitute))
                    except iam._Unresolved:
                        sig.append(False)
                return tuple(sig)

            # Both readings of a resource tag stay: which one a request carries depends on its
            # action and resource (`_tags_fit`), not only on the conditions.
            kept = options if kind == "resource-tag" else logic.first_of_each(options, signature)
            choices.append([(name, v) for v in kept])
        combos = []
        for combo in itertools.product(*choices):
            combos.append({name: v for name, v in combo if v is not None})
        return combos or [{}]

    # -- pruning ----------------------------------------------------------------------------
    def _allows(self, target: Target) -> list[tuple[Mapping[str, Any], bool]]:
        """Allow statements that could apply to this principal on this target."""
        p = self.q.principal
        fixed = fixed_values(self.q, target)
        groups: list[tuple[iam.Policy, bool]] = [(pol, False) for pol in p.identity]
        if target.policy is not None:
            groups.append((target.policy, True))
        out = []
        for policy, principaled in groups:
            substitute = iam._version(policy) == iam.VERSION_2012
            for stmt in _statements(policy):
                if stmt.get("Effect") != "Allow":
                    continue
                if principaled and iam.principal_match(stmt, self.session) is None:
                    continue
                if self._fixed_conditions(stmt, fixed, substitute) is False:
                    continue
                out.append((stmt, substitute))
        return out

    def _fixed_conditions(
        self, stmt: Mapping[str, Any], fixed: dict[str, list[str]], substitute: bool
    ) -> bool | None:
        """False when a condition on a key the caller cannot choose fails (the statement never
        applies); True when every condition is on such keys and holds; None otherwise."""
        result: bool | None = True
        for op_name, block in (stmt.get("Condition") or {}).items():
            for key, raw in block.items():
                if key_kind(key, self.q) != "fixed":
                    result = None
                    continue
                try:
                    if not iam.condition_matches({op_name: {key: raw}}, fixed, substitute):
                        return False
                except iam._Unresolved:
                    return False
        return result

    def _unconditional_denies(self, target: Target) -> list[Mapping[str, Any]]:
        """Deny statements without conditions: when one matches, no context can help."""
        p = self.q.principal
        groups: list[tuple[iam.Policy, bool]] = [(pol, False) for pol in p.identity]
        if p.boundary is not None:
            groups.append((p.boundary, False))
        if target.policy is not None:
            groups.append((target.policy, True))
        fixed = fixed_values(self.q, target)
        out = []
        for policy, principaled in groups:
            substitute = iam._version(policy) == iam.VERSION_2012
            for stmt in _statements(policy):
                if stmt.get("Effect") != "Deny":
                    continue
                if self._fixed_conditions(stmt, fixed, substitute) is not True:
                    continue
                if any(
                    "${" in str(v)
                    for v in iam._strings(
                        stmt.get("Resource", stmt.get("NotResource", [])), "Resource"
                    )
                ):
                    continue
                if (
                    principaled
                    and iam.principal_match(stmt, self.session, has_boundary=p.boundary is not None)
                    is None
                ):
                    continue
                out.append(stmt)
        return out

    @staticmethod
    def _resource_hit(
        stmt: Mapping[str, Any], resource: str, fixed: dict[str, list[str]], substitute: bool
    ) -> bool:
        try:
            return iam._resource_part(stmt, resource, fixed, substitute)
        except iam._Unresolved:
            return True  # depends on a caller-controlled value: keep it

    # -- search -----------------------------------------------------------------------------
    def requests(self) -> Iterator[tuple[Target, str, str, dict[str, Any]]]:
        """Requests that some Allow statement matches, conditions aside (no Allow statement,
        no access, whatever the conditions say)."""
        actions = self.actions()
        total = 0
        for target in self.q.targets:
            fixed = fixed_values(self.q, target)
            allows = self._allows(target)
            if not allows:
                continue  # no Allow statement can apply: no request here is allowed
            denies = self._unconditional_denies(target)
            contexts: list[dict[str, Any]] | None = None
            for resource in self.resources(target):
                matching = [s for s, sub in allows if self._resource_hit(s, resource, fixed, sub)]
                if not matching:
                    continue
                blocking = [s for s in denies if iam._resource_part(s, resource, fixed, False)]
                for action in actions:
                    if not action_fits(action, target):
                        continue
                    exempt = self.q.exempt(action, resource, target.stack) is not None
                    if exempt != self.q.only_exempt:
                        continue
                    if not any(iam._action_part(s, action) for s in matching):
                        continue
                    if any(iam._action_part(s, action) for s in blocking):
                        continue
                    if contexts is None:
                        contexts = self.contexts(target)
                    total += len(contexts)
                    if total > MAX_REQUESTS:
                        raise ProofError(
                            f"the class method needs more than {MAX_REQUESTS} requests for "
                            f"{self.q.principal.label}"
                        )
                    for ctx in contexts:
                        if self._tags_fit(ctx, action, target, resource):
                            yield target, action, resource, ctx

    def _tags_fit(self, ctx: Mapping[str, Any], action: str, target: Target, resource: str) -> bool:
        """The context's resource tags (present or absent) are ones this request can carry
        (`query.TAG_SUPPORT`, read in the question's `resource_tags` mode)."""
        for name in self.tag_keys.get(target.urn, ()):
            value = ctx.get(name)
            if isinstance(value, list):  # a set-operator key: one value or none
                value = value[0] if value else None
            tag = name[len(RESOURCE_TAG) :]
            if value not in resource_tag_values(self.q, target, resource, action, tag):
                return False
        return True

    def find(self) -> Witness | None:
        try:
            for target, action, resource, ctx in self.requests():
                self.evaluated += 1
                decision, tags = decide(self.q, target, action, resource, ctx)
                if decision.allowed:
                    return Witness(
                        self.q.principal.arn, action, resource, target, ctx, decision, tags
                    )
        except (iam.Unsupported, ValueError) as exc:
            raise ProofError(str(exc)) from None
        return None


def search(query: Query) -> Witness | None:
    return Search(query).find()
