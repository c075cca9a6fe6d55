# A sky on AWS EC2: `nodes` instances booted from deploy/cloud-init.yaml, each
# with an Elastic IP it advertises, behind one security group that opens the
# service and NAT check ports to the world, gossip only to the sky's nodes and
# metrics only to the monitoring hosts (deploy/README.md, "Ports").

locals {
  # Debian's own AWS account publishes the official images.
  debian_owner = "136693071363"
  debian_arch  = var.architecture == "arm64" ? "arm64" : "amd64"
  ami_id       = coalesce(var.ami_id, one(data.aws_ami.debian[*].id))

  # Each node's advertised address is its Elastic IP, known before the
  # instance boots, so it goes into the user data and survives a stop/start
  # (an instance's own public IPv4 does not).
  public_ips = aws_eip.sky[*].public_ip
  gossip     = [for ip in local.public_ips : "${ip}:7701"]
  metrics    = length(var.monitoring_cidrs) > 0 ? "0.0.0.0:9770" : "127.0.0.1:9770"

  world = {
    ipv4 = "0.0.0.0/0"
    ipv6 = "::/0"
  }
  # Gossip: the module's own nodes and whoever the operator names.
  gossip_cidrs = toset(concat([for ip in local.public_ips : "${ip}/32"], var.gossip_cidrs))
}

data "aws_subnet" "sky" {
  id = var.subnet_id
}

data "aws_ami" "debian" {
  count       = var.ami_id == null ? 1 : 0
  owners      = [local.debian_owner]
  most_recent = true

  filter {
    name   = "name"
    values = ["debian-12-${local.debian_arch}-*"]
  }

  filter {
    name   = "architecture"
    values = [var.architecture]
  }
}

resource "aws_security_group" "sky" {
  name        = "${var.name}-node"
  description = "Sky nodes: service and NAT check ports public, gossip to the sky, metrics to monitoring"
  vpc_id      = data.aws_subnet.sky.vpc_id
}

# 7700/udp: the sky protocol, what clients talk to.
resource "aws_vpc_security_group_ingress_rule" "service" {
  for_each          = local.world
  security_group_id = aws_security_group.sky.id
  description       = "sky protocol"
  ip_protocol       = "udp"
  from_port         = 7700
  to_port           = 7700
  cidr_ipv4         = each.key == "ipv4" ? each.value : null
  cidr_ipv6         = each.key == "ipv6" ? each.value : null
}

# 7702-7703/udp: the NAT check service (clients learn how their NAT maps).
resource "aws_vpc_security_group_ingress_rule" "check" {
  for_each          = local.world
  security_group_id = aws_security_group.sky.id
  description       = "sky NAT check"
  ip_protocol       = "udp"
  from_port         = 7702
  to_port           = 7703
  cidr_ipv4         = each.key == "ipv4" ? each.value : null
  cidr_ipv6         = each.key == "ipv6" ? each.value : null
}

# 7701/udp: gossip, only from the sky's nodes (it is not authenticated).
resource "aws_vpc_security_group_ingress_rule" "gossip" {
  for_each          = local.gossip_cidrs
  security_group_id = aws_security_group.sky.id
  description       = "sky gossip"
  ip_protocol       = "udp"
  from_port         = 7701
  to_port           = 7701
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
}

# 9770/tcp: /metrics, only from the monitoring hosts.
resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each          = toset(var.monitoring_cidrs)
  security_group_id = aws_security_group.sky.id
  description       = "sky metrics"
  ip_protocol       = "tcp"
  from_port         = 9770
  to_port           = 9770
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = toset(var.ssh_cidrs)
  security_group_id = aws_security_group.sky.id
  description       = "ssh"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
}

# Out: answers, gossip, and at boot the packages and the binary.
resource "aws_vpc_security_group_egress_rule" "all" {
  for_each          = local.world
  security_group_id = aws_security_group.sky.id
  description       = "everything out"
  ip_protocol       = "-1"
  cidr_ipv4         = each.key == "ipv4" ? each.value : null
  cidr_ipv6         = each.key == "ipv6" ? each.value : null
}

resource "aws_eip" "sky" {
  count  = var.nodes
  domain = "vpc"
  tags   = { Name = "${var.name}-${count.index}" }
}

module "user_data" {
  source        = "./user-data"
  count         = var.nodes
  template      = file("${path.module}/../cloud-init.yaml")
  binary_url    = var.binary_url
  binary_sha256 = var.binary_sha256
  advertise     = local.public_ips[count.index]
  seeds         = concat([for i, g in local.gossip : g if i != count.index], var.seeds)
  metrics       = local.metrics
}

resource "aws_instance" "sky" {
  count                       = var.nodes
  ami                         = local.ami_id
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_id
  vpc_security_group_ids      = [aws_security_group.sky.id]
  key_name                    = var.key_name
  associate_public_ip_address = true # egress at first boot, before the Elastic IP
  # Compressed: the template with the unit and sysctl file inline is close
  # to EC2's 16 KiB limit; cloud-init unpacks gzip itself.
  user_data_base64 = base64gzip(module.user_data[count.index].user_data)
  # cloud-init runs once per instance: new user data needs a new instance.
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required" # IMDSv2 only
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_gib
    encrypted   = true
  }

  tags = { Name = "${var.name}-${count.index}" }
}

resource "aws_eip_association" "sky" {
  count         = var.nodes
  instance_id   = aws_instance.sky[count.index].id
  allocation_id = aws_eip.sky[count.index].id
}
