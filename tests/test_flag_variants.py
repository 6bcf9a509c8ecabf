"""Live experiments with feature-flag variants (strategies 3 and 4), end to end.

* the declaration `envfence:flags.<flag>.variants` is validated like every config key;
* the AppConfig document it becomes selects, through the worker's evaluation of AppConfig's rule
  language, exactly the records the declaration targets (group, region, a stable slice of user
  ids);
* on a real PostgreSQL, a batch through the worker with a 10 % split lands with correct, stable
  variants and nothing unmarked; the database refuses unmarked experimental rows; the
  control/variant views separate them (the README's query runs here).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import errors
from test_settings import PROJECT, assert_message, parse, raw_config, refused
from test_worker import PROD, FakeS3, FakeSQS, make_worker

import envfence.cli as cli_module
import envfence.evaluate as evaluate_module
from app.worker import flagrules, pipeline
from app.worker.flagset import FlagSet, FlagSetError, record_context, version_label
from app.worker.store import write_rows
from envfence.cli import main as cli_main
from envfence.flagset import feature_flags_document, flag_set_version, targeting_rule
from envfence.project import Project
from envfence.settings import FeatureFlag, FlagVariant, Targeting
from tests.flagsets import CURATE_OFF, document, flag_set, live_experiment

if TYPE_CHECKING:
    from tests.pg import Database

pytest_plugins = ("tests.pg",)

MakeDb = Callable[..., "Database"]
KEY = "envfence:flags.curate_v2"
HOSTED_VERSION = "aws:appconfig/hostedConfigurationVersion:HostedConfigurationVersion"
PROD_FLAG = {
    "description": "v2",
    "experimental": True,
    "owner": "data-science@example.com",
    "endsOn": "2027-03-31",
}


def prod_flags(**spec: Any) -> dict[str, str]:
    return raw_config("prod", set_={"envfence:flags": {"curate_v2": {**PROD_FLAG, **spec}}})


def variants(*match: Any) -> list[dict[str, Any]]:
    return [{"name": f"v{i}", "match": m} for i, m in enumerate(match)]


# -- the declaration ---------------------------------------------------------------------------


def test_the_prod_stack_file_runs_a_targeted_experiment() -> None:
    (flag,) = parse("prod", raw_config("prod")).flags
    assert flag.experimental and not flag.enabled and flag.targeted
    assert [v.name for v in flag.variants] == ["internal", "treatment"]
    assert flag.variants[1].match == (Targeting(split=(0, 1000)),)
    assert flag.owner and flag.ends_on


@pytest.mark.parametrize(
    ("spec", "key", "value", "allowed"),
    [
        (
            {"variants": variants({"team": ["x"]})},
            f"{KEY}.variants[0].match.team",
            ["x"],
            "one of the keys group, region, percent",
        ),
        (
            {"variants": variants({"percent": 101})},
            f"{KEY}.variants[0].match.percent",
            101,
            "a whole number from 0 to 100",
        ),
        (
            {"variants": variants({"percent": -1})},
            f"{KEY}.variants[0].match.percent",
            -1,
            "a whole number from 0 to 100",
        ),
        (
            {"variants": variants({"percent": 12.5})},
            f"{KEY}.variants[0].match.percent",
            12.5,
            "a whole number from 0 to 100",
        ),
        (
            {"variants": variants({"percent": 60}, {"percent": 50})},
            f"{KEY}.variants[1].match",
            {"percent": 50},
            "add up to at most 100 (now 110)",
        ),
        (
            {"variants": variants({"group": ["beta"]}, {"group": ["beta", "internal"]})},
            f"{KEY}.variants[1].match",
            {"group": ["beta", "internal"]},
            "together with variant 'v0'",
        ),
        (
            {"variants": variants({"region": ["eu-west-1"]}, {"group": ["beta"]})},
            f"{KEY}.variants[1].match",
            {"group": ["beta"]},
            "a record meeting both would get only the first",
        ),
        (
            {"variants": variants({"percent": 10}, {"group": ["beta"]})},
            f"{KEY}.variants[1].match",
            {"group": ["beta"]},
            "together with variant 'v0'",
        ),
        (
            {"variants": variants({"group": []})},
            f"{KEY}.variants[0].match.group",
            [],
            "a non-empty list",
        ),
        (
            {"variants": variants({"region": ["mars-1"]})},
            f"{KEY}.variants[0].match.region",
            ["mars-1"],
            "a list of AWS regions",
        ),
        (
            {"variants": variants({})},
            f"{KEY}.variants[0].match",
            {},
            "at least one of group, region, percent",
        ),
        (
            {"variants": [{"name": "default", "match": {"percent": 1}}]},
            f"{KEY}.variants[0].name",
            "default",
            "not 'default'",
        ),
        (
            {"variants": [{"name": "a", "match": {"percent": 1}}, {"name": "a", "match": {}}]},
            f"{KEY}.variants[1].name",
            "a",
            "a name no other variant of curate_v2 has",
        ),
        ({"variants": []}, f"{KEY}.variants", [], "a non-empty list of {name, enabled, match}"),
        ({"colour": "red"}, f"{KEY}.colour", "red", "one of the keys description"),
        (
            {"enabled": True, "variants": variants({"percent": 10})},
            f"{KEY}.enabled",
            True,
            "never on for everyone in production",
        ),
        (
            {"owner": None, "variants": variants({"percent": 10})},
            f"{KEY}.owner",
            None,
            "required for an experimental flag with an enabled variant in production",
        ),
        (
            {"endsOn": None, "variants": variants({"percent": 10})},
            f"{KEY}.endsOn",
            None,
            "required for an experimental flag",
        ),
        ({"endsOn": "next spring"}, f"{KEY}.endsOn", "next spring", "a date YYYY-MM-DD"),
    ],
)
def test_a_bad_declaration_names_the_key(
    spec: dict[str, Any], key: str, value: Any, allowed: str
) -> None:
    spec = {k: v for k, v in {**PROD_FLAG, **spec}.items() if v is not None}
    msg = refused("prod", raw_config("prod", set_={"envfence:flags": {"curate_v2": spec}}))
    assert_message(msg, "prod", key, value, allowed)


@pytest.mark.parametrize(
    "match",
    [
        # the internal team, plus 10 % of everyone else: a later sample overlaps nothing
        [{"group": ["internal"]}, {"percent": 10}],
        # two splits take disjoint slices
        [{"percent": 10}, {"percent": 10}],
        # different groups, different regions
        [{"group": ["a"]}, {"group": ["b"]}],
        [{"group": ["a"], "region": ["eu-west-1"]}, {"group": ["a"], "region": ["us-east-1"]}],
        # a group, then a split of the same group
        [{"group": ["a"], "percent": 50}, {"group": ["a"], "percent": 50}],
    ],
)
def test_disjoint_rules_are_accepted(match: list[dict[str, Any]]) -> None:
    (flag,) = parse("prod", prod_flags(variants=variants(*match))).flags
    assert len(flag.variants) == 2


def test_experimental_flags_without_a_live_variant_need_no_owner() -> None:
    spec = {"description": "v2", "experimental": True}
    (flag,) = parse("prod", raw_config("prod", set_={"envfence:flags": {"curate_v2": spec}})).flags
    assert not flag.live
    stopped = {**spec, "variants": [{"name": "t", "enabled": False, "match": {"percent": 5}}]}
    raw = raw_config("prod", set_={"envfence:flags": {"curate_v2": stopped}})
    assert not parse("prod", raw).flags[0].live


def test_an_experiment_stack_may_roll_out_to_everyone() -> None:
    spec = {"experimental": True, "enabled": True}
    raw = raw_config("experiment", set_={"envfence:flags": {"curate_v2": spec}})
    (flag,) = parse("experiment", raw).flags
    assert flag.enabled and flag.owner is None


class _BadSplitProject(Project):
    def stack_config(self, stack: str) -> dict[str, str]:
        config = super().stack_config(stack)
        flags = json.loads(config["envfence:flags"])
        flags["curate_v2"]["variants"][1]["match"]["percent"] = 250
        config["envfence:flags"] = json.dumps(flags)
        return config


def test_the_cli_refuses_a_bad_declaration_with_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = _BadSplitProject(PROJECT.root, PROJECT.name, PROJECT.defaults)
    monkeypatch.setattr(evaluate_module, "load_project", lambda: bad)
    monkeypatch.setattr(cli_module, "_repository", lambda: bad)
    assert cli_main(["check", "--stack", "prod"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert "config envfence:flags.curate_v2.variants[1].match.percent is 250" in err
    assert "a whole number from 0 to 100" in err
    assert "Traceback" not in err


# -- the document AppConfig gets, as the worker evaluates it -----------------------------------


def slices_flag() -> FeatureFlag:
    return FeatureFlag(
        "layout",
        "",
        experimental=True,
        enabled=False,
        variants=(
            FlagVariant("beta_eu", True, (Targeting(groups=("beta",), regions=("eu-west-1",)),)),
            FlagVariant("a", True, (Targeting(split=(0, 1000)),)),
            FlagVariant("b", True, (Targeting(split=(1000, 3500)),)),
            FlagVariant("off", False, (Targeting(split=(3500, 3550)),)),
        ),
        owner="o",
    )


def test_the_document_is_appconfigs_multi_variant_shape() -> None:
    doc = json.loads(feature_flags_document((slices_flag(),)))
    assert doc["version"] == "1"
    variants = doc["values"]["layout"]["_variants"]
    assert [v["name"] for v in variants] == ["beta_eu", "a", "b", "off", "default"]
    assert "rule" not in variants[-1] and all("rule" in v for v in variants[:-1])
    assert variants[0]["rule"] == '(and (in $group ["beta"]) (in $region ["eu-west-1"]))'
    assert variants[1]["rule"] == '(split by::$userId pct::10 seed::"layout")'
    assert variants[2]["rule"] == (
        '(and (split by::$userId pct::35 seed::"layout") '
        '(not (split by::$userId pct::10 seed::"layout")))'
    )
    assert [v["attributeValues"]["experimental"] for v in variants] == [
        True,
        True,
        True,
        False,  # a disabled variant produces control rows
        False,
    ]
    assert doc["flags"]["layout"]["attributes"]["experimental"]["constraints"] == {
        "type": "boolean"
    }
    for v in variants:  # every rule is valid in the language the worker evaluates
        if "rule" in v:
            flagrules.parse(v["rule"])


def test_percentages_become_the_declared_shares_of_users() -> None:
    fs = flag_set(slices_flag())
    counts = Counter(fs.assign({"userId": f"user-{i}"})["layout"].variant for i in range(20000))
    share = {k: v / 200 for k, v in counts.items()}  # percent
    assert share["a"] == pytest.approx(10, abs=1)
    assert share["b"] == pytest.approx(25, abs=1.5)
    assert share["off"] == pytest.approx(0.5, abs=0.3)
    assert share["default"] == pytest.approx(64.5, abs=1.5)
    assert "beta_eu" not in share  # no group in the context


def test_targeting_by_group_and_region() -> None:
    fs = flag_set(slices_flag())
    beta_eu = fs.assign({"userId": "u", "group": "beta", "region": "eu-west-1"})["layout"]
    assert (beta_eu.variant, beta_eu.enabled, beta_eu.experimental) == ("beta_eu", True, True)
    beta_us = fs.assign({"userId": "u", "group": "beta", "region": "us-east-1"})["layout"]
    assert beta_us.variant != "beta_eu"
    nobody = fs.assign({})["layout"]  # no attributes: the default variant (AWS's documented case)
    assert (nobody.variant, nobody.default, nobody.experimental) == ("default", True, False)


def test_the_label_is_the_same_on_both_sides() -> None:
    text = feature_flags_document((slices_flag(), CURATE_OFF))
    assert flag_set_version(text) == version_label(text)
    assert FlagSet.load(text, flag_set_version(text)).names == ("curate_v2", "layout")


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: {**d, "version": "2"}, "not an AWS.AppConfig.FeatureFlags document"),
        (lambda d: _set_rule(d, "(eq $group"), r"variant 1 \('a'\): unbalanced parentheses"),
        (
            lambda d: _set_rule(d, None, index=0),
            "has no rule, but only the default, last, has none",
        ),
        (lambda d: _set_attr(d, "yes"), "experimental must be true or false"),
    ],
)
def test_the_worker_refuses_a_flag_set_it_cannot_trust(
    mutate: Callable[[dict[str, Any]], dict[str, Any]], problem: str
) -> None:
    changed = json.dumps(mutate(json.loads(feature_flags_document((slices_flag(),)))))
    with pytest.raises(FlagSetError, match=problem):
        FlagSet.load(changed, version_label(changed))


def test_the_worker_refuses_a_document_its_label_does_not_name() -> None:
    original = feature_flags_document((slices_flag(),))
    edited = original.replace('"pct::10 ', '"pct::90 ').replace("pct::10 ", "pct::90 ")
    assert edited != original
    with pytest.raises(FlagSetError, match="is not the label of this document"):
        FlagSet.load(edited, version_label(original))


def _set_rule(doc: dict[str, Any], rule: str | None, index: int = 1) -> dict[str, Any]:
    variant = doc["values"]["layout"]["_variants"][index]
    if rule is None:
        variant.pop("rule")
    else:
        variant["rule"] = rule
    return doc


def _set_attr(doc: dict[str, Any], value: Any) -> dict[str, Any]:
    doc["values"]["layout"]["_variants"][0]["attributeValues"]["experimental"] = value
    return doc


def test_record_context_reads_user_group_and_region() -> None:
    assert record_context({"user_id": 42, "group": "beta", "region": "eu-west-1", "x": 1}) == {
        "userId": 42,
        "group": "beta",
        "region": "eu-west-1",
    }
    assert record_context({"user_id": "", "group": {"nested": 1}}) == {}


# -- on PostgreSQL: the batch, the fence, the views --------------------------------------------

BATCH = 600


def run_batch(database: Database, flags: tuple[str, str]) -> None:
    """BATCH records through the worker (`python -m worker`'s loop: fake SQS and S3, the real
    database), as production's worker with the flag set `flags` (FLAG_SET, FLAG_SET_VERSION)."""
    bodies = [
        json.dumps({"user_id": f"user-{i % 300}", "group": "customers", "n": i})
        for i in range(BATCH)
    ]
    sqs, s3 = FakeSQS(bodies), FakeS3()
    worker = make_worker(database, sqs, s3, identity=PROD, flags=flags)
    try:
        while sqs.queue:
            received, done = worker.poll_once()
            assert received == done
    finally:
        worker.close()
    assert len(sqs.deleted) == BATCH


def pipeline_sent() -> dt.datetime:
    return dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def test_a_ten_percent_split_lands_stable_and_marked(envfence_db: MakeDb) -> None:
    database = envfence_db("prod", "production")
    flags = document(live_experiment(percent=10))
    fs = FlagSet.load(*flags)
    run_batch(database, flags)
    with database.connect("analyst") as conn:
        rows = conn.execute(
            "SELECT payload ->> 'user_id', flag_set_version, variants -> 'curate_v2' ->> "
            "'variant', experimental FROM envfence.events"
        ).fetchall()
        unmarked = conn.execute(
            "SELECT count(*) FROM envfence.curated_by_variant "
            "WHERE experimental AND arm = 'variant' AND id IN "
            "(SELECT id FROM envfence.curated WHERE NOT experimental)"
        ).fetchone()
    assert len(rows) == BATCH
    assert {r[1] for r in rows} == {fs.version}
    by_user: dict[str, set[str]] = {}
    for user, _, variant, experimental in rows:
        by_user.setdefault(user, set()).add(variant)
        assert experimental is (variant == "treatment")  # marked exactly when experimental
    assert all(len(v) == 1 for v in by_user.values())  # the same user, the same variant
    treated = sum(1 for v in by_user.values() if v == {"treatment"})
    assert treated / len(by_user) == pytest.approx(0.10, abs=0.03)
    for user, variant in by_user.items():  # and the variant the flag set gives that user
        assert variant == {fs.assign({"userId": user, "group": "customers"})["curate_v2"].variant}
    assert unmarked == (0,)


def test_the_readme_query_separates_control_from_variant(envfence_db: MakeDb) -> None:
    database = envfence_db("prod", "production")
    run_batch(database, document(live_experiment(percent=10)))
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("-- control vs variant")
    query = readme[start : readme.index("```", start)]
    with database.connect("analyst") as conn:
        result = conn.execute(query).fetchall()
    arms = {(flag, variant, arm): rows for flag, variant, arm, rows, *_ in result}
    assert set(arms) == {
        ("curate_v2", "default", "control"),
        ("curate_v2", "treatment", "variant"),
    }
    assert sum(arms.values()) == BATCH  # one row per event with an `n`


STAMP = {"variant": "treatment", "enabled": True, "default": False, "experimental": True}


@pytest.mark.parametrize(
    ("variants", "experimental", "problem"),
    [
        ({"curate_v2": STAMP}, False, "experimental variant curate_v2=treatment but is not marked"),
        ({"curate_v2": {**STAMP, "experimental": False}}, True, "marked experimental but no"),
        ({"curate_v2": {"variant": "t"}}, False, "variants.curate_v2 must be"),
        (None, False, "carries no flag set version"),
    ],
)
def test_the_production_database_refuses_unmarked_or_malformed_stamps(
    envfence_db: MakeDb, variants: Any, experimental: bool, problem: str
) -> None:
    database = envfence_db("prod", "production")
    with database.connect("worker") as conn:
        insert = (
            "INSERT INTO envfence.events (payload, source, environment, flag_set_version, "
            "variants, experimental) VALUES ('{}', 'production', 'prod', %s, %s, %s)"
        )
        version = None if variants is None else "fs-test"
        stamp = None if variants is None else json.dumps(variants)
        with pytest.raises(errors.CheckViolation, match=problem):
            conn.execute(insert, (version, stamp, experimental))
        conn.execute(insert, ("fs-test", json.dumps({"curate_v2": STAMP}), True))  # marked


def test_the_constraints_hold_without_the_trigger(envfence_db: MakeDb) -> None:
    """CHECK constraints back the marking up where triggers do not fire."""
    database = envfence_db("prod", "production")
    with database.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        with pytest.raises(errors.CheckViolation, match="events_experimental_rows_marked"):
            conn.execute(
                "INSERT INTO envfence.events (payload, source, environment, flag_set_version, "
                "variants, experimental) VALUES ('{}', 'production', 'prod', 'fs-x', %s, false)",
                (json.dumps({"curate_v2": STAMP}),),
            )


def test_the_worker_role_cannot_restamp_a_row(envfence_db: MakeDb) -> None:
    database = envfence_db("prod", "production")
    ident = pipeline.Identity("prod", "production", None)
    plan = pipeline.process(
        pipeline.Record("m", '{"n": 1}', pipeline_sent()),
        pipeline.Context(ident, flag_set(CURATE_OFF)),
    )
    with database.connect("worker") as conn:
        write_rows(conn, plan)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE envfence.events SET experimental = false")


def test_document_helper_matches_the_stack(prod: Any) -> None:
    """The tests' flag sets are built like the stack's: prod's document is the one the
    declaration in Pulumi.prod.yaml gives."""
    text, _ = document(live_experiment(percent=10, groups=("internal", "beta-testers")))
    hosted = prod.named("flags-version", HOSTED_VERSION)
    assert json.loads(hosted.inputs["content"])["values"] == json.loads(text)["values"]


# -- EF505 fails closed ---------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["containerDefinitions", "versionLabel"])
def test_ef505_cannot_read_fails_closed(
    what: str, stack_copy: Callable[[str], Any], project: Project
) -> None:
    from envfence.model import SECRET, UNKNOWN
    from envfence.rules import run_all

    state = stack_copy("prod")
    if what == "containerDefinitions":
        state.named("worker-task", "aws:ecs/taskDefinition:TaskDefinition").set(what, UNKNOWN)
    else:
        state.named("flags-version", HOSTED_VERSION).set(what, SECRET)
    result = run_all([state], project)
    found = [v for v in result.violations if v.rule == "EF902" and "[EF505]" in v.message]
    assert found, [v.message for v in result.violations]
    assert "fails closed" in found[0].message


def test_a_rule_longer_than_appconfig_allows_is_refused() -> None:
    groups = [f"group-{i:04d}-with-a-long-name" for i in range(600)]
    msg = refused("prod", prod_flags(variants=variants({"group": groups})))
    assert f'config {KEY}.variants[0].match is "' in msg
    assert "a rule of at most 16384 characters (AppConfig's limit)" in msg


def test_a_flag_set_too_large_for_the_task_definitions_is_refused() -> None:
    flags = {f"flag_{i:03d}": {"description": "x" * 200, "experimental": False} for i in range(80)}
    msg = refused("prod", raw_config("prod", set_={"envfence:flags": flags}))
    assert 'config envfence:flags is "a flag set of' in msg
    assert "at most 16384 bytes as an AppConfig document" in msg


def test_three_conditions_nest_two_operands_at_a_time() -> None:
    t = Targeting(groups=("a",), regions=("eu-west-1",), split=(0, 500))
    rule = targeting_rule("f", t)
    assert rule == (
        '(and (in $group ["a"]) (and (in $region ["eu-west-1"]) '
        '(split by::$userId pct::5 seed::"f")))'
    )
    flagrules.parse(rule)
