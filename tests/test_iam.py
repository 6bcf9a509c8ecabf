"""Unit tests for `envfence.iam`: one group per element, operator family and combination rule.

Every test asserts an exact decision, and most come in pairs (one side allows, the other does
not), so that an evaluator that always says "allow" or always says "deny" fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from envfence.iam import (
    Policy,
    PolicySet,
    Principal,
    PrincipalMatch,
    Request,
    Unsupported,
    action_matches,
    effective_context,
    evaluate,
    parse_condition_operator,
    principal_match,
    resource_matches,
    statement_matches,
    substitute_variables,
    wildcard_to_regex,
)

ACCT = "111122223333"
OTHER = "444455556666"
ROLE = Principal(
    arn=f"arn:aws:iam::{ACCT}:role/app",
    account=ACCT,
    session_arn=f"arn:aws:sts::{ACCT}:assumed-role/app/s1",
    tags={"team": "red", "env": "prod"},
)
USER = Principal(arn=f"arn:aws:iam::{ACCT}:user/division/alice", account=ACCT)
SERVICE = Principal(arn="ecs-tasks.amazonaws.com", account=None)
OBJ = "arn:aws:s3:::data/red/file.txt"


def doc(*statements: dict[str, Any], version: str | None = "2012-10-17") -> dict[str, Any]:
    document: dict[str, Any] = {"Statement": list(statements)}
    if version:
        document["Version"] = version
    return document


def pol(*statements: dict[str, Any], name: str = "p", version: str | None = "2012-10-17") -> Policy:
    return Policy(doc(*statements, version=version), name)


def allow(action: Any = "*", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any = "*", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def req(
    principal: Principal = ROLE,
    action: str = "s3:GetObject",
    resource: str = OBJ,
    context: dict[str, Any] | None = None,
    **kw: Any,
) -> Request:
    return Request(principal, action, resource, context=context or {}, **kw)


def allowed(request: Request, policies: PolicySet) -> bool:
    return evaluate(request, policies).allowed


def cond_allows(condition: dict[str, Any], context: dict[str, Any] | None = None) -> bool:
    """Whether an identity policy with this one condition allows the default request."""
    return allowed(req(context=context), PolicySet([pol(allow(Condition=condition))]))


# ---------------------------------------------------------------------------------------------
# Wildcards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "arn", "expected"),
    [
        ("*", "arn:aws:s3:::anything/at:all", True),
        ("arn:aws:s3:::data/*", "arn:aws:s3:::data/red/file.txt", True),  # * crosses '/'
        ("arn:aws:*:file.txt", "arn:aws:s3:::data/red/file.txt", False),
        ("arn:aws:*file.txt", "arn:aws:s3:::data/red/file.txt", True),  # * crosses ':'
        ("arn:aws:s3:::data/re?/file.txt", "arn:aws:s3:::data/red/file.txt", True),
        ("arn:aws:s3:::data/r?/file.txt", "arn:aws:s3:::data/red/file.txt", False),  # ? is one
        ("arn:aws:s3:::data/red/file?txt", "arn:aws:s3:::data/red/file.txt", True),
        ("arn:aws:s3:::data/red/file.txt", "arn:aws:s3:::data/red/fileXtxt", False),  # . literal
        ("arn:aws:s3:::Data/*", "arn:aws:s3:::data/red/file.txt", False),  # case-sensitive
        ("arn:aws:s3:::data/(red|blue)/*", "arn:aws:s3:::data/red/x", False),  # no regex syntax
        ("arn:aws:s3:::data/(red|blue)/*", "arn:aws:s3:::data/(red|blue)/x", True),
        ("arn:aws:s3:::data", "arn:aws:s3:::data/red", False),  # whole-string match
    ],
)
def test_resource_matches(pattern: str, arn: str, expected: bool) -> None:
    assert resource_matches(pattern, arn) is expected


@pytest.mark.parametrize(
    ("pattern", "action", "expected"),
    [
        ("s3:GetObject", "s3:getobject", True),
        ("S3:GET*", "s3:GetObjectAcl", True),
        ("s3:Get*", "s3:PutObject", False),
        ("s3:GetObjec?", "s3:GetObject", True),
        ("s3:GetObjec?", "s3:GetObjects", False),
        ("*", "kms:Decrypt", True),
        ("s3:*", "s3express:CreateSession", False),
        ("s3*", "s3express:CreateSession", True),
    ],
)
def test_action_matches(pattern: str, action: str, expected: bool) -> None:
    assert action_matches(pattern, action) is expected


def test_wildcard_to_regex_flags() -> None:
    assert wildcard_to_regex("A*", True).fullmatch("abc")
    assert not wildcard_to_regex("A*", False).fullmatch("abc")
    assert wildcard_to_regex("a*", False).fullmatch("a\nb")  # * crosses every character


# ---------------------------------------------------------------------------------------------
# Policy variables
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "principal", "expected"),
    [
        ("home/${aws:username}/", USER, "home/alice/"),
        ("home/${aws:username}/", ROLE, None),  # no aws:username for roles
        ("${aws:PrincipalTag/team}", ROLE, "red"),
        ("${AWS:principaltag/TEAM}", ROLE, "red"),  # key names are case-insensitive
        ("${aws:PrincipalTag/missing, 'none'}", ROLE, "none"),
        ("${aws:PrincipalTag/team , 'none'}", ROLE, "red"),
        ("${aws:PrincipalTag/missing}", ROLE, None),
        ("a${*}b${?}c${$}d", ROLE, "a*b?c$d"),
        ("${aws:PrincipalArn}", ROLE, ROLE.arn),  # role ARN, not the session ARN
        ("${aws:PrincipalAccount}", ROLE, ACCT),
        ("no variables", ROLE, "no variables"),
    ],
)
def test_substitute_variables(value: str, principal: Principal, expected: str | None) -> None:
    assert substitute_variables(value, req(principal)) == expected


def test_session_tags_override_principal_tags() -> None:
    session = Principal(ROLE.arn, ACCT, ROLE.session_arn, {"team": "red"}, {"Team": "blue"})
    assert substitute_variables("${aws:PrincipalTag/team}", req(session)) == "blue"


def test_context_value_used_for_variable() -> None:
    request = req(context={"aws:SourceVpce": "vpce-1"})
    assert substitute_variables("${aws:sourcevpce}", request) == "vpce-1"


def test_multivalued_variable_fails_closed() -> None:
    with pytest.raises(Unsupported, match="multivalued"):
        substitute_variables("${aws:TagKeys}", req(context={"aws:TagKeys": ["a", "b"]}))


def test_malformed_variable_fails_closed() -> None:
    with pytest.raises(Unsupported, match="unsupported form"):
        substitute_variables("${aws:username, default-without-quotes}", req(USER))


def test_variable_in_resource() -> None:
    own = pol(allow("s3:*", "arn:aws:s3:::data/${aws:PrincipalTag/team}/*"))
    assert allowed(req(resource="arn:aws:s3:::data/red/x"), PolicySet([own]))
    assert not allowed(req(resource="arn:aws:s3:::data/blue/x"), PolicySet([own]))


def test_substituted_value_is_literal_not_wildcard() -> None:
    starry = Principal(ROLE.arn, ACCT, ROLE.session_arn, {"team": "*"})
    own = pol(allow("s3:*", "arn:aws:s3:::data/${aws:PrincipalTag/team}/*"))
    assert not allowed(req(starry, resource="arn:aws:s3:::data/red/x"), PolicySet([own]))
    assert allowed(req(starry, resource="arn:aws:s3:::data/*/x"), PolicySet([own]))


def test_escaped_star_is_literal() -> None:
    literal = pol(allow("s3:*", "arn:aws:s3:::data/${*}"))
    assert allowed(req(resource="arn:aws:s3:::data/*"), PolicySet([literal]))
    assert not allowed(req(resource="arn:aws:s3:::data/red"), PolicySet([literal]))


def test_version_2008_keeps_variables_literal() -> None:
    for version in ("2008-10-17", None):
        old = pol(allow("s3:*", "arn:aws:s3:::data/${aws:PrincipalTag/team}/*"), version=version)
        assert not allowed(req(resource="arn:aws:s3:::data/red/x"), PolicySet([old]))
        literal = "arn:aws:s3:::data/${aws:PrincipalTag/team}/x"
        assert allowed(req(resource=literal), PolicySet([old]))


def test_unresolved_variable_voids_statement_even_when_negated() -> None:
    # A Deny whose StringNotEquals value cannot be resolved does not apply (the statement is
    # invalid), so the Allow stands; with the tag present the Deny applies.
    policies = PolicySet(
        [
            pol(
                allow(),
                deny(Condition={"StringNotEquals": {"s3:prefix": "${aws:PrincipalTag/dept}"}}),
            )
        ]
    )
    assert allowed(req(context={"s3:prefix": "x"}), policies)
    tagged = Principal(ROLE.arn, ACCT, ROLE.session_arn, {"dept": "y"})
    assert not allowed(req(tagged, context={"s3:prefix": "x"}), policies)


def test_variables_in_string_condition() -> None:
    condition = {"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"}}
    assert cond_allows(condition, {"aws:ResourceTag/team": "red"})
    assert not cond_allows(condition, {"aws:ResourceTag/team": "blue"})


def test_variables_not_substituted_in_numeric_condition() -> None:
    with pytest.raises(ValueError, match="not a number"):
        cond_allows({"NumericEquals": {"s3:max-keys": "${aws:PrincipalTag/n}"}}, {"s3:max-keys": 1})


# ---------------------------------------------------------------------------------------------
# Statement elements
# ---------------------------------------------------------------------------------------------


def test_notaction_matches_every_other_service() -> None:
    everything_but_iam = pol({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    for action in ("s3:GetObject", "kms:Decrypt", "sts:AssumeRole", "ec2:RunInstances"):
        assert allowed(req(action=action), PolicySet([everything_but_iam]))
    assert not allowed(req(action="iam:CreateUser"), PolicySet([everything_but_iam]))
    assert not allowed(req(action="IAM:createuser"), PolicySet([everything_but_iam]))


def test_notresource_matches_everything_else() -> None:
    outside = pol({"Effect": "Allow", "Action": "*", "NotResource": "arn:aws:s3:::data/*"})
    assert allowed(req(resource="arn:aws:sqs:us-east-1:1:q"), PolicySet([outside]))
    assert allowed(req(resource="arn:aws:s3:::Data/x"), PolicySet([outside]))  # case differs
    assert not allowed(req(resource="arn:aws:s3:::data/x"), PolicySet([outside]))


@pytest.mark.parametrize(
    ("statement", "error", "message"),
    [
        (
            {"Effect": "Allow", "Action": "*", "NotAction": "s3:*", "Resource": "*"},
            ValueError,
            "exactly one",
        ),
        ({"Effect": "Allow", "Resource": "*"}, ValueError, "exactly one"),
        (
            {"Effect": "Allow", "Action": "*", "Resource": "*", "NotResource": "x"},
            ValueError,
            "both",
        ),
        ({"Effect": "Allow", "Action": "*"}, ValueError, "Resource or NotResource"),
        ({"Effect": "allow", "Action": "*", "Resource": "*"}, ValueError, "Effect"),
        (
            {"Effect": "Allow", "Action": "*", "Resource": "*", "Principal": "*"},
            ValueError,
            "not allowed",
        ),
        ({"Effect": "Allow", "Action": "*", "Resource": "*", "Foo": 1}, Unsupported, "Foo"),
        ({"Effect": "Allow", "Action": 3, "Resource": "*"}, ValueError, "Action must be"),
    ],
)
def test_malformed_identity_statements(
    statement: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        evaluate(req(), PolicySet([pol(statement)]))


def test_malformed_documents() -> None:
    with pytest.raises(Unsupported, match="Version"):
        evaluate(req(), PolicySet([Policy({"Version": "2020-01-01", "Statement": []}, "p")]))
    with pytest.raises(Unsupported, match="NotStatement"):
        evaluate(req(), PolicySet([Policy({"Statement": [], "NotStatement": []}, "p")]))
    with pytest.raises(ValueError, match="no Statement"):
        evaluate(req(), PolicySet([Policy({"Version": "2012-10-17"}, "p")]))


def test_single_statement_object_is_accepted() -> None:
    policy = Policy({"Version": "2012-10-17", "Statement": allow("s3:*")}, "p")
    assert allowed(req(), PolicySet([policy]))


def test_statement_matches_helper() -> None:
    stmt = allow("s3:Get*", "arn:aws:s3:::data/*")
    assert statement_matches(stmt, req(), check_principal=False)
    assert not statement_matches(stmt, req(action="s3:PutObject"), check_principal=False)
    resource_stmt = {**stmt, "Principal": {"AWS": ROLE.arn}}
    assert statement_matches(resource_stmt, req(), check_principal=True)
    assert not statement_matches(resource_stmt, req(USER), check_principal=True)
    variable = allow("s3:*", "arn:aws:s3:::data/${aws:PrincipalTag/team}/*")
    assert statement_matches(variable, req(), check_principal=False)
    assert not statement_matches(variable, req(), check_principal=False, version="2008-10-17")


# ---------------------------------------------------------------------------------------------
# Condition operators: one table per family
# ---------------------------------------------------------------------------------------------

OPERATOR_CASES: list[tuple[str, Any, Any, bool]] = [
    # (operator, policy value(s), context value, expected)
    ("StringEquals", "abc", "abc", True),
    ("StringEquals", "abc", "ABC", False),
    ("StringEquals", ["x", "abc"], "abc", True),  # OR across values
    ("StringEquals", "a*", "abc", False),  # no wildcards
    ("StringNotEquals", "abc", "abc", False),
    ("StringNotEquals", ["x", "y"], "abc", True),
    ("StringNotEquals", ["x", "abc"], "abc", False),  # NOR across values
    ("StringEqualsIgnoreCase", "ABC", "abc", True),
    ("StringEqualsIgnoreCase", "ABC", "abd", False),
    ("StringNotEqualsIgnoreCase", "ABC", "abc", False),
    ("StringNotEqualsIgnoreCase", "ABC", "abd", True),
    ("StringLike", "a*c", "abbbc", True),
    ("StringLike", "a?c", "abbc", False),
    ("StringLike", "A*", "abc", False),  # case-sensitive
    ("StringLike", "a.c", "abc", False),
    ("StringNotLike", "a*", "abc", False),
    ("StringNotLike", ["x*", "y*"], "abc", True),
    ("NumericEquals", "10", "10.0", True),
    ("NumericEquals", "10", "11", False),
    ("NumericNotEquals", "10", "11", True),
    ("NumericNotEquals", ["10", "11"], "11", False),
    ("NumericLessThan", "10", "9.5", True),
    ("NumericLessThan", "10", "10", False),
    ("NumericLessThanEquals", "10", 10, True),
    ("NumericLessThanEquals", "10", "11", False),
    ("NumericGreaterThan", "10", "11", True),
    ("NumericGreaterThan", "10", "10", False),
    ("NumericGreaterThanEquals", "10", "10", True),
    ("NumericGreaterThanEquals", "10", "-3", False),
    ("DateEquals", "2020-01-01T00:00:00Z", "1577836800", True),  # ISO 8601 vs epoch
    ("DateEquals", "2020-01-01T00:00:00Z", "2020-01-01T01:00:00+01:00", True),
    ("DateEquals", "2020-01-01T00:00:00Z", "2020-01-01T00:00:01Z", False),
    ("DateNotEquals", "2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z", True),
    ("DateNotEquals", "2020-01-01", "2020-01-01T00:00:00Z", False),  # date-only is midnight UTC
    ("DateLessThan", "2020-01-01T00:00:00Z", "2019-12-31T23:59:59Z", True),
    ("DateLessThan", "2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", False),
    ("DateLessThanEquals", "2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", True),
    ("DateLessThanEquals", "1577836800", "2020-01-01T00:00:01Z", False),
    ("DateGreaterThan", "2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z", True),
    ("DateGreaterThan", "2020-01-01T00:00:00Z", "2019-01-01T00:00:00Z", False),
    ("DateGreaterThanEquals", "2020-01-01T00:00:00Z", "1577836800", True),
    ("DateGreaterThanEquals", "2020-01-01T00:00:00Z", "1577836799", False),
    ("Bool", "true", "true", True),
    ("Bool", "true", True, True),
    ("Bool", True, "true", True),  # JSON boolean in the policy
    ("Bool", "false", "true", False),
    ("Bool", "false", False, True),
    ("BinaryEquals", "QmluYXJ5VmFsdWVJbkJhc2U2NA==", "QmluYXJ5VmFsdWVJbkJhc2U2NA==", True),
    ("BinaryEquals", "QmluYXJ5VmFsdWVJbkJhc2U2NA==", "QmluYXJ5", False),
    ("IpAddress", "203.0.113.0/24", "203.0.113.255", True),
    ("IpAddress", "203.0.113.0/24", "203.0.114.1", False),
    ("IpAddress", "203.0.113.7", "203.0.113.7", True),  # no prefix means /32
    ("IpAddress", "203.0.113.7", "203.0.113.8", False),
    ("IpAddress", "2001:DB8:1234:5678::/64", "2001:db8:1234:5678:ffff::1", True),
    ("IpAddress", "2001:DB8:1234:5678::/64", "2001:db8:1234:5679::1", False),
    ("IpAddress", "0.0.0.0/0", "2001:db8::1", False),  # families do not mix
    ("NotIpAddress", "203.0.113.0/24", "198.51.100.1", True),
    ("NotIpAddress", "203.0.113.0/24", "203.0.113.1", False),
    (
        "ArnEquals",
        "arn:aws:sns:us-east-1:111122223333:topic",
        "arn:aws:sns:us-east-1:111122223333:topic",
        True,
    ),
    ("ArnEquals", "arn:aws:sns:*:111122223333:*", "arn:aws:sns:eu-west-1:111122223333:t", True),
    ("ArnLike", "arn:aws:sns:*:111122223333:*", "arn:aws:sns:eu-west-1:111122223333:t", True),
    ("ArnLike", "arn:aws:sns:*:111122223333:*", "arn:aws:SNS:eu-west-1:111122223333:t", False),
    ("ArnLike", "arn:aws:s3:::b/*", "arn:aws:s3:::b/x:y", True),  # last component keeps ':'
    ("ArnLike", "arn:aws:*:us-east-1:1:x", "arn:aws:sns:eu:1:us-east-1:1:x", False),
    ("ArnLike", "arn:aws:sns:*:*:*", "not-an-arn", False),
    ("ArnNotEquals", "arn:aws:sns:*:111122223333:*", "arn:aws:sns:eu-west-1:444455556666:t", True),
    ("ArnNotLike", "arn:aws:sns:*:111122223333:*", "arn:aws:sns:eu-west-1:111122223333:t", False),
]


@pytest.mark.parametrize(("operator", "values", "context", "expected"), OPERATOR_CASES)
def test_condition_operator(operator: str, values: Any, context: Any, expected: bool) -> None:
    assert cond_allows({operator: {"test:Key": values}}, {"test:Key": context}) is expected


POSITIVE = [
    "StringEquals",
    "StringEqualsIgnoreCase",
    "StringLike",
    "NumericEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "DateEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "Bool",
    "BinaryEquals",
    "IpAddress",
    "ArnEquals",
    "ArnLike",
]
NEGATED = [
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringNotLike",
    "NumericNotEquals",
    "DateNotEquals",
    "NotIpAddress",
    "ArnNotEquals",
    "ArnNotLike",
]
SAMPLE = {
    "String": "x",
    "Numeric": "1",
    "Date": "2020-01-01T00:00:00Z",
    "Bool": "true",
    "Binary": "eA==",
    "IpAddress": "10.0.0.0/8",
    "NotIpAddress": "10.0.0.0/8",
    "Arn": "arn:aws:s3:::x",
}


def _sample(operator: str) -> str:
    return next(v for prefix, v in SAMPLE.items() if operator.startswith(prefix))


@pytest.mark.parametrize("operator", POSITIVE)
def test_missing_key_positive_operator_is_false(operator: str) -> None:
    assert cond_allows({operator: {"test:Absent": _sample(operator)}}) is False
    assert cond_allows({f"{operator}IfExists": {"test:Absent": _sample(operator)}}) is True


@pytest.mark.parametrize("operator", NEGATED)
def test_missing_key_negated_operator_is_true(operator: str) -> None:
    assert cond_allows({operator: {"test:Absent": _sample(operator)}}) is True
    assert cond_allows({f"{operator}IfExists": {"test:Absent": _sample(operator)}}) is True


def test_ifexists_applies_operator_when_present() -> None:
    assert cond_allows({"StringEqualsIfExists": {"k": "a"}}, {"k": "a"}) is True
    assert cond_allows({"StringEqualsIfExists": {"k": "a"}}, {"k": "b"}) is False
    assert cond_allows({"NumericLessThanIfExists": {"k": "5"}}, {"k": "9"}) is False
    assert cond_allows({"StringNotEqualsIfExists": {"k": "a"}}, {"k": "a"}) is False


def test_null_operator() -> None:
    assert cond_allows({"Null": {"k": "true"}}) is True
    assert cond_allows({"Null": {"k": "true"}}, {"k": "v"}) is False
    assert cond_allows({"Null": {"k": "false"}}, {"k": "v"}) is True
    assert cond_allows({"Null": {"k": "false"}}) is False
    assert cond_allows({"Null": {"k": False}}, {"k": "v"}) is True
    assert cond_allows({"Null": {"k": "true"}}, {"k": []}) is True  # empty list is absent


def test_and_across_operators_and_keys_or_across_values() -> None:
    both = {"StringEquals": {"a": "1", "b": "2"}}
    assert cond_allows(both, {"a": "1", "b": "2"}) is True
    assert cond_allows(both, {"a": "1", "b": "3"}) is False
    two_operators = {"StringEquals": {"a": "1"}, "NumericLessThan": {"n": "5"}}
    assert cond_allows(two_operators, {"a": "1", "n": "4"}) is True
    assert cond_allows(two_operators, {"a": "1", "n": "6"}) is False
    assert cond_allows({"StringEquals": {"a": ["1", "2", "3"]}}, {"a": "3"}) is True


def test_condition_key_names_case_insensitive_values_case_sensitive() -> None:
    assert cond_allows({"StringEquals": {"AWS:SourceVpce": "vpce-1"}}, {"aws:sourcevpce": "vpce-1"})
    assert not cond_allows(
        {"StringEquals": {"aws:SourceVpce": "VPCE-1"}}, {"aws:SourceVpce": "vpce-1"}
    )


def test_duplicate_context_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="twice"):
        effective_context(req(context={"aws:SourceVpce": "a", "AWS:SOURCEVPCE": "b"}))


@pytest.mark.parametrize(
    ("condition", "context", "expected"),
    [
        ({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, None, True),  # absent
        ({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, [], True),  # empty
        ({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, [""], True),  # empty string
        ({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, ["a", "b"], True),
        ({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, ["a", "c"], False),
        ({"ForAllValues:StringNotEquals": {"k": ["a", "b"]}}, ["c", "d"], True),
        ({"ForAllValues:StringNotEquals": {"k": ["a", "b"]}}, ["c", "a"], False),
        ({"ForAnyValue:StringEquals": {"k": ["a", "b"]}}, None, False),
        ({"ForAnyValue:StringEquals": {"k": ["a", "b"]}}, [], False),
        ({"ForAnyValue:StringEquals": {"k": ["a", "b"]}}, ["c", "b"], True),
        ({"ForAnyValue:StringEquals": {"k": ["a", "b"]}}, ["c", "d"], False),
        ({"ForAnyValue:StringNotEquals": {"k": ["a"]}}, ["a", "b"], True),
        ({"ForAnyValue:StringNotEquals": {"k": ["a"]}}, ["a"], False),
        ({"ForAnyValue:StringLike": {"k": ["a*"]}}, ["xa", "ab"], True),
        ({"ForAnyValue:StringEqualsIfExists": {"k": ["a"]}}, None, True),
        ({"ForAllValues:NumericLessThan": {"k": "10"}}, ["1", "9"], True),
        ({"ForAllValues:NumericLessThan": {"k": "10"}}, ["1", "10"], False),
        # Without a set operator, a multivalued key matches when any value matches (NOR for
        # negated operators).
        ({"StringEquals": {"k": "a"}}, ["b", "a"], True),
        ({"StringNotEquals": {"k": "a"}}, ["b", "a"], False),
    ],
)
def test_set_operators(condition: dict[str, Any], context: Any, expected: bool) -> None:
    assert cond_allows(condition, None if context is None else {"k": context}) is expected


@pytest.mark.parametrize(
    ("operator", "message"),
    [
        ("StringStartsWith", "StringStartsWith"),
        ("ForSomeValues:StringEquals", "ForSomeValues"),
        ("stringequals", "stringequals"),
        ("NullIfExists", "Null takes no"),
        ("ForAnyValue:Null", "Null takes no"),
        ("StringEqualsIfExistsIfExists", "StringEqualsIfExistsIfExists"),
    ],
)
def test_unsupported_operators_fail_closed(operator: str, message: str) -> None:
    with pytest.raises(Unsupported, match=message):
        parse_condition_operator(operator)
    # ... in an Allow and in a Deny, and even when the statement's action does not match.
    for statement in (
        allow(Condition={operator: {"k": "v"}}),
        deny("ec2:*", Condition={operator: {"k": "v"}}),
    ):
        with pytest.raises(Unsupported, match=message):
            evaluate(req(), PolicySet([pol(allow(), statement)]))


def test_malformed_condition_values() -> None:
    with pytest.raises(ValueError, match="not a number"):
        cond_allows({"NumericEquals": {"k": "ten"}}, {"k": "10"})
    with pytest.raises(ValueError, match="ISO 8601"):
        cond_allows({"DateEquals": {"k": "yesterday"}}, {"k": "1"})
    with pytest.raises(ValueError, match="not an IP"):
        cond_allows({"IpAddress": {"k": "10.0.0.0/8"}}, {"k": "host.example"})
    with pytest.raises(ValueError, match="six components"):
        cond_allows({"ArnLike": {"k": "arn:aws:s3"}}, {"k": "arn:aws:s3:::b"})
    with pytest.raises(ValueError, match="true or false"):
        cond_allows({"Bool": {"k": "yes"}}, {"k": "true"})


# ---------------------------------------------------------------------------------------------
# Principals and derived context keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "principal", "expected"),
    [
        ("*", ROLE, PrincipalMatch.DIRECT),
        ("*", SERVICE, PrincipalMatch.DIRECT),
        ({"AWS": "*"}, ROLE, PrincipalMatch.DIRECT),
        ({"AWS": "*"}, SERVICE, None),
        ({"AWS": ACCT}, ROLE, PrincipalMatch.ACCOUNT),
        ({"AWS": f"arn:aws:iam::{ACCT}:root"}, USER, PrincipalMatch.ACCOUNT),
        ({"AWS": OTHER}, ROLE, None),
        ({"AWS": ROLE.arn}, ROLE, PrincipalMatch.ROLE),  # the role ARN names its sessions
        ({"AWS": ROLE.session_arn}, ROLE, PrincipalMatch.DIRECT),
        ({"AWS": f"arn:aws:sts::{ACCT}:assumed-role/app/other"}, ROLE, None),
        ({"AWS": USER.arn}, USER, PrincipalMatch.DIRECT),
        ({"AWS": [ACCT, ROLE.session_arn]}, ROLE, PrincipalMatch.DIRECT),  # strongest wins
        ({"Service": "ecs-tasks.amazonaws.com"}, SERVICE, PrincipalMatch.DIRECT),
        ({"Service": "ecs-tasks.amazonaws.com"}, ROLE, None),
        ({"Service": "ec2.amazonaws.com"}, SERVICE, None),
        ({"Federated": "cognito-identity.amazonaws.com"}, SERVICE, None),
    ],
)
def test_principal_element(element: Any, principal: Principal, expected: Any) -> None:
    assert principal_match({"Effect": "Allow", "Principal": element}, principal) is expected


@pytest.mark.parametrize(
    ("listed", "principal", "matches"),
    [
        ([ROLE.session_arn, ROLE.arn, f"arn:aws:iam::{ACCT}:root"], ROLE, False),
        ([ROLE.session_arn, ROLE.arn], ROLE, True),  # account not listed: still denied
        ([ROLE.arn, ACCT], ROLE, True),  # session not listed
        ([USER.arn, ACCT], USER, False),
        ([USER.arn], USER, True),
        ("*", ROLE, False),
    ],
)
def test_not_principal(listed: Any, principal: Principal, matches: bool) -> None:
    stmt = {"Effect": "Deny", "NotPrincipal": {"AWS": listed}}
    assert (principal_match(stmt, principal) is not None) is matches


def test_not_principal_deny_always_hits_principals_with_boundary() -> None:
    listed = [ROLE.session_arn, ROLE.arn, ACCT]
    stmt = {"Effect": "Deny", "NotPrincipal": {"AWS": listed}}
    assert principal_match(stmt, ROLE, has_boundary=True) is PrincipalMatch.DIRECT
    assert principal_match({**stmt, "Effect": "Allow"}, ROLE, has_boundary=True) is None


@pytest.mark.parametrize(
    ("element", "message"),
    [
        ({"AWS": f"arn:aws:iam::{ACCT}:role/*"}, "wildcard"),
        ({"AWS": "AROAEXAMPLEID"}, "unique ids"),
        ({"CanonicalUser": "abc"}, "CanonicalUser"),
    ],
)
def test_unsupported_principals_fail_closed(element: Any, message: str) -> None:
    with pytest.raises(Unsupported, match=message):
        principal_match({"Effect": "Allow", "Principal": element}, ROLE)


def test_derived_context_keys() -> None:
    context = effective_context(req())
    assert context["aws:principalarn"] == [ROLE.arn]
    assert context["aws:principalaccount"] == [ACCT]
    assert context["aws:principaltag/team"] == ["red"]
    assert "aws:username" not in context
    assert effective_context(req(USER))["aws:username"] == ["alice"]
    assert "aws:principalarn" not in effective_context(req(SERVICE))
    explicit = effective_context(req(context={"aws:PrincipalArn": "arn:aws:iam::1:role/x"}))
    assert explicit["aws:principalarn"] == ["arn:aws:iam::1:role/x"]  # the caller's value wins


def test_condition_on_principal_arn_uses_role_arn() -> None:
    condition = {"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCT}:role/app"}}
    assert cond_allows(condition)
    assert not cond_allows({"ArnLike": {"aws:PrincipalArn": ROLE.session_arn}})


# ---------------------------------------------------------------------------------------------
# Combination rules
# ---------------------------------------------------------------------------------------------

ALL = pol(allow(), name="all")
DENY_ALL = pol(deny(), name="deny")
RP_DENY = pol(deny(Principal="*"), name="deny")


@pytest.mark.parametrize(
    ("where", "policies", "request_kw"),
    [
        ("identity", PolicySet([ALL, DENY_ALL]), {}),
        ("boundary", PolicySet([ALL], boundary=pol(allow(), deny(), name="deny")), {}),
        ("session", PolicySet([ALL], session=[DENY_ALL]), {}),
        ("resource", PolicySet([ALL], resource=RP_DENY), {}),
        ("scp", PolicySet([ALL], scps=[[ALL, DENY_ALL]]), {}),
        ("rcp", PolicySet([ALL], rcps=[[pol(allow(Principal="*")), RP_DENY]]), {}),
        ("endpoint", PolicySet([ALL]), {"via_endpoint_policies": (RP_DENY,)}),
    ],
)
def test_explicit_deny_in_any_policy_wins(where: str, policies: PolicySet, request_kw: Any) -> None:
    decision = evaluate(req(**request_kw), policies)
    assert (decision.allowed, decision.reason) == (False, "explicit deny")
    assert [str(ref) for ref in decision.deny_statements] == [
        "deny#0" if where != "boundary" else "deny#1"
    ]


def test_explicit_deny_needs_the_statement_to_match() -> None:
    policies = PolicySet([ALL, pol(deny("s3:PutObject"), name="deny")])
    assert evaluate(req(), policies) == evaluate(req(), PolicySet([ALL]))


def test_allow_statements_are_reported() -> None:
    decision = evaluate(req(), PolicySet([pol({**allow("s3:*"), "Sid": "Read"}, name="data")]))
    assert decision.allowed and [str(r) for r in decision.allow_statements] == ["data#Read"]


def test_every_scp_level_must_allow() -> None:
    s3_only = pol(allow("s3:*"))
    assert allowed(req(), PolicySet([ALL], scps=[[ALL], [s3_only], [ALL]]))
    decision = evaluate(
        req(action="ec2:RunInstances"), PolicySet([ALL], scps=[[ALL], [s3_only], [ALL]])
    )
    assert (decision.allowed, decision.reason) == (False, "SCP level 1 does not allow")
    assert not allowed(req(), PolicySet([ALL], scps=[[]]))  # a level with no policy allows nothing


def test_every_rcp_level_must_allow() -> None:
    rcp_all = pol(allow(Principal="*"))
    rcp_s3 = pol(allow("s3:*", Principal="*"))
    assert allowed(req(), PolicySet([ALL], rcps=[[rcp_all], [rcp_s3]]))
    decision = evaluate(req(action="sqs:SendMessage"), PolicySet([ALL], rcps=[[rcp_all], [rcp_s3]]))
    assert (decision.allowed, decision.reason) == (False, "RCP level 1 does not allow")


def test_scp_does_not_grant() -> None:
    decision = evaluate(req(), PolicySet(scps=[[ALL]]))
    assert (decision.allowed, decision.reason) == (
        False,
        "implicit deny: no allow in identity or resource policy",
    )


def test_endpoint_policies() -> None:
    only_get = pol(allow("s3:GetObject", Principal="*"), name="vpce")
    assert allowed(req(via_endpoint_policies=(only_get,)), PolicySet([ALL]))
    decision = evaluate(
        req(action="s3:PutObject", via_endpoint_policies=(only_get,)), PolicySet([ALL])
    )
    assert (decision.allowed, decision.reason) == (False, "VPC endpoint policy vpce does not allow")
    assert allowed(req(action="s3:PutObject"), PolicySet([ALL]))  # no endpoint policy


def test_boundary_and_session_intersect_identity() -> None:
    s3 = pol(allow("s3:*"))
    assert allowed(req(), PolicySet([ALL], boundary=s3, session=[s3]))
    assert evaluate(req(action="sqs:SendMessage"), PolicySet([ALL], boundary=s3)).reason == (
        "boundary does not allow"
    )
    assert evaluate(req(action="sqs:SendMessage"), PolicySet([ALL], session=[s3])).reason == (
        "session policy does not allow"
    )
    assert not allowed(req(), PolicySet([s3], boundary=ALL, session=[pol(allow("ec2:*"))]))
    # Several session policies act together: one allowing is enough.
    assert allowed(req(), PolicySet([ALL], session=[pol(allow("ec2:*")), s3]))


def _bucket(principal: Any) -> Policy:
    return pol(allow("s3:GetObject", "arn:aws:s3:::data/*", Principal=principal), name="bucket")


BOUNDARY_EC2 = pol(allow("ec2:*"), name="boundary")


@pytest.mark.parametrize(
    ("principal", "named", "expected"),
    [
        (ROLE, ROLE.session_arn, True),  # session ARN: not limited by the boundary
        (ROLE, ROLE.arn, False),  # role ARN: limited by the boundary
        (ROLE, ACCT, False),  # account: limited too
        (ROLE, "*", True),  # everyone: granted directly
        (USER, USER.arn, True),  # user ARN: not limited by the boundary
    ],
)
def test_same_account_resource_policy_and_boundary(
    principal: Principal, named: str, expected: bool
) -> None:
    principal_element = "*" if named == "*" else {"AWS": named}
    policies = PolicySet(boundary=BOUNDARY_EC2, resource=_bucket(principal_element))
    assert allowed(req(principal), policies) is expected
    # Without the boundary every one of them allows on its own (no identity policy needed).
    assert allowed(req(principal), PolicySet(resource=_bucket(principal_element)))


def test_cross_account_needs_both_sides() -> None:
    bob = Principal(f"arn:aws:iam::{OTHER}:user/bob", OTHER)
    request = req(bob, resource_account=ACCT)
    assert allowed(request, PolicySet([ALL], resource=_bucket({"AWS": OTHER})))
    assert not allowed(request, PolicySet(resource=_bucket({"AWS": bob.arn})))
    assert not allowed(request, PolicySet([ALL]))
    assert not allowed(
        request, PolicySet([ALL], boundary=BOUNDARY_EC2, resource=_bucket({"AWS": OTHER}))
    )
    # Unknown resource account: treated as the caller's own account.
    assert allowed(req(bob), PolicySet([ALL]))


KEY = f"arn:aws:kms:us-east-1:{ACCT}:key/k"


def _key_policy(principal: Any) -> Policy:
    return pol(allow("kms:*", Principal=principal), name="key")


@pytest.mark.parametrize(
    ("key_principal", "identity", "boundary", "expected"),
    [
        ({"AWS": f"arn:aws:iam::{ACCT}:root"}, True, None, True),
        ({"AWS": f"arn:aws:iam::{ACCT}:root"}, False, None, False),
        ({"AWS": f"arn:aws:iam::{ACCT}:root"}, True, BOUNDARY_EC2, False),
        ({"AWS": ROLE.arn}, False, None, True),
        ({"AWS": ROLE.arn}, False, BOUNDARY_EC2, False),  # role ARN: boundary applies
        ({"AWS": ROLE.session_arn}, False, BOUNDARY_EC2, True),  # session ARN: it does not
        ({"AWS": f"arn:aws:iam::{ACCT}:role/other"}, True, None, False),  # silent key policy
    ],
)
def test_kms_key_policy_must_allow(
    key_principal: Any, identity: bool, boundary: Any, expected: bool
) -> None:
    policies = PolicySet(
        [pol(allow("kms:Decrypt"))] if identity else [],
        boundary=boundary,
        resource=_key_policy(key_principal),
        resource_kind="kms",
    )
    assert allowed(req(action="kms:Decrypt", resource=KEY), policies) is expected


def test_kms_without_key_policy_denies() -> None:
    decision = evaluate(
        req(action="kms:Decrypt", resource=KEY), PolicySet([ALL], resource_kind="kms")
    )
    assert (decision.allowed, decision.reason) == (
        False,
        "implicit deny: key policy does not allow",
    )


TARGET = f"arn:aws:iam::{ACCT}:role/target"


def _trust(principal: Any) -> Policy:
    return pol(
        {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}, name="trust"
    )


def test_trust_policy_rules() -> None:
    def decide(principal: Principal, trust_principal: Any, identity: bool) -> bool:
        policies = PolicySet(
            [pol(allow("sts:AssumeRole", TARGET))] if identity else [],
            resource=_trust(trust_principal),
            resource_kind="trust",
        )
        return allowed(req(principal, "sts:AssumeRole", TARGET, resource_account=ACCT), policies)

    assert decide(USER, {"AWS": USER.arn}, identity=False)  # names the user directly
    assert decide(ROLE, {"AWS": ROLE.arn}, identity=False)
    assert not decide(USER, {"AWS": ACCT}, identity=False)  # account: identity must allow
    assert decide(USER, {"AWS": ACCT}, identity=True)
    assert not decide(USER, {"Service": "ec2.amazonaws.com"}, identity=True)  # silent trust
    bob = Principal(f"arn:aws:iam::{OTHER}:user/bob", OTHER)
    assert not decide(bob, {"AWS": bob.arn}, identity=False)  # cross-account: both sides
    assert decide(bob, {"AWS": bob.arn}, identity=True)


def test_service_principal_through_resource_policy() -> None:
    policies = PolicySet(resource=_bucket({"Service": "ecs-tasks.amazonaws.com"}))
    assert allowed(req(SERVICE), policies)
    assert not allowed(req(ROLE), policies)


def test_resource_policy_conditions_see_principal_keys() -> None:
    only_red = pol(
        allow("s3:*", Principal="*", Condition={"StringEquals": {"aws:PrincipalTag/team": "red"}}),
        name="bucket",
    )
    assert allowed(req(), PolicySet(resource=only_red))
    blue = Principal(ROLE.arn, ACCT, ROLE.session_arn, {"team": "blue"})
    assert not allowed(req(blue), PolicySet(resource=only_red))
    # Session tags override the principal's tags: the ABAC pitfall from the notes.
    retagged = Principal(ROLE.arn, ACCT, ROLE.session_arn, {"team": "blue"}, {"team": "red"})
    assert allowed(req(retagged), PolicySet(resource=only_red))


def test_unknown_resource_kind_fails_closed() -> None:
    with pytest.raises(Unsupported, match="resource_kind"):
        evaluate(req(), PolicySet([ALL], resource_kind="s3"))
