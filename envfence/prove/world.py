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
- References are resolved across every state, not only the declaring one (stacks may share an
  account): a role policy or attachment names its role by name (in the declaring stack's
  account) or ARN; a bucket, queue, secret or repository policy names its target by bucket
  name, queue URL, secret ARN or repository name; a key policy or KMS grant names its key by
  key id, key ARN, alias name or alias ARN (aliases in any state). A reference that resolves
  to nothing is a gap of the stack that declares it (`World.gaps`), naming the resource, the
  property and what it names: an offline id that differs from AWS's must never make a grant
  or a policy disappear silently.
- A value the checker cannot read — not known yet (a preview) or a secret (an export without
  `--show-secrets`) — in anything the proof reads (policies, names, ARNs, tags, the roles a
  policy is attached to) is a gap naming the resource and the property.
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

from envfence.iam import Policy, Principal
from envfence.model import Resource, StackState, unreadable, why_unreadable
from envfence.rules import classify
from envfence.rules.context import provider_account, provider_tags
from envfence.rules.providers import aws
from envfence.settings import Flow

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

    _index: Any = field(default=None, repr=False, compare=False)

    def roles_of(self, stack: str) -> list[Role]:
        return [r for r in self.roles.values() if r.stack == stack]

    def target_named(self, arn: str) -> Target | None:
        """The first data resource (in stack order) one of whose shapes matches `arn`. Found
        through the shapes' literal starts (a target can match only if its start is a prefix
        of the ARN), not by trying every target of every stack."""
        key = tuple((stack, len(ts)) for stack, ts in self.targets.items())
        if self._index is None or self._index[0] != key:
            starts: dict[str, list[tuple[int, Target]]] = {}
            order = 0
            for targets in self.targets.values():
                for t in targets:
                    for shape in t.shapes:
                        starts.setdefault(_shape_ends(shape)[0], []).append((order, t))
                    order += 1
            self._index = (key, starts)
        starts = self._index[1]
        found = [
            (order, t)
            for k in range(len(arn) + 1)
            for order, t in starts.get(arn[:k], ())
            if t.matches(arn)
        ]
        return min(found, key=lambda e: e[0])[1] if found else None

    def keys_of(self, stack: str) -> list[Target]:
        return [t for t in self.targets.get(stack, []) if t.kind == "kms"]


class _Reader:
    def __init__(self, state: StackState, account: str, region: str | None) -> None:
        self.state = state
        self.account = account
        self.region = region
        self.default_tags = provider_tags(state)
        self.gaps: list[str] = []

    def gap(self, r: Resource, key: str, why: str) -> None:
        self.gaps.append(why_unreadable(f"{key} of {r.name} ({r.type})", why))

    def value(self, r: Resource, key: str) -> Any:
        """A property, or None (with a gap) when it cannot be read: unknown, or a secret."""
        value = r.get(key)
        why = unreadable(value)
        if why:
            self.gap(r, key, why)
            return None
        return value

    def tags(self, r: Resource) -> dict[str, str]:
        own = self.value(r, "tags")
        tags = {**self.default_tags, **(own if isinstance(own, dict) else {})}
        return {str(k): str(v) for k, v in tags.items()}

    def text(self, r: Resource, key: str) -> str | None:
        value = self.value(r, key)
        return value if isinstance(value, str) and value else None

    def strings(self, r: Resource, key: str) -> list[str]:
        """A list of strings (a single string counts as one)."""
        value = self.value(r, key)
        items = value if isinstance(value, list) else [value] if value else []
        return [str(v) for v in items if isinstance(v, str) and v]

    def document(self, r: Resource, key: str) -> dict[str, Any] | None:
        raw = self.value(r, key)
        if raw in (None, ""):
            return None
        return self.parse(r, key, raw)

    def parse(self, r: Resource, key: str, raw: Any) -> dict[str, Any] | None:
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                self.gaps.append(f"{key} of {r.name} ({r.type}) is not valid JSON")
                return None
        if not isinstance(raw, dict):
            self.gaps.append(f"{key} of {r.name} ({r.type}) is not a policy document")
            return None
        return raw


def _arn_account(arn: str, default: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4] else default


@dataclass
class _Ref:
    """A resource (of `stack`) that names another resource by a property: a role policy its
    role, a bucket policy its bucket, a KMS grant its key. Resolved against every state; one
    left unused when every state has been read names nothing, which is a gap."""

    stack: str
    resource: Resource
    key: str  # the property that names the other resource
    value: str  # what it names, as written
    what: str  # what it should name: "role", "bucket", "key", ...
    policy: Policy | None = None  # the document it attaches, if it carries one
    policy_arn: str = ""  # the managed policy it attaches, for an attachment
    used: bool = False

    def unresolved(self) -> str:
        how = {
            "key": " (by key id, key ARN, alias name or alias ARN)",
            "role": " (by role name in the stack's account, or role ARN)",
            "repository": " (by repository name in the stack's account)",
        }.get(self.what, "")
        return (
            f"{self.resource.name} ({self.resource.type}) names {self.what} {self.value!r} "
            f"({self.key}), which is no {self.what} of any state{how}: what it grants or "
            "guards cannot be placed"
        )


class _Refs:
    """Every reference of every state, indexed by what it resolves to."""

    def __init__(self, states: Mapping[str, StackState], readers: Mapping[str, _Reader]) -> None:
        self.all: list[_Ref] = []
        self.by: dict[str, dict[str, list[_Ref]]] = {}
        self.aliases: dict[str, str] = {}  # "account:alias/name" and alias ARN -> key id or ARN
        for name, state in states.items():
            reader = readers[name]
            for r in state.of_type(_T(aws.kms.Alias)):
                # Read without gaps: an alias matters only to a reference through it, which
                # is a gap itself when the alias cannot be read.
                values = [r.get(k) for k in ("targetKeyArn", "targetKeyId", "name", "arn")]
                known = [v if isinstance(v, str) and not unreadable(v) else "" for v in values]
                target, alias, arn = known[0] or known[1], known[2], known[3]
                if target and alias:
                    self.aliases[f"{_arn_account(arn or '', reader.account)}:{alias}"] = target
                if target and arn:
                    self.aliases[arn] = target
        for name, state in states.items():
            self._read(name, state, readers[name])

    def _add(self, index: str, lookup: str, ref: _Ref) -> None:
        self.all.append(ref)
        self.by.setdefault(index, {}).setdefault(lookup, []).append(ref)

    def key_name(self, value: str, account: str) -> str:
        """What a key reference resolves to through an alias (a key id or ARN), else itself."""
        if value.startswith("alias/"):
            return self.aliases.get(f"{account}:{value}", value)
        if value.startswith("arn:") and ":alias/" in value:
            return self.aliases.get(value, value)
        return value

    @staticmethod
    def role_name(value: str, account: str) -> str:
        """`account:name` of a role named by name (in `account`) or by ARN."""
        if value.startswith("arn:"):
            return f"{_arn_account(value, account)}:{value.rsplit('/', 1)[-1]}"
        return f"{account}:{value}"

    def _read(self, stack: str, state: StackState, reader: _Reader) -> None:
        account = reader.account
        for type_, key, what in (
            (_T(aws.s3.BucketPolicy), "bucket", "bucket"),
            (_T(aws.sqs.QueuePolicy), "queueUrl", "queue"),
            (_T(aws.secretsmanager.SecretPolicy), "secretArn", "secret"),
            (_T(aws.ecr.RepositoryPolicy), "repository", "repository"),
            (_T(aws.kms.KeyPolicy), "keyId", "key"),
        ):
            for r in state.of_type(type_):
                target, doc = reader.text(r, key), reader.document(r, "policy")
                if not target or doc is None:
                    continue
                if what == "repository":
                    lookup = f"{_arn_account(target, account)}:{target.rsplit('/', 1)[-1]}"
                elif what == "key":
                    lookup = self.key_name(target, account)
                else:
                    lookup = target
                self._add(what, lookup, _Ref(stack, r, key, target, what, Policy(doc, r.name)))
        for r in state.of_type(_T(aws.kms.Grant)):
            self._grant(stack, r, reader)
        for r in state.of_type(_T(aws.iam.RolePolicy)):
            role, doc = reader.text(r, "role"), reader.document(r, "policy")
            if role and doc is not None:
                ref = _Ref(stack, r, "role", role, "role", Policy(doc, r.name))
                self._add("inline", self.role_name(role, account), ref)
        for r in state.of_type(_T(aws.iam.RolePolicyAttachment)):
            role, arn = reader.text(r, "role"), reader.text(r, "policyArn")
            if role and arn:
                ref = _Ref(stack, r, "role", role, "role", policy_arn=arn)
                self._add("attached", self.role_name(role, account), ref)
        for r in state.of_type(_T(aws.iam.PolicyAttachment)):
            arn = reader.text(r, "policyArn")
            if reader.strings(r, "users") or reader.strings(r, "groups"):
                reader.gaps.append(
                    f"{r.name} ({r.type}) attaches a policy to IAM users or groups, which the "
                    "proof does not model"
                )
            for role in reader.strings(r, "roles"):
                if arn:
                    ref = _Ref(stack, r, "roles", role, "role", policy_arn=arn)
                    self._add("attached", self.role_name(role, account), ref)

    def _grant(self, stack: str, r: Resource, reader: _Reader) -> None:
        """A KMS grant, read as a key-policy statement for its grantee ("Grants in AWS KMS": a
        grant allows the grantee the listed operations on the key). Constraints on the
        encryption context are left out: that can only widen the grant."""
        key, grantee = reader.text(r, "keyId"), reader.text(r, "granteePrincipal")
        operations = reader.value(r, "operations")
        if not key or not grantee or not isinstance(operations, list):
            reader.gaps.append(f"KMS grant {r.name} has no known key, grantee or operations")
            return
        kind = "Service" if grantee.endswith(".amazonaws.com") else "AWS"
        statement = {
            "Sid": f"Grant{r.name}",
            "Effect": "Allow",
            "Principal": {kind: grantee},
            "Action": [f"kms:{op}" for op in operations],
            "Resource": "*",
        }
        doc = {"Version": "2012-10-17", "Statement": [statement]}
        ref = _Ref(stack, r, "keyId", key, "key", Policy(doc, f"grant {r.name}"))
        self._add("grant", self.key_name(key, reader.account), ref)

    def resolve(self, index: str, *lookups: str) -> list[_Ref]:
        """The references in `index` that name any of `lookups`, marked resolved."""
        out: dict[int, _Ref] = {}
        for lookup in dict.fromkeys(x for x in lookups if x):
            for ref in self.by.get(index, {}).get(lookup, []):
                ref.used = True
                out.setdefault(id(ref), ref)
        return list(out.values())

    def take(self, index: str, *lookups: str) -> list[Policy]:
        """The policies the references in `index` that name any of `lookups` carry."""
        return [ref.policy for ref in self.resolve(index, *lookups) if ref.policy is not None]

    def unresolved(self) -> list[_Ref]:
        return [ref for ref in self.all if not ref.used]


def _targets(state: StackState, reader: _Reader, refs: _Refs) -> list[Target]:
    """Data resources with their ARN shapes and guarding resource policies."""
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
            add(r, [(arn,), (arn + "/", ANY)], refs.take("bucket", name), store=store)
        elif r.type == _T(aws.s3.BucketObjectv2):
            bucket, key = reader.text(r, "bucket"), reader.text(r, "key")
            if bucket and key:
                add(r, [(f"arn:aws:s3:::{bucket}/{key}",)], refs.take("bucket", bucket))
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
            extra = refs.take("key", key_id, arn)
            add(
                r,
                [(arn,)],
                (extra or inline_policies) + refs.take("grant", key_id, arn),
                kind="kms",
                arn=arn,
            )
        elif r.type == _T(aws.sqs.Queue):
            arn = reader.text(r, "arn")
            if not arn:
                reader.gaps.append(f"queue {r.name} has no known ARN")
                continue
            url = reader.text(r, "url") or r.id or ""
            add(r, [(arn,)], refs.take("queue", url, r.id or "") or inline_policies, arn=arn)
        elif r.type == _T(aws.secretsmanager.Secret):
            arn = reader.text(r, "arn")
            if not arn:
                reader.gaps.append(f"secret {r.name} has no known ARN")
                continue
            add(r, [(arn,)], refs.take("secret", arn, r.id or "") or inline_policies, arn=arn)
        elif r.type == _T(aws.ecr.Repository):
            arn, name = reader.text(r, "arn"), reader.text(r, "name")
            if not arn:
                reader.gaps.append(f"repository {r.name} has no known ARN")
                continue
            repo = f"{_arn_account(arn, reader.account)}:{name or r.id or ''}"
            add(r, [(arn,)], refs.take("repository", repo), arn=arn)
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


def _statement_list(doc: Mapping[str, Any]) -> list[Any]:
    raw = doc.get("Statement", [])
    return list(raw) if isinstance(raw, list) else [raw]


def _roles(
    state: StackState, reader: _Reader, managed: Mapping[str, Policy], refs: _Refs
) -> list[Role]:
    out: list[Role] = []
    for r in state.of_type(_T(aws.iam.Role)):
        name, arn = reader.text(r, "name"), reader.text(r, "arn")
        if not name or not arn:
            reader.gaps.append(f"role {r.name} has no known name and ARN")
            continue
        notes: list[str] = []
        account = _arn_account(arn, reader.account)
        lookups = (f"{account}:{name}",)
        policies = refs.take("inline", *lookups)
        inline = reader.value(r, "inlinePolicies")
        for item in inline if isinstance(inline, list) else []:
            if isinstance(item, dict) and item.get("policy"):
                doc = reader.parse(r, f"inlinePolicies[{item.get('name', '')}]", item["policy"])
                if doc is not None:
                    policies.append(Policy(doc, f"{r.name} inline {item.get('name', '')}"))
        attached = [ref.policy_arn for ref in refs.resolve("attached", *lookups)]
        attached += reader.strings(r, "managedPolicyArns")
        for policy_arn in dict.fromkeys(attached):
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
                account=account,
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
    refs = _Refs(states, readers)
    roles: dict[str, Role] = {}
    targets: dict[str, list[Target]] = {}
    for name, state in states.items():
        for role in _roles(state, readers[name], managed, refs):
            roles[role.arn] = role
        targets[name] = _targets(state, readers[name], refs)
    for ref in refs.unresolved():
        readers[ref.stack].gaps.append(ref.unresolved())
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
        gaps={name: list(dict.fromkeys(r.gaps)) for name, r in readers.items() if r.gaps},
    )
