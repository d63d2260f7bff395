# The namespace, the server's identity and its secrets. The server is one binary; each role
# (api, gateway, worker) runs as its own Deployment (deployments.tf) so each scales and rolls
# on its own.

locals {
  namespace = var.create_namespace ? kubernetes_namespace_v1.this[0].metadata[0].name : var.namespace

  image = var.image_digest == null ? "${var.image}:${var.image_tag}" : "${var.image}:${var.image_tag}@${var.image_digest}"

  common_labels = merge(var.labels, {
    "app.kubernetes.io/name"       = "meshfleet-server"
    "app.kubernetes.io/instance"   = var.name
    "app.kubernetes.io/part-of"    = "meshfleet"
    "app.kubernetes.io/managed-by" = "terraform"
    "app.kubernetes.io/version"    = var.image_tag
  })

  # What selects a role's pods: stable across upgrades (no version label).
  selector = {
    for role in keys(var.roles) : role => {
      "app.kubernetes.io/name"      = "meshfleet-server"
      "app.kubernetes.io/instance"  = var.name
      "app.kubernetes.io/component" = role
    }
  }

  api_port     = 8080
  gateway_port = 8443

  gateway_host = regex("^https://([^:/]+)", var.gateway_address)[0]

  # The secrets reach the server as a --config file on a read-only Secret volume rather than
  # environment variables: the environment is inherited by child processes, readable in
  # /proc/<pid>/environ and shown by `kubectl describe`; the file is readable by the server's
  # group only.
  secrets_dir        = "/etc/meshfleet/secrets"
  gateway_tls_dir    = "/etc/meshfleet/gateway-tls"
  secrets_file       = "secrets.toml"
  gateway_tls_config = var.gateway_tls_secret_name == null ? tomap({}) : tomap({
    MESHFLEET_GATEWAY_TLS_CERT = "${local.gateway_tls_dir}/tls.crt"
    MESHFLEET_GATEWAY_TLS_KEY  = "${local.gateway_tls_dir}/tls.key"
    MESHFLEET_GATEWAY_TLS_CA   = "${local.gateway_tls_dir}/ca.crt"
  })

  # Every role gets the same settings (the API renders install manifests naming the gateway,
  # and every role loads the gateway PKI); only MESHFLEET_ROLES differs.
  env = merge(
    { for name, value in var.settings : "MESHFLEET_${upper(name)}" => value },
    {
      MESHFLEET_LISTEN            = "0.0.0.0:${local.api_port}"
      MESHFLEET_GATEWAY_LISTEN    = "0.0.0.0:${local.gateway_port}"
      MESHFLEET_PUBLIC_URL        = "https://${var.api_host}"
      MESHFLEET_GATEWAY_ADDRESS   = var.gateway_address
      MESHFLEET_GATEWAY_HOSTNAMES = join(",", distinct(concat([local.gateway_host], var.gateway_hostnames)))
      MESHFLEET_LOG_FORMAT        = lookup(var.settings, "log_format", "json")
    },
    local.gateway_tls_config,
  )
}

resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name = var.namespace
    labels = merge(var.labels, {
      # The pods below meet the restricted profile; the API server refuses any that do not.
      "pod-security.kubernetes.io/enforce" = "restricted"
      "pod-security.kubernetes.io/audit"   = "restricted"
      "pod-security.kubernetes.io/warn"    = "restricted"
    })
  }
}

# The server talks to no Kubernetes API: its own account, with no token mounted.
resource "kubernetes_service_account_v1" "server" {
  metadata {
    name      = "${var.name}-server"
    namespace = local.namespace
    labels    = local.common_labels
  }
  automount_service_account_token = false
}

# database_url and sealing_key, as a TOML file the server reads with --config. jsonencode
# yields a valid TOML basic string (same escapes) whatever characters the values hold.
resource "kubernetes_secret_v1" "server" {
  metadata {
    name      = "${var.name}-server-secrets"
    namespace = local.namespace
    labels    = local.common_labels
  }
  type = "Opaque"
  data = {
    (local.secrets_file) = <<-EOT
      database_url = ${jsonencode(var.database_url)}
      sealing_key = ${jsonencode(var.sealing_key)}
    EOT
  }
}
