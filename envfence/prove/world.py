"""The IAM world the proofs reason about, read from StackStates: principals, data, policies.

Both proof methods (`envfence.prove.smt` and `envfence.prove.classes`) start from this one
reading of the states, so they disagree only if their *reasoning* differs, never their input.

What is read, and where a gap is closed conservatively (each choice can only add access, so a
proof over this world also holds for the real one):

- Principals are the roles of every stack. A role's identity policies are its inline
  `RolePolicy` resources, its `inlinePolicies`, and the customer-managed policies attached to
  it. An attached policy whose document is in no state (an AWS-managed policy) is read as
  "Allow * on *": its content is not in the repository, so nothing can be proved about it.
- A permissions boundary whose document is in no state is read as no boundary at all.
- VPC endpoint policies are ignored: a request need not travel through an endpoint.
- Data resources are the types of `envfence.rules.classify.DATA`. Each becomes a `Target`: the
  ARNs a request can name for it (a bucket and every object in it; a log group and its streams;
  a database and its `rds-db` users) with the resource policy that guards it. A data resource
  whose ARN is unknown (a preview) or whose type has no ARN model here makes the proof of its
  environment fail closed (`World.gaps`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi_aws as aws

from envfence.iam import Policy, Principal
from envfence.model import UNKNOWN, Resource, StackState
from envfence.rules import classify
from envfence.rules.context import provider_account, provider_tags
from infra.settings import Flow

# A piece of an ARN language: literal text, or None for "any string".
Shape = tuple[str | None, ...]

ANY: None = None
SESSION_NAME = "envfence-proof"
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}

_T = classify.token

# Resource types that grant access in ways this model does not read. Their presence makes the
# proof of their environment fail closed (`World.gaps`) rather than ignore a grant silently.
UNMODELLED_GRANTS = classify.tokens(
    aws.s3.AccessPoint,
    aws.s3.BucketAcl,
    aws.s3.BucketAclV2,
    aws.s3control.AccessPointPolicy,
    aws.s3control.MultiRegionAccessPoint,
    aws.s3control.ObjectLambdaAccessPoint,
    aws.iam.User,
    aws.iam.Group,
    aws.iam.UserPolicy,
    aws.iam.GroupPolicy,
    aws.iam.UserPolicyAttachment,
    aws.iam.GroupPolicyAttachment,
    aws.iam.GroupMembership,
    aws.iam.UserGroupMembership,
    aws.lakeformation.Permissions,
    aws.ecr.RegistryPolicy,
)


@dataclass(frozen=True)
class Role:
    stack: str
    urn: str
    name: str
    arn: str
    account: str
    tags: Mapping[str, str]
    trust: Policy | None
    identity: tuple[Policy, ...]
    boundary: Policy | None
    notes: tuple[str, ...] = ()

    def principal(self, session_tags: Mapping[str, str] | None = None) -> Principal:
        return Principal(
            arn=self.arn,
            account=self.account,
            session_arn=f"arn:aws:sts::{self.account}:assumed-role/{self.name}/{SESSION_NAME}",
            tags=dict(self.tags),
            session_tags=dict(session_tags or {}),
        )

    @property
    def label(self) -> str:
        return f"{self.stack}/{self.name}"


@dataclass(frozen=True)
class Target:
    """One data resource: the ARNs that name it and the resource policy that guards it."""

    stack: str
    urn: str
    type: str
    name: str
    shapes: tuple[Shape, ...]
    account: str
    tags: Mapping[str, str]
    policy: Policy | None
    kind: str = "generic"  # "generic" | "kms"
    store: str | None = None  # the data store a bucket serves, if any

    def matches(self, arn: str) -> bool:
        return any(shape_matches(s, arn) for s in self.shapes)

    @property
    def label(self) -> str:
        return f"{self.stack}/{self.name} ({self.type.split(':')[-1]})"


def shape_matches(shape: Shape, text: str) -> bool:
    position = 0
    pieces = list(shape)
    for index, piece in enumerate(pieces):
        if piece is ANY:
            continue
        if index == 0:
            if not text.startswith(piece):
                return False
            position = len(piece)
        elif index == len(pieces) - 1:
            if len(text) - len(piece) < position or not text.endswith(piece):
                return False
            position = len(text)
        else:
            found = text.find(piece, position)
            if found < 0:
                return False
            position = found + len(piece)
    if pieces and pieces[-1] is not ANY:
        return position == len(text)
    return True


@functools.lru_cache(maxsize=65536)
def _pattern_ends(pattern: str) -> tuple[str, str]:
    cut = [i for i, c in enumerate(pattern) if c in "*?"]
    if not cut:
        return pattern, pattern
    return pattern[: cut[0]], pattern[cut[-1] + 1 :]


def _shape_ends(shape: Shape) -> tuple[str, str]:
    if ANY not in shape:
        text = "".join(p or "" for p in shape)
        return text, text
    first = shape.index(ANY)
    last = len(shape) - 1 - shape[::-1].index(ANY)
    return "".join(p or "" for p in shape[:first]), "".join(p or "" for p in shape[last + 1 :])


def compatible(pattern: str, shape: Shape) -> bool:
    """Could some ARN match both the wildcard `pattern` and `shape`? A sound
    over-approximation (used only to skip what cannot matter): any common string starts with
    both literal prefixes and ends with both literal suffixes."""
    p_start, p_end = _pattern_ends(pattern)
    s_start, s_end = _shape_ends(shape)
    return (p_start.startswith(s_start) or s_start.startswith(p_start)) and (
        p_end.endswith(s_end) or s_end.endswith(p_end)
    )


def shape_example(shape: Shape, filler: str = "example") -> str:
    return "".join(filler if p is ANY else p for p in shape)


@dataclass
class World:
    stacks: tuple[str, ...]
    accounts: dict[str, str]
    roles: dict[str, Role]  # by ARN
    targets: dict[str, list[Target]]  # by stack
    flows: tuple[Flow, ...]  # declared by both sides
    gaps: dict[str, list[str]] = field(default_factory=dict)  # stack -> what could not be read

    def roles_of(self, stack: str) -> list[Role]:
        return [r for r in self.roles.values() if r.stack == stack]

    def keys_of(self, stack: str) -> list[Target]:
        return [t for t in self.targets.get(stack, []) if t.kind == "kms"]


class _Reader:
    def __init__(self, state: StackState, account: str, region: str | None) -> None:
        self.state = state
        self.account = account
        self.region = region
        self.default_tags = provider_tags(state)
        self.gaps: list[str] = []

    def tags(self, r: Resource) -> dict[str, str]:
        own = r.get("tags")
        tags = {**self.default_tags, **(own if isinstance(own, dict) else {})}
        return {str(k): str(v) for k, v in tags.items()}

    def text(self, r: Resource, key: str) -> str | None:
        value = r.get(key)
        if value == UNKNOWN:
            self.gaps.append(f"{key} of {r.name} ({r.type}) is unknown until deployment")
            return None
        return value if isinstance(value, str) and value else None

    def document(self, r: Resource, key: str) -> dict[str, Any] | None:
        raw = r.get(key)
        if raw in (None, ""):
            return None
        if isinstance(raw, str):
            if UNKNOWN in raw:
                self.gaps.append(f"{key} of {r.name} ({r.type}) is unknown until deployment")
                return None
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                self.gaps.append(f"{key} of {r.name} ({r.type}) is not valid JSON")
                return None
        if not isinstance(raw, dict):
            self.gaps.append(f"{key} of {r.name} ({r.type}) is not a policy document")
            return None
        if "04da6b54" in json.dumps(raw):
            self.gaps.append(f"{key} of {r.name} ({r.type}) is unknown until deployment")
            return None
        return raw


def _arn_account(arn: str, default: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4] else default


def _policies_by(
    state: StackState, reader: _Reader, type_: str, key_field: str
) -> dict[str, list[Policy]]:
    out: dict[str, list[Policy]] = {}
    for r in state.of_type(type_):
        owner = reader.text(r, key_field)
        doc = reader.document(r, "policy")
        if owner and doc is not None:
            out.setdefault(owner, []).append(Policy(doc, f"{r.name}"))
    return out


def _targets(state: StackState, reader: _Reader) -> list[Target]:
    """Data resources with their ARN shapes and guarding resource policies."""
    bucket_policies = _policies_by(state, reader, _T(aws.s3.BucketPolicy), "bucket")
    queue_policies = _policies_by(state, reader, _T(aws.sqs.QueuePolicy), "queueUrl")
    secret_policies = _policies_by(state, reader, _T(aws.secretsmanager.SecretPolicy), "secretArn")
    repo_policies = _policies_by(state, reader, _T(aws.ecr.RepositoryPolicy), "repository")
    key_policies = _policies_by(state, reader, _T(aws.kms.KeyPolicy), "keyId")
    grants = _grants(state, reader)
    out: list[Target] = []

    def add(
        r: Resource,
        shapes: list[Shape],
        policies: list[Policy],
        kind: str = "generic",
        store: str | None = None,
        arn: str | None = None,
    ) -> None:
        if len(policies) > 1:
            # Two policy resources for one target: AWS keeps only the last applied, which the
            # state cannot tell. Both are kept, so each one's grants count.
            statements = [s for p in policies for s in _statement_list(p.document)]
            policy: Policy | None = Policy(
                {"Version": "2012-10-17", "Statement": statements},
                " + ".join(p.name for p in policies),
            )
        else:
            policy = policies[0] if policies else None
        out.append(
            Target(
                stack=state.stack,
                urn=r.urn,
                type=r.type,
                name=r.name,
                shapes=tuple(shapes),
                account=_arn_account(arn or "", reader.account),
                tags=reader.tags(r),
                policy=policy,
                kind=kind,
                store=store,
            )
        )

    for r in state.resources:
        if r.type in UNMODELLED_GRANTS:
            reader.gaps.append(
                f"{r.type} ({r.name}) grants access in a way the proof does not model"
            )
        if r.type not in classify.DATA or not r.custom:
            continue
        inline = (
            reader.document(r, "policy") if r.type in classify.INLINE_RESOURCE_POLICIES else None
        )
        inline_policies = [Policy(inline, f"{r.name} policy")] if inline else []
        if r.type == _T(aws.s3.Bucket):
            name = reader.text(r, "bucket") or r.id
            arn = reader.text(r, "arn") or (f"arn:aws:s3:::{name}" if name else None)
            if not arn or not name:
                reader.gaps.append(f"bucket {r.name} has no known name")
                continue
            store = reader.tags(r).get("data-store")
            add(r, [(arn,), (arn + "/", ANY)], bucket_policies.get(name, []), store=store)
        elif r.type == _T(aws.s3.BucketObjectv2):
            bucket, key = reader.text(r, "bucket"), reader.text(r, "key")
            if bucket and key:
                add(r, [(f"arn:aws:s3:::{bucket}/{key}",)], bucket_policies.get(bucket, []))
            else:
                reader.gaps.append(f"object {r.name} has no known bucket and key")
        elif r.type in (_T(aws.rds.Instance), _T(aws.rds.Cluster)):
            arn = reader.text(r, "arn")
            rid = reader.text(
                r, "resourceId" if r.type == _T(aws.rds.Instance) else "clusterResourceId"
            )
            if not arn:
                reader.gaps.append(f"database {r.name} has no known ARN")
                continue
            region = arn.split(":")[3]
            account = _arn_account(arn, reader.account)
            # IAM database authentication names the database by its resource id, not its ARN.
            dbuser = f"arn:aws:rds-db:{region}:{account}:dbuser:"
            shapes: list[Shape] = [(arn,)]
            shapes.append((dbuser + rid + "/", ANY) if rid else (dbuser, ANY))
            add(r, shapes, [], arn=arn)
        elif r.type == _T(aws.cloudwatch.LogGroup):
            arn = reader.text(r, "arn")
            if not arn:
                reader.gaps.append(f"log group {r.name} has no known ARN")
                continue
            base = arn.removesuffix(":*")
            add(r, [(base,), (base + ":", ANY)], [], arn=arn)
        elif r.type == _T(aws.kms.Key):
            arn = reader.text(r, "arn")
            if not arn:
                reader.gaps.append(f"key {r.name} has no known ARN")
                continue
            key_id = reader.text(r, "keyId") or r.id or ""
            extra = key_policies.get(key_id, []) + key_policies.get(arn, [])
            add(
                r,
                [(arn,)],
                (extra or inline_policies) + grants.get(key_id, []) + grants.get(arn, []),
                kind="kms",
                arn=arn,
            )
        elif r.type == _T(aws.sqs.Queue):
            arn = reader.text(r, "arn")
            if not arn:
                reader.gaps.append(f"queue {r.name} has no known ARN")
                continue
            url = reader.text(r, "url") or r.id or ""
            add(r, [(arn,)], queue_policies.get(url, []) or inline_policies, arn=arn)
        elif r.type == _T(aws.secretsmanager.Secret):
            arn = reader.text(r, "arn")
            if not arn:
                reader.gaps.append(f"secret {r.name} has no known ARN")
                continue
            add(r, [(arn,)], secret_policies.get(arn, []) or inline_policies, arn=arn)
        elif r.type == _T(aws.ecr.Repository):
            arn, name = reader.text(r, "arn"), reader.text(r, "name")
            if not arn:
                reader.gaps.append(f"repository {r.name} has no known ARN")
                continue
            add(r, [(arn,)], repo_policies.get(name or "", []), arn=arn)
        elif r.type == _T(aws.appconfig.ConfigurationProfile):
            arn = reader.text(r, "arn")
            if not arn or "/configurationprofile/" not in arn:
                reader.gaps.append(f"configuration profile {r.name} has no known ARN")
                continue
            app, profile = arn.split("/configurationprofile/", 1)
            # AppConfig Data names the configuration it serves under an environment.
            add(r, [(arn,), (app + "/environment/", ANY, "/configuration/" + profile)], [], arn=arn)
        elif r.type in (
            _T(aws.appconfig.HostedConfigurationVersion),
            _T(aws.rds.Snapshot),
            _T(aws.rds.ClusterSnapshot),
        ):
            arn = (
                reader.text(r, "arn")
                or reader.text(r, "dbSnapshotArn")
                or reader.text(r, "dbClusterSnapshotArn")
            )
            if not arn:
                reader.gaps.append(f"{r.type} {r.name} has no known ARN")
                continue
            add(r, [(arn,)], [], arn=arn)
        elif r.type == _T(aws.dynamodb.Table):
            arn = reader.text(r, "arn")
            if not arn:
                reader.gaps.append(f"table {r.name} has no known ARN")
                continue
            add(r, [(arn,), (arn + "/", ANY)], [], arn=arn)
        else:
            reader.gaps.append(f"data resource type {r.type} ({r.name}) has no ARN model")
    return out


def _grants(state: StackState, reader: _Reader) -> dict[str, list[Policy]]:
    """KMS grants, read as key-policy statements for their grantee ("Grants in AWS KMS": a
    grant allows the grantee the listed operations on the key). Constraints on the
    encryption context are left out: that can only widen the grant."""
    out: dict[str, list[Policy]] = {}
    for r in state.of_type(_T(aws.kms.Grant)):
        key, grantee = reader.text(r, "keyId"), reader.text(r, "granteePrincipal")
        operations = r.get("operations")
        if not key or not grantee or not isinstance(operations, list):
            reader.gaps.append(f"KMS grant {r.name} has no known key, grantee or operations")
            continue
        kind = "Service" if grantee.endswith(".amazonaws.com") else "AWS"
        statement = {
            "Sid": f"Grant{r.name}",
            "Effect": "Allow",
            "Principal": {kind: grantee},
            "Action": [f"kms:{op}" for op in operations],
            "Resource": "*",
        }
        doc = {"Version": "2012-10-17", "Statement": [statement]}
        out.setdefault(key, []).append(Policy(doc, f"grant {r.name}"))
    return out


def _statement_list(doc: Mapping[str, Any]) -> list[Any]:
    raw = doc.get("Statement", [])
    return list(raw) if isinstance(raw, list) else [raw]


def _roles(state: StackState, reader: _Reader, managed: Mapping[str, Policy]) -> list[Role]:
    inline: dict[str, list[Policy]] = {}
    for r in state.of_type(_T(aws.iam.RolePolicy)):
        role, doc = reader.text(r, "role"), reader.document(r, "policy")
        if role and doc is not None:
            inline.setdefault(role, []).append(Policy(doc, r.name))
    attached: dict[str, list[str]] = {}
    for r in state.of_type(_T(aws.iam.RolePolicyAttachment)):
        role, arn = reader.text(r, "role"), reader.text(r, "policyArn")
        if role and arn:
            attached.setdefault(role, []).append(arn)
    for r in state.of_type(_T(aws.iam.PolicyAttachment)):
        arn = reader.text(r, "policyArn")
        for role in r.get("roles") or []:
            if arn and isinstance(role, str):
                attached.setdefault(role, []).append(arn)
    out: list[Role] = []
    for r in state.of_type(_T(aws.iam.Role)):
        name, arn = reader.text(r, "name"), reader.text(r, "arn")
        if not name or not arn:
            reader.gaps.append(f"role {r.name} has no known name and ARN")
            continue
        notes: list[str] = []
        policies = list(inline.get(name, []))
        for item in r.get("inlinePolicies") or []:
            if isinstance(item, dict) and item.get("policy"):
                doc = json.loads(item["policy"]) if isinstance(item["policy"], str) else None
                if isinstance(doc, dict):
                    policies.append(Policy(doc, f"{r.name} inline {item.get('name', '')}"))
        for policy_arn in attached.get(name, []):
            if policy_arn in managed:
                policies.append(managed[policy_arn])
            else:
                notes.append(f"{policy_arn} is not in any state: read as Allow * on *")
                policies.append(Policy(ALLOW_ALL, f"{policy_arn} (unverifiable)"))
        boundary = None
        boundary_arn = reader.text(r, "permissionsBoundary")
        if boundary_arn:
            boundary = managed.get(boundary_arn)
            if boundary is None:
                notes.append(f"boundary {boundary_arn} is not in any state: read as none")
        trust = reader.document(r, "assumeRolePolicy")
        out.append(
            Role(
                stack=state.stack,
                urn=r.urn,
                name=name,
                arn=arn,
                account=_arn_account(arn, reader.account),
                tags=reader.tags(r),
                trust=Policy(trust, f"{r.name} trust") if trust else None,
                identity=tuple(policies),
                boundary=boundary,
                notes=tuple(notes),
            )
        )
    return out


def build_world(states: Mapping[str, StackState], flows: Mapping[str, tuple[Flow, ...]]) -> World:
    """Read every stack. `flows` holds each stack's declared flows (from its settings); a flow
    counts only when both of its stacks declare it."""
    readers: dict[str, _Reader] = {}
    accounts: dict[str, str] = {}
    for name, state in states.items():
        account, region = provider_account(state)
        if account is None:
            account = ""
        accounts[name] = account
        readers[name] = _Reader(state, account, region)
        if not account:
            readers[name].gaps.append("the stack's provider names no allowed account")
    managed: dict[str, Policy] = {}
    for name, state in states.items():
        for r in state.of_type(_T(aws.iam.Policy)):
            arn, doc = readers[name].text(r, "arn"), readers[name].document(r, "policy")
            if arn and doc is not None:
                managed[arn] = Policy(doc, r.name)
    roles: dict[str, Role] = {}
    targets: dict[str, list[Target]] = {}
    for name, state in states.items():
        for role in _roles(state, readers[name], managed):
            roles[role.arn] = role
        targets[name] = _targets(state, readers[name])
    both: list[Flow] = []
    for name, declared in flows.items():
        for f in declared:
            other = f.target if f.source == name else f.source
            if other in flows and f in flows[other] and f not in both:
                both.append(f)
    return World(
        stacks=tuple(states),
        accounts=accounts,
        roles=roles,
        targets=targets,
        flows=tuple(both),
        gaps={name: r.gaps for name, r in readers.items() if r.gaps},
    )
