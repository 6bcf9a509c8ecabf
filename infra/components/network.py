"""The environment's own VPC: nothing is shared with, peered to or routed towards another one.

Application subnets hold the containers; data subnets hold the database and have no route out of
the VPC at all, not even to S3. The application subnets reach S3 through a gateway endpoint whose
policy admits only this environment's buckets (and the buckets of declared flows), so even a leaked
credential of another environment cannot be used from inside this network to move data there.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envfence import naming
from envfence.settings import Settings
from infra.components.identity import bucket_arns, flow_stores, own_stores
from infra.components.policies import document, statement

# AWS services the environment reaches through interface endpoints instead of the internet.
# secretsmanager: ECS fetches the database tasks' master password before their container starts
# ("you must create the interface VPC endpoints for Secrets Manager", Amazon ECS developer guide,
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/vpc-endpoints.html).
INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "logs", "sqs", "appconfigdata", "secretsmanager")


@dataclass
class NetworkArgs:
    settings: Settings
    key_arn: pulumi.Input[str]
    flow_logs_role_arn: pulumi.Input[str]


class Network(pulumi.ComponentResource):
    vpc: aws.ec2.Vpc
    app_subnets: list[aws.ec2.Subnet]
    data_subnets: list[aws.ec2.Subnet]
    app_security_group: aws.ec2.SecurityGroup
    db_security_group: aws.ec2.SecurityGroup
    s3_endpoint: aws.ec2.VpcEndpoint
    flow_log_group: aws.cloudwatch.LogGroup

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("envfence:index:Network", name, None, opts)
        s = args.settings
        net = s.network
        child = pulumi.ResourceOptions(parent=self)
        cidr = str(net.cidr)

        self.vpc = aws.ec2.Vpc(
            "vpc",
            cidr_block=cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags={"Name": naming.prefix(s.project, s.stack)},
            opts=child,
        )
        # The default security group admits everything from itself; with no rules it admits nothing.
        aws.ec2.DefaultSecurityGroup(
            "default-sg", vpc_id=self.vpc.id, ingress=[], egress=[], opts=child
        )

        azs = aws.get_availability_zones_output(
            state="available", opts=pulumi.InvokeOutputOptions(parent=self)
        )
        app_cidrs, data_cidrs, public_cidrs = net.subnets()

        def subnets(tier: str, cidrs: list[object]) -> list[aws.ec2.Subnet]:
            return [
                aws.ec2.Subnet(
                    f"subnet-{tier}-{i}",
                    vpc_id=self.vpc.id,
                    cidr_block=str(c),
                    availability_zone=azs.names[i],
                    map_public_ip_on_launch=False,
                    tags={
                        "Name": f"{naming.prefix(s.project, s.stack)}-{tier}-{i}",
                        "subnet-tier": tier,
                    },
                    opts=child,
                )
                for i, c in enumerate(cidrs)
            ]

        self.app_subnets = subnets("app", list(app_cidrs))
        self.data_subnets = subnets("data", list(data_cidrs))

        # NAT only where configured: public subnets, an internet gateway and one NAT per count.
        nats: list[aws.ec2.NatGateway] = []
        if net.nat_gateways:
            igw = aws.ec2.InternetGateway("igw", vpc_id=self.vpc.id, opts=child)
            public_rt = aws.ec2.RouteTable("rt-public", vpc_id=self.vpc.id, opts=child)
            aws.ec2.Route(
                "route-public-internet",
                route_table_id=public_rt.id,
                destination_cidr_block="0.0.0.0/0",
                gateway_id=igw.id,
                opts=child,
            )
            for i in range(net.nat_gateways):
                public = aws.ec2.Subnet(
                    f"subnet-public-{i}",
                    vpc_id=self.vpc.id,
                    cidr_block=str(public_cidrs[i]),
                    availability_zone=azs.names[i],
                    map_public_ip_on_launch=False,
                    tags={
                        "Name": f"{naming.prefix(s.project, s.stack)}-public-{i}",
                        "subnet-tier": "public",
                    },
                    opts=child,
                )
                aws.ec2.RouteTableAssociation(
                    f"rta-public-{i}", subnet_id=public.id, route_table_id=public_rt.id, opts=child
                )
                eip = aws.ec2.Eip(f"nat-eip-{i}", domain="vpc", opts=child)
                nats.append(
                    aws.ec2.NatGateway(
                        f"nat-{i}", subnet_id=public.id, allocation_id=eip.id, opts=child
                    )
                )

        app_route_tables = []
        for i, subnet in enumerate(self.app_subnets):
            rt = aws.ec2.RouteTable(f"rt-app-{i}", vpc_id=self.vpc.id, opts=child)
            if nats:
                aws.ec2.Route(
                    f"route-app-{i}-nat",
                    route_table_id=rt.id,
                    destination_cidr_block="0.0.0.0/0",
                    nat_gateway_id=nats[i % len(nats)].id,
                    opts=child,
                )
            aws.ec2.RouteTableAssociation(
                f"rta-app-{i}", subnet_id=subnet.id, route_table_id=rt.id, opts=child
            )
            app_route_tables.append(rt)
        # Data subnets: the local route only. No NAT, no gateway, nothing leaves the VPC. They
        # hold only the database, which needs nothing outside the VPC (no S3 import or export),
        # so this table stays out of the S3 gateway endpoint below as well.
        data_rt = aws.ec2.RouteTable("rt-data", vpc_id=self.vpc.id, opts=child)
        for i, subnet in enumerate(self.data_subnets):
            aws.ec2.RouteTableAssociation(
                f"rta-data-{i}", subnet_id=subnet.id, route_table_id=data_rt.id, opts=child
            )

        self.app_security_group = aws.ec2.SecurityGroup(
            "sg-app",
            vpc_id=self.vpc.id,
            description=f"envfence {s.stack}: application tasks (no inbound)",
            opts=child,
        )
        self.db_security_group = aws.ec2.SecurityGroup(
            "sg-db",
            vpc_id=self.vpc.id,
            description=f"envfence {s.stack}: database, PostgreSQL from the application tasks only",
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            "sg-db-in-postgres",
            security_group_id=self.db_security_group.id,
            ip_protocol="tcp",
            from_port=5432,
            to_port=5432,
            referenced_security_group_id=self.app_security_group.id,
            description="PostgreSQL from this environment's application tasks",
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            "sg-app-out-postgres",
            security_group_id=self.app_security_group.id,
            ip_protocol="tcp",
            from_port=5432,
            to_port=5432,
            referenced_security_group_id=self.db_security_group.id,
            description="PostgreSQL to this environment's database",
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            "sg-app-out-https-vpc",
            security_group_id=self.app_security_group.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4=cidr,
            description="HTTPS to interface endpoints inside this VPC",
            opts=child,
        )

        self.s3_endpoint = aws.ec2.VpcEndpoint(
            "s3-endpoint",
            vpc_id=self.vpc.id,
            vpc_endpoint_type="Gateway",
            service_name=f"com.amazonaws.{s.region}.s3",
            route_table_ids=[rt.id for rt in app_route_tables],
            policy=document(
                statement(
                    "OnlyThisEnvironmentsBuckets",
                    "Allow",
                    ["s3:*"],
                    bucket_arns(s, own_stores(s) + flow_stores(s)),
                    principal="*",
                ),
                # ECR serves image layers from this AWS-owned bucket; reading it is how ECS
                # pulls the worker image without a NAT.
                statement(
                    "EcrImageLayers",
                    "Allow",
                    ["s3:GetObject"],
                    [f"arn:aws:s3:::prod-{s.region}-starport-layer-bucket/*"],
                    principal="*",
                ),
            ),
            opts=child,
        )
        # Interface endpoints: the worker reaches ECR, logs, SQS and AppConfig inside the VPC,
        # and only for principals and resources of this account.
        endpoint_sg = aws.ec2.SecurityGroup(
            "sg-endpoints",
            vpc_id=self.vpc.id,
            description=f"envfence {s.stack}: interface endpoints, HTTPS from this VPC only",
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            "sg-endpoints-in-https",
            security_group_id=endpoint_sg.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4=cidr,
            description="HTTPS from this environment's VPC",
            opts=child,
        )
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(
                f"endpoint-{service.replace('.', '-')}",
                vpc_id=self.vpc.id,
                vpc_endpoint_type="Interface",
                service_name=f"com.amazonaws.{s.region}.{service}",
                subnet_ids=[sn.id for sn in self.app_subnets],
                security_group_ids=[endpoint_sg.id],
                private_dns_enabled=True,
                policy=document(
                    statement(
                        "ThisAccountOnly",
                        "Allow",
                        ["*"],
                        ["*"],
                        principal="*",
                        condition={
                            "StringEquals": {
                                "aws:PrincipalAccount": s.account,
                                "aws:ResourceAccount": s.account,
                            }
                        },
                    )
                ),
                opts=child,
            )
        aws.vpc.SecurityGroupEgressRule(
            "sg-app-out-https-s3",
            security_group_id=self.app_security_group.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            prefix_list_id=self.s3_endpoint.prefix_list_id,
            description="HTTPS to S3 through the gateway endpoint",
            opts=child,
        )
        if nats:
            aws.vpc.SecurityGroupEgressRule(
                "sg-app-out-https-internet",
                security_group_id=self.app_security_group.id,
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                cidr_ipv4="0.0.0.0/0",
                description="HTTPS to the internet through NAT (configured: natGateways)",
                opts=child,
            )

        self.flow_log_group = aws.cloudwatch.LogGroup(
            "flow-logs",
            name=naming.log_group_name(s.project, s.stack, "vpc-flow-logs"),
            kms_key_id=args.key_arn,
            retention_in_days=s.log_retention_days,
            opts=child,
        )
        aws.ec2.FlowLog(
            "flow-log",
            vpc_id=self.vpc.id,
            traffic_type="ALL",
            log_destination_type="cloud-watch-logs",
            log_destination=self.flow_log_group.arn,
            iam_role_arn=args.flow_logs_role_arn,
            max_aggregation_interval=60,
            opts=child,
        )

        self.register_outputs({"vpcId": self.vpc.id})
