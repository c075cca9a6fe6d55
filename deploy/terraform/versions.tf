terraform {
  # Output preconditions and optional attributes; checked with 1.11.
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # aws_vpc_security_group_*_rule need 5.x; validated with 5.100.0.
      version = "~> 5.40"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = var.tags
  }
}
