"""AWS AppConfig multi-variant feature flags: the variant rule language, evaluated locally.

`parse(rule)` turns a rule into an immutable `Expr` (raising `RuleError`), `evaluate(expr,
context, flag=...)` says whether it matches a context, and `select_variant(variants, context,
flag=...)` picks the variant of a flag's `_variants` list that AppConfig would return. Pure: no
I/O, no clock, only the standard library.

The language, as documented in "Defining rules for multi-variant feature flags"
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-rules-operators.html):

* A rule is an s-expression `(operator operand ...)`; whitespace and newlines between tokens are
  free. "A variant rule expression must produce either a "true" or "false" to be valid."
* Operands: strings in double quotes; 64-bit integers (`-7`, `42`); floats (`3.14`,
  `1.234e-5`); booleans `true`/`false`; timestamps, unquoted, in the W3C note's formats
  (https://www.w3.org/TR/NOTE-datetime: `2012-03-04T05:06:07-08:00`, `2024-01`); context values
  `$key`; and lists of constants `["123", "456"]` (only shown in the `in` example).
* Comparison: `eq gt gte lt lte` ("a context value" against "a given value"). Logical: `and or
  not`. Custom: `begins_with ends_with contains in`, and, with `name::value` arguments in any
  order, `matches in::$x pattern::"re"`, `exists key::"name"` and
  `split by::$key pct::N seed::"s"` (seed optional).

Variant selection, documented in "Understanding multi-variant feature flag rules"
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-rules.html)
and the concepts page
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-concepts.html):
variants are tried in order, the first whose rule matches is returned, and the default variant,
which "must be last ... and it can't have rules", is returned when none does. A variant's
`enabled` is what the flag returns, not a condition of selection (the documented default variant
is disabled and is still returned). A rule is at most 16384 characters (`"maxLength": 16384` in
the schema, https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-type-reference-feature-flags.html).

What AWS leaves undocumented and this module decides (each marked "ours"):

* Missing context keys. Documented: only the outcome, "without caller context (which returns the
  Default variant)"
  (https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-integration-retrieving-feature-flags.html)
  and "If the context doesn't include an account ID ... AWS AppConfig returns ... the Default".
  Ours: an operator that reads a key absent from the context makes the WHOLE rule not match, not
  just its own subexpression, so `(not (eq $x "a"))` without `$x` is false: a record without the
  attribute is never targeted by a rule about that attribute. Every operand of `and`/`or` is
  evaluated (no short-circuit), so the result never depends on operand order; as a consequence
  `(or (eq $a "x") (eq $b "y"))` does not match a context that lacks `a`, whatever `b` is (write
  two variants instead). `exists` is the exception: it only tests presence, so
  `(not (exists key::"x"))` matches a context without `x`.
* Types (ours). The literal decides the type and the context value is converted to it; a value
  that cannot be converted makes the whole rule not match, like a missing key (never an
  exception at evaluation time). Numeric literals: context numbers as they are, context strings
  that are numbers in the rule language's own syntax (`65`, `-7`, `3.14`, `1.234e-5`) as those
  numbers. Boolean literals: context booleans, and the strings `"true"` and `"false"`, because
  the Agent's `Context` header carries only strings
  (https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-code-samples-agent-read-feature-flag-with-variants.html).
  String literals (and `begins_with ends_with contains matches`): context strings only.
  Timestamp literals: context strings in a W3C format (here a bare year `2024` is allowed too).
  `gt gte lt lte` order numbers, timestamps and strings (by code point); ordering booleans is a
  `RuleError`.
* Timestamps (ours): compared as points in time; a reduced precision form such as `2024-01` or
  `2024-01-15` stands for its first instant in UTC (the W3C note gives date-only forms no time
  zone); fractions of a second beyond microseconds are dropped. In a rule, a bare year `2024` is
  the integer 2024 (the two cannot be told apart).
* `and`/`or` take one or more operands (AWS says "both operands"; pulumi-aws's generated example
  uses a single-operand `or`); `not` takes exactly one. Their operands must be expressions.
  `eq ... lte` take a context value then a constant; `in` takes a context value then a non-empty
  list of constants of one type (strings, numbers or booleans).
* `matches` (ours): Python's `re.search`, unanchored; AWS does not document the regex dialect.
  Patterns are compiled when the rule is parsed, so an invalid pattern is a `RuleError`. Rules
  are trusted configuration: nothing guards against a pattern with catastrophic backtracking.
* Strings: `\\"` and `\\\\` are the only escapes (ours; AWS documents none); any other backslash
  is a `RuleError`, so a regex's `\\d` is written `\\\\d` in the rule text.
* `split` (ours, except its documented properties). `pct` is a number from 0 to 100 with at most
  two decimal places. AWS documents only "a consistent hash of the provided context value", not
  the hash, so ours is `split_bucket`: sha256 of the seed (or `"flag:" + flag` without one), a NUL
  and the value; its first 8 bytes, big-endian, modulo 10000. The rule matches iff
  `bucket < pct * 100`. This gives the documented properties: with the same seed, or none within
  a flag, thresholds nest (every value matched by `pct::20` is matched by `pct::25`), a seed splits
  identically across flags, and different seeds split independently. It cannot reproduce AWS's
  own assignment. Context numbers are hashed as `str(value)`, booleans as `"true"`/`"false"`.
* Parse errors (ours; AWS documents no rule syntax errors): unbalanced parentheses, unknown
  operators, wrong arity or operand types, unknown, duplicate or missing named arguments, a
  top-level rule that is not an `(operator ...)` expression, an invalid regex, trailing text, a
  rule over 16384 characters, and nesting deeper than `MAX_DEPTH`. Messages give the position
  (a 0-based character offset) and the token.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeAlias

MAX_RULE_LENGTH = 16384  # the variant schema's "maxLength" of `rule`
MAX_DEPTH = 100  # nested expressions; ours, so that evaluation never hits the recursion limit
BUCKETS = 10000  # split buckets: pct has a resolution of 0.01
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Context: TypeAlias = Mapping[str, str | int | float | bool]
Constant: TypeAlias = str | bool | int | float | dt.datetime


class RuleError(ValueError):
    """A rule that cannot be parsed or is ill-typed, or an ill-formed `_variants` list."""


# --- the parsed form -----------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    """`(op $key value)` for op in eq gt gte lt lte."""

    op: str
    key: str
    value: Constant


@dataclass(frozen=True)
class StringTest:
    """`(op $key "text")` for op in begins_with ends_with contains."""

    op: str
    key: str
    text: str


@dataclass(frozen=True)
class In:
    """`(in $key [c1, c2, ...])`: constants of one type."""

    key: str
    values: tuple[Constant, ...]


@dataclass(frozen=True)
class Matches:
    """`(matches in::$key pattern::"regex")`, searched with `re.search`."""

    key: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Exists:
    """`(exists key::"name")`: the context has the key."""

    key: str


@dataclass(frozen=True)
class Split:
    """`(split by::$key pct::N seed::"s")`; `threshold` is pct in hundredths (0..10000)."""

    key: str
    threshold: int
    seed: str | None


@dataclass(frozen=True)
class And:
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    operand: Expr


Expr: TypeAlias = Compare | StringTest | In | Matches | Exists | Split | And | Or | Not


# --- tokens --------------------------------------------------------------------------------

_SCAN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<punct>[()\[\],])
  | (?P<named>[A-Za-z_][A-Za-z0-9_]*::)
  | (?P<word>[^\s()\[\],"]+)
    """,
    re.VERBOSE,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTEXT = re.compile(r"\$([A-Za-z0-9_.-]+)")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)")
_TIMESTAMP = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<mo>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]+))?)?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2}))?)?)?"
)


@dataclass(frozen=True)
class _Token:
    kind: str  # ( ) [ ] , string named name context bool int float timestamp
    text: str
    pos: int
    value: Any = None


def _error(message: str, pos: int) -> RuleError:
    return RuleError(f"{message} (at position {pos})")


def _tokens(rule: str) -> Iterator[_Token]:
    pos = 0
    while pos < len(rule):
        if rule[pos] == '"':
            token = _string(rule, pos)
            yield token
            pos += len(token.text)
            continue
        m = _SCAN.match(rule, pos)
        assert m is not None  # every character starts one of the alternatives
        text = m.group()
        if m.lastgroup == "punct":
            yield _Token(text, text, pos)
        elif m.lastgroup == "named":
            yield _Token("named", text, pos, text[:-2])
        elif m.lastgroup == "word":
            yield _word(text, pos)
        pos = m.end()


def _string(rule: str, start: int) -> _Token:
    out: list[str] = []
    pos = start + 1
    while pos < len(rule):
        char = rule[pos]
        if char == '"':
            return _Token("string", rule[start : pos + 1], start, "".join(out))
        if char == "\\":
            escaped = rule[pos + 1 : pos + 2]
            if escaped not in ('"', "\\"):
                raise _error(
                    f"unknown escape '\\{escaped}' in a string: only \\\" and \\\\ are escapes",
                    pos,
                )
            out.append(escaped)
            pos += 2
        else:
            out.append(char)
            pos += 1
    raise _error("unterminated string", start)


def _word(text: str, pos: int) -> _Token:
    if text in ("true", "false"):
        return _Token("bool", text, pos, text == "true")
    if m := _CONTEXT.fullmatch(text):
        return _Token("context", text, pos, m.group(1))
    if _INT.fullmatch(text):
        value = int(text)
        if not INT64_MIN <= value <= INT64_MAX:
            raise _error(f"integer {text} is outside the 64-bit range", pos)
        return _Token("int", text, pos, value)
    if _FLOAT.fullmatch(text):
        number = float(text)
        if number in (float("inf"), float("-inf")):
            raise _error(f"float {text} is out of range", pos)
        return _Token("float", text, pos, number)
    if _TIMESTAMP.fullmatch(text):
        stamp = _timestamp(text, bare_year=False)
        if stamp is None:
            raise _error(f"invalid timestamp {text!r}", pos)
        return _Token("timestamp", text, pos, stamp)
    if _NAME.fullmatch(text):
        return _Token("name", text, pos)
    raise _error(f"unrecognised token {text!r}", pos)


def _timestamp(text: str, *, bare_year: bool) -> dt.datetime | None:
    """A W3C datetime (https://www.w3.org/TR/NOTE-datetime) as an aware datetime, or None."""
    m = _TIMESTAMP.fullmatch(text)
    if m is None or (m["mo"] is None and not bare_year):
        return None
    try:
        tz = dt.UTC
        if m["tz"] not in (None, "Z"):
            sign = -1 if m["tz"][0] == "-" else 1
            hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
            if minutes >= 60:
                return None
            tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
        return dt.datetime(
            int(m["y"]),
            int(m["mo"] or 1),
            int(m["d"] or 1),
            int(m["h"] or 0),
            int(m["mi"] or 0),
            int(m["s"] or 0),
            int((m["f"] or "")[:6].ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:  # month 13, hour 25, offset of 24 hours...
        return None


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ListArg:
    values: tuple[Constant, ...]
    pos: int


@dataclass(frozen=True)
class _ExprArg:
    expr: Expr
    pos: int


_Arg: TypeAlias = _Token | _ListArg | _ExprArg

_CONSTANT_KINDS = ("string", "int", "float", "bool", "timestamp")
_COMPARISONS = ("eq", "gt", "gte", "lt", "lte")
_STRING_TESTS = ("begins_with", "ends_with", "contains")
_NAMED_ARGS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {  # required, optional
    "matches": (frozenset({"in", "pattern"}), frozenset()),
    "exists": (frozenset({"key"}), frozenset()),
    "split": (frozenset({"by", "pct"}), frozenset({"seed"})),
}
_OPERATORS = frozenset({"and", "or", "not", "in", *_COMPARISONS, *_STRING_TESTS, *_NAMED_ARGS})


def parse(rule: str) -> Expr:
    """The parsed form of `rule`. Raises RuleError naming the position and token at fault."""
    if not isinstance(rule, str):
        raise RuleError(f"a rule is a string, got {type(rule).__name__}")
    return _parse(rule)


@functools.lru_cache(maxsize=1024)
def _parse(rule: str) -> Expr:
    # Expr is immutable, so the same rule text may share one parsed form
    if len(rule) > MAX_RULE_LENGTH:
        raise RuleError(f"a rule is at most {MAX_RULE_LENGTH} characters, got {len(rule)}")
    parser = _Parser(list(_tokens(rule)))
    first = parser.peek()
    if first is None:
        raise RuleError('empty rule: expected an expression such as (eq $key "value")')
    if first.kind != "(":
        raise _error(
            f"a rule must be an expression '(operator ...)' producing true or false, "
            f"got {first.text!r}",
            first.pos,
        )
    expr = parser.expression(depth=1)
    extra = parser.peek()
    if extra is not None:
        if extra.kind == ")":
            raise _error("unbalanced parentheses: ')' after the end of the rule", extra.pos)
        raise _error(f"trailing text after the rule: {extra.text!r}", extra.pos)
    return expr


class _Parser:
    def __init__(self, tokens: list[_Token]):
        self.tokens = tokens
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expression(self, depth: int) -> Expr:
        """`( operator args... )`; the current token is the '('."""
        opening = self.take()
        if depth > MAX_DEPTH:
            raise _error(f"expressions nested deeper than {MAX_DEPTH}", opening.pos)
        op = self.peek()
        if op is None:
            raise _error("unbalanced parentheses: '(' is not closed", opening.pos)
        if op.kind != "name":
            raise _error(f"expected an operator after '(', got {op.text!r}", op.pos)
        if op.text not in _OPERATORS:
            raise _error(f"unknown operator {op.text!r}", op.pos)
        self.take()
        positional: list[_Arg] = []
        named: dict[str, _Arg] = {}
        while True:
            token = self.peek()
            if token is None:
                raise _error("unbalanced parentheses: '(' is not closed", opening.pos)
            if token.kind == ")":
                self.take()
                break
            if token.kind == "named":
                self.take()
                if token.value in named:
                    raise _error(f"duplicate argument {token.text!r}", token.pos)
                value = self.peek()
                if value is None or value.kind == ")":
                    raise _error(f"argument {token.text!r} has no value", token.pos)
                named[token.value] = self.operand(depth)
            else:
                positional.append(self.operand(depth))
        return _build(op, positional, named)

    def operand(self, depth: int) -> _Arg:
        """An expression, a list or an atom; the current token is its first."""
        token = self.tokens[self.index]
        if token.kind == "(":
            return _ExprArg(self.expression(depth + 1), token.pos)
        if token.kind == "[":
            return self.list_()
        if token.kind in (*_CONSTANT_KINDS, "context"):
            return self.take()
        raise _error(f"unexpected {token.text!r}", token.pos)

    def list_(self) -> _ListArg:
        opening = self.take()
        values: list[Constant] = []
        while True:
            token = self.peek()
            if token is None:
                raise _error("unbalanced brackets: '[' is not closed", opening.pos)
            if token.kind == "]" and not values:
                self.take()
                break
            if token.kind not in ("string", "int", "float", "bool"):
                raise _error(f"a list holds constants, got {token.text!r}", token.pos)
            values.append(self.take().value)
            separator = self.peek()
            if separator is not None and separator.kind == "]":
                self.take()
                break
            if separator is None or separator.kind != ",":
                where = separator.pos if separator else opening.pos
                got = repr(separator.text) if separator else "the end of the rule"
                raise _error(f"expected ',' or ']' in a list, got {got}", where)
            self.take()
        return _ListArg(tuple(values), opening.pos)


def _describe(arg: _Arg) -> str:
    if isinstance(arg, _ExprArg):
        return "an expression"
    if isinstance(arg, _ListArg):
        return "a list"
    return repr(arg.text)


def _build(op: _Token, positional: list[_Arg], named: dict[str, _Arg]) -> Expr:
    name = op.text
    if name in _NAMED_ARGS:
        required, optional = _NAMED_ARGS[name]
        if positional:
            raise _error(
                f"'{name}' takes only named arguments ({', '.join(sorted(required | optional))}), "
                f"got {_describe(positional[0])}",
                positional[0].pos,
            )
        for arg_name in named:
            if arg_name not in required | optional:
                raise _error(
                    f"'{name}' has no argument '{arg_name}::' "
                    f"(it takes {', '.join(sorted(required | optional))})",
                    named[arg_name].pos,
                )
        missing = sorted(required - named.keys())
        if missing:
            raise _error(f"'{name}' needs the argument '{missing[0]}::'", op.pos)
        if name == "matches":
            return _matches(named)
        if name == "exists":
            return Exists(_want_string(named["key"], "key::"))
        return _split(named)

    if named:
        arg_name = next(iter(named))
        raise _error(f"'{name}' takes no named arguments, got '{arg_name}::'", named[arg_name].pos)
    if name in ("and", "or"):
        if not positional:
            raise _error(f"'{name}' takes at least 1 operand, got 0", op.pos)
        operands = tuple(_want_expr(arg, name) for arg in positional)
        return And(operands) if name == "and" else Or(operands)
    if name == "not":
        _arity(op, positional, 1)
        return Not(_want_expr(positional[0], name))
    _arity(op, positional, 2)
    key = _want_context(positional[0], f"the first operand of '{name}'")
    second = positional[1]
    if name in _COMPARISONS:
        if not isinstance(second, _Token) or second.kind not in _CONSTANT_KINDS:
            raise _error(
                f"the second operand of '{name}' must be a constant, got {_describe(second)}",
                second.pos,
            )
        if name != "eq" and second.kind == "bool":
            raise _error(f"'{name}' cannot order booleans: {second.text}", second.pos)
        return Compare(name, key, second.value)
    if name in _STRING_TESTS:
        return StringTest(name, key, _want_string(second, f"the second operand of '{name}'"))
    # in
    if not isinstance(second, _ListArg):
        raise _error(
            f"the second operand of 'in' must be a list, got {_describe(second)}", second.pos
        )
    if not second.values:
        raise _error("the list of 'in' is empty", second.pos)
    kinds = {_family(v) for v in second.values}
    if len(kinds) > 1:
        raise _error(f"the list of 'in' mixes {' and '.join(sorted(kinds))}", second.pos)
    return In(key, second.values)


def _arity(op: _Token, args: list[_Arg], count: int) -> None:
    if len(args) != count:
        plural = "operand" if count == 1 else "operands"
        raise _error(f"'{op.text}' takes {count} {plural}, got {len(args)}", op.pos)


def _want_expr(arg: _Arg, op: str) -> Expr:
    if not isinstance(arg, _ExprArg):
        raise _error(
            f"the operands of '{op}' must be expressions '(operator ...)', got {_describe(arg)}",
            arg.pos,
        )
    return arg.expr


def _want_context(arg: _Arg, what: str) -> str:
    if not isinstance(arg, _Token) or arg.kind != "context":
        raise _error(f"{what} must be a context value such as $key, got {_describe(arg)}", arg.pos)
    key: str = arg.value
    return key


def _want_string(arg: _Arg, what: str) -> str:
    if not isinstance(arg, _Token) or arg.kind != "string":
        raise _error(f"{what} must be a string, got {_describe(arg)}", arg.pos)
    text: str = arg.value
    return text


def _family(value: Constant) -> str:
    if isinstance(value, bool):
        return "booleans"
    if isinstance(value, int | float):
        return "numbers"
    return "strings"


def _matches(named: dict[str, _Arg]) -> Matches:
    key = _want_context(named["in"], "in::")
    source = _want_string(named["pattern"], "pattern::")
    try:
        pattern = re.compile(source)
    except re.error as exc:
        raise _error(f"invalid regex {source!r}: {exc}", named["pattern"].pos) from None
    return Matches(key, pattern)


def _split(named: dict[str, _Arg]) -> Split:
    key = _want_context(named["by"], "by::")
    pct = named["pct"]
    if not isinstance(pct, _Token) or pct.kind not in ("int", "float"):
        raise _error(f"pct:: must be a number from 0 to 100, got {_describe(pct)}", pct.pos)
    try:
        hundredths = Decimal(pct.text) * 100
        exact = hundredths == hundredths.to_integral_value()
    except ArithmeticError:  # decimal's InvalidOperation, Overflow
        exact = False
    if not exact or not 0 <= hundredths <= BUCKETS:
        raise _error(
            f"pct:: must be from 0 to 100 with at most 2 decimal places, got {pct.text}", pct.pos
        )
    seed = _want_string(named["seed"], "seed::") if "seed" in named else None
    return Split(key, int(hundredths), seed)


# --- evaluation ----------------------------------------------------------------------------


class _NoMatch(Exception):
    """A key the rule reads is missing, or its value has the wrong type: the rule is false."""


_ORDER: Mapping[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_STRING_OPS: Mapping[str, Callable[[str, str], bool]] = {
    "begins_with": str.startswith,
    "ends_with": str.endswith,
    "contains": operator.contains,
}


def evaluate(expr: Expr, context: Context, *, flag: str) -> bool:
    """Whether `expr` matches `context`; `flag` keys `split` when it has no seed.

    False, not an error, when the rule reads a missing key or a value of the wrong type.
    """
    try:
        return _eval(expr, context, flag)
    except _NoMatch:
        return False


def _eval(expr: Expr, context: Context, flag: str) -> bool:
    result: bool = _EVALUATORS[type(expr)](expr, context, flag)
    return result


def _lookup(context: Context, key: str) -> object:
    if key not in context:
        raise _NoMatch
    return context[key]


def _eval_and(expr: And, context: Context, flag: str) -> bool:
    return all([_eval(e, context, flag) for e in expr.operands])  # no short-circuit


def _eval_or(expr: Or, context: Context, flag: str) -> bool:
    return any([_eval(e, context, flag) for e in expr.operands])  # no short-circuit


def _eval_not(expr: Not, context: Context, flag: str) -> bool:
    return not _eval(expr.operand, context, flag)


def _eval_exists(expr: Exists, context: Context, flag: str) -> bool:
    return expr.key in context


def _eval_compare(expr: Compare, context: Context, flag: str) -> bool:
    return _ORDER[expr.op](_coerce(_lookup(context, expr.key), expr.value), expr.value)


def _eval_string_test(expr: StringTest, context: Context, flag: str) -> bool:
    return _STRING_OPS[expr.op](_coerce(_lookup(context, expr.key), expr.text), expr.text)


def _eval_in(expr: In, context: Context, flag: str) -> bool:
    value = _coerce(_lookup(context, expr.key), expr.values[0])
    return any(value == v for v in expr.values)


def _eval_matches(expr: Matches, context: Context, flag: str) -> bool:
    return expr.pattern.search(_coerce(_lookup(context, expr.key), "")) is not None


def _eval_split(expr: Split, context: Context, flag: str) -> bool:
    value = _split_text(_lookup(context, expr.key))
    return split_bucket(value, flag=flag, seed=expr.seed) < expr.threshold


_EVALUATORS: Mapping[type, Callable[[Any, Context, str], bool]] = {
    And: _eval_and,
    Or: _eval_or,
    Not: _eval_not,
    Exists: _eval_exists,
    Compare: _eval_compare,
    StringTest: _eval_string_test,
    In: _eval_in,
    Matches: _eval_matches,
    Split: _eval_split,
}


def _coerce(actual: object, like: Constant) -> Any:
    """`actual` as a value of the type of the literal `like`; _NoMatch if it is not one."""
    if isinstance(like, bool):
        if isinstance(actual, bool):
            return actual
        if actual in ("true", "false"):
            return actual == "true"
    elif isinstance(like, int | float):
        if isinstance(actual, int | float) and not isinstance(actual, bool):
            return actual
        if isinstance(actual, str) and _INT.fullmatch(actual):
            return int(actual)
        if isinstance(actual, str) and _FLOAT.fullmatch(actual):
            return float(actual)
    elif isinstance(like, str):
        if isinstance(actual, str):
            return actual
    else:  # a timestamp
        stamp = _timestamp(actual, bare_year=True) if isinstance(actual, str) else None
        if stamp is not None:
            return stamp
    raise _NoMatch


def _split_text(actual: object) -> str:
    if isinstance(actual, bool):
        return "true" if actual else "false"
    if isinstance(actual, str | int | float):
        return str(actual)
    raise _NoMatch


def split_bucket(value: str, *, flag: str, seed: str | None) -> int:
    """The bucket (0..9999) of `value` for `split`: ours, since AWS does not document its hash.

    sha256 of the seed, or of "flag:" + flag without one ("locally consistent": per flag), a NUL
    and the value; the first 8 bytes big-endian, modulo 10000. `split pct::N` matches the buckets
    below N * 100, so thresholds nest for one seed, and different seeds are independent.
    """
    salt = seed if seed is not None else "flag:" + flag
    digest = hashlib.sha256(f"{salt}\x00{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def context_keys(expr: Expr) -> frozenset[str]:
    """The context keys the rule reads: its `$key`s and the keys of `exists key::"..."`."""
    if isinstance(expr, And | Or):
        return frozenset().union(*(context_keys(e) for e in expr.operands))
    if isinstance(expr, Not):
        return context_keys(expr.operand)
    return frozenset({expr.key})


def select_variant(variants: Sequence[Mapping[str, Any]], context: Context, *, flag: str) -> int:
    """The index in `variants` (a flag value's `_variants`) of the variant AppConfig returns.

    The first variant, in order, whose `rule` matches; the last (the default) when none does.
    The whole list is checked first, whatever the context: RuleError if it is empty, if the last
    variant has a `rule`, if another has none, or if a rule does not parse.
    """
    rules = _variant_rules(variants, flag)
    for index, expr in enumerate(rules):
        if evaluate(expr, context, flag=flag):
            return index
    return len(rules)  # the default


def _variant_rules(variants: Sequence[Mapping[str, Any]], flag: str) -> list[Expr]:
    """The parsed rules of every variant but the last, the default, which must have none."""
    if not variants:
        raise RuleError(f"flag {flag!r}: no variants (the default variant is required)")
    last = len(variants) - 1
    if "rule" in variants[last]:
        raise _variant_error(
            variants, last, flag, "the last variant is the default and cannot have a rule"
        )
    rules: list[Expr] = []
    for index in range(last):
        variant = variants[index]
        if "rule" not in variant:
            raise _variant_error(
                variants, index, flag, "has no rule, but only the default, last, has none"
            )
        try:
            rules.append(parse(variant["rule"]))
        except RuleError as exc:
            raise _variant_error(variants, index, flag, exc) from None
    return rules


def _variant_error(
    variants: Sequence[Mapping[str, Any]], index: int, flag: str, problem: object
) -> RuleError:
    name = variants[index].get("name", "?")
    return RuleError(f"flag {flag!r}, variant {index} ({name!r}): {problem}")
