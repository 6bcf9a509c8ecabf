"""SARIF 2.1.0 for `envfence check --format sarif`: the whole log, for GitHub code scanning and
any other SARIF consumer.

`document(result, proof, invocation=..., project_root=..., state_files=...)` builds one run:

- `tool.driver`: name, version (the installed `envfence` distribution), `informationUri` and
  per-rule `helpUri` only where a README that really documents the rules can be named (see
  `links()`), and every rule: the isolation rules, then the proofs (EFP01 IAM, EFP02 network,
  EFP03 real-request controls). Each with both descriptions, help (text and markdown), default
  level, and the properties GitHub reads: `security-severity` and `tags` (with `security`).
- `results`: every violation, advisory warning (level `warning`) and proof that does not hold,
  with the right `ruleIndex`, a location with a line (`region.startLine`) and
  `partialFingerprints` that survive reformatting.
- `invocations[0]`: command line, times, working directory, exit code, and on bad input
  (`Invocation.error`, exit 2) `executionSuccessful: false` with the message as an error
  notification. A run stopped on bad input (no result, no proof) is still a valid log: driver,
  rules, zero results, the notification.

Where a result points:

- Stack file (`<project_root>/Pulumi.<stack>.yaml`): the line of the config key that declares
  what the finding is about (a bucket: `envfence:dataStores`, a role: `envfence:access`, ...;
  `config_keys()`), found by a YAML parse that keeps marks, so a comment mentioning the key is
  never hit; else the `config:` line; else line 1.
- State file (`--state`, `state_files[stack]`): the line of that resource's `"urn": "<urn>"`,
  else line 1.

Paths are relative to the repository root (`%SRCROOT%` in `originalUriBaseIds`: the nearest
directory above the project holding `.git`, else the project root); a state file outside it is
an absolute `file:` URI.

What GitHub reads, and the `security-severity` bands (critical over 9.0, high 7.0-8.9, medium
4.0-6.9, low 3.9 or less; GitHub only treats a rule as a security rule when its `tags` include
`security`): "SARIF support for code scanning",
https://docs.github.com/en/code-security/code-scanning/integrating-with-code-scanning/sarif-support-for-code-scanning
(sections "reportingDescriptor object", "result object", "Providing data to track code scanning
alerts across runs").

The packaged schema this output is validated against in the tests is `schemas/sarif-2.1.0.json`
(OASIS SARIF 2.1.0 errata01; see `schemas/README.md`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import yaml

from envfence.project import NAMESPACE
from envfence.rules.engine import Result, Rule, Violation

if TYPE_CHECKING:
    from envfence.prove.run import ProofReport

SARIF_VERSION = "2.1.0"
# The `id` of the packaged schema (schemas/sarif-2.1.0.json): the OASIS Standard with errata 01.
SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "sarif-2.1.0.json"
TOOL_NAME = "envfence"
SRCROOT = "%SRCROOT%"
FINGERPRINT = "envfenceFinding/v1"

LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}
# GitHub's bands: critical > 9.0, high 7.0-8.9, medium 4.0-6.9, low <= 3.9 (module docstring).
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}
EXIT_CODES = {
    0: "clean: no violation, every proof holds",
    1: "violations found, or a proof refuted or broken",
    2: "bad input: nothing was checked",
}

# README headings that document the rules and the proofs (their GitHub anchors link the help).
RULES_HEADING = "What is checked offline"
PROOFS_HEADING = "What is proved"


class ProofRule(NamedTuple):
    id: str
    name: str
    title: str
    fix: str
    severity: str
    tag: str


PROOF_RULES = (
    ProofRule(
        "EFP01",
        "iam-isolation-proved",
        "No principal of one environment may act on another's data",
        "Read the counterexample: the principal (and the role chain that reached it), the "
        "action, the resource and the statements that allowed it. Narrow or remove those "
        "statements, or declare the flow in both stacks' config.",
        "critical",
        "iam",
    ),
    ProofRule(
        "EFP02",
        "network-isolation-proved",
        "No packet can travel between environments' VPCs",
        "Read the witness packet and its path: remove the peering or transit gateway route, "
        "or narrow the security group rule that admits it.",
        "critical",
        "network",
    ),
    ProofRule(
        "EFP03",
        "real-requests-allowed",
        "What each environment must be able to do is allowed, as AWS receives it",
        "Read the denied request (who, action, resource, context) and the statement that "
        "denies it: the worker, a job, an AWS service or the deployer would fail in AWS. Fix "
        "the policy, or re-record the worker's contract (make contract) if its calls changed.",
        "high",
        "controls",
    ),
)

SCOPES = {
    "resource": "Checked on every resource of the types it applies to.",
    "stack": "Checked once per stack.",
    "cross": "Checked across all stacks together.",
}


@dataclass
class Invocation:
    """What the run was. `argv` is the command line, with or without the program first
    (`["envfence", "check", ...]` or `["check", ...]`); `start`/`end` are UTC (a naive
    datetime is taken as UTC). `error`: the run stopped on bad input (exit 2); it becomes an
    error notification and `executionSuccessful: false`."""

    argv: list[str]
    working_directory: Path
    start: datetime
    end: datetime
    exit_code: int
    error: str | None = None


# --------------------------------------------------------------------------------------------
# The document


def document(
    result: Result | None,
    proof: ProofReport | None,
    *,
    invocation: Invocation,
    project_root: Path | None,
    state_files: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """The SARIF log of one `envfence check` run. `result` and `proof` are None when the run
    stopped on bad input: still a valid log (driver, rules, no results, the notification).
    `state_files` maps a stack to the `--state` file it was read from: its results point into
    that file; every other stack's into `project_root / f"Pulumi.{stack}.yaml"`."""
    if result is not None:
        rules = result.rules
    else:
        from envfence.rules import all_rules

        rules = all_rules()
    links = Links.find(project_root)
    descriptors = [rule_descriptor(r, links) for r in rules]
    descriptors += [proof_descriptor(p, links) for p in PROOF_RULES]
    index = {d["id"]: i for i, d in enumerate(descriptors)}
    locator = Locator(project_root, state_files or {}, invocation.working_directory)
    fingerprints = Fingerprints()
    results: list[dict[str, Any]] = []
    if result is not None:
        results += rule_results(result, index, locator, fingerprints)
    if proof is not None:
        results += proof_results(proof, index, locator, fingerprints)
    driver: dict[str, Any] = {"name": TOOL_NAME}
    version = tool_version()
    if version is not None:
        driver["version"] = version
    if links.information is not None:
        driver["informationUri"] = links.information
    driver["rules"] = descriptors
    run: dict[str, Any] = {"tool": {"driver": driver}}
    run["invocations"] = [invocation_object(invocation)]
    if locator.srcroot is not None:
        run["originalUriBaseIds"] = {SRCROOT: {"uri": _dir_uri(locator.srcroot)}}
    run["results"] = results
    run["columnKind"] = "unicodeCodePoints"
    stacks = result.stacks if result is not None else proof.stacks if proof is not None else []
    run["properties"] = {"stacks": list(stacks)}
    return {"$schema": SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


def tool_version() -> str | None:
    """The installed `envfence` distribution's version (else `envfence.__version__`, if any)."""
    try:
        return importlib.metadata.version(TOOL_NAME)
    except importlib.metadata.PackageNotFoundError:
        import envfence

        version = getattr(envfence, "__version__", None)
        return version if isinstance(version, str) else None


def invocation_object(inv: Invocation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "executionSuccessful": inv.error is None,
        "exitCode": inv.exit_code,
    }
    if inv.exit_code in EXIT_CODES:
        out["exitCodeDescription"] = EXIT_CODES[inv.exit_code]
    argv = list(inv.argv)
    program = TOOL_NAME
    if argv and Path(argv[0]).name in (TOOL_NAME, f"{TOOL_NAME}.exe", "__main__.py"):
        program = argv.pop(0)
    out["commandLine"] = shlex.join([program, *argv])
    out["arguments"] = argv
    out["startTimeUtc"] = utc(inv.start)
    out["endTimeUtc"] = utc(inv.end)
    out["workingDirectory"] = {"uri": _dir_uri(inv.working_directory)}
    if inv.error is not None:
        out["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": inv.error}, "timeUtc": utc(inv.end)}
        ]
    return out


def utc(when: datetime) -> str:
    """SARIF's date-time: UTC, `Z`, milliseconds."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _dir_uri(path: Path) -> str:
    uri = path.resolve().as_uri()
    return uri if uri.endswith("/") else uri + "/"


# --------------------------------------------------------------------------------------------
# Rules (reportingDescriptor objects)


def rule_descriptor(rule: Rule, links: Links) -> dict[str, Any]:
    full = f"{rule.title}. {SCOPES.get(rule.scope, '')}".strip()
    if rule.advisory:
        full += (
            " Advisory: reported as a warning, without failing the run, unless the run "
            "enforces advisories (`envfence check --expired fail`)."
        )
    family = rule.fn.__module__.rsplit(".", 1)[-1]
    return _descriptor(
        rule.id,
        rule.name,
        rule.title,
        full,
        rule.fix,
        rule.severity,
        "warning" if rule.advisory else LEVEL[rule.severity],
        ["security", "isolation", family] + (["advisory"] if rule.advisory else []),
        "high",
        links.rules,
    )


def proof_descriptor(rule: ProofRule, links: Links) -> dict[str, Any]:
    full = (
        f"{rule.title}: proved for every ordered pair of environments "
        "(a refuted pair comes with a concrete counterexample)."
        if rule.tag != "controls"
        else f"{rule.title}: each control is a real request that must be allowed; one that is "
        "denied breaks the proofs of its environment's pairs."
    )
    return _descriptor(
        rule.id,
        rule.name,
        rule.title,
        full,
        rule.fix,
        rule.severity,
        LEVEL[rule.severity],
        ["security", "isolation", "proof", rule.tag],
        "very-high",
        links.proofs,
    )


def _descriptor(
    rule_id: str,
    name: str,
    title: str,
    full: str,
    fix: str,
    severity: str,
    level: str,
    tags: list[str],
    precision: str,
    help_uri: str | None,
) -> dict[str, Any]:
    markdown = f"**{rule_id} `{name}`** ({severity}): {title}.\n\n**Fix:** {fix}"
    if help_uri is not None:
        markdown += f"\n\nSee [the rule reference]({help_uri})."
    out: dict[str, Any] = {
        "id": rule_id,
        "name": name,
        "shortDescription": {"text": title},
        "fullDescription": {"text": full},
        "help": {"text": f"Fix: {fix}", "markdown": markdown},
    }
    if help_uri is not None:
        out["helpUri"] = help_uri
    out["defaultConfiguration"] = {"level": level}
    out["properties"] = {
        "security-severity": SECURITY_SEVERITY[severity],
        "severity": severity,
        "precision": precision,
        "tags": tags,
    }
    return out


@dataclass(frozen=True)
class Links:
    """Where the rules are documented, when that is known to exist: `information` (the
    driver's `informationUri`), `rules` and `proofs` (the `helpUri` of rules and proofs)."""

    information: str | None = None
    rules: str | None = None
    proofs: str | None = None

    @classmethod
    def find(cls, project_root: Path | None, env: Mapping[str, str] | None = None) -> Links:
        """In GitHub Actions (`GITHUB_SERVER_URL`, `GITHUB_REPOSITORY`), the README of the
        checkout at `GITHUB_SHA` (else the default branch, `HEAD`), only when the project's
        README.md is that checkout's file and documents the rules (the headings
        `RULES_HEADING`/`PROOFS_HEADING`: their anchors complete the rules' `helpUri`).
        Otherwise the package metadata's project URL, if any (no anchors: its page is not
        known to have them). Otherwise nothing: never a URL that may not exist."""
        env = os.environ if env is None else env
        server, repository = env.get("GITHUB_SERVER_URL"), env.get("GITHUB_REPOSITORY")
        if server and repository and project_root is not None:
            readme = project_root.resolve() / "README.md"
            srcroot = source_root(project_root)
            if readme.is_file() and readme.is_relative_to(srcroot):
                try:
                    text = readme.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    text = ""
                anchors = heading_anchors(text)
                rules_anchor = _slug(RULES_HEADING)
                if rules_anchor in anchors and "EF101" in text:
                    path = urllib.parse.quote(readme.relative_to(srcroot).as_posix())
                    ref = urllib.parse.quote(env.get("GITHUB_SHA") or "HEAD", safe="")
                    url = f"{server.rstrip('/')}/{repository}/blob/{ref}/{path}"
                    proofs_anchor = _slug(PROOFS_HEADING)
                    return cls(
                        url,
                        f"{url}#{rules_anchor}",
                        f"{url}#{proofs_anchor}" if proofs_anchor in anchors else None,
                    )
        return cls(metadata_url())


def metadata_url() -> str | None:
    """The installed distribution's project URL (`Project-URL`: Documentation, Homepage,
    Repository or Source first; else `Home-page`), if it declares one."""
    try:
        meta = importlib.metadata.metadata(TOOL_NAME)
    except importlib.metadata.PackageNotFoundError:
        return None
    labelled: dict[str, str] = {}
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = str(entry).partition(",")
        labelled.setdefault(label.strip().lower(), url.strip())
    candidates: list[str | None] = [
        labelled.get(label) for label in ("documentation", "homepage", "repository", "source")
    ]
    candidates += [*labelled.values(), *(meta.get_all("Home-page") or [])]
    for candidate in candidates:
        if candidate and re.match(r"^https?://[^\s/]+", str(candidate)):
            return str(candidate)
    return None


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (outside code fences)."""
    out: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            out.add(_slug(match.group(1)))
    return out


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def source_root(project_root: Path) -> Path:
    """The repository root: the nearest directory at or above the project holding `.git`
    (the root GitHub resolves result paths against), else the project root itself."""
    root = project_root.resolve()
    for directory in (root, *root.parents):
        if (directory / ".git").exists():
            return directory
    return root


# --------------------------------------------------------------------------------------------
# Results


def rule_results(
    result: Result, index: Mapping[str, int], locator: Locator, fingerprints: Fingerprints
) -> list[dict[str, Any]]:
    out = []
    warnings = {id(v) for v in result.warnings}
    for v in [*result.violations, *result.warnings]:
        level = "warning" if id(v) in warnings else LEVEL[v.severity]
        out.append(_rule_result(v, level, index, locator, fingerprints))
    return out


def _rule_result(
    v: Violation,
    level: str,
    index: Mapping[str, int],
    locator: Locator,
    fingerprints: Fingerprints,
) -> dict[str, Any]:
    res: dict[str, Any] = {"ruleId": v.rule}
    if v.rule in index:
        res["ruleIndex"] = index[v.rule]
    res["level"] = level
    res["message"] = {"text": f"{v.message} (fix: {v.fix})"}
    location = locator.resource(v.stack, v.urn, config_keys(v.rule, v.urn))
    location["logicalLocations"] = [logical_location(v.urn)]
    res["locations"] = [location]
    qualified, name = urn_parts(v.urn)[2:]
    resource_type = qualified.rsplit("$", 1)[-1]
    res["partialFingerprints"] = {
        FINGERPRINT: fingerprints.of(v.rule, v.stack, resource_type, name, v.other or "")
    }
    res["properties"] = {
        "stack": v.stack,
        "otherStack": v.other,
        "severity": v.severity,
        "urn": v.urn,
    }
    return res


def proof_results(
    proof: ProofReport, index: Mapping[str, int], locator: Locator, fingerprints: Fingerprints
) -> list[dict[str, Any]]:
    """One result per IAM pair not proved (EFP01), real-request control that does not hold
    (EFP03), network pair not proved or network control broken (EFP02)."""
    from envfence.prove.iam_proof import BROKEN, PROVED
    from envfence.prove.run import _packet

    out: list[dict[str, Any]] = []

    def add(
        rule_id: str,
        stack: str,
        text: str,
        identity: Iterable[str],
        properties: dict[str, Any],
        related: list[dict[str, Any]] | None = None,
    ) -> None:
        res: dict[str, Any] = {"ruleId": rule_id}
        if rule_id in index:
            res["ruleIndex"] = index[rule_id]
        res["level"] = "error"
        res["message"] = {"text": text}
        res["locations"] = [locator.stack(stack, PROOF_KEYS[rule_id])]
        if related:
            res["relatedLocations"] = related
        res["partialFingerprints"] = {FINGERPRINT: fingerprints.of(rule_id, *identity)}
        res["properties"] = properties
        out.append(res)

    for p in proof.iam.pairs:
        if p.status == PROVED:
            continue
        lines = [line for c in p.counterexamples for line in c.lines()] + p.details
        related: list[dict[str, Any]] = []
        for c in p.counterexamples:
            if not c.target_urn or any(
                r["logicalLocations"][0]["fullyQualifiedName"] == c.target_urn for r in related
            ):
                continue
            loc = locator.resource(p.target, c.target_urn, config_keys("", c.target_urn))
            loc["id"] = len(related)
            loc["message"] = {"text": f"{c.target}: {c.action} by {c.principal}"}
            loc["logicalLocations"] = [logical_location(c.target_urn)]
            related.append(loc)
        add(
            "EFP01",
            p.source,
            f"{p.source} -> {p.target}: {p.status}. " + " ".join(lines),
            (p.source, p.target),
            {"source": p.source, "target": p.target, "status": p.status},
            related,
        )
    for r in proof.real:
        if r.ok:
            continue
        add(
            "EFP03",
            r.stack,
            f"{r.group} control {r.what}: {r.detail}",
            (r.stack, r.group, r.what),
            {"stack": r.stack, "group": r.group, "control": r.what},
        )
    for n in proof.network:
        if (n.source != n.target and n.status == PROVED) or (
            n.source == n.target and n.status != BROKEN
        ):
            continue
        add(
            "EFP02",
            n.source,
            f"{n.source} -> {n.target}: {n.status}. {_packet(n)} "
            + " ".join(n.path)
            + f" {n.detail}",
            (n.source, n.target),
            {"source": n.source, "target": n.target, "status": n.status},
        )
    return out


def urn_parts(urn: str) -> tuple[str, str, str, str]:
    """(stack, project, qualified type, name) of `urn:pulumi:<stack>::<project>::<type>::<name>`
    (the qualified type is the parents' types and the resource's, joined by `$`)."""
    parts = urn.split("::", 3)
    if len(parts) != 4 or not parts[0].startswith("urn:pulumi:"):
        return ("", "", "", urn)
    return (parts[0][len("urn:pulumi:") :], parts[1], parts[2], parts[3])


def logical_location(urn: str) -> dict[str, Any]:
    name = urn_parts(urn)[3]
    return {"name": name, "fullyQualifiedName": urn, "kind": "resource"}


@dataclass
class Fingerprints:
    """`partialFingerprints` values: a hash of what identifies a finding (rule, stack, resource
    type and name, the other environment), never its line or message. The n-th result with the
    same identity in one log gets `#n` added before hashing (and so does one whose hash is
    already `taken`), so every result's is distinct and the same on every run."""

    seen: Counter[str] = field(default_factory=Counter)
    taken: set[str] = field(default_factory=set)

    def of(self, *identity: str) -> str:
        base = "\x1f".join(identity)
        while True:
            self.seen[base] += 1
            n = self.seen[base]
            digest = hashlib.sha256((base if n == 1 else f"{base}#{n}").encode()).hexdigest()
            if digest[:32] not in self.taken:
                self.taken.add(digest[:32])
                return digest[:32]


# --------------------------------------------------------------------------------------------
# Locations: which config key declares a resource, and on which line


def _ns(*keys: str) -> tuple[str, ...]:
    return tuple(k if ":" in k else f"{NAMESPACE}:{k}" for k in keys)


# A rule about one setting points at it, whatever resource it names.
RULE_KEYS = {
    "EF211": _ns("logRetentionDays"),
    "EF320": _ns("flows"),
    "EF401": _ns("access"),
    "EF403": _ns("access"),
    "EF503": _ns("retention", "dataStores"),
    "EF504": _ns("expiresOn"),
    "EF903": _ns("allowedAccountIds", "aws:region"),
}
PROOF_KEYS = {
    "EFP01": _ns("access"),
    "EFP02": _ns("network"),
    "EFP03": _ns("access"),
}
# By the AWS module of the resource's type.
MODULE_KEYS = {
    "s3": _ns("dataStores"),
    "rds": _ns("database"),
    "secretsmanager": _ns("database"),
    "ec2": _ns("network"),
    "vpc": _ns("network"),
    "ec2transitgateway": _ns("network"),
    "ram": _ns("network"),
    "iam": _ns("access"),
    "appconfig": _ns("flags"),
    "cloudtrail": _ns("audit"),
    "sns": _ns("audit"),
    "ecs": _ns("container"),
    "ecr": _ns("container"),
}
# By the innermost component (envfence:index:<Component>) the resource belongs to.
COMPONENT_PACKAGE = "envfence:index:"
COMPONENT_KEYS = {
    "Network": _ns("network"),
    "Data": _ns("dataStores"),
    "Identity": _ns("access"),
    "Permissions": _ns("access"),
    "Flags": _ns("flags"),
    "Audit": _ns("audit"),
    "Compute": _ns("container"),
    "DatabaseTasks": _ns("container"),
}


def config_keys(rule_id: str, urn: str) -> tuple[str, ...]:
    """The stack-file config keys that declare what a finding of `rule_id` on `urn` is about,
    most specific first (the first one the stack file has wins; then `config:`, then line 1)."""
    qualified, name = urn_parts(urn)[2:]
    types = qualified.split("$") if qualified else []
    token = types[-1] if types else ""
    kind = token.rsplit(":", 1)[-1]
    package, _, rest = token.partition(":")
    module = rest.split("/", 1)[0].split(":", 1)[0]
    keys: list[str] = list(RULE_KEYS.get(rule_id, ()))
    if token == "pulumi:providers:aws":
        keys += _ns("allowedAccountIds", "aws:region")
    elif package == "docker":
        keys += _ns("container")
    elif package == "aws":
        if module == "s3" and name.startswith(("audit", "archive")):
            keys += _ns("audit")
        elif module == "s3" and kind == "BucketLifecycleConfiguration":
            keys += _ns("retention", "dataStores")
        elif module == "cloudwatch" and kind in ("MetricAlarm", "LogMetricFilter"):
            keys += _ns("audit")
        else:
            keys += MODULE_KEYS.get(module, ())
    for parent in reversed(types[:-1]):
        component = parent.rsplit(":", 1)[-1]
        if component == "Data" and name.startswith("db"):
            keys += _ns("database")
        keys += COMPONENT_KEYS.get(component, ())
        if parent.startswith(COMPONENT_PACKAGE) and component != "Environment":
            break  # the innermost component decides
    if kind == "LogGroup":
        keys += _ns("logRetentionDays")
    return tuple(dict.fromkeys(keys))


class Locator:
    """Physical locations: in a stack's `--state` file (the URN's line) or its stack file (the
    line of the config key), relative to the repository root where possible."""

    def __init__(
        self, project_root: Path | None, state_files: Mapping[str, Path], working_directory: Path
    ) -> None:
        self.project_root = project_root.resolve() if project_root is not None else None
        self.srcroot = source_root(project_root) if project_root is not None else None
        cwd = working_directory.resolve()
        self.state_files = {
            stack: (path if path.is_absolute() else cwd / path).resolve()
            for stack, path in state_files.items()
        }
        self._keys: dict[Path, dict[str, tuple[int, int]]] = {}
        self._texts: dict[Path, str] = {}

    def resource(self, stack: str, urn: str, keys: Sequence[str]) -> dict[str, Any]:
        state = self.state_files.get(stack)
        if state is not None:
            return self._physical(state, *self._urn_line(state, urn))
        return self.stack(stack, keys)

    def stack(self, stack: str, keys: Sequence[str]) -> dict[str, Any]:
        """In the stack's state file (line 1) or stack file (the first key of `keys` it has)."""
        state = self.state_files.get(stack)
        if state is not None:
            return self._physical(state, 1, 1)
        if self.project_root is None:
            return {
                "physicalLocation": {
                    "artifactLocation": {"uri": urllib.parse.quote(f"Pulumi.{stack}.yaml")},
                    "region": {"startLine": 1},
                }
            }
        path = self.project_root / f"Pulumi.{stack}.yaml"
        lines = self._key_lines(path)
        for key in [*keys, "config"]:
            if key in lines:
                return self._physical(path, *lines[key])
        return self._physical(path, 1, 1)

    def _physical(self, path: Path, line: int, column: int) -> dict[str, Any]:
        artifact: dict[str, Any]
        if self.srcroot is not None and path.is_relative_to(self.srcroot):
            relative = urllib.parse.quote(path.relative_to(self.srcroot).as_posix())
            artifact = {"uri": relative, "uriBaseId": SRCROOT}
        else:
            artifact = {"uri": path.as_uri()}
        return {
            "physicalLocation": {
                "artifactLocation": artifact,
                "region": {"startLine": line, "startColumn": column},
            }
        }

    def _key_lines(self, path: Path) -> dict[str, tuple[int, int]]:
        """(line, column), 1-based, of `config:` and of each key under it, from the YAML
        nodes' marks (a comment or a value that mentions a key is never taken for it)."""
        if path not in self._keys:
            self._keys[path] = config_key_lines(self._text(path))
        return self._keys[path]

    def _urn_line(self, path: Path, urn: str) -> tuple[int, int]:
        text = self._text(path)
        for quoted in dict.fromkeys([json.dumps(urn), json.dumps(urn, ensure_ascii=False)]):
            match = re.search(r'"urn"\s*:\s*' + re.escape(quoted), text)
            if match:
                start = match.start()
                return text.count("\n", 0, start) + 1, start - (text.rfind("\n", 0, start) + 1) + 1
        return 1, 1

    def _text(self, path: Path) -> str:
        if path not in self._texts:
            try:
                self._texts[path] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                self._texts[path] = ""
        return self._texts[path]


def config_key_lines(text: str) -> dict[str, tuple[int, int]]:
    """`{"config": (line, column), "<key>": (line, column), ...}` of a stack file's text."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, tuple[int, int]] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "config":
            out["config"] = (key.start_mark.line + 1, key.start_mark.column + 1)
            if isinstance(value, yaml.MappingNode):
                for k, _ in value.value:
                    if isinstance(k, yaml.ScalarNode):
                        out.setdefault(k.value, (k.start_mark.line + 1, k.start_mark.column + 1))
    return out


# --------------------------------------------------------------------------------------------
# Findings accepted by a baseline (`envfence check --baseline FILE`)


class BaselineEntry(Protocol):
    """What `add_accepted` reads of a baseline entry (`envfence.baseline.Entry`)."""

    @property
    def index(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def expires(self) -> date | None: ...


class AcceptedFinding(Protocol):
    """A finding a baseline accepted (`envfence.baseline.Accepted`)."""

    @property
    def violation(self) -> Violation: ...
    @property
    def entry(self) -> BaselineEntry: ...


def add_accepted(
    doc: dict[str, Any],
    accepted: Sequence[AcceptedFinding],
    project_root: Path | None,
    state_files: Mapping[str, Path] | None = None,
) -> None:
    """Append the findings a baseline accepted to a log made by `document()`: each as the
    result it would be, with an `accepted` external suppression carrying the baseline's
    reason (GitHub shows it as dismissed; the fingerprint is the one the finding has when it
    is not accepted, so the alert is the same one). `state_files` as for `document()`."""
    if not accepted:
        return
    run = doc["runs"][0]
    index = {d["id"]: i for i, d in enumerate(run["tool"]["driver"]["rules"])}
    locator = Locator(project_root, state_files or {}, Path.cwd())
    taken = {
        res["partialFingerprints"][FINGERPRINT]
        for res in run["results"]
        if FINGERPRINT in res.get("partialFingerprints", {})
    }
    fingerprints = Fingerprints(taken=taken)
    for a in accepted:
        v = a.violation
        res = _rule_result(v, LEVEL[v.severity], index, locator, fingerprints)
        suppression: dict[str, Any] = {
            "kind": "external",
            "status": "accepted",
            "justification": a.entry.reason,
        }
        res["suppressions"] = [suppression]
        res["properties"]["baselineEntry"] = a.entry.index
        if a.entry.expires is not None:
            res["properties"]["acceptedUntil"] = a.entry.expires.isoformat()
        run["results"].append(res)
