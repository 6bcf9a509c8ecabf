"""The README's "Scanning with Checkov" section stays true.

Each Checkov finding on the stacks that the README calls "by design" gives a reason; each reason
is checked here on the evaluated stacks (and the envfence rule it names must be quiet), so the
reason cannot silently become false. Every check id of the README's table must be named in the
docstring of a test of this file: a new row needs a test.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from envfence.model import Resource, StackState
from envfence.project import Project
from envfence.rules import Result, run_all
from envfence.rules.context import provider_account

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Scanning with Checkov"
CHECK_ID = re.compile(r"\bCKV2?_[A-Z]+_\d+\b")

POLICY = "aws:iam/policy:Policy"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ATTACHMENTS = (
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/policyAttachment:PolicyAttachment",
    "aws:iam/userPolicyAttachment:UserPolicyAttachment",
    "aws:iam/groupPolicyAttachment:GroupPolicyAttachment",
)
BUCKET = "aws:s3/bucket:Bucket"
NOTIFICATION = "aws:s3/bucketNotification:BucketNotification"
REPLICATION = "aws:s3/bucketReplicationConfig:BucketReplicationConfig"
TRAIL = "aws:cloudtrail/trail:Trail"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
METRIC_FILTER = "aws:cloudwatch/logMetricFilter:LogMetricFilter"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
TOPIC = "aws:sns/topic:Topic"
KEY = "aws:kms/key:Key"
DB = "aws:rds/instance:Instance"
SCHEDULE = "aws:scheduler/schedule:Schedule"


@pytest.fixture(scope="module")
def rules(stacks: dict[str, StackState], project: Project) -> Result:
    return run_all(stacks.values(), project)


def quiet(result: Result, *rule_ids: str) -> None:
    found = [f"{v.rule} {v.stack}: {v.message}" for v in result.violations if v.rule in rule_ids]
    assert found == [], found


def doc(value: Any) -> Any:
    while isinstance(value, str):
        value = json.loads(value)
    return value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def config(state: StackState, key: str, default: Any) -> Any:
    raw = state.config.get(f"envfence:{key}")
    return default if raw is None else doc(raw)


def mentions(r: Resource, text: str) -> list[str]:
    """The input keys of `r` whose value names `text` anywhere."""
    return [k for k, v in r.inputs.items() if text in json.dumps(v)]


# -- the permission boundary ---------------------------------------------------------------------


def test_the_boundary_allows_everything_only_as_a_permissions_boundary(
    stacks: dict[str, StackState], rules: Result
) -> None:
    """CKV_AWS_62, CKV_AWS_63, CKV_AWS_289, CKV_AWS_290, CKV2_AWS_40: the boundary's `Allow *`
    is only the ceiling of every role's permissions boundary: no policy with `Allow *` is
    attached to anyone, and its Deny statements (the fence) are there."""
    for name, state in stacks.items():
        star = [
            p
            for p in state.of_type(POLICY)
            if any(
                s["Effect"] == "Allow" and "*" in as_list(s.get("Action", []))
                for s in as_list(doc(p.get("policy"))["Statement"])
            )
        ]
        assert [p.get("name") for p in star] == [f"envfence-{name}-boundary"], name
        boundary = star[0]
        arn = boundary.get("arn")
        roles = state.of_type(ROLE)
        assert roles and all(r.inputs.get("permissionsBoundary") == arn for r in roles), name
        # Named nowhere but as a boundary: no attachment, no managedPolicyArns, no policy text.
        for r in state.resources:
            if r is boundary:
                continue
            where = mentions(r, arn)
            assert where in ([], ["permissionsBoundary"]), (name, r.type, r.name, where)
            assert not (where and r.type != ROLE), (name, r.type, r.name)
            assert not r.inputs.get("managedPolicyArns"), (name, r.name)
        for kind in ATTACHMENTS:
            assert state.of_type(kind) == [], (name, kind)
        # No identity policy allows everything either.
        for rp in state.of_type(ROLE_POLICY):
            for s in as_list(doc(rp.get("policy"))["Statement"]):
                assert "*" not in as_list(s.get("Action", [])), (name, rp.name, s.get("Sid"))
        denies = [
            s for s in as_list(doc(boundary.get("policy"))["Statement"]) if s["Effect"] == "Deny"
        ]
        assert len(denies) >= 5, name
        iam_changes = {a for s in denies for a in as_list(s.get("Action", []))}
        assert {"iam:Put*", "iam:Attach*", "iam:Create*"} <= iam_changes, name
    quiet(rules, "EF303", "EF304", "EF306")


# -- buckets -------------------------------------------------------------------------------------


def _store(bucket: Resource) -> str:
    return str((bucket.inputs.get("tags") or {}).get("data-store", ""))


def _selectors(trail: Resource) -> list[tuple[list[str], list[str]]]:
    """(StartsWith, NotStartsWith) of each data-event selector on S3 objects' resources.ARN."""
    out = []
    for selector in trail.get("advancedEventSelectors") or []:
        fields = {f["field"]: f for f in selector.get("fieldSelectors", [])}
        if fields.get("eventCategory", {}).get("equals") != ["Data"]:
            continue
        if fields.get("resources.type", {}).get("equals") != ["AWS::S3::Object"]:
            continue
        arn = fields.get("resources.ARN", {})
        out.append((list(arn.get("startsWiths") or []), list(arn.get("notStartsWiths") or [])))
    return out


def _recorded(trail: Resource, obj: str) -> bool:
    return any(
        any(obj.startswith(p) for p in starts) and not any(obj.startswith(p) for p in nots)
        for starts, nots in _selectors(trail)
    )


def test_every_data_bucket_is_recorded_by_its_accounts_trail(
    stacks: dict[str, StackState], rules: Result
) -> None:
    """CKV_AWS_18: instead of S3 access logs, the account's trail records the S3 data events of
    every data store and the archive; the audit bucket (the trail's own) is left out."""
    trails = {
        provider_account(state)[0]: trail
        for state in stacks.values()
        for trail in state.of_type(TRAIL)
    }
    assert trails
    for name, state in stacks.items():
        trail = trails[provider_account(state)[0]]
        buckets = state.of_type(BUCKET)
        assert buckets, name
        for bucket in buckets:
            obj = f"arn:aws:s3:::{bucket.get('bucket')}/any/key.json"
            if _store(bucket) == "audit":
                assert not _recorded(trail, obj), (name, bucket.name)
            else:
                assert _recorded(trail, obj), (name, bucket.name)
    quiet(rules, "EF701", "EF702")


def test_no_bucket_sends_event_notifications(stacks: dict[str, StackState], rules: Result) -> None:
    """CKV2_AWS_62: no bucket notifies anything of object events (CloudTrail's data events
    record them: EF701)."""
    for name, state in stacks.items():
        assert state.of_type(NOTIFICATION) == [], name
        assert not [t for t in {r.type for r in state.resources} if "otification" in t], name
    quiet(rules, "EF701")


def test_no_bucket_is_replicated(stacks: dict[str, StackState], rules: Result) -> None:
    """CKV_AWS_144: no replication anywhere (no second copy of the data); buckets are
    versioned, production's protected."""
    for name, state in stacks.items():
        assert state.of_type(REPLICATION) == [], name
        for bucket in state.of_type(BUCKET):
            assert not bucket.inputs.get("replicationConfiguration"), (name, bucket.name)
        if state.tier == "production":
            assert all(b.protect and b.retain_on_delete for b in state.of_type(BUCKET)), name
    quiet(rules, "EF205", "EF209")


# -- the trail's alarm ---------------------------------------------------------------------------


def test_the_trails_log_group_raises_an_alarm_on_an_encrypted_topic(
    stacks: dict[str, StackState],
) -> None:
    """CKV_AWS_252: no SNS topic on the trail; a metric filter on the trail's log group feeds
    an alarm that publishes to an SNS topic encrypted with the environment's key."""
    owners = [state for state in stacks.values() if state.of_type(TRAIL)]
    assert owners
    for state in owners:
        (trail,) = state.of_type(TRAIL)
        assert not trail.inputs.get("snsTopicName"), state.stack
        group = next(
            g
            for g in state.of_type(LOG_GROUP)
            if str(trail.get("cloudWatchLogsGroupArn")).startswith(str(g.get("arn")))
        )
        filters = [
            f for f in state.of_type(METRIC_FILTER) if f.get("logGroupName") == group.get("name")
        ]
        assert filters, state.stack
        metrics = {
            (f.get("metricTransformation")["namespace"], f.get("metricTransformation")["name"])
            for f in filters
        }
        alarms = [
            a for a in state.of_type(ALARM) if (a.get("namespace"), a.get("metricName")) in metrics
        ]
        assert alarms, state.stack
        topics = {t.get("arn"): t for t in state.of_type(TOPIC)}
        (key,) = [k for k in state.of_type(KEY) if k.name == "key"]
        for alarm in alarms:
            actions = as_list(alarm.get("alarmActions") or [])
            assert actions and all(a in topics for a in actions), state.stack
            assert all(topics[a].get("kmsMasterKeyId") == key.get("arn") for a in actions)


# -- the database --------------------------------------------------------------------------------


def test_no_database_has_enhanced_monitoring(stacks: dict[str, StackState], rules: Result) -> None:
    """CKV_AWS_118: no Enhanced Monitoring (its RDSOSMetrics log group is the account's, not
    the environment's): no monitoring interval or role, no role RDS monitoring may assume, no
    AWS-managed policy attached (EF306)."""
    for name, state in stacks.items():
        for db in state.of_type(DB):
            assert not db.inputs.get("monitoringInterval"), name
            assert not db.inputs.get("monitoringRoleArn"), name
        for role in state.of_type(ROLE):
            assert "monitoring.rds.amazonaws.com" not in json.dumps(
                role.inputs.get("assumeRolePolicy")
            ), (name, role.name)
        for r in state.resources:
            assert not mentions(r, "arn:aws:iam::aws:policy/"), (name, r.type, r.name)
        groups = [str(g.get("name")) for g in state.of_type(LOG_GROUP)]
        assert "RDSOSMetrics" not in groups, name
    quiet(rules, "EF211", "EF306")


def test_no_database_has_performance_insights(stacks: dict[str, StackState]) -> None:
    """CKV_AWS_353: Performance Insights is off, and no role's policy grants the `pi:` API."""
    for name, state in stacks.items():
        for db in state.of_type(DB):
            assert db.inputs.get("performanceInsightsEnabled") in (None, False), name
        for rp in state.of_type(ROLE_POLICY):
            for s in as_list(doc(rp.get("policy"))["Statement"]):
                actions = [str(a) for a in as_list(s.get("Action", []))]
                assert not [a for a in actions if a.startswith("pi:")], (name, rp.name)


def test_only_experiment_databases_are_single_az_and_deletable(
    prod: StackState, experiment: StackState, rules: Result
) -> None:
    """CKV_AWS_157, CKV_AWS_293: the experiment's database is single-AZ and has no deletion
    protection (it is torn down with the experiment); production's is Multi-AZ, protected."""
    (prod_db,) = prod.of_type(DB)
    assert prod_db.inputs.get("multiAz") is True
    assert prod_db.inputs.get("deletionProtection") is True
    assert prod_db.protect and prod_db.retain_on_delete
    (exp_db,) = experiment.of_type(DB)
    assert experiment.tier == "experiment"
    assert exp_db.inputs.get("multiAz") is False
    assert exp_db.inputs.get("deletionProtection") is False
    assert not exp_db.protect and exp_db.inputs.get("skipFinalSnapshot") is True
    quiet(rules, "EF209")


# -- log groups ----------------------------------------------------------------------------------


def test_experiment_log_groups_keep_the_configured_retention(
    stacks: dict[str, StackState], rules: Result
) -> None:
    """CKV_AWS_338: every log group keeps its stack's `logRetentionDays`: 30 days in the
    experiments (under Checkov's year by design), at least a year in production."""
    for name, state in stacks.items():
        days = int(config(state, "logRetentionDays", 365 if state.tier == "production" else 30))
        groups = state.of_type(LOG_GROUP)
        assert groups, name
        assert {int(g.inputs["retentionInDays"]) for g in groups} == {days}, name
        if state.tier == "production":
            assert days >= 365, name
    assert int(config(stacks["experiment"], "logRetentionDays", 30)) == 30
    quiet(rules, "EF211")


# -- the fixed finding -------------------------------------------------------------------------


def test_the_retention_schedule_uses_the_environment_key(stacks: dict[str, StackState]) -> None:
    """CKV_AWS_297 is fixed (README): every schedule's payload is under its stack's own key."""
    schedules = [(state, s) for state in stacks.values() for s in state.of_type(SCHEDULE)]
    assert schedules
    for state, schedule in schedules:
        [key] = [k for k in state.of_type("aws:kms/key:Key") if k.name == "key"]
        assert schedule.inputs.get("kmsKeyArn") == key.outputs["arn"], state.stack


# -- the README's table has a test per row -------------------------------------------------------


def _readme_table_ids() -> list[str]:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| CKV")]
    assert rows, "the Checkov section has no table of findings"
    return [i for row in rows for i in CHECK_ID.findall(row.split("|")[1])]


def test_every_check_of_the_readme_table_has_a_test() -> None:
    this = sys.modules[__name__]
    tested = " ".join(
        inspect.getdoc(fn) or ""
        for name, fn in inspect.getmembers(this, inspect.isfunction)
        if name.startswith("test_") and fn is not test_every_check_of_the_readme_table_has_a_test
    )
    ids = _readme_table_ids()
    assert len(ids) == len(set(ids)), "a check id is in two rows"
    assert [i for i in ids if not re.search(rf"\b{i}\b", tested)] == []
