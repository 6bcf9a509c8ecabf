"""Conformance cases for `envfence.iam`, taken from examples in the AWS documentation.

Each case names the page its example (or rule) comes from; the expected decision is what that
page says AWS does. Shared by `test_iam_conformance.py` (our evaluator) and
`test_iam_differential.py` (PMapper as a second opinion). Account 111122223333 owns the
resources unless a case says otherwise; 444455556666 is "another account", as in the docs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envfence.iam import Policy, PolicySet, Principal, Request

ACCT = "111122223333"
OTHER = "444455556666"
V2012 = "2012-10-17"

EVAL_LOGIC = (
    "Policy evaluation logic",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html",
)
CROSS_ACCOUNT = (
    "Cross-account policy evaluation logic",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/"
    "reference_policies_evaluation-logic-cross-account.html",
)
BOUNDARIES = (
    "Permissions boundaries for IAM entities",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies_boundaries.html",
)
SESSION_POLICIES = (
    "Policies and permissions in IAM: Session policies",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies.html#policies_session",
)
NOTACTION = (
    "IAM JSON policy elements: NotAction",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_notaction.html",
)
NOTRESOURCE = (
    "IAM JSON policy elements: NotResource",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_notresource.html",
)
NOTPRINCIPAL = (
    "AWS JSON policy elements: NotPrincipal",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_notprincipal.html",
)
PRINCIPAL = (
    "AWS JSON policy elements: Principal",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_principal.html",
)
OPERATORS = (
    "IAM JSON policy elements: Condition operators",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/"
    "reference_policies_elements_condition_operators.html",
)
MULTIVALUE = (
    "Creating a condition that tests multiple key values (set operations)",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_multi-value-conditions.html",
)
VARIABLES = (
    "IAM policy elements: Variables and tags",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html",
)
KMS_DEFAULT = (
    "AWS KMS: Default key policy",
    "https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-default.html",
)
SWITCH_ROLES = (
    "Grant a user permissions to switch roles",
    "https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_permissions-to-switch.html",
)
SCP_EVAL = (
    "AWS Organizations: SCP evaluation",
    "https://docs.aws.amazon.com/organizations/latest/userguide/orgs_manage_policies_scps_evaluation.html",
)
RCP = (
    "AWS Organizations: Resource control policies (RCPs)",
    "https://docs.aws.amazon.com/organizations/latest/userguide/orgs_manage_policies_rcps.html",
)
ENDPOINT = (
    "Control access to VPC endpoints using endpoint policies",
    "https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-access.html",
)
S3_VPCE = (
    "Amazon S3: Controlling access from VPC endpoints with bucket policies",
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/example-bucket-policies-vpc-endpoint.html",
)


@dataclass(frozen=True)
class Case:
    id: str
    source: tuple[str, str]  # (page title, URL)
    request: Request
    policies: PolicySet
    allowed: bool
    reason: str | None = None  # expected Decision.reason, when the page implies one
    notes: str = ""
    tags: tuple[str, ...] = field(default=())


def role(
    name: str = "examplerole",
    account: str = ACCT,
    session: str = "examplesession",
    tags: dict[str, str] | None = None,
) -> Principal:
    return Principal(
        arn=f"arn:aws:iam::{account}:role/{name}",
        account=account,
        session_arn=f"arn:aws:sts::{account}:assumed-role/{name}/{session}",
        tags=tags or {},
    )


def user(
    name: str = "exampleuser", account: str = ACCT, tags: dict[str, str] | None = None
) -> Principal:
    return Principal(arn=f"arn:aws:iam::{account}:user/{name}", account=account, tags=tags or {})


def policy(name: str, *statements: dict[str, Any], version: str | None = V2012) -> Policy:
    document: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        document["Version"] = version
    return Policy(document, name)


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def req(
    principal: Principal,
    action: str,
    resource: str,
    context: dict[str, Any] | None = None,
    resource_account: str | None = ACCT,
    endpoints: tuple[Policy, ...] = (),
) -> Request:
    return Request(principal, action, resource, resource_account, context or {}, endpoints)


ALL = policy("admin", allow("*"))
BUCKET = "arn:aws:s3:::DOC-EXAMPLE-BUCKET"
OBJECT = f"{BUCKET}/report.csv"
KEY = f"arn:aws:kms:us-east-1:{ACCT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _cases() -> list[Case]:
    r = role()
    u = user()
    s3_read = policy("s3-read", allow("s3:GetObject", f"{BUCKET}/*"))
    cases: list[Case] = []

    # --- Policy evaluation logic: identity, boundary, SCP, explicit deny --------------------
    cases += [
        # EVAL_LOGIC: "An explicit allow in an identity-based or resource-based policy
        # overrides this default."
        Case(
            "identity-allow", EVAL_LOGIC, req(r, "s3:GetObject", OBJECT), PolicySet([s3_read]), True
        ),
        # EVAL_LOGIC: "By default, all requests are implicitly denied".
        Case(
            "default-implicit-deny",
            EVAL_LOGIC,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(),
            False,
            "implicit deny: no allow in identity or resource policy",
        ),
        # EVAL_LOGIC: "An explicit deny in any policy overrides any allows."
        Case(
            "explicit-deny-wins",
            EVAL_LOGIC,
            req(r, "s3:GetObject", OBJECT),
            PolicySet([s3_read, policy("deny", deny("s3:*"))]),
            False,
            "explicit deny",
        ),
        # BOUNDARIES: ShirleyRodriguez may only manage S3, CloudWatch and EC2; an identity
        # policy allowing iam:CreateUser does not let her create users.
        Case(
            "boundary-blocks-identity-allow",
            BOUNDARIES,
            req(user("ShirleyRodriguez"), "iam:CreateUser", f"arn:aws:iam::{ACCT}:user/Bob"),
            PolicySet(
                [policy("create-user", allow("iam:CreateUser"))],
                boundary=policy("b", allow(["s3:*", "cloudwatch:*", "ec2:*"])),
            ),
            False,
            "boundary does not allow",
        ),
        # BOUNDARIES: same boundary, an action inside it that the identity policy allows.
        Case(
            "boundary-and-identity-allow",
            BOUNDARIES,
            req(user("ShirleyRodriguez"), "s3:GetObject", OBJECT),
            PolicySet([s3_read], boundary=policy("b", allow(["s3:*", "cloudwatch:*", "ec2:*"]))),
            True,
        ),
        # EVAL_LOGIC: "If both a permissions boundary and an SCP are present, then the
        # boundary, the SCP, and the identity-based policy must all allow the action."
        Case(
            "scp-allows",
            SCP_EVAL,
            req(r, "s3:GetObject", OBJECT),
            PolicySet([s3_read], scps=[[policy("FullAWSAccess", allow("*"))]]),
            True,
        ),
        # SCP_EVAL: an allow-list SCP at the OU stops anything it does not list, even though
        # the root has FullAWSAccess.
        Case(
            "scp-ou-allow-list-blocks",
            SCP_EVAL,
            req(r, "ec2:RunInstances", f"arn:aws:ec2:us-east-1:{ACCT}:instance/*"),
            PolicySet(
                [ALL],
                scps=[[policy("FullAWSAccess", allow("*"))], [policy("ou", allow("s3:*"))]],
            ),
            False,
            "SCP level 1 does not allow",
        ),
        Case(
            "scp-ou-allow-list-passes",
            SCP_EVAL,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(
                [ALL],
                scps=[[policy("FullAWSAccess", allow("*"))], [policy("ou", allow("s3:*"))]],
            ),
            True,
        ),
        # SESSION_POLICIES: "the resulting session's permissions are the intersection of the
        # role's identity-based policy and the session policies".
        Case(
            "session-policy-limits-identity",
            SESSION_POLICIES,
            req(r, "s3:PutObject", OBJECT),
            PolicySet([policy("s3", allow("s3:*"))], session=[s3_read]),
            False,
            "session policy does not allow",
        ),
        Case(
            "session-policy-intersection-allows",
            SESSION_POLICIES,
            req(r, "s3:GetObject", OBJECT),
            PolicySet([policy("s3", allow("s3:*"))], session=[s3_read]),
            True,
        ),
    ]

    # --- Resource-based policies within one account (EVAL_LOGIC table) -----------------------
    boundary_ec2 = policy("boundary", allow("ec2:*"))

    def bucket_policy(principal: Any) -> Policy:
        return policy("bucket", allow("s3:GetObject", f"{BUCKET}/*", Principal=principal))

    cases += [
        # "IAM role session - ... Permissions granted directly to a session are not limited by
        # an implicit deny in an identity-based policy, a permissions boundary, or session
        # policy."
        Case(
            "rbp-session-arn-ignores-boundary",
            EVAL_LOGIC,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(boundary=boundary_ec2, resource=bucket_policy({"AWS": r.session_arn})),
            True,
        ),
        Case(
            "rbp-session-arn-ignores-session-policy",
            EVAL_LOGIC,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(
                session=[policy("sp", allow("ec2:*"))],
                resource=bucket_policy({"AWS": r.session_arn}),
            ),
            True,
        ),
        # "IAM role - Resource-based policies that grant permissions to an IAM role ARN are
        # limited by an implicit deny in a permissions boundary or session policy."
        Case(
            "rbp-role-arn-limited-by-boundary",
            EVAL_LOGIC,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(boundary=boundary_ec2, resource=bucket_policy({"AWS": r.arn})),
            False,
            "boundary does not allow",
        ),
        Case(
            "rbp-role-arn-limited-by-session-policy",
            EVAL_LOGIC,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(
                session=[policy("sp", allow("ec2:*"))], resource=bucket_policy({"AWS": r.arn})
            ),
            False,
            "session policy does not allow",
        ),
        # Same page, first rule: "you only need an explicit allow for the principal in either
        # an identity-based policy or a resource-based policy".
        Case(
            "rbp-role-arn-no-identity-needed",
            EVAL_LOGIC,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(resource=bucket_policy({"AWS": r.arn})),
            True,
        ),
        # "IAM user - ... resource-based policies that grant permissions to an IAM user ARN ...
        # are not limited by an implicit deny in an identity-based policy or permissions
        # boundary."
        Case(
            "rbp-user-arn-ignores-boundary",
            EVAL_LOGIC,
            req(u, "s3:GetObject", OBJECT),
            PolicySet(boundary=boundary_ec2, resource=bucket_policy({"AWS": u.arn})),
            True,
        ),
        # "An explicit deny in either of these policies overrides the allow."
        Case(
            "rbp-deny-overrides-identity-allow",
            EVAL_LOGIC,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(
                [s3_read],
                resource=policy(
                    "bucket",
                    deny("s3:*", f"{BUCKET}/*", Principal={"AWS": f"arn:aws:iam::{ACCT}:root"}),
                ),
            ),
            False,
            "explicit deny",
        ),
        # PRINCIPAL: "*" (everyone) in a bucket policy grants access by itself within the
        # account.
        Case(
            "rbp-everyone",
            PRINCIPAL,
            req(r, "s3:GetObject", OBJECT),
            PolicySet(resource=bucket_policy("*")),
            True,
        ),
        # PRINCIPAL: a role ARN names the role; a different role gets nothing from it.
        Case(
            "rbp-other-role-not-named",
            PRINCIPAL,
            req(role("otherrole"), "s3:GetObject", OBJECT),
            PolicySet(resource=bucket_policy({"AWS": r.arn})),
            False,
            "implicit deny: no allow in identity or resource policy",
        ),
    ]

    # --- Cross-account --------------------------------------------------------------------
    other_user = user("Bob", OTHER)
    cases += [
        # CROSS_ACCOUNT: "the identity-based policy in the trusted account and the
        # resource-based policy in the trusting account must both allow".
        Case(
            "xacct-both-allow",
            CROSS_ACCOUNT,
            req(other_user, "s3:GetObject", OBJECT),
            PolicySet([s3_read], resource=bucket_policy({"AWS": OTHER})),
            True,
        ),
        Case(
            "xacct-no-identity-policy",
            CROSS_ACCOUNT,
            req(other_user, "s3:GetObject", OBJECT),
            PolicySet(resource=bucket_policy({"AWS": OTHER})),
            False,
            "cross-account: implicit deny: no identity policy allows",
        ),
        Case(
            "xacct-no-resource-policy",
            CROSS_ACCOUNT,
            req(other_user, "s3:GetObject", OBJECT),
            PolicySet([s3_read]),
            False,
            "cross-account: resource policy does not allow",
        ),
        Case(
            "xacct-user-named-still-needs-identity",
            CROSS_ACCOUNT,
            req(other_user, "s3:GetObject", OBJECT),
            PolicySet(resource=bucket_policy({"AWS": other_user.arn})),
            False,
        ),
    ]

    # --- KMS key policies and role trust policies -----------------------------------------
    enable_iam = policy(
        "key-policy",
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCT}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
    )
    decrypt = policy("decrypt", allow("kms:Decrypt", KEY))
    cases += [
        # KMS_DEFAULT: the default key policy "Allows access to the AWS account and enables
        # IAM policies": with it, an identity policy grants kms:Decrypt.
        Case(
            "kms-root-delegation-with-identity",
            KMS_DEFAULT,
            req(r, "kms:Decrypt", KEY),
            PolicySet([decrypt], resource=enable_iam, resource_kind="kms"),
            True,
        ),
        # ... and without an identity policy the account delegation grants nothing.
        Case(
            "kms-root-delegation-without-identity",
            KMS_DEFAULT,
            req(r, "kms:Decrypt", KEY),
            PolicySet(resource=enable_iam, resource_kind="kms"),
            False,
        ),
        # EVAL_LOGIC: KMS key policies "must explicitly allow access for principals": an
        # identity policy alone is not enough.
        Case(
            "kms-key-policy-silent",
            EVAL_LOGIC,
            req(r, "kms:Decrypt", KEY),
            PolicySet(
                [decrypt],
                resource=policy(
                    "key-policy", allow("kms:*", "*", Principal={"AWS": role("keyadmin").arn})
                ),
                resource_kind="kms",
            ),
            False,
            "implicit deny: key policy does not allow",
        ),
        # KMS_DEFAULT ("Allows key users to use the KMS key"): a key policy naming the
        # principal allows on its own.
        Case(
            "kms-key-policy-names-session",
            KMS_DEFAULT,
            req(r, "kms:Decrypt", KEY),
            PolicySet(
                resource=policy(
                    "key-policy", allow("kms:Decrypt", "*", Principal={"AWS": r.session_arn})
                ),
                resource_kind="kms",
            ),
            True,
        ),
    ]
    target_role = f"arn:aws:iam::{ACCT}:role/target"
    assume = policy("assume", allow("sts:AssumeRole", target_role))

    def trust(principal: Any) -> Policy:
        return policy(
            "trust", {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}
        )

    cases += [
        # SWITCH_ROLES: a trust policy naming the account delegates; the user also needs an
        # identity policy allowing sts:AssumeRole on the role.
        Case(
            "trust-account-with-identity",
            SWITCH_ROLES,
            req(u, "sts:AssumeRole", target_role),
            PolicySet(
                [assume],
                resource=trust({"AWS": f"arn:aws:iam::{ACCT}:root"}),
                resource_kind="trust",
            ),
            True,
        ),
        Case(
            "trust-account-without-identity",
            SWITCH_ROLES,
            req(u, "sts:AssumeRole", target_role),
            PolicySet(resource=trust({"AWS": f"arn:aws:iam::{ACCT}:root"}), resource_kind="trust"),
            False,
        ),
        # EVAL_LOGIC: trust policies must allow; an identity policy alone is not enough.
        Case(
            "trust-policy-silent",
            EVAL_LOGIC,
            req(u, "sts:AssumeRole", target_role),
            PolicySet(
                [assume], resource=trust({"Service": "ec2.amazonaws.com"}), resource_kind="trust"
            ),
            False,
            "implicit deny: trust policy does not allow",
        ),
        # SWITCH_ROLES: a same-account trust policy naming the user directly needs no identity
        # policy (resource-based policy naming an IAM user ARN, EVAL_LOGIC table).
        Case(
            "trust-names-user",
            SWITCH_ROLES,
            req(u, "sts:AssumeRole", target_role),
            PolicySet(resource=trust({"AWS": u.arn}), resource_kind="trust"),
            True,
        ),
        # CROSS_ACCOUNT / SWITCH_ROLES: another account's user needs both the trust policy and
        # its own identity policy.
        Case(
            "trust-cross-account-both",
            SWITCH_ROLES,
            req(other_user, "sts:AssumeRole", target_role),
            PolicySet([assume], resource=trust({"AWS": OTHER}), resource_kind="trust"),
            True,
        ),
        Case(
            "trust-cross-account-no-identity",
            SWITCH_ROLES,
            req(other_user, "sts:AssumeRole", target_role),
            PolicySet(resource=trust({"AWS": OTHER}), resource_kind="trust"),
            False,
        ),
    ]

    # --- NotAction / NotResource ----------------------------------------------------------
    not_iam = policy("not-iam", {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    mfa_deny = policy(
        "mfa",
        allow("*"),
        {
            "Effect": "Deny",
            "NotAction": "iam:*",
            "Resource": "*",
            "Condition": {"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}},
        },
    )
    payroll = policy(
        "payroll",
        allow("*"),
        {
            "Effect": "Deny",
            "Action": "s3:*",
            "NotResource": ["arn:aws:s3:::HRBucket/Payroll", "arn:aws:s3:::HRBucket/Payroll/*"],
        },
    )
    cases += [
        # NOTACTION: "allow access to all actions in all AWS services except for IAM": the
        # NotAction matches actions of every other service.
        Case(
            "notaction-other-service",
            NOTACTION,
            req(u, "s3:GetObject", OBJECT),
            PolicySet([not_iam]),
            True,
        ),
        Case(
            "notaction-listed-service",
            NOTACTION,
            req(u, "iam:CreateUser", f"arn:aws:iam::{ACCT}:user/x"),
            PolicySet([not_iam]),
            False,
        ),
        # NOTACTION: "Deny all services except IAM if the user is not signed in using MFA",
        # with BoolIfExists so that a missing key also denies.
        Case(
            "notaction-mfa-missing-key",
            NOTACTION,
            req(u, "s3:GetObject", OBJECT),
            PolicySet([mfa_deny]),
            False,
        ),
        Case(
            "notaction-mfa-present",
            NOTACTION,
            req(u, "s3:GetObject", OBJECT, {"aws:MultiFactorAuthPresent": "true"}),
            PolicySet([mfa_deny]),
            True,
        ),
        Case(
            "notaction-mfa-iam-exempt",
            NOTACTION,
            req(u, "iam:ListUsers", "*"),
            PolicySet([mfa_deny]),
            True,
        ),
        # NOTRESOURCE: deny everything in S3 except the HRBucket/Payroll folder.
        Case(
            "notresource-outside-denied",
            NOTRESOURCE,
            req(u, "s3:GetObject", "arn:aws:s3:::HRBucket/Other/doc"),
            PolicySet([payroll]),
            False,
            "explicit deny",
        ),
        Case(
            "notresource-listed-allowed",
            NOTRESOURCE,
            req(u, "s3:GetObject", "arn:aws:s3:::HRBucket/Payroll/june.csv"),
            PolicySet([payroll]),
            True,
        ),
    ]

    # --- NotPrincipal ---------------------------------------------------------------------
    auditor = role("cross-account-read-only-role", OTHER, "cross-account-audit-app")
    audit_bucket = "arn:aws:s3:::Bucket_AccountAudit"
    audit_deny = {
        "Effect": "Deny",
        "Action": "s3:*",
        "Resource": [audit_bucket, f"{audit_bucket}/*"],
    }
    everything = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": f"{audit_bucket}/*",
    }
    full_listing = {
        "AWS": [
            auditor.session_arn,
            auditor.arn,
            f"arn:aws:iam::{OTHER}:root",
        ]
    }
    read_all = policy("s3", allow("s3:*"))
    cases += [
        # NOTPRINCIPAL, "IAM role in the same or different account": listing session, role and
        # account exempts the assumed-role user from the deny.
        Case(
            "notprincipal-full-listing-exempt",
            NOTPRINCIPAL,
            req(auditor, "s3:GetObject", f"{audit_bucket}/a"),
            PolicySet(
                [read_all],
                resource=policy("bucket", everything, {**audit_deny, "NotPrincipal": full_listing}),
            ),
            True,
        ),
        Case(
            "notprincipal-others-denied",
            NOTPRINCIPAL,
            req(role("someone-else", OTHER), "s3:GetObject", f"{audit_bucket}/a"),
            PolicySet(
                [read_all],
                resource=policy("bucket", everything, {**audit_deny, "NotPrincipal": full_listing}),
            ),
            False,
            "explicit deny",
        ),
        # NOTPRINCIPAL: "if the NotPrincipal element was missing the ARN of the AWS account
        # ... the policy might deny access to the AWS account and all entities in that account".
        Case(
            "notprincipal-missing-account-denies",
            NOTPRINCIPAL,
            req(auditor, "s3:GetObject", f"{audit_bucket}/a"),
            PolicySet(
                [read_all],
                resource=policy(
                    "bucket",
                    everything,
                    {**audit_deny, "NotPrincipal": {"AWS": [auditor.session_arn, auditor.arn]}},
                ),
            ),
            False,
            "explicit deny",
        ),
        # BOUNDARIES, Important box: a Deny with NotPrincipal "will always deny any IAM
        # principal that has a permissions boundary policy attached, regardless of the values
        # specified in the NotPrincipal element".
        Case(
            "notprincipal-deny-with-boundary",
            BOUNDARIES,
            req(auditor, "s3:GetObject", f"{audit_bucket}/a"),
            PolicySet(
                [read_all],
                boundary=policy("boundary", allow("s3:*")),
                resource=policy("bucket", everything, {**audit_deny, "NotPrincipal": full_listing}),
            ),
            False,
            "explicit deny",
        ),
    ]

    # --- Condition operators --------------------------------------------------------------
    job = policy(
        "job",
        {
            "Effect": "Allow",
            "Action": "iam:*AccessKey*",
            "Resource": f"arn:aws:iam::{ACCT}:user/*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/job-category": "iamuser-admin"}},
        },
    )
    max_keys = policy(
        "max-keys",
        allow(
            "s3:ListBucket",
            "arn:aws:s3:::example_bucket",
            Condition={"NumericLessThanEquals": {"s3:max-keys": "10"}},
        ),
    )
    token_2020 = policy(
        "token",
        allow(
            "iam:*AccessKey*",
            f"arn:aws:iam::{ACCT}:user/*",
            Condition={"DateGreaterThan": {"aws:TokenIssueTime": "2020-01-01T00:00:01Z"}},
        ),
    )
    ssl_only = policy(
        "ssl",
        allow("s3:*"),
        deny("s3:*", [BUCKET, f"{BUCKET}/*"], Condition={"Bool": {"aws:SecureTransport": "false"}}),
    )
    source_ip = policy(
        "ip",
        allow(
            "someservice:*",
            Condition={
                "IpAddress": {"aws:SourceIp": ["203.0.113.0/24", "2001:DB8:1234:5678::/64"]}
            },
        ),
    )
    access_key = f"arn:aws:iam::{ACCT}:user/x"
    run = [
        {
            "Sid": "RunInstance",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": "*",
            "Condition": {"StringLikeIfExists": {"ec2:InstanceType": ["t1.*", "t2.*", "m3.*"]}},
        }
    ]
    run_broken = [
        {
            **run[0],
            "Sid": "THISPOLICYDOESNOTWORK",
            "Condition": {"StringLike": {"ec2:InstanceType": ["t1.*", "t2.*", "m3.*"]}},
        }
    ]
    image = "arn:aws:ec2:us-east-1::image/ami-12345678"
    not_temp = policy(
        "no-temp-creds",
        allow("ec2:*", Condition={"Null": {"aws:TokenIssueTime": "true"}}),
    )
    finance_arn = (
        "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt"
    )
    finance_pattern = "arn:aws:someservice:*:111122223333:finance/*"
    cases += [
        # OPERATORS, String: the principal must be tagged job-category=iamuser-admin.
        Case(
            "string-equals-tag",
            OPERATORS,
            req(user(tags={"job-category": "iamuser-admin"}), "iam:CreateAccessKey", access_key),
            PolicySet([job]),
            True,
        ),
        Case(
            "string-equals-tag-missing",
            OPERATORS,
            req(user(), "iam:CreateAccessKey", access_key),
            PolicySet([job]),
            False,
        ),
        # OPERATORS, Numeric: list up to 10 objects at a time.
        Case(
            "numeric-le-10",
            OPERATORS,
            req(u, "s3:ListBucket", "arn:aws:s3:::example_bucket", {"s3:max-keys": "10"}),
            PolicySet([max_keys]),
            True,
        ),
        Case(
            "numeric-le-11",
            OPERATORS,
            req(u, "s3:ListBucket", "arn:aws:s3:::example_bucket", {"s3:max-keys": "11"}),
            PolicySet([max_keys]),
            False,
        ),
        # OPERATORS, Date: credentials issued after 2020-01-01; "if an IAM user attempts to
        # view or edit an access key, the request is denied" (no aws:TokenIssueTime).
        Case(
            "date-greater-than",
            OPERATORS,
            req(
                r, "iam:ListAccessKeys", access_key, {"aws:TokenIssueTime": "2021-06-01T12:00:00Z"}
            ),
            PolicySet([token_2020]),
            True,
        ),
        Case(
            "date-key-missing",
            OPERATORS,
            req(u, "iam:ListAccessKeys", access_key),
            PolicySet([token_2020]),
            False,
        ),
        Case(
            "date-epoch-before",
            OPERATORS,
            req(r, "iam:ListAccessKeys", access_key, {"aws:TokenIssueTime": "1500000000"}),
            PolicySet([token_2020]),
            False,
        ),
        # OPERATORS, Boolean: deny S3 requests not sent over SSL.
        Case(
            "bool-securetransport-false",
            OPERATORS,
            req(u, "s3:GetObject", OBJECT, {"aws:SecureTransport": "false"}),
            PolicySet([ssl_only]),
            False,
            "explicit deny",
        ),
        Case(
            "bool-securetransport-true",
            OPERATORS,
            req(u, "s3:GetObject", OBJECT, {"aws:SecureTransport": "true"}),
            PolicySet([ssl_only]),
            True,
        ),
        # OPERATORS, IP address: IPv4 and IPv6 ranges.
        Case(
            "ip-v4-inside",
            OPERATORS,
            req(u, "someservice:Do", "arn:aws:someservice:::x", {"aws:SourceIp": "203.0.113.77"}),
            PolicySet([source_ip]),
            True,
        ),
        Case(
            "ip-v4-outside",
            OPERATORS,
            req(u, "someservice:Do", "arn:aws:someservice:::x", {"aws:SourceIp": "198.51.100.7"}),
            PolicySet([source_ip]),
            False,
        ),
        Case(
            "ip-v6-inside",
            OPERATORS,
            req(
                u,
                "someservice:Do",
                "arn:aws:someservice:::x",
                {"aws:SourceIp": "2001:db8:1234:5678::42"},
            ),
            PolicySet([source_ip]),
            True,
        ),
        # OPERATORS, ARN: "With a StringLike condition, the match succeeds ... With an ArnLike
        # condition, which matches elements between colons, the match fails."
        Case(
            "stringlike-crosses-colons",
            OPERATORS,
            req(u, "someservice:Do", "*", {"aws:SourceArn": finance_arn}),
            PolicySet(
                [
                    policy(
                        "p",
                        allow(
                            "someservice:*",
                            Condition={"StringLike": {"aws:SourceArn": finance_pattern}},
                        ),
                    )
                ]
            ),
            True,
        ),
        Case(
            "arnlike-per-component",
            OPERATORS,
            req(u, "someservice:Do", "*", {"aws:SourceArn": finance_arn}),
            PolicySet(
                [
                    policy(
                        "p",
                        allow(
                            "someservice:*",
                            Condition={"ArnLike": {"aws:SourceArn": finance_pattern}},
                        ),
                    )
                ]
            ),
            False,
        ),
        # OPERATORS, ARN: SQS queue policy letting SNS send only for one topic.
        Case(
            "arnequals-source-topic",
            OPERATORS,
            req(
                role(account="123456789012"),
                "SQS:SendMessage",
                "arn:aws:sqs:REGION:123456789012:QUEUE-ID",
                {"aws:SourceArn": "arn:aws:sns:REGION:123456789012:TOPIC-ID"},
                resource_account="123456789012",
            ),
            PolicySet(
                resource=policy(
                    "queue",
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": "123456789012"},
                        "Action": "SQS:SendMessage",
                        "Resource": "arn:aws:sqs:REGION:123456789012:QUEUE-ID",
                        "Condition": {
                            "ArnEquals": {
                                "aws:SourceArn": "arn:aws:sns:REGION:123456789012:TOPIC-ID"
                            }
                        },
                    },
                )
            ),
            True,
        ),
        # OPERATORS, ...IfExists: RunInstances touches images that have no ec2:InstanceType;
        # StringLikeIfExists lets them through, plain StringLike does not.
        Case(
            "ifexists-key-absent",
            OPERATORS,
            req(u, "ec2:RunInstances", image),
            PolicySet([policy("run", *run)]),
            True,
        ),
        Case(
            "ifexists-key-present-mismatch",
            OPERATORS,
            req(u, "ec2:RunInstances", "*", {"ec2:InstanceType": "m5.large"}),
            PolicySet([policy("run", *run)]),
            False,
        ),
        Case(
            "ifexists-key-present-match",
            OPERATORS,
            req(u, "ec2:RunInstances", "*", {"ec2:InstanceType": "t2.micro"}),
            PolicySet([policy("run", *run)]),
            True,
        ),
        Case(
            "no-ifexists-key-absent",
            OPERATORS,
            req(u, "ec2:RunInstances", image),
            PolicySet([policy("run", *run_broken)]),
            False,
        ),
        # OPERATORS, Null: "the user must not be using temporary credentials".
        Case(
            "null-true-absent",
            OPERATORS,
            req(u, "ec2:DescribeVpcs", "*"),
            PolicySet([not_temp]),
            True,
        ),
        Case(
            "null-true-present",
            OPERATORS,
            req(r, "ec2:DescribeVpcs", "*", {"aws:TokenIssueTime": "2024-01-01T00:00:00Z"}),
            PolicySet([not_temp]),
            False,
        ),
        # OPERATORS, Important box: negated operators are true when the key is absent.
        Case(
            "negated-operator-missing-key",
            OPERATORS,
            req(u, "s3:GetObject", OBJECT),
            PolicySet(
                [
                    policy(
                        "p",
                        allow("s3:*", Condition={"StringNotLike": {"aws:SourceVpce": "vpce-1*"}}),
                    )
                ]
            ),
            True,
        ),
    ]

    # --- Set operators --------------------------------------------------------------------
    thread = f"arn:aws:dynamodb:us-east-1:{ACCT}:table/Thread"
    only_attrs = policy(
        "get",
        allow(
            "dynamodb:GetItem",
            thread,
            Condition={
                "ForAllValues:StringLike": {
                    "dynamodb:requestedAttributes": ["PostDateTime", "Message", "Tags"]
                }
            },
        ),
    )
    deny_attrs = policy(
        "put",
        allow("dynamodb:*"),
        deny(
            "dynamodb:PutItem",
            thread,
            Condition={
                "ForAnyValue:StringLike": {"dynamodb:requestedAttributes": ["ID", "PostDateTime"]}
            },
        ),
    )
    attrs = "dynamodb:requestedAttributes"
    cases += [
        # MULTIVALUE (the doc writes the action as "GetItem"; the service prefix is added
        # here): every requested attribute must be in the list.
        Case(
            "forallvalues-subset",
            MULTIVALUE,
            req(u, "dynamodb:GetItem", thread, {attrs: ["PostDateTime", "Message"]}),
            PolicySet([only_attrs]),
            True,
        ),
        Case(
            "forallvalues-extra-value",
            MULTIVALUE,
            req(u, "dynamodb:GetItem", thread, {attrs: ["PostDateTime", "UserName"]}),
            PolicySet([only_attrs]),
            False,
        ),
        # MULTIVALUE Note: "If the key values in the request resolve to an empty data set ...
        # a condition operator modified by ForAllValues returns true".
        Case(
            "forallvalues-empty",
            MULTIVALUE,
            req(u, "dynamodb:GetItem", thread, {attrs: []}),
            PolicySet([only_attrs]),
            True,
        ),
        Case(
            "foranyvalue-one-match-denies",
            MULTIVALUE,
            req(u, "dynamodb:PutItem", thread, {attrs: ["UserName", "Message", "PostDateTime"]}),
            PolicySet([deny_attrs]),
            False,
            "explicit deny",
        ),
        Case(
            "foranyvalue-no-match",
            MULTIVALUE,
            req(u, "dynamodb:PutItem", thread, {attrs: ["UserName"]}),
            PolicySet([deny_attrs]),
            True,
        ),
        # "... and a condition operator modified by ForAnyValue returns false".
        Case(
            "foranyvalue-absent",
            MULTIVALUE,
            req(u, "dynamodb:PutItem", thread),
            PolicySet([deny_attrs]),
            True,
        ),
    ]

    # --- Policy variables -----------------------------------------------------------------
    home = [
        allow(
            "s3:ListBucket",
            "arn:aws:s3:::mybucket",
            Condition={"StringLike": {"s3:prefix": ["${aws:username}/*"]}},
        ),
        allow(["s3:GetObject", "s3:PutObject"], "arn:aws:s3:::mybucket/${aws:username}/*"),
    ]
    david = user("David")
    cases += [
        # VARIABLES, Introduction: each user reaches only mybucket/<own name>/*.
        Case(
            "variable-own-folder",
            VARIABLES,
            req(david, "s3:GetObject", "arn:aws:s3:::mybucket/David/a.txt"),
            PolicySet([policy("home", *home)]),
            True,
        ),
        Case(
            "variable-other-folder",
            VARIABLES,
            req(david, "s3:GetObject", "arn:aws:s3:::mybucket/Adele/a.txt"),
            PolicySet([policy("home", *home)]),
            False,
        ),
        Case(
            "variable-in-condition",
            VARIABLES,
            req(david, "s3:ListBucket", "arn:aws:s3:::mybucket", {"s3:prefix": "David/photos"}),
            PolicySet([policy("home", *home)]),
            True,
        ),
        # VARIABLES Note: without Version 2012-10-17 "variables like ${aws:username} are
        # treated as literal strings in the policy".
        Case(
            "variable-2008-literal",
            VARIABLES,
            req(david, "s3:GetObject", "arn:aws:s3:::mybucket/David/a.txt"),
            PolicySet([policy("home", *home, version=None)]),
            False,
        ),
        # VARIABLES, "Tags as policy variables": bucket named after the department tag.
        Case(
            "variable-principal-tag",
            VARIABLES,
            req(role(tags={"department": "hr"}), "s3:GetObject", "arn:aws:s3:::bucket/hr"),
            PolicySet(
                [
                    policy(
                        "dept",
                        allow("s3:GetObject", "arn:aws:s3:::bucket/${aws:PrincipalTag/department}"),
                    )
                ]
            ),
            True,
        ),
        # VARIABLES, "Specifying default values": ${aws:PrincipalTag/team, 'company-wide'}.
        Case(
            "variable-default",
            VARIABLES,
            req(role(), "s3:GetObject", "arn:aws:s3:::amzn-s3-demo-bucket/company-wide/x"),
            PolicySet(
                [
                    policy(
                        "team",
                        allow(
                            "s3:*",
                            "arn:aws:s3:::amzn-s3-demo-bucket/"
                            "${aws:PrincipalTag/team, 'company-wide'}/*",
                        ),
                    )
                ]
            ),
            True,
        ),
        # VARIABLES, principal key table: aws:username is "not present" for a role, and
        # "any attempt to match it fails and causes the statement to be invalid".
        Case(
            "variable-absent-for-role",
            VARIABLES,
            req(role(), "s3:GetObject", "arn:aws:s3:::mybucket/examplerole/a.txt"),
            PolicySet([policy("home", *home)]),
            False,
        ),
    ]

    # --- Organizations RCPs and VPC endpoints ---------------------------------------------
    rcp = policy(
        "rcp-enforce-org",
        {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"},
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": "*",
            "Condition": {
                "StringNotEqualsIfExists": {"aws:PrincipalOrgID": "o-exampleorg"},
                "BoolIfExists": {"aws:PrincipalIsAWSService": "false"},
            },
        },
    )
    endpoint_policy = policy(
        "vpce",
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"{BUCKET}/*"},
    )
    vpce_only = policy(
        "bucket",
        {
            "Sid": "Access-to-specific-VPCE-only",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [BUCKET, f"{BUCKET}/*"],
            "Condition": {"StringNotEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}},
        },
    )
    cases += [
        # RCP: "enforce that only principals in your organization can access" S3 resources.
        Case(
            "rcp-outside-org-denied",
            RCP,
            req(
                r,
                "s3:GetObject",
                OBJECT,
                {"aws:PrincipalOrgID": "o-otherorg", "aws:PrincipalIsAWSService": "false"},
            ),
            PolicySet([ALL], rcps=[[rcp]]),
            False,
            "explicit deny",
        ),
        Case(
            "rcp-inside-org",
            RCP,
            req(
                r,
                "s3:GetObject",
                OBJECT,
                {"aws:PrincipalOrgID": "o-exampleorg", "aws:PrincipalIsAWSService": "false"},
            ),
            PolicySet([ALL], rcps=[[rcp]]),
            True,
        ),
        # ENDPOINT: the endpoint policy must allow the request as well.
        Case(
            "endpoint-policy-blocks",
            ENDPOINT,
            req(r, "s3:PutObject", OBJECT, endpoints=(endpoint_policy,)),
            PolicySet([ALL]),
            False,
            "VPC endpoint policy vpce does not allow",
        ),
        Case(
            "endpoint-policy-allows",
            ENDPOINT,
            req(r, "s3:GetObject", OBJECT, endpoints=(endpoint_policy,)),
            PolicySet([ALL]),
            True,
        ),
        # S3_VPCE: "Restricting access to a specific VPC endpoint".
        Case(
            "bucket-vpce-only-wrong-endpoint",
            S3_VPCE,
            req(r, "s3:GetObject", OBJECT, {"aws:SourceVpce": "vpce-99999999"}),
            PolicySet([ALL], resource=vpce_only),
            False,
            "explicit deny",
        ),
        Case(
            "bucket-vpce-only-right-endpoint",
            S3_VPCE,
            req(r, "s3:GetObject", OBJECT, {"aws:SourceVpce": "vpce-1a2b3c4d"}),
            PolicySet([ALL], resource=vpce_only),
            True,
        ),
    ]

    # --- Wildcards and case -----------------------------------------------------------------
    cases += [
        # IAM JSON policy elements: Action, "Action values are case insensitive".
        Case(
            "action-case-insensitive",
            (
                "IAM JSON policy elements: Action",
                "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_action.html",
            ),
            req(u, "s3:getobject", OBJECT),
            PolicySet([policy("p", allow("S3:GetObject", f"{BUCKET}/*"))]),
            True,
        ),
        # IAM JSON policy elements: Resource — ARNs are case sensitive.
        Case(
            "resource-case-sensitive",
            (
                "IAM JSON policy elements: Resource",
                "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html",
            ),
            req(u, "s3:GetObject", "arn:aws:s3:::doc-example-bucket/report.csv"),
            PolicySet([s3_read]),
            False,
        ),
        # Resource page: "?" matches exactly one character.
        Case(
            "resource-question-mark-one-char",
            (
                "IAM JSON policy elements: Resource",
                "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html",
            ),
            req(u, "s3:GetObject", "arn:aws:s3:::bucket-10/x"),
            PolicySet([policy("p", allow("s3:GetObject", "arn:aws:s3:::bucket-?/*"))]),
            False,
        ),
    ]
    return cases


def conformance_cases() -> list[Case]:
    """Built on demand (no work at import time)."""
    return _cases()
