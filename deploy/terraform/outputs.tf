output "public_ips" {
  description = "Each node's Elastic IP: the address it advertises."
  value       = local.public_ips
}

output "endpoints" {
  description = "The sky protocol endpoints (IP:7700) to give clients as the bootstrap list."
  value       = [for ip in local.public_ips : "${ip}:7700"]
}

output "gossip_endpoints" {
  description = "The nodes' gossip addresses (IP:7701): seeds for nodes that join this sky from elsewhere (allow their /32s in gossip_cidrs here)."
  value       = local.gossip
}

output "metrics_urls" {
  description = "Where Prometheus scrapes each node (reachable only from monitoring_cidrs; empty when that is empty)."
  value       = length(var.monitoring_cidrs) > 0 ? [for ip in local.public_ips : "http://${ip}:9770/metrics"] : []
}

output "instance_ids" {
  description = "The EC2 instances, in node order."
  value       = aws_instance.sky[*].id
}

output "security_group_id" {
  description = "The nodes' security group."
  value       = aws_security_group.sky.id
}
