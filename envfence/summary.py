"""One line of "key settings" per resource, for `envfence plan`'s table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envfence.model import Resource


def _vpc(r: Resource) -> str:
    return f"cidr {r.get('cidrBlock')}"


def _subnet(r: Resource) -> str:
    return f"{r.get('cidrBlock')} in {r.get('availabilityZone')}"


def _bucket(r: Resource) -> str:
    return f"{r.get('bucket')}"


def _db(r: Resource) -> str:
    return (
        f"postgres {r.get('engineVersion')} {r.get('instanceClass')}, "
        f"multi-AZ {_yn(r.get('multiAz'))}, encrypted {_yn(r.get('storageEncrypted'))}, "
        f"public {_yn(r.get('publiclyAccessible'))}, deletion protection "
        f"{_yn(r.get('deletionProtection'))}, backups {r.get('backupRetentionPeriod')} d"
    )


def _role(r: Resource) -> str:
    boundary = str(r.get("permissionsBoundary") or "none").rsplit("/", 1)[-1]
    return f"{r.get('name')} (boundary {boundary})"


def _key(r: Resource) -> str:
    return f"rotation {_yn(r.get('enableKeyRotation'))}"


def _rule(r: Resource) -> str:
    src = (
        r.get("cidrIpv4")
        or r.get("cidrIpv6")
        or r.get("prefixListId")
        or (
            f"sg {r.get('referencedSecurityGroupId')}"
            if r.get("referencedSecurityGroupId")
            else "?"
        )
    )
    return f"{r.get('ipProtocol')} {r.get('fromPort')}-{r.get('toPort')} {src}"


def _route(r: Resource) -> str:
    target = next(
        (
            str(r.get(k))
            for k in ("gatewayId", "natGatewayId", "vpcPeeringConnectionId", "transitGatewayId")
            if r.get(k)
        ),
        "?",
    )
    return f"{r.get('destinationCidrBlock')} -> {target}"


def _log_group(r: Resource) -> str:
    return f"{r.get('name')}, {r.get('retentionInDays')} d, kms {_yn(bool(r.get('kmsKeyId')))}"


def _yn(v: Any) -> str:
    return "yes" if v in (True, "true") else "no"


SUMMARIES: dict[str, Callable[[Resource], str]] = {
    "aws:ec2/vpc:Vpc": _vpc,
    "aws:ec2/subnet:Subnet": _subnet,
    "aws:s3/bucket:Bucket": _bucket,
    "aws:rds/instance:Instance": _db,
    "aws:iam/role:Role": _role,
    "aws:kms/key:Key": _key,
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": _rule,
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": _rule,
    "aws:ec2/route:Route": _route,
    "aws:cloudwatch/logGroup:LogGroup": _log_group,
}


def summarize(r: Resource) -> str:
    fn = SUMMARIES.get(r.type)
    text = fn(r) if fn else ""
    if r.protect:
        text = f"{text}  [protected]" if text else "[protected]"
    return text
