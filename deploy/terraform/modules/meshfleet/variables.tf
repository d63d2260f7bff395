# Inputs of the meshfleet module. Secrets (database_url, sealing_key) have no default: a plan
# without them fails instead of deploying a service that seals with a key nobody kept.

variable "name" {
  description = "Prefix of every object's name (Deployments are <name>-api, <name>-gateway, <name>-worker)."
  type        = string
  default     = "meshfleet"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$", var.name))
    error_message = "name must be a DNS-1123 label of at most 32 characters (lower case letters, digits, '-')."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the service."
  type        = string
  default     = "meshfleet-system"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace)) && var.namespace != "default"
    error_message = "namespace must be a DNS-1123 label other than \"default\"."
  }
}

variable "create_namespace" {
  description = "Create the namespace (labelled for the restricted Pod Security Standard); false to use an existing one."
  type        = bool
  default     = true
}

variable "image" {
  description = "Repository of the meshfleet-server image (built from deploy/meshfleet-server.Dockerfile)."
  type        = string
  default     = "meshfleet/meshfleet-server"

  validation {
    condition     = can(regex("^[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$", var.image))
    error_message = "image must be a repository name without tag or digest, e.g. registry.example.com/meshfleet/meshfleet-server."
  }
}

variable "image_tag" {
  description = "Tag of the meshfleet-server image: a release, never a moving tag such as latest."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be an image tag of at most 63 characters (it is also the version label) other than latest."
  }
}

variable "image_digest" {
  description = "Optional digest (sha256:...) of the image; when set, nodes run exactly that image whatever the tag points to now."
  type        = string
  default     = null

  validation {
    condition     = var.image_digest == null || can(regex("^sha256:[a-f0-9]{64}$", var.image_digest))
    error_message = "image_digest must be sha256: followed by 64 lower-case hex digits."
  }
}

variable "image_pull_secrets" {
  description = "Names of existing Secrets (type kubernetes.io/dockerconfigjson) to pull the image with."
  type        = list(string)
  default     = []
}

variable "roles" {
  description = <<-EOT
    Replicas and resources per role. api serves the REST API and dashboard, gateway holds the
    agents' gRPC streams, worker runs the background jobs (alert delivery, rollouts, rotation).
  EOT
  type = object({
    api = optional(object({
      replicas       = optional(number, 2)
      cpu_request    = optional(string, "250m")
      memory_request = optional(string, "256Mi")
      cpu_limit      = optional(string, "1")
      memory_limit   = optional(string, "512Mi")
    }), {})
    gateway = optional(object({
      replicas       = optional(number, 2)
      cpu_request    = optional(string, "500m")
      memory_request = optional(string, "512Mi")
      cpu_limit      = optional(string, "2")
      memory_limit   = optional(string, "1Gi")
    }), {})
    worker = optional(object({
      replicas       = optional(number, 2)
      cpu_request    = optional(string, "250m")
      memory_request = optional(string, "256Mi")
      cpu_limit      = optional(string, "1")
      memory_limit   = optional(string, "512Mi")
    }), {})
  })
  default = {}

  validation {
    condition     = alltrue([for r in values(var.roles) : r.replicas >= 1 && r.replicas <= 100 && floor(r.replicas) == r.replicas])
    error_message = "Each role needs between 1 and 100 replicas (a whole number)."
  }

  validation {
    condition = alltrue(flatten([for r in values(var.roles) : [
      for q in [r.cpu_request, r.cpu_limit] : can(regex("^([0-9]+m|[0-9]+(\\.[0-9]+)?)$", q))
    ]]))
    error_message = "CPU quantities must look like 250m or 1.5."
  }

  validation {
    condition = alltrue(flatten([for r in values(var.roles) : [
      for q in [r.memory_request, r.memory_limit] : can(regex("^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$", q))
    ]]))
    error_message = "Memory quantities must look like 512Mi or 2Gi."
  }
}

variable "database_url" {
  description = "PostgreSQL URL (postgres://user:password@host:5432/db?sslmode=require) every replica shares. Kept in a Secret."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^postgres(ql)?://[^/]+/[^/?]+", var.database_url))
    error_message = "database_url must be a postgres:// (or postgresql://) URL naming a host and a database: several replicas share one PostgreSQL, never SQLite."
  }
}

variable "sealing_key" {
  description = "Base64 of 32 random bytes (head -c 32 /dev/urandom | base64): seals the private keys kept in the database. Every replica needs the same one; losing it loses what it sealed. Kept in a Secret."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9+/]{43}=$", var.sealing_key))
    error_message = "sealing_key must be the standard base64 of exactly 32 bytes (44 characters ending in one '=')."
  }
}

variable "database_cidrs" {
  description = "CIDRs where the database listens: the only addresses besides DNS (and, for the worker, webhooks) the pods may reach."
  type        = list(string)

  validation {
    condition     = length(var.database_cidrs) > 0 && alltrue([for c in var.database_cidrs : can(cidrhost(c, 0))])
    error_message = "database_cidrs must hold at least one valid CIDR."
  }
}

variable "database_port" {
  description = "TCP port of the database."
  type        = number
  default     = 5432

  validation {
    condition     = var.database_port >= 1 && var.database_port <= 65535 && floor(var.database_port) == var.database_port
    error_message = "database_port must be a TCP port (1-65535)."
  }
}

variable "api_host" {
  description = "Host name of the API and dashboard (the Ingress rule's host); MESHFLEET_PUBLIC_URL is https://<api_host>."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.api_host))
    error_message = "api_host must be a fully qualified lower-case DNS name such as meshfleet.example.com."
  }
}

variable "ingress_class_name" {
  description = "IngressClass of the API's Ingress (e.g. nginx, alb, traefik)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.ingress_class_name))
    error_message = "ingress_class_name must be a valid Kubernetes object name."
  }
}

variable "api_tls_secret_name" {
  description = "Secret (type kubernetes.io/tls) in the namespace holding the API's certificate for api_host, e.g. issued by cert-manager through ingress_annotations."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.api_tls_secret_name))
    error_message = "api_tls_secret_name must be a valid Kubernetes object name."
  }
}

variable "ingress_annotations" {
  description = "Annotations on the API's Ingress (e.g. cert-manager.io/cluster-issuer)."
  type        = map(string)
  default     = {}
}

variable "ingress_controller_namespace_labels" {
  description = "Labels selecting the namespace of the ingress controller: the only pods allowed to reach the API port."
  type        = map(string)
  default     = { "kubernetes.io/metadata.name" = "ingress-nginx" }

  validation {
    condition     = length(var.ingress_controller_namespace_labels) > 0
    error_message = "ingress_controller_namespace_labels must select a namespace (an empty selector would admit every namespace)."
  }
}

variable "allow_acme_http01_solver" {
  description = "Admit the ingress controller to cert-manager's HTTP-01 solver pods (port 8089) in the namespace, which the default-deny policy would otherwise block; for certificates issued with HTTP-01 through the API's Ingress."
  type        = bool
  default     = false
}

variable "metrics_namespace_labels" {
  description = "Labels selecting the namespace of the Prometheus that scrapes /metrics on port 8080 of every role; null admits no scraper."
  type        = map(string)
  default     = null
}

variable "gateway_address" {
  description = "The gateway as agents dial it (https://host[:port]), written into install manifests (MESHFLEET_GATEWAY_ADDRESS). Point its DNS name at the gateway Service's load balancer."
  type        = string

  validation {
    condition     = can(regex("^https://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$", var.gateway_address))
    error_message = "gateway_address must be https://host or https://host:port (lower-case DNS name or IPv4 address, no path)."
  }
}

variable "gateway_hostnames" {
  description = "Further names and addresses the gateway's generated server certificate covers; the host of gateway_address is always included."
  type        = list(string)
  default     = []
}

variable "gateway_tls_secret_name" {
  description = "Optional Secret with tls.crt, tls.key and ca.crt to serve the gateway with (MESHFLEET_GATEWAY_TLS_CERT/KEY/CA) instead of the certificate the service creates and keeps sealed in the database. null: generated."
  type        = string
  default     = null
}

variable "gateway_service_type" {
  description = "Type of the gateway's Service: LoadBalancer (agents reach it from other clusters), NodePort or ClusterIP (behind your own TCP proxy). Never an Ingress: the gateway terminates the agents' mTLS itself."
  type        = string
  default     = "LoadBalancer"

  validation {
    condition     = contains(["LoadBalancer", "NodePort", "ClusterIP"], var.gateway_service_type)
    error_message = "gateway_service_type must be LoadBalancer, NodePort or ClusterIP."
  }
}

variable "gateway_service_port" {
  description = "Port the gateway's Service listens on (forwarded to the gateway's 8443)."
  type        = number
  default     = 443

  validation {
    condition     = var.gateway_service_port >= 1 && var.gateway_service_port <= 65535 && floor(var.gateway_service_port) == var.gateway_service_port
    error_message = "gateway_service_port must be a TCP port (1-65535)."
  }
}

variable "gateway_service_annotations" {
  description = "Annotations on the gateway's Service, e.g. for a TCP (layer 4) load balancer: service.beta.kubernetes.io/aws-load-balancer-type = external, ...-nlb-target-type = ip."
  type        = map(string)
  default     = {}
}

variable "gateway_allowed_cidrs" {
  description = "Client CIDRs allowed to reach the gateway (load balancer source ranges and the NetworkPolicy); agents dial out from their clusters' egress addresses."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.gateway_allowed_cidrs) > 0 && alltrue([for c in var.gateway_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "gateway_allowed_cidrs must hold at least one valid CIDR."
  }
}

variable "webhook_egress_ports" {
  description = "TCP ports the worker may reach anywhere (outside link-local addresses) to deliver alert webhooks."
  type        = list(number)
  default     = [443]

  validation {
    condition     = alltrue([for p in var.webhook_egress_ports : p >= 1 && p <= 65535 && floor(p) == p])
    error_message = "webhook_egress_ports must be TCP ports (1-65535)."
  }
}

variable "dns_namespace_labels" {
  description = "Labels selecting the namespace of the cluster DNS."
  type        = map(string)
  default     = { "kubernetes.io/metadata.name" = "kube-system" }
}

variable "dns_pod_labels" {
  description = "Labels selecting the cluster DNS pods (CoreDNS keeps the kube-dns label)."
  type        = map(string)
  default     = { "k8s-app" = "kube-dns" }
}

variable "settings" {
  description = <<-EOT
    Further server settings (see the README's Configuration table), by name without the
    MESHFLEET_ prefix, e.g. { log = "info,meshfleet_server=debug", agent_image = "..." }.
    Settings the module manages (listen addresses, roles, secrets, public addresses, gateway
    TLS files) cannot be given here.
  EOT
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.settings) : can(regex("^[a-z][a-z0-9_]*$", k))])
    error_message = "settings keys are setting names in lower case (e.g. db_max_connections), without MESHFLEET_."
  }

  validation {
    condition = length(setintersection(keys(var.settings), [
      "listen", "gateway_listen", "roles", "database_url", "sealing_key", "data_dir", "public_url",
      "gateway_address", "gateway_hostnames", "gateway_tls_cert", "gateway_tls_key", "gateway_tls_ca",
    ])) == 0
    error_message = "settings cannot set what the module manages: listen, gateway_listen, roles, database_url, sealing_key, data_dir, public_url, gateway_address, gateway_hostnames, gateway_tls_*."
  }
}

variable "labels" {
  description = "Extra labels on every object."
  type        = map(string)
  default     = {}
}
