"""Run the unmodified Pulumi program for a stack under Pulumi's mock runtime; return a StackState.

No CLI, no cloud account, no network. The program sees its real config (`Pulumi.yaml` defaults
under `Pulumi.<stack>.yaml`, as CLI-style strings). A recording monitor captures every
registration the engine would receive — URN (built as the engine builds it), parent, provider,
dependencies, protect, retainOnDelete, inputs — and mocks answer with realistic ids and ARNs in
the stack's own account and region (read from the stack's explicit AWS provider), so policies
built from them are the policies a real deployment would get.

Several stacks can be evaluated in one process: every run resets the runtime's settings, config
and root resource, and re-imports the program's modules.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import runpy
import sys
from collections.abc import Callable, Iterator
from typing import Any

from envfence.model import STACK_TYPE, Resource, StackState
from envfence.project import Project, ProjectFileError, load_project
from envfence.registry import RegistryError
from envfence.settings import ConfigError


class EvaluationError(Exception):
    """The program could not be evaluated: a config error or a program error. Exit code 2."""


# --------------------------------------------------------------------------------------------
# Mocked cloud: ids and computed outputs per resource type


def _digest(*parts: str, length: int = 17) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


# EC2-style id prefixes for resources whose id the cloud invents.
_EC2_IDS = {
    "aws:ec2/vpc:Vpc": "vpc",
    "aws:ec2/subnet:Subnet": "subnet",
    "aws:ec2/securityGroup:SecurityGroup": "sg",
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": "sg",
    "aws:ec2/routeTable:RouteTable": "rtb",
    "aws:ec2/route:Route": "r-rtb",
    "aws:ec2/routeTableAssociation:RouteTableAssociation": "rtbassoc",
    "aws:ec2/internetGateway:InternetGateway": "igw",
    "aws:ec2/natGateway:NatGateway": "nat",
    "aws:ec2/eip:Eip": "eipalloc",
    "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce",
    "aws:ec2/flowLog:FlowLog": "fl",
    "aws:ec2/vpcPeeringConnection:VpcPeeringConnection": "pcx",
    "aws:ec2transitgateway/transitGateway:TransitGateway": "tgw",
    "aws:ec2transitgateway/vpcAttachment:VpcAttachment": "tgw-attach",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "sgr",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "sgr",
    "aws:ec2/securityGroupRule:SecurityGroupRule": "sgrule",
    "aws:ec2/networkAcl:NetworkAcl": "acl",
}

# Resources whose physical name the provider would invent when the program sets none.
_AUTONAMED = {
    "aws:ec2/securityGroup:SecurityGroup",
    "aws:rds/subnetGroup:SubnetGroup",
    "aws:rds/parameterGroup:ParameterGroup",
    "aws:cloudwatch/logGroup:LogGroup",
    "aws:iam/role:Role",
    "aws:iam/policy:Policy",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:sqs/queue:Queue",
    "aws:ecr/repository:Repository",
    "aws:ecs/cluster:Cluster",
    "aws:sns/topic:Topic",
    "aws:cloudtrail/trail:Trail",
    "aws:appconfig/application:Application",
    "aws:appconfig/environment:Environment",
    "aws:appconfig/configurationProfile:ConfigurationProfile",
    "aws:cloudwatch/logMetricFilter:LogMetricFilter",
    "aws:secretsmanager/secret:Secret",
}

# Resources whose id AWS (the provider) makes from the property that names what they configure:
# a queue policy is its queue's URL, a key policy its key, a repository policy its repository.
_ID_IS_TARGET = {
    "aws:sqs/queuePolicy:QueuePolicy": "queueUrl",
    "aws:kms/keyPolicy:KeyPolicy": "keyId",
    "aws:ecr/repositoryPolicy:RepositoryPolicy": "repository",
    "aws:ecr/lifecyclePolicy:LifecyclePolicy": "repository",
    "aws:secretsmanager/secretPolicy:SecretPolicy": "secretArn",
    "aws:sns/topicPolicy:TopicPolicy": "arn",
}


def _appconfig_id(kind: str, out: dict[str, Any], short: str) -> str:
    """AppConfig's own ids: a random 7-character id, composite for what lives in an application.

    Their names are unique only inside their application, so an id made from the name, as for
    other types, would look shared between environments that share nothing.
    """
    app = out.get("applicationId")
    if kind in ("Environment", "ConfigurationProfile"):
        return f"{short}:{app}"
    if kind == "HostedConfigurationVersion":
        return f"{app}/{out.get('configurationProfileId')}/1"
    if kind == "Deployment":
        return f"{app}/{out.get('environmentId')}/1"
    return short


def _has_arn(typ: str) -> bool:
    from envfence.rules.classify import resource_class

    cls = resource_class(typ)
    return cls is not None and isinstance(getattr(cls, "arn", None), property)


class CloudMocks:
    """pulumi.runtime.Mocks for AWS: stack-specific, deterministic ids and ARNs."""

    def __init__(self, stack: str):
        self.stack = stack
        self.providers: dict[str, tuple[str, str]] = {}  # provider URN -> (region, account)
        self.fallback = ("us-east-1", "000000000000")

    def where(self, provider_ref: str | None) -> tuple[str, str]:
        if provider_ref:
            return self.providers.get(provider_ref.rsplit("::", 1)[0], self.fallback)
        return self.fallback

    def register_provider(self, urn: str, inputs: dict[str, Any]) -> None:
        accounts = inputs.get("allowedAccountIds")
        if isinstance(accounts, str):
            with contextlib.suppress(json.JSONDecodeError):
                accounts = json.loads(accounts)
        account = accounts[0] if isinstance(accounts, list) and accounts else "000000000000"
        self.providers[urn] = (str(inputs.get("region") or "us-east-1"), str(account))

    # pulumi.runtime.Mocks interface -------------------------------------------------------
    def new_resource(self, args: Any) -> tuple[str, dict[str, Any]]:
        typ, name, inputs = args.typ, args.name, dict(args.inputs)
        if typ.startswith("pulumi:providers:"):
            return f"{_digest(self.stack, name, length=8)}-0000-4000-8000-provider0000", inputs
        region, account = self.where(args.provider)
        h = _digest(self.stack, typ, name)
        out = dict(inputs)
        if typ in _AUTONAMED and not out.get("name"):
            out["name"] = f"{name}-{h[:7]}"
        rid = self._id(typ, name, out, h)
        computed = self._computed(typ, rid, out, region, account, h)
        out.update(computed)
        # The resource's id is the one AWS gives (a key's key id, a queue's URL, a policy's
        # ARN, an instance's resource id): what other resources and policies name it by.
        rid = str(computed.get("id") or rid)
        out["id"] = rid
        out.setdefault("tagsAll", {**(out.get("tags") or {})})
        return rid, out

    def call(self, args: Any) -> dict[str, Any]:
        region, account = self.where(getattr(args, "provider", None))
        token = args.token
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{region}{c}" for c in "abcdef"]
            return {
                "names": names,
                "zoneIds": [f"{region[:3]}{i}-az{i}" for i in range(1, 7)],
                "id": region,
                "state": "available",
            }
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": account,
                "arn": f"arn:aws:iam::{account}:user/offline",
                "userId": "AIDAOFFLINE",
                "id": account,
            }
        if token in ("aws:index/getRegion:getRegion", "aws:index/getRegion:getRegion"):
            return {
                "name": region,
                "region": region,
                "id": region,
                "endpoint": f"ec2.{region}.amazonaws.com",
            }
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            registry = args.args.get("registryId") or account
            return {
                "authorizationToken": "QVdTOm9mZmxpbmU=",
                "userName": "AWS",
                "password": "offline",
                "expiresAt": "2099-01-01T00:00:00Z",
                "proxyEndpoint": f"https://{registry}.dkr.ecr.{region}.amazonaws.com",
                "id": region,
            }
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        raise EvaluationError(f"the offline evaluator has no mock for the invoke {token}")

    # -------------------------------------------------------------------------------------
    @staticmethod
    def _id(typ: str, name: str, out: dict[str, Any], h: str) -> str:
        """The id the provider gives; `_computed` overrides it where AWS's id is computed (an
        ARN, a URL, a key id, an RDS resource id)."""
        if typ in _EC2_IDS:
            return f"{_EC2_IDS[typ]}-{h}"
        if typ.startswith("aws:appconfig/"):
            return _appconfig_id(typ.rsplit(":", 1)[-1], out, h[:7])
        target = _ID_IS_TARGET.get(typ)
        if target and isinstance(out.get(target), str) and out[target]:
            return str(out[target])
        if typ == "aws:ecs/taskDefinition:TaskDefinition" and out.get("family"):
            return str(out["family"])
        for key in ("bucket", "identifier", "name"):
            if isinstance(out.get(key), str) and out[key]:
                return str(out[key])
        return f"{name}-{h[:8]}"

    @staticmethod
    def _computed(
        typ: str, rid: str, out: dict[str, Any], region: str, account: str, h: str
    ) -> dict[str, Any]:
        service = typ.split(":")[1].split("/")[0]
        if typ == "aws:kms/key:Key":
            key_id = f"{h[:8]}-{h[8:12]}-4{h[12:15]}-8{h[:3]}-{h[3:15]}"
            return {
                "id": key_id,
                "keyId": key_id,
                "arn": f"arn:aws:kms:{region}:{account}:key/{key_id}",
            }
        if typ == "aws:kms/alias:Alias":
            target = str(out.get("targetKeyId"))
            return {
                "arn": f"arn:aws:kms:{region}:{account}:{out.get('name')}",
                "targetKeyArn": target
                if target.startswith("arn:")
                else f"arn:aws:kms:{region}:{account}:key/{target}",
            }
        if typ == "aws:kms/grant:Grant":
            grant = hashlib.sha256(h.encode()).hexdigest()
            key = str(out.get("keyId") or "").rsplit("/", 1)[-1]
            return {"id": f"{key}:{grant}", "grantId": grant, "grantToken": f"token-{grant[:32]}"}
        if typ == "aws:iam/role:Role":
            return {
                "arn": f"arn:aws:iam::{account}:role{out.get('path') or '/'}{out['name']}",
                "uniqueId": f"AROA{h.upper()}",
                "id": out["name"],
            }
        if typ == "aws:iam/policy:Policy":
            arn = f"arn:aws:iam::{account}:policy{out.get('path') or '/'}{out['name']}"
            return {"arn": arn, "id": arn, "policyId": f"ANPA{h.upper()}"}
        if typ == "aws:iam/rolePolicy:RolePolicy":
            return {"id": f"{out.get('role')}:{out['name']}"}
        if typ == "aws:s3/bucket:Bucket":
            b = out.get("bucket") or rid
            return {
                "id": b,
                "bucket": b,
                "arn": f"arn:aws:s3:::{b}",
                "region": region,
                "bucketDomainName": f"{b}.s3.amazonaws.com",
                "bucketRegionalDomainName": f"{b}.s3.{region}.amazonaws.com",
            }
        if typ.startswith("aws:s3/") and out.get("bucket"):
            return {"id": out["bucket"]}
        if typ == "aws:rds/instance:Instance":
            ident = out.get("identifier") or rid
            address = f"{ident}.c{h[:10]}.{region}.rds.amazonaws.com"
            secret = f"arn:aws:secretsmanager:{region}:{account}:secret:rds!db-{h[:12]}-{h[12:18]}"
            # Since AWS provider 5 (pulumi-aws 6) an instance's id is its DbiResourceId.
            resource_id = f"db-{h.upper()[:26]}"
            return {
                "id": resource_id,
                "identifier": ident,
                "address": address,
                "endpoint": f"{address}:5432",
                "port": 5432,
                "arn": f"arn:aws:rds:{region}:{account}:db:{ident}",
                "resourceId": resource_id,
                "masterUserSecrets": [
                    {
                        "secretArn": secret,
                        "kmsKeyId": out.get("masterUserSecretKmsKeyId"),
                        "secretStatus": "active",
                    }
                ],
            }
        if typ == "aws:sqs/queue:Queue":
            name = out.get("name") or rid
            return {
                "id": f"https://sqs.{region}.amazonaws.com/{account}/{name}",
                "url": f"https://sqs.{region}.amazonaws.com/{account}/{name}",
                "arn": f"arn:aws:sqs:{region}:{account}:{name}",
            }
        if typ == "aws:ecr/repository:Repository":
            name = out.get("name") or rid
            return {
                "id": name,
                "registryId": account,
                "arn": f"arn:aws:ecr:{region}:{account}:repository/{name}",
                "repositoryUrl": f"{account}.dkr.ecr.{region}.amazonaws.com/{name}",
            }
        if typ == "docker:index/image:Image":
            name = str(out.get("imageName") or rid)
            repo = name[: name.rfind(":")] if name.rfind(":") > name.rfind("/") else name
            return {
                "id": f"{repo}@sha256:{hashlib.sha256(name.encode()).hexdigest()}",
                "repoDigest": f"{repo}@sha256:{hashlib.sha256(name.encode()).hexdigest()}",
                "imageName": name,
            }
        if typ.startswith("aws:appconfig/"):
            kind = typ.rsplit(":", 1)[-1]
            short = h[:7]
            app = out.get("applicationId")
            path = {
                "Application": f"application/{short}",
                "Environment": f"application/{app}/environment/{short}",
                "ConfigurationProfile": f"application/{app}/configurationprofile/{short}",
                "DeploymentStrategy": f"deploymentstrategy/{short}",
                "HostedConfigurationVersion": f"application/{app}/configurationprofile/"
                f"{out.get('configurationProfileId')}/hostedconfigurationversion/1",
                "Deployment": f"application/{app}/environment/{out.get('environmentId')}"
                "/deployment/1",
            }.get(kind, f"{kind[0].lower() + kind[1:]}/{short}")
            ids: dict[str, Any] = {"arn": f"arn:aws:appconfig:{region}:{account}:{path}"}
            if kind == "Environment":
                ids["environmentId"] = short
            if kind == "ConfigurationProfile":
                ids["configurationProfileId"] = short
            if kind == "HostedConfigurationVersion":
                ids["versionNumber"] = 1
            if kind == "Deployment":
                ids["deploymentNumber"] = 1
            return ids
        if typ.startswith("aws:ecs/"):
            kind = typ.rsplit(":", 1)[-1]
            ident = out.get("name") or out.get("family") or rid
            resource = {
                "Cluster": "cluster",
                "Service": "service",
                "TaskDefinition": "task-definition",
            }.get(kind, kind.lower())
            suffix = ":1" if kind == "TaskDefinition" else ""
            if kind == "Service":  # the long ARN format: service/<cluster name>/<service name>
                ident = f"{str(out.get('cluster') or 'default').rsplit('/', 1)[-1]}/{ident}"
            arn = f"arn:aws:ecs:{region}:{account}:{resource}/{ident}{suffix}"
            ecs: dict[str, Any] = {"arn": arn, "revision": 1}
            if kind in ("Cluster", "Service"):  # AWS's id for both is the ARN
                ecs["id"] = arn
            return ecs
        if typ == "aws:cloudtrail/trail:Trail":
            arn = f"arn:aws:cloudtrail:{region}:{account}:trail/{out.get('name')}"
            return {"arn": arn, "id": arn}
        if typ == "aws:sns/topic:Topic":
            arn = f"arn:aws:sns:{region}:{account}:{out.get('name') or rid}"
            return {"arn": arn, "id": arn}
        if typ == "aws:sns/topicSubscription:TopicSubscription":
            topic = str(out.get("topic") or f"arn:aws:sns:{region}:{account}:topic")
            arn = f"{topic}:{h[:8]}-{h[8:12]}-4{h[12:15]}-8{h[:3]}-{h[3:15]}"
            return {"arn": arn, "id": arn}
        if typ == "aws:secretsmanager/secret:Secret":
            # AWS appends six random characters to the name; the id is the ARN.
            arn = f"arn:aws:secretsmanager:{region}:{account}:secret:{out.get('name')}-{h[:6]}"
            return {"arn": arn, "id": arn}
        if typ == "aws:cloudwatch/metricAlarm:MetricAlarm":
            return {"arn": f"arn:aws:cloudwatch:{region}:{account}:alarm:{out.get('name') or rid}"}
        if typ == "aws:rds/subnetGroup:SubnetGroup":
            return {
                "arn": f"arn:aws:rds:{region}:{account}:subgrp:{out['name']}",
                "id": out["name"],
            }
        if typ == "aws:rds/parameterGroup:ParameterGroup":
            return {"arn": f"arn:aws:rds:{region}:{account}:pg:{out['name']}", "id": out["name"]}
        if typ == "aws:cloudwatch/logGroup:LogGroup":
            return {
                "arn": f"arn:aws:logs:{region}:{account}:log-group:{out['name']}",
                "id": out["name"],
            }
        if typ == "aws:ec2/vpcEndpoint:VpcEndpoint":
            return {
                "prefixListId": f"pl-{h[:8]}",
                "state": "available",
                "arn": f"arn:aws:ec2:{region}:{account}:vpc-endpoint/{rid}",
            }
        if typ == "aws:ec2/vpc:Vpc":
            return {
                "arn": f"arn:aws:ec2:{region}:{account}:vpc/{rid}",
                "defaultSecurityGroupId": f"sg-d{h[1:]}",
                "defaultNetworkAclId": f"acl-d{h[1:]}",
                "mainRouteTableId": f"rtb-m{h[1:]}",
                "ownerId": account,
            }
        if typ in _EC2_IDS:
            kind = _EC2_IDS[typ]
            resource = {
                "sg": "security-group",
                "subnet": "subnet",
                "rtb": "route-table",
                "igw": "internet-gateway",
                "nat": "natgateway",
                "eipalloc": "elastic-ip",
                "fl": "vpc-flow-log",
                "sgr": "security-group-rule",
                "pcx": "vpc-peering-connection",
                "acl": "network-acl",
            }.get(kind, kind)
            extra: dict[str, Any] = {"arn": f"arn:aws:ec2:{region}:{account}:{resource}/{rid}"}
            if typ == "aws:ec2/eip:Eip":
                extra["publicIp"] = f"198.51.100.{int(h[:2], 16) % 254 + 1}"
            if typ == "aws:ec2/subnet:Subnet":
                extra["ownerId"] = account
            return extra
        # Generic: an ARN in the resource's own service, account and region, for types whose
        # provider class has an `arn` output at all (a LifecyclePolicy has none).
        if not _has_arn(typ):
            return {}
        ident = out.get("name") or rid
        return {"arn": f"arn:aws:{service}:{region}:{account}:{ident}"}


# --------------------------------------------------------------------------------------------
# The recording monitor


def _plain(value: Any) -> Any:
    """Unwrap RPC secrets and resources recursively into plain JSON values."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return _plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _make_monitor(mocks: CloudMocks, stack: str, project: str) -> Any:
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockMonitor, MockResourceArgs
    from pulumi.runtime.proto import resource_pb2
    from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

    class RecordingMonitor(MockMonitor):
        """Builds URNs as the engine does, refuses duplicates, and records every request."""

        def __init__(self) -> None:
            super().__init__(mocks)  # type: ignore[arg-type]
            self.records: dict[str, Resource] = {}
            self.stack_outputs: dict[str, Any] = {}
            self.stack_urn: str | None = None

        def make_urn(self, parent: str, type_: str, name: str) -> str:
            qualified = type_
            if parent:
                parent_type = parent.split("::")[2]
                if parent_type != STACK_TYPE:
                    qualified = f"{parent_type}${type_}"
            return f"urn:pulumi:{stack}::{project}::{qualified}::{name}"

        def RegisterResource(self, request: Any) -> Any:
            urn = self.make_urn(request.parent, request.type, request.name)
            if request.type == STACK_TYPE:
                self.stack_urn = urn
                self.records[urn] = Resource(urn=urn, type=STACK_TYPE, custom=False)
                return resource_pb2.RegisterResourceResponse(urn=urn)
            if urn in self.records:
                raise EvaluationError(f"duplicate resource URN {urn}: the engine refuses this")
            _ensure_event_loop()  # type: ignore[no-untyped-call]  # pulumi internal, unannotated
            inputs = _plain(rpc.deserialize_properties(request.object))
            if request.type.startswith("pulumi:providers:"):
                mocks.register_provider(urn, inputs)
            rid, state = (None, dict(inputs))
            if request.custom:
                rid, state = mocks.new_resource(
                    MockResourceArgs(
                        typ=request.type,
                        name=request.name,
                        inputs=inputs,
                        provider=request.provider,
                        resource_id=request.importId,
                        custom=True,
                    )
                )
            self.records[urn] = Resource(
                urn=urn,
                type=request.type,
                custom=bool(request.custom),
                id=rid,
                parent=request.parent or None,
                provider=request.provider or None,
                dependencies=list(request.dependencies),
                property_dependencies={
                    k: list(v.urns) for k, v in request.propertyDependencies.items()
                },
                inputs=inputs,
                outputs=_plain(state) if request.custom else {},
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
            )
            obj = _sync_await(rpc.serialize_properties(state, {}))
            return resource_pb2.RegisterResourceResponse(urn=urn, id=rid or "", object=obj)

        def RegisterResourceOutputs(self, request: Any) -> Any:
            if request.urn == self.stack_urn:
                self.stack_outputs = _plain(rpc.deserialize_properties(request.outputs))
                self.records[request.urn].outputs = self.stack_outputs
            # MockMonitor's own methods are unannotated.
            return super().RegisterResourceOutputs(request)  # type: ignore[no-untyped-call]

        def Invoke(self, request: Any) -> Any:
            try:  # MockMonitor's own methods are unannotated.
                return super().Invoke(request)  # type: ignore[no-untyped-call]
            except EvaluationError:
                raise

    return RecordingMonitor()


@contextlib.contextmanager
def _isolated_environment() -> Iterator[None]:
    """No PULUMI_CONFIG* variables (the SDK falls back to them), GC paused for speed."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("PULUMI_CONFIG")}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        os.environ.update(saved)
        if gc_was_enabled:
            gc.enable()


def _purge_program_modules() -> None:
    for name in list(sys.modules):
        if name == "infra" or name.startswith("infra."):
            del sys.modules[name]


def evaluate(stack: str, project: Project | None = None, *, preview: bool = False) -> StackState:
    """Evaluate the program for `stack` offline. Raises EvaluationError with a clear message."""
    import pulumi
    from pulumi import RunError
    from pulumi.runtime import settings as rt_settings
    from pulumi.runtime.config import set_all_config
    from pulumi.runtime.mocks import MockEngine, MockSettings
    from pulumi.runtime.stack import run_in_stack
    from pulumi.runtime.sync_await import _sync_await

    try:
        project = project or load_project()
        config = project.stack_config(stack)
        project.registry.entry(stack)  # an unregistered stack stops here, before the program
    except (ProjectFileError, RegistryError) as exc:
        raise EvaluationError(str(exc)) from None

    mocks = CloudMocks(stack)
    monitor = _make_monitor(mocks, stack, project.name)
    program = project.root / "infra" / "__main__.py"

    with _isolated_environment():
        rt_settings.reset_options(
            project=project.name, stack=stack, preview=preview, root_directory=str(project.root)
        )
        # MockSettings (pulumi's test helper) takes **kwargs and is unannotated.
        settings = MockSettings(  # type: ignore[no-untyped-call]
            monitor=monitor,
            monitor_features=set(monitor.GetDeploymentInfo(None).supportedFeatures),
            engine=MockEngine(None),
            project=project.name,
            stack=stack,
            dry_run=preview,
            organization="organization",
            callbacks=None,
        )
        rt_settings.configure(settings)
        set_all_config(config, [])
        _purge_program_modules()

        def run_program() -> None:
            runpy.run_path(str(program), run_name="__main__")

        try:
            _sync_await(run_in_stack(run_program))
        except EvaluationError:
            raise
        except Exception as exc:
            if isinstance(exc, ConfigError):  # its message names the stack and the key
                raise EvaluationError(str(exc)) from None
            if isinstance(exc, RunError):  # Pulumi's own clean stop (a missing config key, ...)
                raise EvaluationError(f"stack '{stack}': {exc}") from None
            # The program itself failed: one line for the user, the cause kept for debugging.
            raise EvaluationError(
                f"stack '{stack}': the program failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            rt_settings.SETTINGS.rpc_manager.clear()
            rt_settings.SETTINGS.outputs.clear()
            pulumi.runtime.settings.ROOT.set(None)

    values = {k: v for k, v in config.items()}
    # The program ran, so the stack is registered and its file agrees with the registry: the
    # tier is the registry's (the stack file may omit it).
    tier = project.registry.entry(stack).tier
    return StackState(
        stack=stack,
        project=project.name,
        tier=tier,
        experiment_id=values.get("envfence:experimentId"),
        config=values,
        resources=list(monitor.records.values()),
        outputs=monitor.stack_outputs,
        source="evaluate",
    )


def jobs() -> int:
    """How many stacks to evaluate at once: the CPUs this process may use, or
    `$ENVFENCE_JOBS` (1 evaluates in this process only)."""
    raw = os.environ.get("ENVFENCE_JOBS", "")
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise EvaluationError(
                f"ENVFENCE_JOBS={raw!r}: expected a whole number of parallel evaluations, 1 or more"
            ) from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _evaluate_in_child(stack: str, project: Project) -> tuple[str, Any]:
    """Run in a forked worker: the state, or the one-line error (an exception's cause may not
    cross the process boundary)."""
    try:
        return "ok", evaluate(stack, project)
    except EvaluationError as exc:
        return "error", str(exc)
    except Exception as exc:  # reported as the program's failure, like evaluate
        return "error", f"stack '{stack}': the program failed: {type(exc).__name__}: {exc}"


def _worker_context(multiprocessing: Any) -> Any:
    """How workers start. Forked from this process when it runs no other thread (the fastest:
    they start with what is imported here). A process with threads (a progress spinner on a
    terminal, a test runner, whatever embeds envfence) can be forked while another thread
    holds a lock the child then waits on forever: then they are forked from a fork server,
    which starts single-threaded."""
    import threading

    if threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["envfence.evaluate"])
    return context


def evaluate_many(
    names: list[str],
    project: Project,
    *,
    use_cache: bool = True,
    done: Callable[[str, bool], None] | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> list[StackState]:
    """Evaluate `names` (in that order), each once: from the cache (`envfence.cache`) when
    nothing it depends on changed, else in parallel processes when more than one is missing
    and more than one CPU is free (Linux: workers forked from a fork server; elsewhere, one
    after the other).
    `done(stack, cached)` is called as each stack is ready; `meanwhile()` while workers
    evaluate (the caller's own preparation). The first stack (in `names` order)
    that fails raises its EvaluationError; nothing half-built is returned."""
    from envfence import cache

    keys = cache.Keys(project) if use_cache and cache.enabled() else None
    states: dict[str, StackState] = {}
    missing: list[str] = []
    for name in names:
        hit = cache.load(keys, name) if keys is not None else None
        if hit is not None:
            states[name] = hit
            if done:
                done(name, True)
        else:
            missing.append(name)
    workers = min(len(missing), jobs())
    if workers <= 1 or sys.platform != "linux":
        for name in missing:
            states[name] = evaluate(name, project)
            if keys is not None:
                cache.store(keys, states[name])
            if done:
                done(name, False)
    else:
        import concurrent.futures
        import multiprocessing

        errors: dict[str, str] = {}
        context = _worker_context(multiprocessing)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_evaluate_in_child, name, project): name for name in missing}
            if meanwhile is not None:
                meanwhile()  # the workers evaluate; this process prepares what comes next
            for future in concurrent.futures.as_completed(futures):
                name = futures[future]
                try:
                    status, value = future.result()
                except Exception as exc:  # a worker died: say so, named
                    status, value = "error", f"stack '{name}': evaluation failed: {exc}"
                if status == "error":
                    errors[name] = value
                    continue
                states[name] = value
                if keys is not None:
                    cache.store(keys, value)
                if done:
                    done(name, False)
        for name in missing:
            if name in errors:
                raise EvaluationError(errors[name])
    return [states[name] for name in names]


def evaluate_all(
    project: Project | None = None, stacks: list[str] | None = None
) -> list[StackState]:
    project = project or load_project()
    names = stacks or project.stacks()
    if not names:
        raise EvaluationError(f"no Pulumi.<stack>.yaml files in {project.root}")
    return [evaluate(name, project) for name in names]


__all__ = ["CloudMocks", "EvaluationError", "evaluate", "evaluate_all"]
