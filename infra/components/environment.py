"""One isolated environment: the component every stack builds exactly once.

Children are created in dependency order: the key (everything is encrypted with it), the
identity (boundary and roles, which the network's flow logs and the data policies name), the
network, the data, and last the permissions that name the data resources.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from infra.components.data import Data, DataArgs
from infra.components.identity import Identity, IdentityArgs, Permissions, PermissionsArgs
from infra.components.keys import Keys, KeysArgs
from infra.components.network import Network, NetworkArgs
from infra.settings import Settings


@dataclass
class EnvironmentArgs:
    settings: Settings


class Environment(pulumi.ComponentResource):
    keys: Keys
    identity: Identity
    network: Network
    data: Data

    def __init__(
        self, name: str, args: EnvironmentArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("envfence:index:Environment", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self.keys = Keys("keys", KeysArgs(settings=s), child)
        key_arn = self.keys.key.arn
        self.identity = Identity("identity", IdentityArgs(settings=s, key_arn=key_arn), child)
        self.network = Network(
            "network",
            NetworkArgs(
                settings=s, key_arn=key_arn, flow_logs_role_arn=self.identity.flow_logs_role.arn
            ),
            child,
        )
        self.data = Data(
            "data",
            DataArgs(
                settings=s,
                key_arn=key_arn,
                role_arns={r: role.arn for r, role in self.identity.roles.items()},
                data_subnet_ids=[sn.id for sn in self.network.data_subnets],
                db_security_group_id=self.network.db_security_group.id,
            ),
            child,
        )
        Permissions(
            "permissions",
            PermissionsArgs(
                settings=s,
                roles=self.identity.roles,
                flow_logs_role=self.identity.flow_logs_role,
                key_arn=key_arn,
                bucket_arns={k: b.arn for k, b in self.data.buckets.items()},
                db_resource_id=self.data.database.resource_id,
                flow_log_group_arn=self.network.flow_log_group.arn,
            ),
            child,
        )
        self.register_outputs({})
