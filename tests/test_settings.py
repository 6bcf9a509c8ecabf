"""Stack config validation: every bad value stops the program with a message a person can act on.

The real stack files are the starting point of every case: one key is changed at a time, so each
test proves that exactly that value is refused, and that the message names the key, the value
and what is allowed (`stack 'S': config KEY is VALUE; allowed: ...`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import envfence.cli as cli_module
import envfence.evaluate as evaluate_module
from envfence.cli import main as cli_main
from envfence.evaluate import EvaluationError, evaluate
from envfence.model import STACK_TYPE
from envfence.project import Project, load_project
from envfence.settings import ConfigError, PeerStack, Settings, parse_settings, settings_for

ROOT = Path(__file__).resolve().parent.parent  # the repository under test

PROJECT = load_project()
STACKS = PROJECT.stacks()
NAME = PROJECT.name
STORES = ("raw", "curated", "results")

# The repository's pair, spelled out here rather than read through the code under test.
PROD_PEER = PeerStack("prod", ipaddress.IPv4Network("10.10.0.0/16"), "123456789012", STORES)
EXPERIMENT_PEER = PeerStack(
    "experiment", ipaddress.IPv4Network("10.20.0.0/16"), "210987654321", STORES
)
PEERS = {"prod": {"experiment": EXPERIMENT_PEER}, "experiment": {"prod": PROD_PEER}}

DROP = object()  # marks a nested key to remove


def raw_config(
    stack: str,
    set_: Mapping[str, Any] | None = None,
    merge: Mapping[str, Mapping[str, Any]] | None = None,
    drop: tuple[str, ...] = (),
) -> dict[str, str]:
    """The real stack file's config as CLI strings, with top-level keys set or dropped and
    keys of JSON objects merged (a value of DROP removes that nested key)."""
    raw = dict(PROJECT.stack_config(stack))
    for key in drop:
        raw.pop(key)
    for key, changes in (merge or {}).items():
        obj = json.loads(raw.get(key, "{}"))
        for name, value in changes.items():
            if value is DROP:
                obj.pop(name)
            else:
                obj[name] = value
        raw[key] = json.dumps(obj)
    for key, value in (set_ or {}).items():
        raw[key] = value if isinstance(value, str) else json.dumps(value)
    return raw


def parse(
    stack: str,
    raw: Mapping[str, str],
    peers: Mapping[str, PeerStack] | None = None,
    as_stack: str | None = None,
) -> Settings:
    name = as_stack or stack
    return parse_settings(
        NAME, name, raw, PEERS.get(stack, {}) if peers is None else peers, PROJECT.registry
    )


def refused(
    stack: str,
    raw: Mapping[str, str],
    peers: Mapping[str, PeerStack] | None = None,
    as_stack: str | None = None,
) -> str:
    with pytest.raises(ConfigError) as info:
        parse(stack, raw, peers, as_stack)
    return str(info.value)


def assert_message(msg: str, stack: str, key: str, value: Any, *allowed: str) -> None:
    """`stack 'S': config KEY is VALUE; allowed: ...` with every fragment of `allowed`."""
    shown = "missing" if value is None else f"is {json.dumps(value)}"
    head = f"stack '{stack}': config {key} {shown}; allowed: "
    assert msg.startswith(head), f"{msg!r} does not start with {head!r}"
    rest = msg[len(head) :]
    assert rest.strip(), f"{msg!r} says nothing about what is allowed"
    for fragment in allowed:
        assert fragment in rest, f"{fragment!r} missing from what is allowed: {rest!r}"


# -- the real stack files ---------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_real_stack_files_parse(stack: str) -> None:
    doc = yaml.safe_load(PROJECT.stack_file(stack).read_text())["config"]
    s = settings_for(PROJECT, stack, PROJECT.stack_config(stack))
    assert s.stack == stack
    assert s.project == NAME
    assert s.tier == PROJECT.registry.entry(stack).tier
    assert s.region == doc["aws:region"]
    assert s.account == doc["envfence:allowedAccountIds"][0]
    assert s.allowed_account_ids == (doc["envfence:allowedAccountIds"][0],)
    assert str(s.network.cidr) == doc["envfence:network"]["cidr"]
    assert s.network.az_count == doc["envfence:network"].get("azCount", 2)
    assert s.network.nat_gateways == doc["envfence:network"].get("natGateways", 0)
    assert s.data_stores == tuple(doc.get("envfence:dataStores", STORES))
    assert s.experiment_id == doc.get("envfence:experimentId")
    assert s.analyst_principals == tuple(doc["envfence:access"].get("analystPrincipals", ()))
    assert {(f.source, f.target, f.role, f.store, f.access) for f in s.flows} == {
        (f["from"], f["to"], f["role"], f["store"], f.get("access", "read"))
        for f in doc.get("envfence:flows", [])
    }
    # The sibling stack files were read as peers: every other stack, and only those.
    assert set(s.peers) == set(STACKS) - {stack}


def test_real_stack_files_are_the_pair_the_tests_assume() -> None:
    for peer in (PROD_PEER, EXPERIMENT_PEER):
        s = settings_for(PROJECT, peer.name, PROJECT.stack_config(peer.name))
        assert (s.network.cidr, s.account, s.data_stores) == (
            peer.cidr,
            peer.account,
            peer.data_stores,
        )


def test_project_disables_default_providers() -> None:
    assert json.loads(PROJECT.defaults["pulumi:disable-default-providers"]) == ["*"]


# -- one test per validation error ------------------------------------------------------------


def test_wrong_tier() -> None:
    msg = refused("prod", raw_config("prod", {"envfence:tier": "staging"}))
    assert_message(msg, "prod", "envfence:tier", "staging", "production", "experiment")


@pytest.mark.parametrize("cidr", ["10.10.0.0/33", "not-a-cidr", "10.10.1.0/16", "10.10.0/16"])
def test_malformed_cidr(cidr: str) -> None:
    msg = refused("prod", raw_config("prod", merge={"envfence:network": {"cidr": cidr}}))
    assert_message(msg, "prod", "envfence:network.cidr", cidr, "private IPv4 CIDR", "/16 to /24")


@pytest.mark.parametrize(
    "cidr",
    [
        "10.0.0.0/8",  # larger than /16
        "10.10.0.0/25",  # smaller than /24
        "8.8.0.0/16",  # public
        "100.64.0.0/16",  # carrier-grade NAT, not RFC 1918
        "172.32.0.0/16",  # just outside 172.16/12
    ],
)
def test_cidr_outside_the_allowed_prefixes_or_not_private(cidr: str) -> None:
    msg = refused("prod", raw_config("prod", merge={"envfence:network": {"cidr": cidr}}))
    assert_message(
        msg, "prod", "envfence:network.cidr", cidr, "10/8, 172.16/12 or 192.168/16", "/16 to /24"
    )


def test_cidr_overlapping_a_sibling_stack() -> None:
    raw = raw_config("prod", merge={"envfence:network": {"cidr": "10.20.128.0/20"}})
    msg = refused("prod", raw)
    assert_message(
        msg,
        "prod",
        "envfence:network.cidr",
        "10.20.128.0/20",
        "does not overlap stack 'experiment' (10.20.0.0/16)",
    )
    # The control: the same CIDR parses once the sibling holds another one.
    moved = PeerStack("experiment", ipaddress.IPv4Network("10.99.0.0/16"), "210987654321", STORES)
    assert str(parse("prod", raw, peers={"experiment": moved}).network.cidr) == "10.20.128.0/20"


@pytest.mark.parametrize("az_count", [1, 5, 0, "two"])
def test_az_count_out_of_range(az_count: Any) -> None:
    raw = raw_config("prod", merge={"envfence:network": {"azCount": az_count, "natGateways": 0}})
    msg = refused("prod", raw)
    assert_message(msg, "prod", "envfence:network.azCount", az_count, "from 2 to 4")


def test_more_nat_gateways_than_azs() -> None:
    raw = raw_config("experiment", merge={"envfence:network": {"azCount": 2, "natGateways": 3}})
    msg = refused("experiment", raw)
    assert_message(msg, "experiment", "envfence:network.natGateways", 3, "from 0 to azCount (2)")


def test_experiment_id_on_production() -> None:
    msg = refused("prod", raw_config("prod", {"envfence:experimentId": "abc"}))
    assert_message(msg, "prod", "envfence:experimentId", "abc", "forbidden for the production tier")


def test_experiment_id_missing_for_experiment() -> None:
    msg = refused("experiment", raw_config("experiment", drop=("envfence:experimentId",)))
    assert_message(msg, "experiment", "envfence:experimentId", None, "required for tier experiment")


def test_experiment_id_not_matching_the_stack_name() -> None:
    raw = raw_config("experiment", {"envfence:experimentId": "shared"})
    msg = refused("experiment", raw, peers={}, as_stack="experiment-ab12")
    assert_message(
        msg,
        "experiment-ab12",
        "envfence:experimentId",
        "shared",
        "'ab12', the id in the stack name",
    )


def test_experiment_id_matching_the_stack_name_is_accepted() -> None:
    raw = raw_config(
        "experiment",
        {"envfence:experimentId": "ab12"},
        merge={"envfence:network": {"cidr": "10.30.0.0/16"}},
        drop=("envfence:flows", "envfence:audit"),
    )
    s = parse("experiment", raw, peers={}, as_stack="experiment-ab12")
    assert (s.stack, s.experiment_id) == ("experiment-ab12", "ab12")


def test_expires_on_production() -> None:
    msg = refused("prod", raw_config("prod", {"envfence:expiresOn": "2030-01-31"}))
    assert_message(
        msg, "prod", "envfence:expiresOn", "2030-01-31", "production stacks do not expire"
    )


def test_expires_on_is_read_for_an_experiment() -> None:
    s = parse("experiment", raw_config("experiment", {"envfence:expiresOn": "2030-01-31"}))
    assert s.expires_on == dt.date(2030, 1, 31)


def _prod_flow(**changes: Any) -> dict[str, str]:
    flow = {
        "from": "prod",
        "to": "experiment",
        "role": "pipeline",
        "store": "results",
        "access": "read",
    }
    flow.update(changes)
    return raw_config("prod", {"envfence:flows": [flow]})


def test_flow_naming_an_unknown_data_store() -> None:
    msg = refused("prod", _prod_flow(store="scratch"))
    assert_message(
        msg,
        "prod",
        "envfence:flows[0].store",
        "scratch",
        "a data store of stack 'experiment': raw, curated, results",
    )


def test_flow_naming_an_unknown_stack() -> None:
    msg = refused("prod", _prod_flow(to="staging"))
    assert_message(msg, "prod", "envfence:flows[0].to", "staging", "experiment, prod")


def test_flow_with_write_access() -> None:
    msg = refused("prod", _prod_flow(access="write"))
    assert_message(msg, "prod", "envfence:flows[0].access", "write", "read")
    assert "write" not in msg.split("; allowed: ", 1)[1]


def test_flow_not_involving_the_current_stack() -> None:
    other = PeerStack(
        "experiment-ab12", ipaddress.IPv4Network("10.30.0.0/16"), "210987654321", STORES
    )
    raw = _prod_flow(**{"from": "experiment", "to": "experiment-ab12"})
    msg = refused("prod", raw, peers={"experiment": EXPERIMENT_PEER, "experiment-ab12": other})
    assert_message(msg, "prod", "envfence:flows[0].from", "experiment", "'prod' on one side")


@pytest.mark.parametrize("key", ["envfence:owner", "aws:region"])
def test_missing_required_key(key: str) -> None:
    msg = refused("prod", raw_config("prod", drop=(key,)))
    assert_message(msg, "prod", key, None)


@pytest.mark.parametrize("key", ["envfence:tier", "envfence:allowedAccountIds"])
def test_tier_and_account_come_from_the_registry_when_the_stack_file_omits_them(key: str) -> None:
    raw = raw_config("prod", {"envfence:tier": "production"})
    raw.pop(key)
    s = parse("prod", raw)
    assert (s.tier, s.allowed_account_ids) == ("production", ("123456789012",))


@pytest.mark.parametrize("key", ["envfence:tier", "envfence:allowedAccountIds"])
def test_without_a_registry_tier_and_account_are_required(key: str) -> None:
    raw = raw_config("prod", {"envfence:tier": "production"})
    raw.pop(key)
    with pytest.raises(ConfigError) as info:
        parse_settings(NAME, "prod", raw, PEERS["prod"])
    assert_message(str(info.value), "prod", key, None)


def test_missing_network_cidr() -> None:
    msg = refused("prod", raw_config("prod", merge={"envfence:network": {"cidr": DROP}}))
    assert_message(msg, "prod", "envfence:network.cidr", None, "private IPv4 CIDR")


def test_missing_network_object_means_missing_cidr() -> None:
    msg = refused("prod", raw_config("prod", drop=("envfence:network",)))
    assert_message(msg, "prod", "envfence:network.cidr", None, "private IPv4 CIDR")


@pytest.mark.parametrize(
    "accounts",
    [
        '["12345678901"]',  # 11 digits
        '["1234567890123"]',  # 13 digits
        '["12345678901a"]',
        "[123456789012]",  # an unquoted number
        "123456789012",  # not a list
    ],
)
def test_allowed_account_ids_not_a_quoted_12_digit_id(accounts: str) -> None:
    msg = refused("prod", raw_config("prod", {"envfence:allowedAccountIds": accounts}))
    value = json.loads(accounts) if accounts.startswith("[") else accounts
    assert_message(msg, "prod", "envfence:allowedAccountIds", value, "12-digit", "quoted string")


def test_allowed_account_ids_with_two_accounts() -> None:
    accounts = ["123456789012", "210987654321"]
    msg = refused("prod", raw_config("prod", {"envfence:allowedAccountIds": accounts}))
    assert_message(msg, "prod", "envfence:allowedAccountIds", accounts, "exactly one account id")


def test_unquoted_account_id_in_a_stack_file_is_refused(tmp_path: Path) -> None:
    project = _project_copy(tmp_path, {"prod": {"envfence:allowedAccountIds": [123456789012]}})
    written = yaml.safe_load((tmp_path / "Pulumi.prod.yaml").read_text())
    assert written["config"]["envfence:allowedAccountIds"] == [123456789012]
    with pytest.raises(ConfigError) as info:
        settings_for(project, "prod", project.stack_config("prod"))
    assert_message(
        str(info.value), "prod", "envfence:allowedAccountIds", [123456789012], "quoted string"
    )


@pytest.mark.parametrize("key", ["analystPrincipals", "adminPrincipals"])
def test_principal_of_another_account(key: str) -> None:
    arn = "arn:aws:iam::999999999999:role/data-analysts"
    msg = refused("prod", raw_config("prod", merge={"envfence:access": {key: [arn]}}))
    assert_message(
        msg, "prod", f"envfence:access.{key}", arn, "of account 123456789012", "no wildcards"
    )


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:iam::123456789012:role/*",
        "arn:aws:iam::123456789012:role/data-*",
        "*",
        "arn:aws:iam::123456789012:root",
        "arn:aws:iam::*:role/data-analysts",
    ],
)
def test_analyst_principal_with_a_wildcard_or_not_a_role(arn: str) -> None:
    raw = raw_config("prod", merge={"envfence:access": {"analystPrincipals": [arn]}})
    msg = refused("prod", raw)
    assert_message(msg, "prod", "envfence:access.analystPrincipals", [arn], "no wildcards")


def test_production_without_deletion_protection() -> None:
    raw = raw_config("prod", merge={"envfence:database": {"deletionProtection": False}})
    msg = refused("prod", raw)
    assert_message(msg, "prod", "envfence:database.deletionProtection", False, "true")


def test_experiment_may_turn_deletion_protection_off() -> None:
    raw = raw_config("experiment", merge={"envfence:database": {"deletionProtection": False}})
    assert parse("experiment", raw).database.deletion_protection is False


@pytest.mark.parametrize("days", [0, 3, 6])
def test_production_backup_retention_below_seven_days(days: int) -> None:
    raw = raw_config("prod", merge={"envfence:database": {"backupRetentionDays": days}})
    msg = refused("prod", raw)
    assert_message(
        msg, "prod", "envfence:database.backupRetentionDays", days, "from 7 to 35 for production"
    )


def test_production_backup_retention_of_seven_days_is_accepted() -> None:
    raw = raw_config("prod", merge={"envfence:database": {"backupRetentionDays": 7}})
    assert parse("prod", raw).database.backup_retention_days == 7


@pytest.mark.parametrize("key", ["envfence:experimentID", "envfence:tiers", "envfence:Owner"])
def test_unknown_top_level_key(key: str) -> None:
    msg = refused("prod", raw_config("prod", {key: "x"}))
    assert_message(msg, "prod", key, "x", "one of the keys", "tier", "experimentId")


@pytest.mark.parametrize(
    ("key", "nested", "known"),
    [
        ("envfence:network", "cidrBlock", "cidr, azCount, natGateways"),
        ("envfence:database", "multiAZ", "multiAz"),
        ("envfence:access", "analysts", "analystPrincipals, adminPrincipals"),
        ("envfence:retention", "expireAfterDays", "noncurrentVersionArchiveDays"),
    ],
)
def test_unknown_nested_key(key: str, nested: str, known: str) -> None:
    msg = refused("prod", raw_config("prod", merge={key: {nested: 1}}))
    assert_message(msg, "prod", f"{key}.{nested}", 1, "one of the keys", known)


def test_unknown_key_in_a_flow() -> None:
    msg = refused("prod", _prod_flow(direction="both"))
    assert_message(msg, "prod", "envfence:flows[0].direction", "both", "one of the keys")


@pytest.mark.parametrize("stack", ["Prod", "p", "prod_1", "-prod", "prod-", "9prod", "x" * 29])
def test_invalid_stack_name(stack: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(NAME, stack, raw_config("prod"), PEERS["prod"])
    msg = str(info.value)
    assert msg.startswith(f"stack name '{stack}' is not allowed: ")
    assert "2-28 characters" in msg
    assert "lowercase letters" in msg


# -- tier defaults ----------------------------------------------------------------------------


def test_production_defaults() -> None:
    raw = raw_config(
        "prod", drop=("envfence:database", "envfence:logRetentionDays", "envfence:retention")
    )
    s = parse("prod", raw)
    assert s.is_production
    assert s.database.multi_az is True
    assert s.database.deletion_protection is True
    assert s.database.backup_retention_days >= 7
    assert s.retention.expire_after_days is None
    assert s.retention.noncurrent_expire_days is None
    assert s.log_retention_days == 365
    assert s.classification == "production"


def test_experiment_defaults() -> None:
    raw = raw_config(
        "experiment", drop=("envfence:database", "envfence:logRetentionDays", "envfence:retention")
    )
    s = parse("experiment", raw)
    assert not s.is_production
    assert s.retention.expire_after_days == 30
    assert s.database.deletion_protection is False
    assert s.database.multi_az is False
    assert s.log_retention_days == 30
    assert s.classification == "experimental"
    assert s.tags()["experiment-id"] == "shared"


def test_network_defaults() -> None:
    raw = raw_config("prod", merge={"envfence:network": {"azCount": DROP, "natGateways": DROP}})
    net = parse("prod", raw).network
    assert (net.az_count, net.nat_gateways) == (2, 0)


# -- a bad stack file under the evaluator -----------------------------------------------------


def _project_copy(
    tmp_path: Path, changes: Mapping[str, Mapping[str, Any]], with_program: bool = False
) -> Project:
    """Pulumi.yaml and every stack file copied into tmp_path, `changes[stack]` applied to that
    stack's config (None removes a key); optionally infra/ too, so the program runs there."""
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    for stack in STACKS:
        doc = yaml.safe_load(PROJECT.stack_file(stack).read_text())
        for key, value in changes.get(stack, {}).items():
            if value is None:
                doc["config"].pop(key, None)
            else:
                doc["config"][key] = value
        (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    if with_program:
        shutil.copytree(
            ROOT / "infra", tmp_path / "infra", ignore=shutil.ignore_patterns("__pycache__")
        )
    return load_project(tmp_path)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The recording monitors of the evaluations run by the test."""
    monitors: list[Any] = []
    make = evaluate_module._make_monitor

    def spy(*args: Any) -> Any:
        monitor = make(*args)
        monitors.append(monitor)
        return monitor

    monkeypatch.setattr(evaluate_module, "_make_monitor", spy)
    return monitors


@pytest.mark.usefixtures("restore_program_modules")
def test_bad_stack_file_is_an_evaluation_error_before_any_resource(
    tmp_path: Path, recorded: list[Any]
) -> None:
    project = _project_copy(tmp_path, {"prod": {"envfence:tier": "staging"}}, with_program=True)
    assert project.root == tmp_path
    with pytest.raises(EvaluationError) as info:
        evaluate("prod", project)
    msg = str(info.value)
    assert "stack 'prod'" in msg
    assert 'config envfence:tier is "staging"' in msg
    assert "allowed: production | experiment" in msg
    assert "Traceback" not in msg
    assert "\n" not in msg
    # Nothing but the stack itself was registered: no provider, no component, no AWS resource.
    assert len(recorded) == 1
    assert {r.type for r in recorded[0].records.values()} == {STACK_TYPE}


@pytest.mark.usefixtures("restore_program_modules")
def test_copied_project_evaluates_when_its_config_is_good(
    tmp_path: Path, recorded: list[Any]
) -> None:
    """The control for the test above: the same copy, unchanged config, evaluates fully."""
    project = _project_copy(tmp_path, {}, with_program=True)
    state = evaluate("experiment", project)
    assert state.of_type("pulumi:providers:aws")
    assert len(recorded[0].records) > 20


class _BadTierProject(Project):
    def stack_config(self, stack: str) -> dict[str, str]:
        config = super().stack_config(stack)
        config["envfence:tier"] = "staging"
        return config


def test_config_error_is_reported_as_the_config_error_itself() -> None:
    bad = _BadTierProject(PROJECT.root, NAME, PROJECT.defaults)
    with pytest.raises(ConfigError) as expected:
        settings_for(PROJECT, "prod", bad.stack_config("prod"))
    with pytest.raises(EvaluationError) as info:
        evaluate("prod", bad)
    assert str(info.value) == str(expected.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("command", ["plan", "check"])
def test_config_error_is_one_line_and_exit_code_2_in_the_cli(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _BadTierProject(PROJECT.root, NAME, PROJECT.defaults)
    monkeypatch.setattr(evaluate_module, "load_project", lambda: bad)
    monkeypatch.setattr(cli_module, "_repository", lambda: bad)  # the CLI's repository
    assert cli_main([command, "--stack", "prod"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("envfence: error: stack 'prod': config envfence:tier is \"staging\"")
    assert "allowed: production | experiment" in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_unquoted_yaml_date_for_expires_on_is_a_date(tmp_path: Path) -> None:
    project = _project_copy(tmp_path, {"experiment": {"envfence:expiresOn": dt.date(2030, 1, 31)}})
    assert "envfence:expiresOn: 2030-01-31\n" in (tmp_path / "Pulumi.experiment.yaml").read_text()
    assert project.stack_config("experiment")["envfence:expiresOn"] == "2030-01-31"
    s = settings_for(project, "experiment", project.stack_config("experiment"))
    assert s.expires_on == dt.date(2030, 1, 31)


@pytest.mark.parametrize(
    ("audit", "key"),
    [({"alertEmails": ["a@example.com"]}, "alertEmails"), ({"objectLockDays": 0}, None)],
)
def test_a_stack_that_is_not_its_accounts_baseline_has_no_audit_settings(
    audit: dict[str, Any], key: str | None
) -> None:
    raw = raw_config(
        "experiment",
        {"envfence:audit": audit, "envfence:experimentId": "ab12"},
        merge={"envfence:network": {"cidr": "10.30.0.0/16"}},
        drop=("envfence:flows",),
    )
    if key is None:  # objectLockDays 0 is nothing set: accepted
        s = parse("experiment", raw, peers={}, as_stack="experiment-ab12")
        assert s.trail_owner == "experiment"
        return
    msg = refused("experiment", raw, peers={}, as_stack="experiment-ab12")
    assert_message(msg, "experiment-ab12", f"envfence:audit.{key}", ["a@example.com"], "baseline")


def test_a_config_error_is_pulumis_clean_stop_in_the_program_only() -> None:
    """Under the Pulumi CLI a ConfigError must print as one line (a `pulumi.RunError`): the
    program imports pulumi before envfence.settings. The checker does not pay for importing
    pulumi when it reads no program (a cached check): there the base is Exception."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    program = (root / "infra" / "__main__.py").read_text()
    assert program.index("\nimport pulumi\n") < program.index("from envfence.settings import")
    in_program = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pulumi\nfrom envfence.settings import ConfigError\n"
            "print(issubclass(ConfigError, pulumi.RunError))",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert in_program.stdout.split() == ["True"]
    alone = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom envfence.settings import ConfigError\n"
            "print('pulumi' in sys.modules, issubclass(ConfigError, Exception))",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert alone.stdout.split() == ["False", "True"]
