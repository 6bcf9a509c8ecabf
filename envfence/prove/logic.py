"""Small pieces both SMT encodings share: Boolean folding and first-of-each-kind.

Formulas are built from Python booleans where a part is decided without the solver, and only
the undecided parts become cvc5 terms: constant folding in Python is far cheaper than in cvc5,
and a formula that folds to `False` needs no solver at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cvc5 import Kind
from cvc5 import pythonic as z


def _build(kind: Kind, terms: list[Any]) -> Any:
    # Straight to the term manager: the pythonic layer's argument coercion costs more than
    # building the term itself, and every argument here is already a Boolean term.
    ctx = terms[0].ctx
    return z.BoolRef(ctx.tm.mkTerm(kind, *[t.ast for t in terms]), ctx)


def all_of(terms: Iterable[Any]) -> Any:
    rest = []
    for t in terms:
        if t is False:
            return False
        if t is not True:
            rest.append(t)
    return True if not rest else rest[0] if len(rest) == 1 else _build(Kind.AND, rest)


def any_of(terms: Iterable[Any]) -> Any:
    rest = []
    for t in terms:
        if t is True:
            return True
        if t is not False:
            rest.append(t)
    return False if not rest else rest[0] if len(rest) == 1 else _build(Kind.OR, rest)


def negate(term: Any) -> Any:
    if term is True or term is False:
        return not term
    return _build(Kind.NOT, [term])


def as_term(value: Any) -> Any:
    """A cvc5 Boolean term for a folded value (the solver takes no Python booleans)."""
    return z.BoolVal(value) if isinstance(value, bool) else value


def first_of_each(items: Iterable[Any], key: Callable[[Any], Any]) -> list[Any]:
    """The first item of each distinct `key`, in order."""
    seen: set[Any] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out
