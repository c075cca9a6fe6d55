# Inputs of the sky module. Required: subnet_id, binary_url, binary_sha256.

variable "region" {
  description = "AWS region to run the sky in, e.g. \"eu-central-1\"."
  type        = string
}

variable "name" {
  description = "Prefix of every resource's Name tag and of the security group's name."
  type        = string
  default     = "sky"
}

variable "nodes" {
  description = "Sky nodes to run; each gets an instance and an Elastic IP, and names the others as gossip seeds."
  type        = number
  default     = 1

  validation {
    condition     = var.nodes >= 1 && var.nodes == floor(var.nodes)
    error_message = "nodes must be a whole number of at least 1."
  }
}

variable "subnet_id" {
  description = "A public subnet (a route to an internet gateway) for the instances; the security group goes into its VPC."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type. The node runs one packet shard per vCPU but one, so two vCPUs or more; network-optimised types (c7gn, c6in) for high packet rates."
  type        = string
  default     = "c7i.large"
}

variable "architecture" {
  description = "CPU architecture of the instances and so of the Debian 12 image and of the binary at binary_url: \"x86_64\" or \"arm64\"."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "ami_id" {
  description = "Image to boot; null = the latest official Debian 12 image for the architecture (any image with cloud-init and systemd will do)."
  type        = string
  default     = null
}

variable "binary_url" {
  description = "Where each instance downloads the `sky` binary (built with `cargo build --release -p sky --locked` for the architecture), e.g. an S3 object's or a release's https URL."
  type        = string
}

variable "binary_sha256" {
  description = "SHA-256 of that binary (sha256sum target/release/sky); an instance whose download does not match installs nothing."
  type        = string
}

variable "seeds" {
  description = "Gossip addresses (IP:7701) of sky nodes outside this module to join through; the module's own nodes name each other anyway."
  type        = list(string)
  default     = []
}

variable "gossip_cidrs" {
  description = "Further sources allowed to reach 7701/udp (gossip): the /32s of sky nodes outside this module. The module's own nodes' Elastic IPs are always allowed. Gossip is not authenticated: never open it to the world."
  type        = list(string)
  default     = []
}

variable "monitoring_cidrs" {
  description = "Sources allowed to scrape 9770/tcp (/metrics), e.g. your Prometheus host's /32. Empty = metrics stay on the instance's loopback, and the port is closed."
  type        = list(string)
  default     = []
}

variable "ssh_cidrs" {
  description = "Sources allowed to reach 22/tcp. Empty (the default) = no SSH rule: use SSM Session Manager or add a rule for your bastion."
  type        = list(string)
  default     = []
}

variable "key_name" {
  description = "EC2 key pair for SSH, or null for none."
  type        = string
  default     = null
}

variable "root_volume_gib" {
  description = "Size of the root volume in GiB (the node writes nothing; the OS and logs need the space)."
  type        = number
  default     = 8
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
