"""Differential test: `envfence.iam.evaluate` against PMapper's local evaluator.

PMapper (`principalmapper` 1.1.5, `querying.query_interface.local_check_authorization_full`) is an
independent implementation of the same rules: conditions, resource policies, boundaries, session
policies and SCPs. Where it is known to differ from AWS, the difference is listed in
`DEVIATIONS` below with an explanation; a case that hits one is skipped (conformance cases) or
counted and reported (generated cases) with that reason, never dropped silently. Each listed
deviation also has a witness test showing that PMapper really does decide differently there, so
the table cannot drift into fiction.

PMapper 1.1.5 imports `collections.Mapping`, removed in Python 3.10; the aliases are installed
here, in this test module only, before it is imported.
"""

from __future__ import annotations

import collections
import collections.abc
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from iam_cases import Case, conformance_cases

from envfence.iam import (
    Policy,
    PolicySet,
    Principal,
    PrincipalMatch,
    Request,
    Unsupported,
    effective_context,
    evaluate,
    parse_condition_operator,
    principal_match,
    resource_matches,
    wildcard_to_regex,
)

for _name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

pytest.importorskip(
    "principalmapper",
    reason="principalmapper (PMapper 1.1.5) is not installed: pip install 'principalmapper==1.1.5'",
)
from principalmapper.common import (  # type: ignore[import-untyped]  # noqa: E402
    Node,
)
from principalmapper.common import Policy as PMPolicy  # noqa: E402
from principalmapper.querying.query_interface import (  # type: ignore[import-untyped]  # noqa: E402
    local_check_authorization_full,
)

# ---------------------------------------------------------------------------------------------
# Adapter: one of our (Request, PolicySet) pairs as a PMapper call
# ---------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Deep copy into plain dicts/lists (PMapper checks `isinstance(doc, dict)`)."""
    if isinstance(value, collections.abc.Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _context_for_pmapper(request: Request) -> dict[str, Any]:
    def text(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    return {
        k: [text(x) for x in v] if isinstance(v, list) else text(v)
        for k, v in request.context.items()
    }


def pmapper_allows(request: Request, policies: PolicySet) -> bool:
    """PMapper's decision. Session tags are merged into the node's tags (PMapper has no
    sessions; session tags override principal tags, case-insensitively); only the first session
    policy can be passed (deviation `multiple-session-policies`)."""
    principal = request.principal
    tags = dict(principal.tags)
    for key, value in principal.session_tags.items():
        for existing in [k for k in tags if k.lower() == key.lower()]:
            del tags[existing]
        tags[key] = value
    is_role = ":role/" in principal.arn
    node = Node(
        arn=principal.arn,
        id_value="AROAEXAMPLE" if is_role else "AIDAEXAMPLE",
        attached_policies=[
            PMPolicy(principal.arn, p.name, _plain(p.document)) for p in policies.identity
        ],
        group_memberships=[],
        trust_policy={} if is_role else None,
        instance_profile=None,
        num_access_keys=0,
        active_password=False,
        is_admin=False,
        permissions_boundary=(
            PMPolicy(principal.arn, policies.boundary.name, _plain(policies.boundary.document))
            if policies.boundary
            else None
        ),
        has_mfa=False,
        tags=tags,
    )
    scps = [
        [
            PMPolicy(f"arn:aws:organizations::1:policy/{p.name}", p.name, _plain(p.document))
            for p in level
        ]
        for level in policies.scps
    ]
    resource_policy = _plain(policies.resource.document) if policies.resource else None
    return bool(
        local_check_authorization_full(
            node,
            request.action,
            request.resource,
            _context_for_pmapper(request),
            resource_policy,
            request.resource_account or principal.account,
            scps or None,
            _plain(policies.session[0].document) if policies.session else None,
        )
    )


# ---------------------------------------------------------------------------------------------
# Walking policies (for the deviation predicates)
# ---------------------------------------------------------------------------------------------


def _all_policies(request: Request, policies: PolicySet) -> Iterator[tuple[Policy, bool]]:
    """Every policy with a flag: True for resource-type policies (they carry a Principal)."""
    for policy in policies.identity:
        yield policy, False
    if policies.boundary:
        yield policies.boundary, False
    for policy in policies.session:
        yield policy, False
    for level in policies.scps:
        for policy in level:
            yield policy, False
    if policies.resource:
        yield policies.resource, True
    for level in policies.rcps:
        for policy in level:
            yield policy, True
    for policy in request.via_endpoint_policies:
        yield policy, True


def _statements(policy: Policy) -> list[dict[str, Any]]:
    raw = policy.document["Statement"]
    return list(raw) if isinstance(raw, list) else [raw]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _all_statements(
    request: Request, policies: PolicySet
) -> Iterator[tuple[Policy, dict[str, Any]]]:
    for policy, _ in _all_policies(request, policies):
        for stmt in _statements(policy):
            yield policy, stmt


def _conditions(request: Request, policies: PolicySet) -> Iterator[tuple[str, str, list[Any]]]:
    """(operator, key, values) of every condition in every policy."""
    for _, stmt in _all_statements(request, policies):
        for operator, block in stmt.get("Condition", {}).items():
            for key, values in block.items():
                yield operator, key, _as_list(values)


def _patterns(request: Request, policies: PolicySet, *elements: str) -> Iterator[str]:
    for _, stmt in _all_statements(request, policies):
        for element in elements:
            if element in stmt:
                yield from _as_list(stmt[element])


def _same_account(request: Request) -> bool:
    owner, caller = request.resource_account, request.principal.account
    return owner is None or caller is None or owner == caller


def _resource_allow_matches(request: Request, policies: PolicySet) -> set[PrincipalMatch]:
    if policies.resource is None:
        return set()
    found = set()
    for stmt in _statements(policies.resource):
        if stmt["Effect"] == "Allow" and "Principal" in stmt:
            match = principal_match(stmt, request.principal)
            if match is not None:
                found.add(match)
    return found


def _names_aws_star(policies: PolicySet) -> bool:
    if policies.resource is None:
        return False
    for stmt in _statements(policies.resource):
        element = stmt.get("Principal")
        if isinstance(element, dict) and "*" in _as_list(element.get("AWS", [])):
            return True
    return False


_VAR = re.compile(r"\$\{([^}]*)\}")


def _pmapper_key_spellings(request: Request) -> set[str]:
    """The exact key spellings PMapper can substitute into `${...}` (it replaces only exact,
    case-sensitive matches of its context keys)."""
    principal = request.principal
    keys = set(request.context) | {"aws:PrincipalArn", "aws:PrincipalAccount", "aws:userid"}
    keys |= {f"aws:PrincipalTag/{k}" for k in {**principal.tags, **principal.session_tags}}
    if ":user/" in principal.arn:
        keys.add("aws:username")
    return keys


def _variables_differ(request: Request, policies: PolicySet) -> bool:
    for _, _, values in _conditions(request, policies):
        if any(isinstance(v, str) and "${" in v for v in values):
            return True
    spellings = _pmapper_key_spellings(request)
    context = effective_context(request)
    for policy, _ in _all_policies(request, policies):
        version = policy.document.get("Version")
        for stmt in _statements(policy):
            for pattern in _as_list(stmt.get("Resource", [])) + _as_list(
                stmt.get("NotResource", [])
            ):
                for body in _VAR.findall(pattern):
                    if version != "2012-10-17" or body not in spellings:
                        return True
                    value = context.get(body.lower(), [""])[0]
                    if "*" in value or "?" in value:
                        return True
    return False


_PMAPPER_INFERRED = {"aws:securetransport", "aws:currenttime", "aws:epochtime", "aws:userid"}


def _inferred_key_used(request: Request, policies: PolicySet) -> bool:
    given = {k.lower() for k in request.context}
    return any(
        key.lower() in _PMAPPER_INFERRED and key.lower() not in given
        for _, key, _ in _conditions(request, policies)
    )


_BROKEN_IFEXISTS = ("Numeric", "Date", "IpAddress", "BinaryEquals")


def _operator_forms_differ(request: Request, policies: PolicySet) -> bool:
    for operator, _, _ in _conditions(request, policies):
        op = parse_condition_operator(operator)
        if op.if_exists and op.base.startswith(_BROKEN_IFEXISTS):
            return True
        if op.set_operator and not op.base.startswith("String"):
            return True
        if op.set_operator and op.if_exists:
            return True
        if op.set_operator == "ForAnyValue" and op.negated:
            return True
    return False


def _string_not_like_absent(request: Request, policies: PolicySet) -> bool:
    context = effective_context(request)
    return any(
        operator == "StringNotLike" and key.lower() not in context
        for operator, key, _ in _conditions(request, policies)
    )


def _multi_key_for_any_value(request: Request, policies: PolicySet) -> bool:
    for _, stmt in _all_statements(request, policies):
        for operator, block in stmt.get("Condition", {}).items():
            if operator.startswith("ForAnyValue:") and len(block) > 1:
                return True
    return False


_PLAIN_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?")
_ZONED_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)|\d+")


def _value_formats_differ(request: Request, policies: PolicySet) -> bool:
    """Formats PMapper parses differently: JSON non-string condition values, Bool context
    values other than true/false, numbers `ast.literal_eval` rejects, dates without a zone
    (naive vs aware comparison), and empty strings (PMapper's Null treats "" as absent)."""
    context = effective_context(request)
    for operator, key, values in _conditions(request, policies):
        if any(not isinstance(v, str) for v in values):
            return True
        family = parse_condition_operator(operator).family
        present = context.get(key.lower(), [])
        if family == "bool" and any(v not in ("true", "false") for v in present):
            return True
        if family.startswith("num") and not all(
            _PLAIN_NUMBER.fullmatch(v) for v in values + present
        ):
            return True
        if family.startswith("date") and not all(
            _ZONED_DATE.fullmatch(v) for v in values + present
        ):
            return True
    return any(v == "" for values in context.values() for v in values)


def _pmapper_arn_like(pattern: str, value: str) -> bool:
    """PMapper's ArnLike: whole-string wildcard match, case-insensitive; non-ARNs skipped."""
    if len(value.split(":")) < 6 or not value.startswith("arn"):
        return False
    return wildcard_to_regex(pattern, True).fullmatch(value) is not None


def _arn_operator_differs(request: Request, policies: PolicySet) -> bool:
    context = effective_context(request)
    for operator, key, values in _conditions(request, policies):
        if parse_condition_operator(operator).family != "arn":
            continue
        for value in context.get(key.lower(), []):
            if len(value.split(":")) < 6:
                return True  # PMapper's negated ARN operators deny non-ARN values
            for pattern in values:
                ours = _arn_components_match(pattern, value)
                if ours != _pmapper_arn_like(pattern, value):
                    return True
    return False


def _arn_components_match(pattern: str, value: str) -> bool:
    """Our ArnLike: each of the six components matched separately, case-sensitively."""
    parts, pieces = value.split(":", 5), pattern.split(":", 5)
    if len(parts) != 6 or len(pieces) != 6:
        return False
    return all(wildcard_to_regex(p, False).fullmatch(v) for p, v in zip(pieces, parts, strict=True))


def _resource_case_differs(request: Request, policies: PolicySet) -> bool:
    for pattern in _patterns(request, policies, "Resource", "NotResource"):
        if "${" in pattern:
            continue
        sensitive = resource_matches(pattern, request.resource)
        if sensitive != bool(wildcard_to_regex(pattern, True).fullmatch(request.resource)):
            return True
    return False


_REGEX_META = re.compile(r"[+()\[\]{}|\\]")


def _regex_metacharacters(request: Request, policies: PolicySet) -> bool:
    elements = ("Action", "NotAction", "Resource", "NotResource")
    texts = list(_patterns(request, policies, *elements))
    texts += [
        str(v)
        for operator, _, values in _conditions(request, policies)
        if "Like" in operator or operator.startswith("Arn")
        for v in values
    ]
    return any(_REGEX_META.search(_VAR.sub("", text)) for text in texts)


def _uppercase_sqs_sns(request: Request, policies: PolicySet) -> bool:
    if policies.resource is None:
        return False
    actions = [request.action]
    for stmt in _statements(policies.resource):
        actions += _as_list(stmt.get("Action", [])) + _as_list(stmt.get("NotAction", []))
    return any(a.startswith(("SQS", "SNS")) for a in actions)


def _unknown_operator(request: Request, policies: PolicySet) -> bool:
    for _, stmt in _all_statements(request, policies):
        for operator in stmt.get("Condition", {}):
            try:
                parse_condition_operator(operator)
            except Unsupported:
                return True
    return False


def _strict_kind_mismatch(request: Request, policies: PolicySet) -> bool:
    service = request.resource.split(":")[2] if request.resource.count(":") >= 5 else ""
    strict = policies.resource_kind in ("kms", "trust")
    return strict != (service in ("iam", "kms")) or (strict and policies.resource is None)


# ---------------------------------------------------------------------------------------------
# The deviation table
# ---------------------------------------------------------------------------------------------

Predicate = Callable[[Request, PolicySet], bool]


@dataclass(frozen=True)
class Deviation:
    id: str
    summary: str
    explanation: str
    applies: Predicate


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "unknown-operator",
        "PMapper does not reject condition operators it does not know",
        "It dispatches on substrings of the operator name: an unknown name without a family "
        "word (e.g. ListContains) is skipped, so its condition is true; StringStartsWith "
        "evaluates to false. We raise Unsupported (fail closed): such cases cannot be compared.",
        _unknown_operator,
    ),
    Deviation(
        "principal-not-user-or-role",
        "PMapper models only IAM users and roles as callers",
        "Its Node must be a user or role ARN: service and federated principals cannot be "
        "expressed.",
        lambda r, p: ":role/" not in r.principal.arn and ":user/" not in r.principal.arn,
    ),
    Deviation(
        "resource-arn-case",
        "PMapper matches resource ARNs case-insensitively",
        "Its pattern compiler uses re.IGNORECASE for Action and Resource alike; AWS matches "
        "resource ARNs case-sensitively (IAM JSON policy elements: Resource).",
        _resource_case_differs,
    ),
    Deviation(
        "role-arn-bypasses-limits",
        "A resource policy naming the role ARN bypasses the role's boundary and session policy",
        "PMapper treats a same-account Principal equal to the node ARN as final (NODE_MATCH). "
        "AWS: grants to a role ARN 'are limited by an implicit deny in a permissions boundary "
        "or session policy' (Policy evaluation logic).",
        lambda r, p: (
            _same_account(r)
            and (p.boundary is not None or bool(p.session))
            and PrincipalMatch.ROLE in _resource_allow_matches(r, p)
        ),
    ),
    Deviation(
        "account-principal-same-account",
        "Same-account grants to the account (or {'AWS': '*'}) need an identity policy in PMapper",
        "PMapper's ROOT_MATCH falls through to the identity policies; we let an account grant "
        "allow within the account, limited by boundary and session policy like a role-ARN "
        "grant, and treat {'AWS': '*'} like '*' (a direct grant).",
        lambda r, p: (
            _same_account(r)
            and (
                (
                    p.resource_kind == "generic"
                    and PrincipalMatch.ACCOUNT in _resource_allow_matches(r, p)
                )
                or _names_aws_star(p)
            )
        ),
    ),
    Deviation(
        "session-principal",
        "PMapper has no role sessions",
        "A resource policy naming an assumed-role session ARN never matches a PMapper node.",
        lambda r, p: (
            r.principal.session_arn is not None
            and any(
                r.principal.session_arn in _as_list(stmt.get("Principal", {}).get("AWS", []))
                for stmt in (_statements(p.resource) if p.resource else [])
                if isinstance(stmt.get("Principal"), dict)
            )
        ),
    ),
    Deviation(
        "not-principal",
        "PMapper's NotPrincipal exempts a caller when any one of its identities is listed",
        "AWS checks account, role and session separately, so a NotPrincipal must list all of "
        "them (AWS JSON policy elements: NotPrincipal); and a Deny with NotPrincipal always "
        "hits principals with a permissions boundary (Permissions boundaries for IAM entities).",
        lambda r, p: any("NotPrincipal" in stmt for _, stmt in _all_statements(r, p)),
    ),
    Deviation(
        "rcp",
        "PMapper has no resource control policies",
        "RCPs are not an input of local_check_authorization_full.",
        lambda r, p: bool(p.rcps),
    ),
    Deviation(
        "vpc-endpoint-policy",
        "PMapper has no VPC endpoint policies",
        "Endpoint policies are not an input of local_check_authorization_full.",
        lambda r, p: bool(r.via_endpoint_policies),
    ),
    Deviation(
        "multiple-session-policies",
        "PMapper takes a single session policy",
        "AWS accepts an inline session policy plus managed session policies; only the first "
        "can be passed to PMapper.",
        lambda r, p: len(p.session) > 1,
    ),
    Deviation(
        "strict-kind-by-service",
        "PMapper picks key/trust-policy rules from the resource ARN's service",
        "It applies 'the resource policy must allow' to every iam/kms resource, and only when "
        "a resource policy is passed; we apply it by PolicySet.resource_kind, and deny when a "
        "KMS key or role has no key/trust policy.",
        _strict_kind_mismatch,
    ),
    Deviation(
        "cross-account-without-resource-policy",
        "PMapper skips the cross-account check when no resource policy is given",
        "AWS: cross-account access needs the resource-based policy too (Cross-account policy "
        "evaluation logic).",
        lambda r, p: not _same_account(r) and p.resource is None,
    ),
    Deviation(
        "service-linked-role-scp",
        "PMapper exempts roles named AWSServiceRoleFor* from SCPs",
        "That exemption is right for service-linked roles, but PolicySet.scps already holds "
        "only the SCPs that apply; we evaluate what we are given.",
        lambda r, p: bool(p.scps) and "role/AWSServiceRoleFor" in r.principal.arn,
    ),
    Deviation(
        "inferred-context-keys",
        "PMapper fills aws:SecureTransport, aws:CurrentTime, aws:EpochTime, aws:userid",
        "When absent it assumes HTTPS and the current time; we fill only keys derived from the "
        "principal and leave the rest to the request context.",
        _inferred_key_used,
    ),
    Deviation(
        "policy-variables",
        "PMapper's policy variables",
        "It substitutes only in Resource/NotResource, under every Version, with exact-case key "
        "names, no defaults or escapes, inserts values as wildcards and leaves unresolved "
        "variables literal; AWS: 2012-10-17 only, String/ARN condition values too, values "
        "literal, an unresolvable variable invalidates the statement (Variables and tags).",
        _variables_differ,
    ),
    Deviation(
        "operator-forms",
        "PMapper mis-evaluates IfExists and set prefixes outside the String operators",
        "It compares operator names exactly (e.g. block == 'NumericLessThan'), so "
        "NumericLessThanIfExists, IpAddressIfExists, ForAnyValue:NumericEquals... fall into "
        "the wrong branch; ForAnyValue with negated operators and set prefixes with IfExists "
        "are also wrong.",
        _operator_forms_differ,
    ),
    Deviation(
        "string-not-like-missing-key",
        "PMapper's StringNotLike is false when the key is missing",
        "AWS: negated operators are true when the key is absent (Condition operators).",
        _string_not_like_absent,
    ),
    Deviation(
        "for-any-value-multiple-keys",
        "PMapper ORs the keys of one ForAnyValue block",
        "AWS ANDs the keys of an operator block (Condition element evaluation logic).",
        _multi_key_for_any_value,
    ),
    Deviation(
        "arn-operators",
        "PMapper's Arn* operators match the whole string, case-insensitively",
        "AWS checks each of the six ARN components separately, case-sensitively (Condition "
        "operators, ARN); PMapper's negated ARN operators also deny non-ARN values.",
        _arn_operator_differs,
    ),
    Deviation(
        "value-formats",
        "PMapper parses some condition values differently",
        "JSON booleans/numbers in conditions, Bool context values other than true/false, "
        "numbers ast.literal_eval rejects, dates without a zone, empty strings.",
        _value_formats_differ,
    ),
    Deviation(
        "regex-metacharacters",
        "PMapper escapes only '.', '$' and '^' when compiling wildcards",
        "Other regex metacharacters in Action/Resource/Like patterns act as regex syntax.",
        _regex_metacharacters,
    ),
    Deviation(
        "uppercase-sqs-sns-action",
        "PMapper's SQS/SNS special case in resource policies matches any action",
        "For actions or patterns starting with 'SQS'/'SNS' it compares the requested action "
        "with itself (a bug), so every such statement matches.",
        _uppercase_sqs_sns,
    ),
)


def deviation_for(request: Request, policies: PolicySet) -> Deviation | None:
    """The first listed deviation this case hits, or None when the two must agree."""
    return next((d for d in DEVIATIONS if d.applies(request, policies)), None)


# ---------------------------------------------------------------------------------------------
# Conformance cases through PMapper
# ---------------------------------------------------------------------------------------------

CASES = conformance_cases()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_conformance_case_agrees_with_pmapper(case: Case) -> None:
    deviation = deviation_for(case.request, case.policies)
    if deviation is not None:
        pytest.skip(f"PMapper deviation {deviation.id}: {deviation.summary}")
    assert pmapper_allows(case.request, case.policies) is case.allowed
    assert evaluate(case.request, case.policies).allowed is case.allowed


def test_most_conformance_cases_are_compared() -> None:
    """The deviation filter must not swallow the table."""
    compared = [c.id for c in CASES if deviation_for(c.request, c.policies) is None]
    assert len(compared) >= len(CASES) * 0.6, compared


# ---------------------------------------------------------------------------------------------
# Witnesses: each deviation is real (PMapper decides differently there)
# ---------------------------------------------------------------------------------------------

A = "111111111111"
B = "222222222222"
APP = Principal(
    f"arn:aws:iam::{A}:role/app", A, f"arn:aws:sts::{A}:assumed-role/app/s", {"team": "red"}
)
OBJ = "arn:aws:s3:::data/red/x"


def _p(*statements: dict[str, Any], name: str = "p") -> Policy:
    return Policy({"Version": "2012-10-17", "Statement": list(statements)}, name)


def _allow(action: Any = "*", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def _r(
    principal: Principal = APP, action: str = "s3:GetObject", resource: str = OBJ, **kw: Any
) -> Request:
    return Request(principal, action, resource, kw.pop("resource_account", A), **kw)


ALL = _p(_allow())
S3_READ = _p(_allow("s3:GetObject"))


def _cond(condition: dict[str, Any]) -> PolicySet:
    return PolicySet([_p(_allow(Condition=condition))])


WITNESSES: dict[str, tuple[Request, PolicySet]] = {
    "resource-arn-case": (_r(), PolicySet([_p(_allow("s3:*", "arn:aws:s3:::DATA/*"))])),
    "role-arn-bypasses-limits": (
        _r(),
        PolicySet(
            boundary=_p(_allow("ec2:*")),
            resource=_p(_allow("s3:*", Principal={"AWS": APP.arn})),
        ),
    ),
    "account-principal-same-account": (
        _r(),
        PolicySet(resource=_p(_allow("s3:*", Principal={"AWS": A}))),
    ),
    "session-principal": (
        _r(),
        PolicySet(resource=_p(_allow("s3:*", Principal={"AWS": APP.session_arn}))),
    ),
    "not-principal": (
        _r(),
        PolicySet(
            [ALL],
            resource=_p(
                {"Effect": "Deny", "NotPrincipal": {"AWS": A}, "Action": "s3:*", "Resource": "*"}
            ),
        ),
    ),
    "rcp": (_r(), PolicySet([ALL], rcps=[[_p(_allow("sqs:*", Principal="*"))]])),
    "vpc-endpoint-policy": (
        _r(
            action="s3:PutObject",
            via_endpoint_policies=(_p(_allow("s3:GetObject", Principal="*")),),
        ),
        PolicySet([ALL]),
    ),
    "multiple-session-policies": (_r(), PolicySet([ALL], session=[_p(_allow("ec2:*")), S3_READ])),
    "strict-kind-by-service": (
        _r(action="kms:Decrypt", resource=f"arn:aws:kms:us-east-1:{A}:key/k"),
        PolicySet([ALL], resource_kind="kms"),
    ),
    "cross-account-without-resource-policy": (_r(resource_account=B), PolicySet([ALL])),
    "service-linked-role-scp": (
        _r(Principal(f"arn:aws:iam::{A}:role/AWSServiceRoleForX", A)),
        PolicySet([ALL], scps=[[_p(_allow("ec2:*"))]]),
    ),
    "inferred-context-keys": (_r(), _cond({"Null": {"aws:SecureTransport": "true"}})),
    "policy-variables": (
        _r(context={"aws:ResourceTag/team": "red"}),
        _cond({"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"}}),
    ),
    "operator-forms": (
        _r(context={"s3:max-keys": "5"}),
        _cond({"NumericLessThanIfExists": {"s3:max-keys": "10"}}),
    ),
    "string-not-like-missing-key": (_r(), _cond({"StringNotLike": {"aws:SourceVpce": "vpce-1*"}})),
    "for-any-value-multiple-keys": (
        _r(context={"k1": ["a"], "k2": ["c"]}),
        _cond({"ForAnyValue:StringEquals": {"k1": "a", "k2": "b"}}),
    ),
    "arn-operators": (_r(), _cond({"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{A}:role/APP"}})),
    "value-formats": (
        _r(context={"aws:ViaAWSService": "true"}),
        _cond({"Bool": {"aws:ViaAWSService": True}}),
    ),
    "regex-metacharacters": (
        _r(),
        PolicySet([_p(_allow("s3:*", "arn:aws:s3:::data/(red|blue)/*"))]),
    ),
    "uppercase-sqs-sns-action": (
        _r(action="SQS:SendMessage", resource=f"arn:aws:sqs:us-east-1:{A}:q"),
        PolicySet(resource=_p(_allow("SQS:DeleteQueue", Principal="*"))),
    ),
}


@pytest.mark.parametrize("deviation", DEVIATIONS, ids=[d.id for d in DEVIATIONS])
def test_deviation_is_real(deviation: Deviation) -> None:
    if deviation.id == "unknown-operator":
        request, policies = _r(), _cond({"ListContains": {"k": "v"}})
        assert deviation_for(request, policies) is deviation
        assert pmapper_allows(request, policies) is True
        with pytest.raises(Unsupported):
            evaluate(request, policies)
        return
    if deviation.id == "principal-not-user-or-role":
        request, policies = _r(Principal("ecs-tasks.amazonaws.com", None)), PolicySet()
        assert deviation_for(request, policies) is deviation
        with pytest.raises(ValueError, match="IAM user or role"):
            pmapper_allows(request, policies)
        return
    request, policies = WITNESSES[deviation.id]
    assert deviation.applies(request, policies)
    assert pmapper_allows(request, policies) is not evaluate(request, policies).allowed


# ---------------------------------------------------------------------------------------------
# Generated policies and requests
# ---------------------------------------------------------------------------------------------

PRINCIPALS = (
    APP,
    Principal(
        f"arn:aws:iam::{A}:role/ops", A, f"arn:aws:sts::{A}:assumed-role/ops/s", {"team": "blue"}
    ),
    Principal(f"arn:aws:iam::{A}:user/alice", A, None, {"team": "red", "env": "dev"}),
    Principal(
        f"arn:aws:iam::{B}:role/app", B, f"arn:aws:sts::{B}:assumed-role/app/s", {"team": "red"}
    ),
)
KEY_ARN = f"arn:aws:kms:us-east-1:{A}:key/k1"
ACTIONS = ("s3:GetObject", "s3:PutObject", "sqs:SendMessage", "ec2:RunInstances", "kms:Decrypt")
RESOURCES = (
    "arn:aws:s3:::data/red/x",
    "arn:aws:s3:::data/blue/x",
    "arn:aws:s3:::logs/x",
    f"arn:aws:sqs:us-east-1:{A}:q",
    KEY_ARN,
)
ACTION_PATTERNS = (
    "*",
    "s3:*",
    "s3:Get*",
    "s3:GetObjec?",
    "s3:PutObject",
    "sqs:*",
    "ec2:Run*",
    "kms:*",
)
RESOURCE_PATTERNS = (
    "*",
    "arn:aws:s3:::data/*",
    "arn:aws:s3:::data/red/*",
    "arn:aws:s3:::*/x",
    "arn:aws:s3:::logs/?",
    "arn:aws:sqs:*",
    "arn:aws:kms:*:*:key/*",
    "arn:aws:s3:::data/${aws:PrincipalTag/team}/*",
)
CONDITIONS: tuple[tuple[str, str, list[str]], ...] = (
    ("StringEquals", "aws:PrincipalTag/team", ["red"]),
    ("StringNotEquals", "aws:PrincipalTag/team", ["red"]),
    ("StringEqualsIgnoreCase", "aws:PrincipalTag/team", ["RED"]),
    ("StringLike", "aws:SourceVpce", ["vpce-1*"]),
    ("StringNotLike", "aws:SourceVpce", ["vpce-2*"]),
    ("StringEqualsIfExists", "aws:SourceVpce", ["vpce-1a"]),
    ("StringNotEqualsIfExists", "aws:SourceVpce", ["vpce-1a", "vpce-3"]),
    ("NumericLessThan", "s3:max-keys", ["10"]),
    ("NumericGreaterThanEquals", "s3:max-keys", ["10"]),
    ("NumericNotEquals", "s3:max-keys", ["5"]),
    ("IpAddress", "aws:SourceIp", ["10.0.0.0/8"]),
    ("NotIpAddress", "aws:SourceIp", ["10.0.0.0/8", "172.16.0.0/12"]),
    ("Bool", "aws:ViaAWSService", ["true"]),
    ("Null", "aws:SourceVpce", ["true"]),
    ("Null", "aws:SourceVpce", ["false"]),
    ("DateGreaterThan", "aws:TokenIssueTime", ["2020-01-01T00:00:00Z"]),
    ("ArnLike", "aws:PrincipalArn", [f"arn:aws:iam::{A}:role/*"]),
    ("ArnNotEquals", "aws:PrincipalArn", [f"arn:aws:iam::{A}:role/app"]),
    ("StringEquals", "aws:PrincipalAccount", [A]),
    ("ForAllValues:StringEquals", "aws:TagKeys", ["team", "env"]),
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["env"]),
)
CONTEXT_OPTIONS: dict[str, tuple[Any, ...]] = {
    "aws:SourceVpce": ("vpce-1a", "vpce-2b"),
    "s3:max-keys": ("5", "10", "50"),
    "aws:SourceIp": ("10.1.2.3", "192.168.0.1"),
    "aws:ViaAWSService": ("true", "false"),
    "aws:TagKeys": (["team"], ["team", "env"], ["owner"], []),
    "aws:TokenIssueTime": ("2019-06-01T00:00:00Z", "2021-06-01T00:00:00Z"),
}
RESOURCE_PRINCIPALS: tuple[Any, ...] = (
    "*",
    {"AWS": A},
    {"AWS": f"arn:aws:iam::{A}:root"},
    {"AWS": APP.arn},
    {"AWS": PRINCIPALS[2].arn},
    {"AWS": B},
    {"AWS": PRINCIPALS[3].arn},
)


FULL_ACCESS = Policy({"Version": "2012-10-17", "Statement": [_allow()]}, "FullAWSAccess")


@st.composite
def statements(draw: st.DrawFn, request: Request, *, resource_policy: bool) -> dict[str, Any]:
    """One statement; its action and resource lean towards the request's own, so that a good
    share of the generated requests is allowed (a generator that only produces denials would
    let an evaluator that always denies pass)."""
    stmt: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow"] * 5 + ["Deny"]))}
    action = st.sampled_from(ACTION_PATTERNS) | st.just(request.action) | st.just(request.action)
    stmt["NotAction" if draw(st.integers(0, 5)) == 0 else "Action"] = draw(
        st.lists(action, min_size=1, max_size=2, unique=True)
    )
    resource = st.sampled_from(RESOURCE_PATTERNS) | st.just(request.resource) | st.just("*")
    stmt["NotResource" if draw(st.integers(0, 5)) == 0 else "Resource"] = draw(
        st.lists(resource, min_size=1, max_size=2, unique=True)
    )
    if resource_policy:
        stmt["Principal"] = draw(st.sampled_from(RESOURCE_PRINCIPALS))
    if draw(st.integers(0, 2)) == 0:
        chosen = draw(
            st.lists(st.sampled_from(CONDITIONS), min_size=1, max_size=2, unique_by=lambda c: c[:2])
        )
        condition: dict[str, dict[str, list[str]]] = {}
        for operator, key, values in chosen:
            condition.setdefault(operator, {})[key] = values
        stmt["Condition"] = condition
    return stmt


def policies_of(request: Request, *, resource_policy: bool, name: str) -> st.SearchStrategy[Policy]:
    return st.lists(
        statements(request, resource_policy=resource_policy), min_size=1, max_size=3
    ).map(lambda stmts: Policy({"Version": "2012-10-17", "Statement": stmts}, name))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Request, PolicySet]:
    principal = draw(st.sampled_from(PRINCIPALS))
    resource = draw(st.sampled_from(RESOURCES))
    keys = draw(st.lists(st.sampled_from(sorted(CONTEXT_OPTIONS)), unique=True, max_size=4))
    context = {key: draw(st.sampled_from(CONTEXT_OPTIONS[key])) for key in keys}
    request = Request(principal, draw(st.sampled_from(ACTIONS)), resource, A, context)

    def some(name: str, *, resource_policy: bool = False) -> st.SearchStrategy[Policy]:
        return policies_of(request, resource_policy=resource_policy, name=name)

    maybe = st.none() | st.none() | some("limit")
    # KMS keys and cross-account requests always get a resource policy (PMapper needs one to
    # apply the key-policy and cross-account rules; see the deviation table).
    needs_resource_policy = resource == KEY_ARN or principal.account != A
    resource_policy = some("resource", resource_policy=True)
    scp_level = st.sampled_from([FULL_ACCESS] * 3 + [None]).flatmap(
        lambda p: st.just(p) if p else some("scp")
    )
    policies = PolicySet(
        identity=draw(
            st.lists(some("identity"), min_size=draw(st.sampled_from([0, 1, 1])), max_size=2)
        ),
        boundary=draw(maybe),
        session=[s for s in [draw(maybe)] if s is not None],
        resource=draw(resource_policy if needs_resource_policy else st.none() | resource_policy),
        resource_kind="kms" if resource == KEY_ARN else "generic",
        scps=draw(st.lists(scp_level.map(lambda p: [p]), max_size=2)),
    )
    return request, policies


def test_generated_policies_agree_with_pmapper() -> None:
    """~200 generated (request, policies) pairs, deterministic. Pairs hitting a listed deviation
    are counted per deviation and reported (hypothesis `event`, and in the failure message);
    at least half of them must be compared, with both outcomes well represented."""
    tally: Counter[str] = Counter()

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(scenarios())
    def check(scenario: tuple[Request, PolicySet]) -> None:
        request, policies = scenario
        deviation = deviation_for(request, policies)
        if deviation is not None:
            tally[f"excluded: {deviation.id}"] += 1
            event(f"excluded by PMapper deviation: {deviation.id}")
            return
        ours = evaluate(request, policies)
        tally["compared"] += 1
        tally["allowed" if ours.allowed else "denied"] += 1
        tally[f"reason: {ours.reason}"] += 1
        assert pmapper_allows(request, policies) is ours.allowed, (request, policies, ours)

    check()
    assert tally["compared"] >= 100, tally
    assert tally["allowed"] >= 25 and tally["denied"] >= 25, tally
    assert tally["reason: explicit deny"] >= 5, tally
