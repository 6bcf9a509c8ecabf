"""The AppConfig variant rule evaluator (app/worker/flagrules.py).

The examples are the AWS pages' own: every expression of "Defining rules for multi-variant
feature flags"
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-rules-operators.html),
the `ui_refresh` flag of "Creating a multi-variant feature flag"
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-procedures.html)
and the split scenarios of "Understanding multi-variant feature flag rules"
(https://docs.aws.amazon.com/appconfig/latest/userguide/appconfig-creating-multi-variant-feature-flags-rules.html).
AWS gives no expected result for the operator examples, so the contexts below are ours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from app.worker.flagrules import (
    MAX_RULE_LENGTH,
    Context,
    RuleError,
    context_keys,
    evaluate,
    parse,
    select_variant,
    split_bucket,
)

IDS = [f"user-{i}" for i in range(20000)]
TOLERANCE = 1.5  # percentage points


def matches(rule: str, context: Context, flag: str = "test_flag") -> bool:
    return evaluate(parse(rule), context, flag=flag)


# --- every example of the operators page, true and false -----------------------------------

AND_EXAMPLE = """(and
    (eq $state "Virginia")
    (gt $age 65)
)"""
OR_EXAMPLE = """(or
    (eq $state "Virginia")
    (gt $age 65)
)"""

AWS_EXAMPLES: list[tuple[str, list[Context], list[Context]]] = [
    # (rule, contexts it matches, contexts it does not match)
    ('(eq $state "Virginia")', [{"state": "Virginia"}], [{"state": "virginia"}, {"state": "Ohio"}]),
    ("(gt $age 65)", [{"age": 66}, {"age": "66"}, {"age": 65.5}], [{"age": 65}, {"age": "64"}]),
    ("(gte $age 65)", [{"age": 65}, {"age": "65"}, {"age": 90}], [{"age": 64}, {"age": "64.9"}]),
    ("(lt $age 65)", [{"age": 64}, {"age": "-7"}], [{"age": 65}, {"age": "65"}]),
    ("(lte $age 65)", [{"age": 65}, {"age": "65.0"}], [{"age": 66}, {"age": 65.01}]),
    (
        '(and (eq $state "Virginia") (gt $age 65) )',
        [{"state": "Virginia", "age": 70}],
        [{"state": "Virginia", "age": 60}, {"state": "Ohio", "age": 70}],
    ),
    (AND_EXAMPLE, [{"state": "Virginia", "age": "66"}], [{"state": "Ohio", "age": "66"}]),
    (
        '(or (eq $state "Virginia") (gt $age 65) )',
        [{"state": "Virginia", "age": 20}, {"state": "Ohio", "age": 70}],
        [{"state": "Ohio", "age": 60}],
    ),
    (OR_EXAMPLE, [{"state": "Ohio", "age": 66}], [{"state": "Ohio", "age": 65}]),
    ('(not (eq $state "Virginia"))', [{"state": "Ohio"}], [{"state": "Virginia"}]),
    ('(begins_with $state "A")', [{"state": "Alabama"}], [{"state": "Virginia"}, {"state": "a"}]),
    (
        '(ends_with $email "amazon.com")',
        [{"email": "jane@amazon.com"}],
        [{"email": "jane@amazon.co.uk"}, {"email": "amazon.com.evil"}],
    ),
    ('(contains $promoCode "WIN")', [{"promoCode": "SPRINGWIN25"}], [{"promoCode": "spring-win"}]),
    ('(in $userId ["123", "456"])', [{"userId": "123"}, {"userId": "456"}], [{"userId": "789"}]),
    (
        '(matches in::$greeting pattern::"h.*y")',
        [{"greeting": "hey"}, {"greeting": "oh, hi there, buddy"}],  # re.search: unanchored
        [{"greeting": "hello"}, {"greeting": "yeah"}],
    ),
    ('(exists key::"country")', [{"country": "US"}, {"country": ""}], [{"state": "Virginia"}, {}]),
    # the pulumi-aws example's single-operand `or`
    ('(or (eq $userId "u-1"))', [{"userId": "u-1"}], [{"userId": "u-2"}]),
]


@pytest.mark.parametrize(("rule", "true_contexts", "false_contexts"), AWS_EXAMPLES)
def test_aws_operator_examples(
    rule: str, true_contexts: list[Context], false_contexts: list[Context]
) -> None:
    expr = parse(rule)
    for context in true_contexts:
        assert evaluate(expr, context, flag="f") is True, context
    for context in false_contexts:
        assert evaluate(expr, context, flag="f") is False, context


def test_aws_split_example_true_and_false() -> None:
    """`(split pct::10 by::$userId seed::"abc")`: true for ids in buckets 0..999 of seed "abc"."""
    expr = parse('(split pct::10 by::$userId seed::"abc")')
    inside = next(i for i in IDS if split_bucket(i, flag="x", seed="abc") < 1000)
    outside = next(i for i in IDS if split_bucket(i, flag="x", seed="abc") >= 1000)
    for flag in ("one_flag", "another_flag"):  # seeded: the flag does not matter
        assert evaluate(expr, {"userId": inside}, flag=flag) is True
        assert evaluate(expr, {"userId": outside}, flag=flag) is False
    share = sum(evaluate(expr, {"userId": i}, flag="f") for i in IDS) / len(IDS) * 100
    assert abs(share - 10) <= TOLERANCE


def test_named_arguments_in_any_order_and_whitespace() -> None:
    assert parse("(split pct::10 by::$userId)") == parse("(split by::$userId pct::10)")
    assert parse('(matches pattern::"h.*y" in::$g)') == parse('(matches in::$g pattern::"h.*y")')
    assert parse('\n\t( eq\n $state\t"Virginia" )\n') == parse('(eq $state "Virginia")')


# --- operands ------------------------------------------------------------------------------


def test_string_escapes_and_unicode() -> None:
    assert matches(r'(eq $q "say \"hi\" \\ ok")', {"q": 'say "hi" \\ ok'})
    assert matches('(eq $s "Ḽơᶉëᶆ ȋṕšᶙṁ")', {"s": "Ḽơᶉëᶆ ȋṕšᶙṁ"})
    assert matches(r'(matches in::$n pattern::"^\\d+$")', {"n": "12345"})
    assert not matches(r'(matches in::$n pattern::"^\\d+$")', {"n": "12a45"})


def test_integers_and_floats() -> None:
    assert matches("(eq $n -7)", {"n": "-7"})
    assert matches("(eq $n 42)", {"n": 42.0})
    assert matches("(lt $n 3.14)", {"n": "3.1"})
    assert matches("(eq $n 1.234e-5)", {"n": "0.00001234"})
    assert matches("(gt $n 1.234e-5)", {"n": 1e-4})
    assert matches("(eq $n 9223372036854775807)", {"n": 2**63 - 1})


def test_timestamps_compare_as_points_in_time() -> None:
    stamp = "(eq $at 2012-03-04T05:06:07-08:00)"
    assert matches(stamp, {"at": "2012-03-04T13:06:07Z"})  # the same instant in UTC
    assert matches(stamp, {"at": "2012-03-04T14:06:07+01:00"})
    assert not matches(stamp, {"at": "2012-03-04T05:06:07Z"})
    # 2024-01 stands for 2024-01-01T00:00:00Z
    assert matches("(gte $at 2024-01)", {"at": "2024-01-01T00:00:00Z"})
    assert not matches("(gte $at 2024-01)", {"at": "2023-12-31T23:59:59.999Z"})
    assert matches("(lt $at 2024-01)", {"at": "2023-12"})
    assert matches("(gt $at 2024-01-15T10:30Z)", {"at": "2024-01-15T10:30:00.5Z"})
    assert matches("(eq $at 2024-01-15)", {"at": "2024"}) is False
    assert matches("(lt $at 2024-01-15)", {"at": "2024"})  # a context value may be a bare year
    # a context value that is not a timestamp does not match, whichever way
    assert not matches("(lt $at 2024-01)", {"at": "yesterday"})
    assert not matches("(not (lt $at 2024-01))", {"at": "yesterday"})
    assert not matches("(lt $at 2024-01)", {"at": 1700000000})
    # in a rule a bare year is an integer
    assert matches("(eq $year 2024)", {"year": "2024"})


# --- documented decisions: types -----------------------------------------------------------


def test_context_strings_compare_numerically_to_numbers() -> None:
    assert matches("(gt $age 65)", {"age": "100"})  # not "100" < "65" as strings
    assert matches("(eq $age 65)", {"age": "65.0"})
    for not_a_number in ("abc", " 65", "0x41", "1_000", "nan", "inf", ""):
        assert not matches("(gt $age 1)", {"age": not_a_number}), not_a_number
        assert not matches("(not (gt $age 1))", {"age": not_a_number}), not_a_number
    assert not matches("(eq $age 1)", {"age": True})  # a boolean is not a number


def test_booleans_and_the_strings_true_and_false() -> None:
    for value, is_true in ((True, True), ("true", True), (False, False), ("false", False)):
        assert matches("(eq $beta true)", {"beta": value}) is is_true
        assert matches("(eq $beta false)", {"beta": value}) is not is_true
        assert matches("(not (eq $beta true))", {"beta": value}) is not is_true
    for other in ("True", "yes", "1", 1):
        assert not matches("(eq $beta true)", {"beta": other}), other
        assert not matches("(not (eq $beta true))", {"beta": other}), other
    assert matches("(in $beta [true])", {"beta": "true"})


def test_string_operators_need_string_context_values() -> None:
    assert not matches('(begins_with $zip "9")', {"zip": 94110})
    assert not matches('(not (begins_with $zip "9"))', {"zip": 94110})
    assert not matches('(eq $zip "94110")', {"zip": 94110})
    assert matches('(eq $zip "94110")', {"zip": "94110"})
    assert matches('(gt $name "m")', {"name": "zoe"})  # strings order by code point
    assert not matches('(matches in::$n pattern::"1")', {"n": 1})


def test_in_with_numbers() -> None:
    assert matches("(in $n [1, 2.5, -7])", {"n": "2.5"})
    assert matches("(in $n [1, 2.5, -7])", {"n": -7})
    assert not matches("(in $n [1, 2.5, -7])", {"n": 2})
    assert not matches("(in $n [1, 2.5, -7])", {"n": "two"})


# --- documented decisions: missing keys ----------------------------------------------------


def test_a_missing_key_makes_the_whole_rule_false() -> None:
    for rule in (
        '(eq $x "a")',
        '(not (eq $x "a"))',
        '(not (not (not (eq $x "a"))))',
        '(or (eq $x "a") (not (eq $x "a")))',
        '(and (exists key::"y") (not (eq $x "a")))',
        '(not (begins_with $x "a"))',
        '(not (in $x ["a"]))',
        '(not (matches in::$x pattern::"a"))',
        "(not (split by::$x pct::50))",
        "(split by::$x pct::100)",
        "(not (gt $x 1))",
    ):
        assert matches(rule, {"y": "present"}) is False, rule
    assert matches('(not (eq $x "a"))', {"x": "b"}) is True
    assert matches('(and (exists key::"y") (not (eq $x "a")))', {"y": "", "x": "b"}) is True


def test_or_does_not_short_circuit_so_operand_order_does_not_matter() -> None:
    context = {"b": "y"}  # no `a`
    assert matches('(or (eq $a "x") (eq $b "y"))', context) is False
    assert matches('(or (eq $b "y") (eq $a "x"))', context) is False
    assert matches('(or (eq $b "y") (eq $a "x"))', {**context, "a": "z"}) is True


def test_exists_only_tests_presence() -> None:
    assert matches('(not (exists key::"x"))', {}) is True
    assert matches('(not (exists key::"x"))', {"x": "false"}) is False
    assert matches('(or (exists key::"x") (exists key::"y"))', {"y": 0}) is True


def test_context_keys() -> None:
    expr = parse(
        '(or (and (eq $state "Virginia") (not (gt $age 65)))'
        ' (exists key::"beta") (matches in::$greeting pattern::"h")'
        ' (split by::$userId pct::5) (in $userId ["1"]))'
    )
    assert context_keys(expr) == {"state", "age", "beta", "greeting", "userId"}
    assert context_keys(parse('(exists key::"opted_in_to_beta")')) == {"opted_in_to_beta"}


def test_parsed_form_is_immutable() -> None:
    expr = parse('(and (eq $state "Virginia") (gt $age 65))')
    with pytest.raises(dataclasses.FrozenInstanceError):
        expr.operands = ()  # type: ignore[misc, union-attr]
    assert hash(expr) == hash(parse('(and (eq $state "Virginia") (gt $age 65))'))


# --- parse errors --------------------------------------------------------------------------

PARSE_ERRORS = [
    ("", "empty rule"),
    ("   \n", "empty rule"),
    ("$x", "must be an expression '(operator ...)' producing true or false, got '$x'"),
    ("42", "got '42' (at position 0)"),
    ("true", "got 'true'"),
    ('"Virginia"', "must be an expression"),
    ('(eq $state "Virginia"', "unbalanced parentheses: '(' is not closed (at position 0)"),
    ('(and (eq $a "x") (eq $b "y")', "unbalanced parentheses"),
    ('(eq $state "Virginia"))', "unbalanced parentheses: ')' after the end of the rule"),
    ('(eq $state "Virginia") (eq $age 1)', "trailing text after the rule: '(' (at position 23)"),
    ('(eq $state "Virginia") x', "trailing text after the rule: 'x'"),
    ("(equals $state 1)", "unknown operator 'equals' (at position 1)"),
    ("()", "expected an operator after '(', got ')'"),
    ('("eq" $x 1)', "expected an operator after '(', got '\"eq\"'"),
    ("(eq $state)", "'eq' takes 2 operands, got 1"),
    ('(eq $state "a" "b")', "'eq' takes 2 operands, got 3"),
    ('(not (eq $x "a") (eq $y "b"))', "'not' takes 1 operand, got 2"),
    ("(not)", "'not' takes 1 operand, got 0"),
    ("(and)", "'and' takes at least 1 operand, got 0"),
    ('(or $x (eq $y "b"))', "the operands of 'or' must be expressions '(operator ...)', got '$x'"),
    ("(and true)", "the operands of 'and' must be expressions"),
    ('(eq "Virginia" $state)', "the first operand of 'eq' must be a context value"),
    ("(eq $a $b)", "the second operand of 'eq' must be a constant, got '$b'"),
    ('(eq $a (eq $b "c"))', "the second operand of 'eq' must be a constant, got an expression"),
    ("(gt $a true)", "'gt' cannot order booleans"),
    ("(begins_with $s 1)", "the second operand of 'begins_with' must be a string, got '1'"),
    ('(in $u "123")', "the second operand of 'in' must be a list"),
    ("(in $u [])", "the list of 'in' is empty"),
    ('(in $u ["1", 2])', "the list of 'in' mixes numbers and strings"),
    ('(in $u ["1",])', "a list holds constants, got ']'"),
    ('(in $u ["1" "2"])', "expected ',' or ']' in a list, got '\"2\"'"),
    ('(in $u ["1"', "expected ',' or ']' in a list, got the end of the rule"),
    ('(eq in::$x "a")', "'eq' takes no named arguments, got 'in::'"),
    ('(matches $greeting "h.*y")', "'matches' takes only named arguments (in, pattern)"),
    ('(matches in::$g pattern::"(")', "invalid regex '('"),
    ('(matches in::$g pattern::"x" flags::"i")', "'matches' has no argument 'flags::'"),
    ('(matches in::$g pattern::"x" in::$h)', "duplicate argument 'in::'"),
    ('(matches pattern::"x")', "'matches' needs the argument 'in::'"),
    ("(matches in::$g)", "'matches' needs the argument 'pattern::'"),
    ('(matches in::"g" pattern::"x")', "in:: must be a context value such as $key, got '\"g\"'"),
    ("(exists)", "'exists' needs the argument 'key::'"),
    ("(exists key::)", "argument 'key::' has no value"),
    ("(exists key::$country)", "key:: must be a string, got '$country'"),
    ("(split by::$u)", "'split' needs the argument 'pct::'"),
    ("(split pct::10)", "'split' needs the argument 'by::'"),
    (
        '(split by::$u pct::10 salt::"s")',
        "'split' has no argument 'salt::' (it takes by, pct, seed)",
    ),
    ("(split by::$u pct::10 seed::5)", "seed:: must be a string, got '5'"),
    ('(split by::$u pct::"10")', "pct:: must be a number from 0 to 100"),
    (
        "(split by::$u pct::101)",
        "pct:: must be from 0 to 100 with at most 2 decimal places, got 101",
    ),
    ("(split by::$u pct::-1)", "got -1"),
    ("(split by::$u pct::100.01)", "got 100.01"),
    ("(split by::$u pct::12.345)", "got 12.345"),
    ("(split by::$u pct::1e-3)", "got 1e-3"),
    (r'(eq $x "\d")', "unknown escape '\\d' in a string"),
    ('(eq $x "abc)', "unterminated string (at position 7)"),
    ("(eq $x 9223372036854775808)", "outside the 64-bit range"),
    ("(eq $x 1e999)", "float 1e999 is out of range"),
    ("(eq $x 2024-13)", "invalid timestamp '2024-13'"),
    ("(eq $x 2024-02-30)", "invalid timestamp"),
    ("(eq $x 12:30)", "unrecognised token '12:30'"),
    ("(eq $ 1)", "unrecognised token '$'"),
    ("(eq $x Virginia)", "unexpected 'Virginia'"),
]


@pytest.mark.parametrize(("rule", "message"), PARSE_ERRORS)
def test_parse_errors(rule: str, message: str) -> None:
    with pytest.raises(RuleError) as info:
        parse(rule)
    assert message in str(info.value)


def test_parse_error_names_the_position() -> None:
    with pytest.raises(RuleError, match=r"unknown operator 'nope' \(at position 23\)"):
        parse('(and (eq $a "x")\n     (nope $b))')


def test_rule_length_limit_is_the_schemas() -> None:
    longest = '(eq $x "' + "a" * (MAX_RULE_LENGTH - 10) + '")'
    assert len(longest) == MAX_RULE_LENGTH
    assert matches(longest, {"x": "a" * (MAX_RULE_LENGTH - 10)})
    with pytest.raises(RuleError, match="at most 16384 characters, got 16385"):
        parse(longest + " ")


def test_nesting_depth_is_bounded() -> None:
    def nested(depth: int) -> str:
        return "(not " * (depth - 1) + '(exists key::"a")' + ")" * (depth - 1)

    assert matches(nested(100), {"a": 1}) is False  # 99 nots
    with pytest.raises(RuleError, match="nested deeper than 100"):
        parse(nested(101))
    with pytest.raises(RuleError, match="nested deeper than 100"):
        parse(nested(2500))  # an error, not a RecursionError (15000 characters)


# --- the documented ui_refresh flag ---------------------------------------------------------

# "Here is an example with three variants and the default variant." (verbatim)
UI_REFRESH = json.loads(
    r"""
{
  "flags": {
    "ui_refresh": {
      "attributes": {
        "dark_mode_support": {
          "constraints": {
            "type": "boolean"
          }
        }
      },
      "description": "A release flag used to release a new UI",
      "name": "UI Refresh"
    }
  },
  "values": {
    "ui_refresh": {
      "_variants": [
        {
          "attributeValues": {
            "dark_mode_support": true
          },
          "enabled": true,
          "name": "QA",
          "rule": "(ends_with $email \"qa-testers.mycompany.com\")"
        },
        {
          "attributeValues": {
            "dark_mode_support": true
          },
          "enabled": true,
          "name": "Beta Testers",
          "rule": "(exists key::\"opted_in_to_beta\")"
        },
        {
          "attributeValues": {
            "dark_mode_support": false
          },
          "enabled": true,
          "name": "Sample Population",
          "rule": "(split pct::10 by::$email)"
        },
        {
          "attributeValues": {
            "dark_mode_support": false
          },
          "enabled": false,
          "name": "Default Variant"
        }
      ]
    }
  },
  "version": "1"
}
"""
)
UI_VARIANTS: list[dict[str, Any]] = UI_REFRESH["values"]["ui_refresh"]["_variants"]


def ui_variant(context: Context) -> str:
    name: str = UI_VARIANTS[select_variant(UI_VARIANTS, context, flag="ui_refresh")]["name"]
    return name


def test_ui_refresh_qa_testers() -> None:
    assert ui_variant({"email": "jane_doe@qa-testers.mycompany.com"}) == "QA"
    # first match wins: a QA tester who opted into the beta is still QA
    assert ui_variant({"email": "a@qa-testers.mycompany.com", "opted_in_to_beta": "true"}) == "QA"


def test_ui_refresh_beta_testers_whatever_the_value() -> None:
    for value in ("true", "false", "", True, False, 0):
        context = {"email": "jane_doe@example.org", "opted_in_to_beta": value}
        assert ui_variant(context) == "Beta Testers", value
    assert ui_variant({"opted_in_to_beta": "true"}) == "Beta Testers"  # no email at all


def test_ui_refresh_without_context_is_the_default_variant() -> None:
    """Documented: "without caller context (which returns the Default variant)"."""
    assert ui_variant({}) == "Default Variant"


def test_ui_refresh_sample_population_is_ten_percent() -> None:
    counts = Counter(ui_variant({"email": f"{i}@example.org"}) for i in range(len(IDS)))
    assert set(counts) == {"Sample Population", "Default Variant"}
    assert abs(counts["Sample Population"] / len(IDS) * 100 - 10) <= TOLERANCE


# --- select_variant ------------------------------------------------------------------------


def variants(*rules: str) -> list[dict[str, Any]]:
    """Variants named A, B, ... with these rules, then the default, named "default"."""
    out: list[dict[str, Any]] = [
        {"name": chr(ord("A") + i), "enabled": True, "rule": rule} for i, rule in enumerate(rules)
    ]
    return [*out, {"name": "default", "enabled": False}]


def test_first_matching_variant_wins_and_enabled_is_not_a_condition() -> None:
    listed = variants('(exists key::"a")', '(exists key::"b")')
    listed[0]["enabled"] = False
    assert select_variant(listed, {"a": 1, "b": 1}, flag="f") == 0
    assert select_variant(listed, {"b": 1}, flag="f") == 1
    assert select_variant(listed, {"c": 1}, flag="f") == 2
    assert select_variant(variants(), {"c": 1}, flag="f") == 0  # the default alone


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        ([], "flag 'f': no variants"),
        (
            [{"name": "A", "enabled": True, "rule": '(exists key::"a")'}],
            "variant 0 ('A'): the last variant is the default and cannot have a rule",
        ),
        (
            [*variants('(exists key::"a")'), {"name": "late", "enabled": True, "rule": "(x)"}],
            "variant 2 ('late'): the last variant is the default and cannot have a rule",
        ),
        (
            [{"name": "early", "enabled": True}, {"name": "default", "enabled": False}],
            "variant 0 ('early'): has no rule, but only the default, last, has none",
        ),
        (variants('(exists key::"a")', "(eq $x)"), "variant 1 ('B'): 'eq' takes 2 operands"),
        ([{"name": "A", "enabled": True, "rule": None}, {"name": "d"}], "a rule is a string"),
    ],
)
def test_select_variant_rejects_ill_formed_lists(
    listed: Sequence[Mapping[str, Any]], message: str
) -> None:
    with pytest.raises(RuleError) as info:
        select_variant(listed, {"a": 1}, flag="f")
    assert message in str(info.value)


def test_select_variant_checks_every_rule_even_after_a_match() -> None:
    with pytest.raises(RuleError, match="unknown operator 'bogus'"):
        select_variant(variants('(exists key::"a")', "(bogus)"), {"a": 1}, flag="f")


# --- split: the documented scenarios --------------------------------------------------------


def distribution(rules: Sequence[str], ids: Sequence[str] = IDS) -> list[float]:
    """Percentage of `ids` (as $uniqueId) given each variant: the rules' then the default."""
    listed = variants(*rules)
    counts = Counter(select_variant(listed, {"uniqueId": i}, flag="split_flag") for i in ids)
    return [counts[index] / len(ids) * 100 for index in range(len(listed))]


def assert_close(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert abs(got - want) <= TOLERANCE, (actual, expected)


def test_split_20_80() -> None:
    assert_close(distribution(["(split by::$uniqueId pct::20)"]), [20, 80])


def test_split_20_0_80_same_pct_twice() -> None:
    shares = distribution(["(split by::$uniqueId pct::20)", "(split by::$uniqueId pct::20)"])
    assert_close(shares, [20, 0, 80])
    assert shares[1] == 0  # exactly: B's values were all taken by A


def test_split_20_5_75_nested_thresholds() -> None:
    assert_close(
        distribution(["(split by::$uniqueId pct::20)", "(split by::$uniqueId pct::25)"]),
        [20, 5, 75],
    )
    small = split_set("(split by::$uniqueId pct::20)", "split_flag")
    large = split_set("(split by::$uniqueId pct::25)", "split_flag")
    assert small < large  # every value matched at 20 is matched at 25


def test_split_20_20_60_different_seeds() -> None:
    assert_close(
        distribution(
            [
                '(split by::$uniqueId pct::20 seed::"seed_one")',
                '(split by::$uniqueId pct::25 seed::"seed_two")',
            ]
        ),
        [20, 20, 60],
    )


def test_split_with_the_same_seed_nests_like_no_seed() -> None:
    assert_close(
        distribution(
            ['(split by::$uniqueId pct::20 seed::"s")', '(split by::$uniqueId pct::25 seed::"s")'],
            IDS[:10000],
        ),
        [20, 5, 75],
    )


# --- split: stability and independence -----------------------------------------------------


def split_set(rule: str, flag: str, ids: Sequence[str] = IDS[:10000]) -> set[str]:
    expr = parse(rule)
    return {i for i in ids if evaluate(expr, {"uniqueId": i}, flag=flag)}


def share(subset: set[str], ids: Sequence[str] = IDS[:10000]) -> float:
    return len(subset) / len(ids) * 100


def test_split_is_stable() -> None:
    listed = variants("(split by::$uniqueId pct::20)", "(split by::$uniqueId pct::25)")
    first = [select_variant(listed, {"uniqueId": i}, flag="f") for i in IDS[:2000]]
    again = [select_variant(listed, {"uniqueId": i}, flag="f") for i in reversed(IDS[:2000])]
    assert first == again[::-1]
    assert set(first) == {0, 1, 2}


def test_split_without_seed_is_per_flag() -> None:
    """ "other flags receiving the same context value may split traffic differently" """
    one = split_set("(split by::$uniqueId pct::20)", "flag_one")
    two = split_set("(split by::$uniqueId pct::20)", "flag_two")
    assert abs(share(one) - 20) <= TOLERANCE
    assert abs(share(two) - 20) <= TOLERANCE
    assert abs(share(one & two) - 4) <= TOLERANCE  # independent: 20% of 20% in both


def test_split_with_a_seed_is_the_same_across_flags() -> None:
    """ "each unique value is guaranteed to split traffic consistently across feature flags" """
    rule = '(split by::$uniqueId pct::20 seed::"abc")'
    one, two = split_set(rule, "flag_one"), split_set(rule, "flag_two")
    assert one == two
    assert abs(share(one) - 20) <= TOLERANCE


def test_split_pct_0_and_100() -> None:
    lowest = next(i for i in range(10**6) if split_bucket(str(i), flag="f", seed=None) == 0)
    highest = next(i for i in range(10**6) if split_bucket(str(i), flag="f", seed=None) == 9999)
    ids = [*IDS[:2000], str(lowest), str(highest)]
    for pct, expected in (("0", False), ("0.0", False), ("100", True), ("100.00", True)):
        expr = parse(f"(split by::$u pct::{pct})")
        assert all(evaluate(expr, {"u": i}, flag="f") is expected for i in ids), pct
    assert matches("(split by::$u pct::0.01)", {"u": str(lowest)}, flag="f")
    assert not matches("(split by::$u pct::99.99)", {"u": str(highest)}, flag="f")


def test_split_threshold_is_strict() -> None:
    """A value in bucket b matches pct b/100 + 0.01 and not pct b/100."""
    for value in IDS[:50]:
        bucket = split_bucket(value, flag="f", seed=None)
        at = f"{bucket // 100}.{bucket % 100:02d}"
        above = f"{(bucket + 1) // 100}.{(bucket + 1) % 100:02d}"
        assert not matches(f"(split by::$u pct::{at})", {"u": value}, flag="f"), bucket
        assert matches(f"(split by::$u pct::{above})", {"u": value}, flag="f"), bucket


def test_split_bucket_is_the_documented_hash() -> None:
    def expected(value: str, salt: str) -> int:
        digest = hashlib.sha256((salt + "\x00" + value).encode()).digest()
        return int.from_bytes(digest[:8], "big") % 10000

    for value in ("user-1", "jane_doe@example.org", "Ḽơᶉëᶆ", ""):
        assert split_bucket(value, flag="ui_refresh", seed=None) == expected(
            value, "flag:ui_refresh"
        )
        assert split_bucket(value, flag="ui_refresh", seed="abc") == expected(value, "abc")
        assert split_bucket(value, flag="other", seed="") == expected(value, "")


def test_split_hashes_numbers_and_booleans_as_text() -> None:
    rule = "(split by::$u pct::50)"
    for typed, text in ((42, "42"), (-7, "-7"), (2.5, "2.5"), (True, "true"), (False, "false")):
        bucket = split_bucket(text, flag="f", seed=None)
        assert matches(rule, {"u": typed}, flag="f") is (bucket < 5000), typed
        assert matches(rule, {"u": typed}, flag="f") is matches(rule, {"u": text}, flag="f")
