"""A concrete AWS IAM authorization evaluator: one request, the policies that apply, one decision.

Why this exists: the isolation checker must answer "can principal P do action A on resource R?"
without calling AWS (no network, no credentials), and the SMT prover built later reuses the
matching helpers defined here (`wildcard_to_regex`, `action_matches`, `resource_matches`,
`substitute_variables`, `statement_matches`). Every rule below follows the AWS IAM User Guide;
each one cites its page. Anything this module does not implement raises `Unsupported` ("fail
closed") instead of guessing, because a silently ignored condition operator turns into a silent
"allow" or a silent "no deny".

Main references (AWS IAM User Guide):

- Policy evaluation logic
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html
- Cross-account policy evaluation logic
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic-cross-account.html
- Permissions boundaries for IAM entities
  https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies_boundaries.html
- IAM JSON policy elements: Condition operators
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
- Multivalued context keys (set operators)
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html
- IAM policy elements: Variables and tags
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
- IAM JSON policy elements: Action / NotAction / Resource / NotResource / Principal / NotPrincipal
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements.html

Reading order: `evaluate()` at the bottom is the top-level algorithm; it calls one function per
concern, defined above it in the order: wildcards, request context, policy variables, condition
operators, principals, statements, policies.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "ConditionOperator",
    "Decision",
    "Policy",
    "PolicySet",
    "Principal",
    "PrincipalMatch",
    "Request",
    "StatementRef",
    "Unsupported",
    "action_matches",
    "condition_matches",
    "effective_context",
    "evaluate",
    "parse_condition_operator",
    "principal_match",
    "resource_matches",
    "statement_matches",
    "substitute_variables",
    "wildcard_to_regex",
]

VERSION_2012 = "2012-10-17"
VERSION_2008 = "2008-10-17"

ContextValue = str | list[str] | bool | int


class Unsupported(Exception):
    """A policy element, condition operator or key form that this evaluator does not implement.

    Raised instead of returning a decision ("fail closed"): the caller must treat the request as
    not proven either way. The message names the unsupported construct.
    """


# ---------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who makes the request.

    `arn` is the role ARN for a role session (the session ARN goes in `session_arn`), the user
    ARN for an IAM user, or a service principal name such as "ecs-tasks.amazonaws.com".
    """

    arn: str
    account: str | None
    session_arn: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    session_tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_role(self) -> bool:
        return self.arn.startswith("arn:") and ":role/" in self.arn

    @property
    def is_user(self) -> bool:
        return self.arn.startswith("arn:") and ":user/" in self.arn

    @property
    def is_aws_identity(self) -> bool:
        """An IAM identity (user, role, session), as opposed to a service or federated principal."""
        return self.arn.startswith("arn:") and ":iam::" in self.arn


@dataclass(frozen=True)
class Policy:
    """A parsed JSON policy document and a name used in reports."""

    document: Mapping[str, Any]
    name: str = "policy"


@dataclass(frozen=True)
class Request:
    """One API request: principal, action, resource ARN, condition context."""

    principal: Principal
    action: str
    resource: str
    resource_account: str | None = None
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    via_endpoint_policies: Sequence[Policy] = ()


@dataclass(frozen=True)
class PolicySet:
    """Every policy that applies to one request.

    `resource_kind` is "generic", "kms" (KMS key policy) or "trust" (role trust policy): for the
    last two the resource policy must allow on its own ("Policy evaluation logic": "IAM role trust
    policies and KMS key policies are exceptions to this logic, because they must explicitly allow
    access for principals"). `scps`/`rcps` hold one list of policies per organization level.
    """

    identity: Sequence[Policy] = ()
    boundary: Policy | None = None
    session: Sequence[Policy] = ()
    resource: Policy | None = None
    resource_kind: str = "generic"
    scps: Sequence[Sequence[Policy]] = ()
    rcps: Sequence[Sequence[Policy]] = ()


@dataclass(frozen=True)
class StatementRef:
    """Which statement decided: policy name plus Sid (or the statement's index)."""

    policy: str
    index: int
    sid: str | None = None

    def __str__(self) -> str:
        return f"{self.policy}#{self.sid if self.sid else self.index}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    allow_statements: tuple[StatementRef, ...] = ()
    deny_statements: tuple[StatementRef, ...] = ()


# ---------------------------------------------------------------------------------------------
# Wildcards: Action, Resource, StringLike, ArnLike
# ---------------------------------------------------------------------------------------------

# A pattern split into pieces: (text, is_pattern). Pattern pieces give `*` and `?` their wildcard
# meaning; literal pieces (substituted variable values, `${*}` escapes) match themselves only.
Pieces = tuple[tuple[str, bool], ...]


@functools.lru_cache(maxsize=8192)
def _pieces_to_regex(pieces: Pieces, case_insensitive: bool) -> re.Pattern[str]:
    parts: list[str] = []
    for text, is_pattern in pieces:
        if not is_pattern:
            parts.append(re.escape(text))
            continue
        for char in text:
            if char == "*":
                parts.append(".*")
            elif char == "?":
                parts.append(".")
            else:
                parts.append(re.escape(char))
    flags = re.DOTALL | (re.IGNORECASE if case_insensitive else 0)
    return re.compile("".join(parts), flags)


def wildcard_to_regex(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    """Compile an IAM wildcard pattern; use it with `fullmatch`.

    `*` matches any run of characters including `:` and `/`, `?` exactly one character; every
    other character is literal (IAM JSON policy elements: Resource, "You can use wildcard
    characters (* and ?) within any ARN segment").
    """
    return _pieces_to_regex(((pattern, True),), case_insensitive)


def action_matches(pattern: str, action: str) -> bool:
    """Action names are case-insensitive ("IAM JSON policy elements: Action": "Action values are
    case insensitive"), and `s3:Get*` style wildcards apply."""
    return wildcard_to_regex(pattern, True).fullmatch(action) is not None


def resource_matches(pattern: str, arn: str) -> bool:
    """Resource ARNs are matched case-sensitively ("IAM JSON policy elements: Resource":
    ARNs are case sensitive), with `*`/`?` wildcards crossing `:` and `/`."""
    return wildcard_to_regex(pattern, False).fullmatch(arn) is not None


# ---------------------------------------------------------------------------------------------
# Request context: explicit keys plus the global keys that derive from the principal
# ---------------------------------------------------------------------------------------------

Context = dict[str, list[str]]  # lower-cased key -> values (single-valued keys hold one value)


def _context_scalar(value: object, key: str) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise Unsupported(f"context key {key!r}: value of type {type(value).__name__} is not supported")


def _derived_keys(principal: Principal) -> dict[str, str]:
    """Global condition keys AWS fills from the principal itself.

    "AWS global condition context keys": aws:PrincipalArn is the role ARN (not the session
    ARN) for a role session; aws:PrincipalTag/K includes session tags, which override principal
    tags with the same key ("Passing session tags in AWS STS": session tags take precedence);
    aws:username exists only for IAM users. aws:userid is not modelled (policies using it fail
    to match, as for any absent key).
    """
    keys: dict[str, str] = {}
    if principal.arn.startswith("arn:"):
        keys["aws:principalarn"] = principal.arn
    if principal.account is not None:
        keys["aws:principalaccount"] = principal.account
    for tags in (principal.tags, principal.session_tags):  # session tags win (applied last)
        for tag_key, tag_value in tags.items():
            keys[f"aws:principaltag/{tag_key.lower()}"] = tag_value
    if principal.is_user:
        keys["aws:username"] = principal.arn.rsplit("/", 1)[1]
    return keys


def effective_context(request: Request) -> Context:
    """The request context as condition operators see it: lower-cased key names (key names are
    case-insensitive, "Policy variables": "Key names are case-insensitive"), every value a list
    of strings, derived principal keys added unless the caller gave them. An empty list is the
    same as an absent key."""
    context: Context = {k: [v] for k, v in _derived_keys(request.principal).items()}
    explicit: Context = {}
    for key, value in request.context.items():
        lower = key.lower()
        if lower in explicit:
            raise ValueError(f"context key {key!r} given twice (key names are case-insensitive)")
        values = value if isinstance(value, list) else [value]
        explicit[lower] = [_context_scalar(v, key) for v in values]
    context.update(explicit)
    return {k: v for k, v in context.items() if v}


# ---------------------------------------------------------------------------------------------
# Policy variables
# ---------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_BODY = re.compile(r"\s*([^,\s']+)\s*(?:,\s*'([^']*)'\s*)?")
_ESCAPES = {"*", "?", "$"}


class _Unresolved(Exception):
    """A policy variable has no value and no default: the statement does not apply."""


def _resolve_variable(body: str, context: Context) -> str | None:
    """Value of `${body}`: an escape (`${*}`, `${?}`, `${$}`), a key, or `key, 'default'`."""
    if body in _ESCAPES:
        return body
    match = _VARIABLE_BODY.fullmatch(body)
    if match is None:
        raise Unsupported(f"policy variable ${{{body}}} has an unsupported form")
    key, default = match.group(1), match.group(2)
    values = context.get(key.lower())
    if values is None:
        return default
    if len(values) != 1:
        raise Unsupported(f"policy variable ${{{key}}} refers to a multivalued context key")
    return values[0]


def _expand(value: str, context: Context, substitute: bool) -> Pieces:
    """Split a policy value into wildcard pieces and literal (substituted) pieces.

    Why pieces rather than a string: "the value is inserted literally", so a `*` inside a tag
    value or produced by `${*}` must not act as a wildcard, while a `*` written in the policy
    does. Raises `_Unresolved` when a variable has no value and no default: "If AWS cannot
    resolve a variable, this might cause the entire statement to be invalid" and for absent
    keys "any attempt to match it fails and causes the statement to be invalid" (IAM policy
    elements: Variables and tags) — the statement then does not apply.
    """
    if not substitute or "${" not in value:
        return ((value, True),)
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in _VARIABLE.finditer(value):
        if match.start() > position:
            pieces.append((value[position : match.start()], True))
        resolved = _resolve_variable(match.group(1), context)
        if resolved is None:
            raise _Unresolved(match.group(0))
        pieces.append((resolved, False))
        position = match.end()
    if position < len(value):
        pieces.append((value[position:], True))
    return tuple(pieces)


def substitute_variables(value: str, request: Request) -> str | None:
    """Replace `${...}` policy variables in `value` with values from the request.

    Supports `${aws:username}`, `${aws:PrincipalTag/env}`, any context key, defaults
    (`${aws:PrincipalTag/team, 'none'}`) and the escapes `${*}`, `${?}`, `${$}`. Returns None
    when a variable's key is absent and it has no default (the element does not match).
    Callers apply this only to Version 2012-10-17 policies: under 2008-10-17 `${...}` is
    literal text. The result is plain text: to match wildcards, use the piece-wise matching in
    this module, which keeps substituted values literal.
    """
    try:
        pieces = _expand(value, effective_context(request), substitute=True)
    except _Unresolved:
        return None
    return "".join(text for text, _ in pieces)


# ---------------------------------------------------------------------------------------------
# Condition operators
# ---------------------------------------------------------------------------------------------


def _parse_number(text: str) -> Decimal:
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return number


_EPOCH = re.compile(r"-?\d+(\.\d+)?")


def _parse_date(text: str) -> dt.datetime:
    """ISO 8601 (W3C profile) or epoch seconds ("Condition operators", Date: "You must specify
    date/time values with one of the W3C implementations of the ISO 8601 date formats or in
    epoch (UNIX) time"). A time without zone is UTC."""
    text = text.strip()
    if _EPOCH.fullmatch(text):
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or epoch time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _parse_bool(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"Bool condition value {text!r} is not true or false")
    return lowered


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip_in(context_value: str, network: IpNetwork) -> bool:
    try:
        address = ipaddress.ip_address(context_value.strip())
    except ValueError:
        raise ValueError(f"{context_value!r} is not an IP address") from None
    return address.version == network.version and address in network


def _split_arn_pattern(text: str) -> list[str]:
    """The six colon-delimited ARN components; colons inside `${...}` do not split."""
    components: list[str] = []
    start, depth = 0, 0
    for index, char in enumerate(text):
        if text.startswith("${", index):
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        elif char == ":" and depth == 0 and len(components) < 5:
            components.append(text[start:index])
            start = index + 1
    components.append(text[start:])
    return components


@dataclass(frozen=True)
class _ArnPattern:
    components: tuple[re.Pattern[str], ...]

    def matches(self, value: str) -> bool:
        """Per "Condition operators", ARN: "Each of the six colon-delimited components of the
        ARN is checked separately": `*` does not cross a colon except in the last component.
        A context value that is not an ARN does not match."""
        parts = value.split(":", 5)
        if len(parts) != 6:
            return False
        return all(p.fullmatch(v) for p, v in zip(self.components, parts, strict=True))


@dataclass(frozen=True)
class _Family:
    """One comparison: `prepare` turns a raw policy value into a comparable form once (expanding
    policy variables when `substitute` is set), `compare` tests one context value against it."""

    prepare: Callable[[str, Context, bool], Any]
    compare: Callable[[str, Any], bool]


def _text(raw: str, context: Context, substitute: bool) -> str:
    """String and Bool values take policy variables ("IAM policy elements: Variables and tags":
    "any condition that involves the string operators or the ARN operators"; "Condition
    operators" also allows them for Bool)."""
    return "".join(text for text, _ in _expand(raw, context, substitute))


def _like(raw: str, context: Context, substitute: bool) -> re.Pattern[str]:
    return _pieces_to_regex(_expand(raw, context, substitute), False)


def _arn_pattern(raw: str, context: Context, substitute: bool) -> _ArnPattern:
    components = _split_arn_pattern(raw)
    if len(components) != 6:
        raise ValueError(f"ARN condition value {raw!r} does not have six components")
    return _ArnPattern(
        tuple(_pieces_to_regex(_expand(c, context, substitute), False) for c in components)
    )


def _no_variables(parse: Callable[[str], Any]) -> Callable[[str, Context, bool], Any]:
    """Numeric, Date, Binary and IP operators take no policy variables: the value is parsed
    as written."""
    return lambda raw, _context, _substitute: parse(raw)


def _ordered(parse: Callable[[str], Any], test: Callable[[Any, Any], bool]) -> _Family:
    return _Family(_no_variables(parse), lambda value, prepared: test(parse(value), prepared))


def _ip_network(raw: str) -> IpNetwork:
    """CIDR, IPv4 or IPv6; a bare address means /32 (or /128)."""
    try:
        return ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{raw!r} is not an IP address or CIDR block") from None


_FAMILIES: dict[str, _Family] = {
    "string": _Family(_text, lambda v, p: v == p),
    "string_ic": _Family(lambda r, c, s: _text(r, c, s).lower(), lambda v, p: v.lower() == p),
    "string_like": _Family(_like, lambda v, p: p.fullmatch(v) is not None),
    "num_eq": _ordered(_parse_number, lambda c, p: c == p),
    "num_lt": _ordered(_parse_number, lambda c, p: c < p),
    "num_le": _ordered(_parse_number, lambda c, p: c <= p),
    "num_gt": _ordered(_parse_number, lambda c, p: c > p),
    "num_ge": _ordered(_parse_number, lambda c, p: c >= p),
    "date_eq": _ordered(_parse_date, lambda c, p: c == p),
    "date_lt": _ordered(_parse_date, lambda c, p: c < p),
    "date_le": _ordered(_parse_date, lambda c, p: c <= p),
    "date_gt": _ordered(_parse_date, lambda c, p: c > p),
    "date_ge": _ordered(_parse_date, lambda c, p: c >= p),
    "bool": _Family(
        lambda r, c, s: _parse_bool(_text(r, c, s)), lambda v, p: v.strip().lower() == p
    ),
    "binary": _Family(_no_variables(str), lambda v, p: v == p),
    "ip": _Family(_no_variables(_ip_network), _ip_in),
    "arn": _Family(_arn_pattern, lambda v, p: p.matches(v)),
}

# operator name -> (family, negated). Negated operators are NOR across the policy values.
_OPERATORS: dict[str, tuple[str, bool]] = {
    "StringEquals": ("string", False),
    "StringNotEquals": ("string", True),
    "StringEqualsIgnoreCase": ("string_ic", False),
    "StringNotEqualsIgnoreCase": ("string_ic", True),
    "StringLike": ("string_like", False),
    "StringNotLike": ("string_like", True),
    "NumericEquals": ("num_eq", False),
    "NumericNotEquals": ("num_eq", True),
    "NumericLessThan": ("num_lt", False),
    "NumericLessThanEquals": ("num_le", False),
    "NumericGreaterThan": ("num_gt", False),
    "NumericGreaterThanEquals": ("num_ge", False),
    "DateEquals": ("date_eq", False),
    "DateNotEquals": ("date_eq", True),
    "DateLessThan": ("date_lt", False),
    "DateLessThanEquals": ("date_le", False),
    "DateGreaterThan": ("date_gt", False),
    "DateGreaterThanEquals": ("date_ge", False),
    "Bool": ("bool", False),
    "BinaryEquals": ("binary", False),
    "IpAddress": ("ip", False),
    "NotIpAddress": ("ip", True),
    "ArnEquals": ("arn", False),
    "ArnLike": ("arn", False),
    "ArnNotEquals": ("arn", True),
    "ArnNotLike": ("arn", True),
    "Null": ("null", False),
}

_SET_PREFIXES = ("ForAllValues", "ForAnyValue")


@dataclass(frozen=True)
class ConditionOperator:
    """A parsed operator name such as `ForAnyValue:StringLikeIfExists`."""

    name: str
    base: str
    family: str
    negated: bool
    if_exists: bool
    set_operator: str | None  # "ForAllValues" | "ForAnyValue" | None


@functools.lru_cache(maxsize=512)
def parse_condition_operator(name: str) -> ConditionOperator:
    """Parse an operator name; raise `Unsupported` for anything not in the AWS list.

    Operator names are matched exactly: an unknown spelling ("StringStartsWith") or set prefix
    fails closed. `Null` takes no `IfExists` suffix ("Condition operators": "You can add
    IfExists to the end of any condition operator name except the Null condition") and no set
    prefix.
    """
    set_operator: str | None = None
    base = name
    if ":" in name:
        prefix, base = name.split(":", 1)
        if prefix not in _SET_PREFIXES:
            raise Unsupported(f"condition set operator prefix {prefix!r} (in {name!r})")
        set_operator = prefix
    if_exists = base.endswith("IfExists")
    if if_exists:
        base = base.removesuffix("IfExists")
    if base not in _OPERATORS:
        raise Unsupported(f"condition operator {name!r}")
    if base == "Null" and (if_exists or set_operator):
        raise Unsupported(f"condition operator {name!r}: Null takes no IfExists or set prefix")
    family, negated = _OPERATORS[base]
    return ConditionOperator(name, base, family, negated, if_exists, set_operator)


def _policy_values(raw: object, operator: str, key: str) -> list[str]:
    """Condition values as strings: JSON booleans and numbers are written as text."""
    values = raw if isinstance(raw, list) else [raw]
    result: list[str] = []
    for value in values:
        if isinstance(value, bool):
            result.append("true" if value else "false")
        elif isinstance(value, int | float | str):
            result.append(str(value))
        else:
            raise ValueError(f"{operator} {key!r}: condition value {value!r} is not a scalar")
    return result


def _null_matches(policy_values: list[str], present: bool) -> bool:
    """`Null: true` means the key is absent, `false` that it is present; values are OR-ed."""
    wanted = {_parse_bool(v) for v in policy_values}
    return ("true" in wanted and not present) or ("false" in wanted and present)


def _key_matches(
    op: ConditionOperator, key: str, raw: object, context: Context, substitute: bool
) -> bool:
    """One operator applied to one condition key.

    OR across the policy values of one key, NOR for negated operators ("Condition operators"
    and "Creating a condition with multiple keys or values"). Missing key: positive operators
    false, negated operators true, `...IfExists` true, `ForAllValues` true, `ForAnyValue` false.
    For set operators an empty data set (no values, or only empty strings) counts as missing.
    """
    policy_values = _policy_values(raw, op.name, key)
    values = context.get(key.lower())
    if op.family == "null":
        return _null_matches(policy_values, values is not None)
    if values is not None and op.set_operator:
        values = [v for v in values if v != ""] or None
    if values is None:
        if op.if_exists or op.set_operator == "ForAllValues":
            return True
        if op.set_operator == "ForAnyValue":
            return False
        return op.negated

    family = _FAMILIES[op.family]
    prepared = [family.prepare(v, context, substitute) for v in policy_values]

    def hit(value: str) -> bool:
        return any(family.compare(value, p) for p in prepared)

    if op.set_operator == "ForAllValues":
        return all(hit(v) != op.negated for v in values)
    if op.set_operator == "ForAnyValue":
        return any(hit(v) != op.negated for v in values)
    matched = any(hit(v) for v in values)
    return not matched if op.negated else matched


def condition_matches(condition: Mapping[str, Any], context: Context, substitute: bool) -> bool:
    """AND across operators and across the keys of each operator ("IAM JSON policy elements:
    Condition", evaluation logic: "If you specify multiple condition operators, or multiple
    keys attached to a single condition operator, the conditions are evaluated using a logical
    AND")."""
    if not isinstance(condition, Mapping):
        raise ValueError(f"Condition must be an object, got {condition!r}")
    for operator_name, block in condition.items():
        op = parse_condition_operator(operator_name)
        if not isinstance(block, Mapping):
            raise ValueError(f"Condition operator {operator_name!r} must map keys to values")
        for key, raw in block.items():
            if not _key_matches(op, key, raw, context, substitute):
                return False
    return True


# ---------------------------------------------------------------------------------------------
# Principals (resource policies, trust policies, RCPs, endpoint policies)
# ---------------------------------------------------------------------------------------------


class PrincipalMatch(enum.Enum):
    """How a resource-policy statement names the requester; this decides which implicit denies
    still apply ("Policy evaluation logic", resource-based policies table)."""

    DIRECT = "direct"  # "*", user ARN, role session ARN, service, NotPrincipal: allows alone
    ROLE = "role"  # the role ARN: limited by the role's boundary and session policies
    ACCOUNT = "account"  # account id or root ARN: delegates to the account


_ACCOUNT_ID = re.compile(r"\d{12}")
_PRINCIPAL_KEYS = ("AWS", "Service", "Federated")


def _principal_values(element: object, name: str) -> dict[str, list[str]] | None:
    """Normalize a Principal/NotPrincipal element to {"AWS": [...], "Service": [...], ...};
    None stands for "*" (everyone, including anonymous callers and services)."""
    if element == "*":
        return None
    if not isinstance(element, Mapping):
        raise ValueError(f'{name} must be "*" or an object, got {element!r}')
    result: dict[str, list[str]] = {}
    for key, raw in element.items():
        if key not in _PRINCIPAL_KEYS:
            raise Unsupported(f"{name} type {key!r}")
        result[key] = _strings(raw, f"{name} {key}")
    return result


def _partition(principal: Principal) -> str:
    return principal.arn.split(":")[1] if principal.arn.startswith("arn:") else "aws"


def _root_arn(principal: Principal) -> str:
    return f"arn:{_partition(principal)}:iam::{principal.account}:root"


def _aws_value_match(value: str, principal: Principal) -> PrincipalMatch | None:
    """Match one {"AWS": value} entry ("IAM JSON policy elements: Principal").

    {"AWS": "*"} is every AWS identity. A role ARN names the role, and so every session of it;
    an account id or `arn:aws:iam::ACCT:root` names every principal of that account. Wildcards
    other than a lone "*" are not allowed in principals, and unique ids are not modelled: both
    fail closed.
    """
    if value == "*":
        return PrincipalMatch.DIRECT if principal.is_aws_identity else None
    if "*" in value or "?" in value:
        raise Unsupported(f"wildcard in Principal AWS value {value!r}")
    if not (_ACCOUNT_ID.fullmatch(value) or value.startswith("arn:")):
        raise Unsupported(f"Principal AWS value {value!r} (unique ids are not supported)")
    if not principal.is_aws_identity:
        return None
    if principal.account is not None and value in (principal.account, _root_arn(principal)):
        return PrincipalMatch.ACCOUNT
    if principal.session_arn is not None and value == principal.session_arn:
        return PrincipalMatch.DIRECT
    if value == principal.arn:
        return PrincipalMatch.ROLE if principal.is_role else PrincipalMatch.DIRECT
    return None


def _named_match(values: dict[str, list[str]], principal: Principal) -> PrincipalMatch | None:
    """Strongest way a Principal element names the requester (DIRECT > ROLE > ACCOUNT).
    Service and Federated principals are matched by exact name."""
    found: set[PrincipalMatch] = set()
    for value in values.get("AWS", []):
        match = _aws_value_match(value, principal)
        if match is not None:
            found.add(match)
    for key in ("Service", "Federated"):
        if principal.arn in values.get(key, []):
            found.add(PrincipalMatch.DIRECT)
    for strength in PrincipalMatch:  # declared strongest first
        if strength in found:
            return strength
    return None


def _identity_forms(principal: Principal) -> list[set[str]]:
    """The identities AWS checks a request under, each as the set of strings that name it.

    "IAM JSON policy elements: NotPrincipal": AWS "might validate the account first, then the
    role, and then the assumed-role user", so a NotPrincipal exempts a request only when every
    one of these is listed (account, role ARN, session ARN; or account and user ARN).
    """
    if not principal.is_aws_identity:
        return [{principal.arn}]
    forms: list[set[str]] = [{"*"}]  # {"AWS": "*"} lists every AWS identity at once
    if principal.account is not None:
        forms = [{"*", principal.account, _root_arn(principal)}]
    forms.append({"*", principal.arn})
    if principal.session_arn is not None:
        forms.append({"*", principal.session_arn})
    return forms


def _not_principal_matches(values: dict[str, list[str]] | None, principal: Principal) -> bool:
    if values is None:  # "NotPrincipal": "*" excludes everyone
        return False
    listed = set(values.get("AWS", []))
    for key in ("Service", "Federated"):
        listed.update(v for v in values.get(key, []) if v != "*")
    for value in values.get("AWS", []):
        _aws_value_match(value, principal)  # same validation (fail closed) as Principal
    return not all(form & listed for form in _identity_forms(principal))


def principal_match(
    stmt: Mapping[str, Any], principal: Principal, *, has_boundary: bool = False
) -> PrincipalMatch | None:
    """How (if at all) a resource-policy statement's Principal/NotPrincipal names `principal`.

    A matching NotPrincipal counts as DIRECT (it grants to everyone not listed). A Deny with
    NotPrincipal always applies to a principal that has a permissions boundary ("Permissions
    boundaries for IAM entities", Important box: "The NotPrincipal element with a Deny effect
    will always deny any IAM principal that has a permissions boundary policy attached,
    regardless of the values specified in the NotPrincipal element").
    """
    if "Principal" in stmt and "NotPrincipal" in stmt:
        raise ValueError("statement has both Principal and NotPrincipal")
    if "Principal" in stmt:
        values = _principal_values(stmt["Principal"], "Principal")
        return PrincipalMatch.DIRECT if values is None else _named_match(values, principal)
    if "NotPrincipal" in stmt:
        values = _principal_values(stmt["NotPrincipal"], "NotPrincipal")
        if stmt.get("Effect") == "Deny" and has_boundary and principal.is_aws_identity:
            return PrincipalMatch.DIRECT
        return PrincipalMatch.DIRECT if _not_principal_matches(values, principal) else None
    raise ValueError("resource policy statement has neither Principal nor NotPrincipal")


# ---------------------------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------------------------

_STATEMENT_KEYS = {
    "Sid",
    "Effect",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Principal",
    "NotPrincipal",
    "Condition",
}


def _strings(value: object, element: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{element} must be a string or a list of strings, got {value!r}")
    return list(values)


def _validate_statement(stmt: Mapping[str, Any], check_principal: bool) -> None:
    """Reject malformed statements instead of guessing what they mean."""
    if not isinstance(stmt, Mapping):
        raise ValueError(f"statement must be an object, got {stmt!r}")
    unknown = set(stmt) - _STATEMENT_KEYS
    if unknown:
        raise Unsupported(f"statement element(s) {sorted(unknown)}")
    if stmt.get("Effect") not in ("Allow", "Deny"):
        raise ValueError(f"statement Effect must be Allow or Deny, got {stmt.get('Effect')!r}")
    if ("Action" in stmt) == ("NotAction" in stmt):
        raise ValueError("statement needs exactly one of Action and NotAction")
    if "Resource" in stmt and "NotResource" in stmt:
        raise ValueError("statement has both Resource and NotResource")
    has_principal = "Principal" in stmt or "NotPrincipal" in stmt
    if not check_principal and has_principal:
        raise ValueError("Principal/NotPrincipal is not allowed in this kind of policy")
    if not check_principal and "Resource" not in stmt and "NotResource" not in stmt:
        # Only resource policies (e.g. role trust policies) may omit the resource.
        raise ValueError("statement needs Resource or NotResource")
    condition = stmt.get("Condition", {})
    if not isinstance(condition, Mapping):
        raise ValueError(f"Condition must be an object, got {condition!r}")
    for operator_name in condition:
        # Parsed even when the action does not match, so that an unsupported operator fails
        # closed wherever it appears rather than only when its statement happens to apply.
        parse_condition_operator(operator_name)


def _action_part(stmt: Mapping[str, Any], action: str) -> bool:
    """`NotAction` matches every action not listed, in every service ("IAM JSON policy
    elements: NotAction")."""
    if "Action" in stmt:
        return any(action_matches(p, action) for p in _strings(stmt["Action"], "Action"))
    return not any(action_matches(p, action) for p in _strings(stmt["NotAction"], "NotAction"))


def _resource_part(
    stmt: Mapping[str, Any], resource: str, context: Context, substitute: bool
) -> bool:
    """Resource/NotResource with policy variables (2012-10-17 only). A statement without either
    (role trust policies) applies to the resource the policy is attached to."""
    if "Resource" in stmt:
        patterns, negate = _strings(stmt["Resource"], "Resource"), False
    elif "NotResource" in stmt:
        patterns, negate = _strings(stmt["NotResource"], "NotResource"), True
    else:
        return True
    hit = any(
        _pieces_to_regex(_expand(p, context, substitute), False).fullmatch(resource)
        for p in patterns
    )
    return hit != negate


def _statement_body_matches(
    stmt: Mapping[str, Any], request: Request, context: Context, version: str
) -> bool:
    """Action, resource and condition parts; a variable without a value voids the statement."""
    substitute = version == VERSION_2012
    try:
        return (
            _action_part(stmt, request.action)
            and _resource_part(stmt, request.resource, context, substitute)
            and condition_matches(stmt.get("Condition", {}), context, substitute)
        )
    except _Unresolved:
        return False


def statement_matches(
    stmt: Mapping[str, Any],
    request: Request,
    *,
    check_principal: bool,
    version: str = VERSION_2012,
) -> bool:
    """Does one statement apply to the request (ignoring its Effect)?

    All parts must match: principal (only when `check_principal`, i.e. for resource, trust,
    RCP and endpoint policies), action, resource, condition. `version` is the policy's Version,
    which decides whether `${...}` is a variable (2012-10-17) or literal text (2008-10-17).
    """
    _validate_statement(stmt, check_principal)
    if check_principal and principal_match(stmt, request.principal) is None:
        return False
    return _statement_body_matches(stmt, request, effective_context(request), version)


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------

_DOCUMENT_KEYS = {"Version", "Id", "Statement"}


def _statements(policy: Policy) -> Iterator[tuple[StatementRef, Mapping[str, Any]]]:
    document = policy.document
    if not isinstance(document, Mapping) or "Statement" not in document:
        raise ValueError(f"policy {policy.name!r} has no Statement")
    unknown = set(document) - _DOCUMENT_KEYS
    if unknown:
        raise Unsupported(f"policy {policy.name!r}: element(s) {sorted(unknown)}")
    raw = document["Statement"]
    statements = raw if isinstance(raw, list) else [raw]
    for index, stmt in enumerate(statements):
        sid = stmt.get("Sid") if isinstance(stmt, Mapping) else None
        yield StatementRef(policy.name, index, sid), stmt


def _version(policy: Policy) -> str:
    """Without a Version the 2008-10-17 rules apply ("IAM JSON policy elements: Version")."""
    version = policy.document.get("Version", VERSION_2008)
    if version not in (VERSION_2012, VERSION_2008):
        raise Unsupported(f"policy {policy.name!r}: Version {version!r}")
    return str(version)


@dataclass(frozen=True)
class _Hit:
    ref: StatementRef
    how: PrincipalMatch


class _Matcher:
    """Finds the statements of a policy that apply to one request (context built once)."""

    def __init__(self, request: Request, has_boundary: bool) -> None:
        self.request = request
        self.context = effective_context(request)
        self.has_boundary = has_boundary

    def hits(self, policy: Policy, effect: str, *, check_principal: bool) -> list[_Hit]:
        version = _version(policy)
        found: list[_Hit] = []
        for ref, stmt in _statements(policy):
            _validate_statement(stmt, check_principal)
            if stmt["Effect"] != effect:
                continue
            how = PrincipalMatch.DIRECT
            if check_principal:
                named = principal_match(
                    stmt, self.request.principal, has_boundary=self.has_boundary
                )
                if named is None:
                    continue
                how = named
            if _statement_body_matches(stmt, self.request, self.context, version):
                found.append(_Hit(ref, how))
        return found

    def refs(
        self, policies: Sequence[Policy], effect: str, *, check_principal: bool
    ) -> list[StatementRef]:
        return [
            hit.ref
            for policy in policies
            for hit in self.hits(policy, effect, check_principal=check_principal)
        ]


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

EXPLICIT_DENY = "explicit deny"
ALLOWED = "allowed"
NO_ALLOW = "implicit deny: no allow in identity or resource policy"
BOUNDARY_DENY = "boundary does not allow"
SESSION_DENY = "session policy does not allow"


def _explicit_denies(m: _Matcher, request: Request, policies: PolicySet) -> list[StatementRef]:
    """A Deny in any policy wins ("Policy evaluation logic", step 1: "In all those policies, the
    enforcement code looks for a Deny statement that applies to the request")."""
    boundary = [policies.boundary] if policies.boundary else []
    unprincipaled = [*policies.identity, *boundary, *policies.session]
    unprincipaled += [p for level in policies.scps for p in level]
    principaled = [policies.resource] if policies.resource else []
    principaled += [p for level in policies.rcps for p in level]
    principaled += list(request.via_endpoint_policies)
    return m.refs(unprincipaled, "Deny", check_principal=False) + m.refs(
        principaled, "Deny", check_principal=True
    )


def _organization_gate(m: _Matcher, policies: PolicySet) -> Decision | None:
    """SCPs and RCPs: every level (root, each OU, the account) needs an Allow ("Policy evaluation
    logic", step 2; "Resource control policies"). RCPs carry a Principal element."""
    for kind, levels, check_principal in (
        ("SCP", policies.scps, False),
        ("RCP", policies.rcps, True),
    ):
        for depth, level in enumerate(levels):
            if not m.refs(level, "Allow", check_principal=check_principal):
                return Decision(False, f"{kind} level {depth} does not allow")
    return None


def _endpoint_gate(m: _Matcher, request: Request) -> Decision | None:
    """A VPC endpoint policy must allow the request; no endpoint policy means the endpoint's
    default full-access policy ("Control access to VPC endpoints using endpoint policies")."""
    for policy in request.via_endpoint_policies:
        if not m.refs([policy], "Allow", check_principal=True):
            return Decision(False, f"VPC endpoint policy {policy.name} does not allow")
    return None


@dataclass(frozen=True)
class _IdentitySide:
    """Identity-based allows and the limits on them (boundary, session policies)."""

    identity: tuple[StatementRef, ...]
    boundary: tuple[StatementRef, ...] | None  # None: no boundary attached
    session: tuple[StatementRef, ...] | None  # None: no session policy

    def limit_failure(self) -> str | None:
        """Reason the boundary or session policy blocks, or None. Session policies passed
        together act as one policy: any of them may allow (intersection with identity is what
        "Session policies" describes)."""
        if self.boundary is not None and not self.boundary:
            return BOUNDARY_DENY
        if self.session is not None and not self.session:
            return SESSION_DENY
        return None

    def limit_refs(self) -> tuple[StatementRef, ...]:
        return (self.boundary or ()) + (self.session or ())

    def identity_failure(self) -> str | None:
        """Identity path: identity allows AND boundary allows AND session allows."""
        if not self.identity:
            return "implicit deny: no identity policy allows"
        return self.limit_failure()


def _identity_side(m: _Matcher, policies: PolicySet) -> _IdentitySide:
    boundary = None
    if policies.boundary is not None:
        boundary = tuple(m.refs([policies.boundary], "Allow", check_principal=False))
    session = None
    if policies.session:
        session = tuple(m.refs(policies.session, "Allow", check_principal=False))
    identity = tuple(m.refs(policies.identity, "Allow", check_principal=False))
    return _IdentitySide(identity, boundary, session)


def _resource_allows(m: _Matcher, policies: PolicySet) -> dict[PrincipalMatch, list[StatementRef]]:
    grants: dict[PrincipalMatch, list[StatementRef]] = {how: [] for how in PrincipalMatch}
    if policies.resource is not None:
        for hit in m.hits(policies.resource, "Allow", check_principal=True):
            grants[hit.how].append(hit.ref)
    return grants


def _allowed(*groups: Sequence[StatementRef]) -> Decision:
    return Decision(True, ALLOWED, tuple(ref for group in groups for ref in group))


def _cross_account(
    side: _IdentitySide, grants: dict[PrincipalMatch, list[StatementRef]], owner: str
) -> Decision:
    """Both accounts must allow ("Cross-account policy evaluation logic": "the identity-based
    policy in the trusting account and the resource-based policy ... must both allow")."""
    resource_refs = [ref for refs in grants.values() for ref in refs]
    if not resource_refs:
        return Decision(False, f"cross-account: {owner} does not allow")
    failure = side.identity_failure()
    if failure is not None:
        return Decision(False, f"cross-account: {failure}")
    return _allowed(side.identity, side.limit_refs(), resource_refs)


def _must_allow_resource(
    side: _IdentitySide, grants: dict[PrincipalMatch, list[StatementRef]], owner: str
) -> Decision:
    """KMS key policies and role trust policies, same account: the resource policy must allow.

    Naming the principal directly (user, session, "*") allows on its own; naming the role ARN is
    still limited by the role's boundary and session policies; naming the account delegates to
    IAM, so an identity policy must allow too ("AWS KMS key policies": "Allows access to the AWS
    account and enables IAM policies"; "Policy evaluation logic", resource-based policy table).
    """
    if grants[PrincipalMatch.DIRECT]:
        return _allowed(grants[PrincipalMatch.DIRECT])
    if grants[PrincipalMatch.ROLE]:
        failure = side.limit_failure()
        if failure is None:
            return _allowed(grants[PrincipalMatch.ROLE], side.limit_refs())
        return Decision(False, failure)
    if grants[PrincipalMatch.ACCOUNT]:
        failure = side.identity_failure()
        if failure is None:
            return _allowed(grants[PrincipalMatch.ACCOUNT], side.identity, side.limit_refs())
        return Decision(False, f"{owner} delegates to the account: {failure}")
    return Decision(False, f"implicit deny: {owner} does not allow")


def _generic_same_account(
    side: _IdentitySide, grants: dict[PrincipalMatch, list[StatementRef]]
) -> Decision:
    """Same account: identity policies OR the resource policy may allow ("Policy evaluation
    logic": "If an action is allowed by an identity-based policy, a resource-based policy, or
    both, then AWS allows the action"), with the resource-policy table deciding which implicit
    denies still apply: a grant to the user or session ARN is not limited by identity policies,
    boundary or session policy; a grant to the role ARN (or, here, the account) is limited by
    the boundary and session policy."""
    if grants[PrincipalMatch.DIRECT]:
        return _allowed(grants[PrincipalMatch.DIRECT])
    limited = grants[PrincipalMatch.ROLE] + grants[PrincipalMatch.ACCOUNT]
    if not side.identity and not limited:
        return Decision(False, NO_ALLOW)
    failure = side.limit_failure()
    if failure is not None:
        return Decision(False, failure)
    return _allowed(side.identity, limited, side.limit_refs())


def _is_cross_account(request: Request) -> bool:
    owner, caller = request.resource_account, request.principal.account
    return owner is not None and caller is not None and owner != caller


_OWNERS = {"generic": "resource policy", "kms": "key policy", "trust": "trust policy"}


def evaluate(request: Request, policies: PolicySet) -> Decision:
    """Decide one request, following "Policy evaluation logic" top-down.

    1. An explicit Deny in any applicable policy wins.
    2. Every SCP and RCP level must allow; every VPC endpoint policy on the path must allow.
    3. Cross-account: the identity side (identity ∩ boundary ∩ session) and the resource
       policy must both allow.
    4. Same account, KMS key or trust policy: the resource policy must allow (see
       `_must_allow_resource`).
    5. Same account otherwise: identity side OR resource policy (see `_generic_same_account`).

    Raises `Unsupported` for constructs this module does not implement and `ValueError` for
    malformed policies or context values.
    """
    if policies.resource_kind not in _OWNERS:
        raise Unsupported(f"resource_kind {policies.resource_kind!r}")
    matcher = _Matcher(request, has_boundary=policies.boundary is not None)

    denies = _explicit_denies(matcher, request, policies)
    if denies:
        return Decision(False, EXPLICIT_DENY, (), tuple(denies))

    gate = _organization_gate(matcher, policies) or _endpoint_gate(matcher, request)
    if gate is not None:
        return gate

    side = _identity_side(matcher, policies)
    grants = _resource_allows(matcher, policies)
    owner = _OWNERS[policies.resource_kind]
    if _is_cross_account(request):
        return _cross_account(side, grants, owner)
    if policies.resource_kind in ("kms", "trust"):
        return _must_allow_resource(side, grants, owner)
    return _generic_same_account(side, grants)
