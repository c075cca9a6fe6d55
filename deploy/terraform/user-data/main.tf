# deploy/cloud-init.yaml with its settings block filled in: the user data of
# one sky node. No provider, no resource: a pure function of its inputs, so
# tests/it/deploy.rs can apply it offline and check what comes out.

terraform {
  required_version = ">= 1.5"
}

variable "template" {
  description = "The text of deploy/cloud-init.yaml."
  type        = string

  validation {
    condition = (
      length(split("{# sky settings: begin #}", var.template)) == 2 &&
      length(split("{# sky settings: end #}", var.template)) == 2
    )
    error_message = "The template must hold one \"{# sky settings: begin #}\" ... \"{# sky settings: end #}\" block (deploy/cloud-init.yaml)."
  }
}

variable "binary_url" {
  description = "Where the instance downloads the `sky` binary from (https)."
  type        = string
}

variable "binary_sha256" {
  description = "SHA-256 of that binary, 64 lowercase hex digits; the install stops on a mismatch."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.binary_sha256))
    error_message = "binary_sha256 must be 64 lowercase hex digits (sha256sum target/release/sky)."
  }
}

variable "advertise" {
  description = "The IP the node advertises; \"\" = the instance's public IPv4 from its instance data, else the default route's address (deploy/cloud-init.yaml)."
  type        = string
  default     = ""
}

variable "seeds" {
  description = "Gossip addresses (IP:7701) of other sky nodes to join through."
  type        = list(string)
  default     = []
}

variable "metrics" {
  description = "Where /metrics listens (HOST:PORT): 127.0.0.1:9770 unless a firewall admits only the monitoring hosts."
  type        = string
  default     = "127.0.0.1:9770"
}

locals {
  begin = "{# sky settings: begin #}"
  end   = "{# sky settings: end #}"
  # jsonencode gives double-quoted strings and lists that Jinja reads as
  # literals of the same value.
  settings = join("\n", [
    local.begin,
    "{% set sky_binary_url = ${jsonencode(var.binary_url)} %}",
    "{% set sky_binary_sha256 = ${jsonencode(var.binary_sha256)} %}",
    "{% set sky_advertise = ${jsonencode(var.advertise)} %}",
    "{% set sky_seeds = ${jsonencode(var.seeds)} %}",
    "{% set sky_metrics = ${jsonencode(var.metrics)} %}",
    local.end,
  ])
  before = split(local.begin, var.template)[0]
  after  = split(local.end, var.template)[1]
}

output "user_data" {
  description = "The cloud-init user data (a Jinja template cloud-init renders against the instance data)."
  value       = "${local.before}${local.settings}${local.after}"
}
