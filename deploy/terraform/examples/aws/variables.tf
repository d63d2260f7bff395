variable "region" {
  description = "AWS region of the EKS cluster and the database."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region such as eu-west-1."
  }
}

variable "eks_cluster_name" {
  description = "Existing EKS cluster to deploy meshfleet-server into."
  type        = string

  validation {
    condition     = can(regex("^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$", var.eks_cluster_name))
    error_message = "eks_cluster_name must be an EKS cluster name."
  }
}

variable "database_subnet_ids" {
  description = "Private subnets (in the cluster's VPC, two zones or more) for the database."
  type        = list(string)

  validation {
    condition     = length(var.database_subnet_ids) >= 2
    error_message = "database_subnet_ids must list at least two subnets."
  }
}

variable "sealing_key" {
  description = "Base64 of 32 random bytes (head -c 32 /dev/urandom | base64), kept in your secret store: seals the private keys in the database."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9+/]{43}=$", var.sealing_key))
    error_message = "sealing_key must be the standard base64 of exactly 32 bytes."
  }
}

variable "api_host" {
  description = "DNS name of the API and dashboard, e.g. meshfleet.example.com."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.api_host))
    error_message = "api_host must be a fully qualified lower-case DNS name."
  }
}

variable "gateway_host" {
  description = "DNS name agents dial (point it at the gateway's load balancer), e.g. gateway.meshfleet.example.com."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.gateway_host))
    error_message = "gateway_host must be a fully qualified lower-case DNS name."
  }
}

variable "image_tag" {
  description = "Release of meshfleet-server to run."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a release tag of at most 63 characters, not latest."
  }
}

variable "multi_az" {
  description = "Multi-AZ database (a standby in another zone)."
  type        = bool
  default     = true
}

variable "cert_manager_cluster_issuer" {
  description = "cert-manager ClusterIssuer that issues the API's certificate."
  type        = string
  default     = "letsencrypt"
}
