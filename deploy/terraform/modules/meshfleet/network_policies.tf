# Nothing in the namespace talks to anything unless a policy below says so. What each role
# needs: the API port from the ingress controller (api) and from the metrics scraper (all),
# the gateway port from the agents (gateway), the database and DNS (all), webhooks (worker).
# Kubelet probes come from the node and are not subject to these policies on common CNIs.

resource "kubernetes_network_policy_v1" "default_deny" {
  metadata {
    name      = "${var.name}-default-deny"
    namespace = local.namespace
    labels    = local.common_labels
  }
  spec {
    pod_selector {}
    policy_types = ["Ingress", "Egress"]
  }
}

resource "kubernetes_network_policy_v1" "role" {
  for_each = var.roles

  metadata {
    name      = "${var.name}-${each.key}"
    namespace = local.namespace
    labels    = merge(local.common_labels, local.selector[each.key])
  }

  spec {
    pod_selector {
      match_labels = local.selector[each.key]
    }
    policy_types = ["Ingress", "Egress"]

    dynamic "ingress" {
      for_each = each.key == "api" ? [var.ingress_controller_namespace_labels] : []
      content {
        ports {
          port     = tostring(local.api_port)
          protocol = "TCP"
        }
        from {
          namespace_selector {
            match_labels = ingress.value
          }
        }
      }
    }

    dynamic "ingress" {
      for_each = each.key == "gateway" ? [var.gateway_allowed_cidrs] : []
      content {
        ports {
          port     = tostring(local.gateway_port)
          protocol = "TCP"
        }
        dynamic "from" {
          for_each = ingress.value
          content {
            ip_block {
              cidr = from.value
            }
          }
        }
      }
    }

    dynamic "ingress" {
      for_each = var.metrics_namespace_labels == null ? [] : [var.metrics_namespace_labels]
      content {
        ports {
          port     = tostring(local.api_port)
          protocol = "TCP"
        }
        from {
          namespace_selector {
            match_labels = ingress.value
          }
        }
      }
    }

    egress {
      ports {
        port     = "53"
        protocol = "UDP"
      }
      ports {
        port     = "53"
        protocol = "TCP"
      }
      to {
        namespace_selector {
          match_labels = var.dns_namespace_labels
        }
        pod_selector {
          match_labels = var.dns_pod_labels
        }
      }
    }

    egress {
      ports {
        port     = tostring(var.database_port)
        protocol = "TCP"
      }
      dynamic "to" {
        for_each = var.database_cidrs
        content {
          ip_block {
            cidr = to.value
          }
        }
      }
    }

    # Alert webhooks go anywhere on the internet, never to link-local addresses (cloud
    # metadata endpoints); the worker's SSRF guard refuses private ones unless allowed.
    dynamic "egress" {
      for_each = each.key == "worker" ? [var.webhook_egress_ports] : []
      content {
        dynamic "ports" {
          for_each = egress.value
          content {
            port     = tostring(ports.value)
            protocol = "TCP"
          }
        }
        to {
          ip_block {
            cidr   = "0.0.0.0/0"
            except = ["169.254.0.0/16"]
          }
        }
        to {
          ip_block {
            cidr   = "::/0"
            except = ["fe80::/10"]
          }
        }
      }
    }
  }
}

# cert-manager starts a solver pod beside the Ingress for each HTTP-01 challenge; the ingress
# controller forwards the challenge to it.
resource "kubernetes_network_policy_v1" "acme_http01_solver" {
  count = var.allow_acme_http01_solver ? 1 : 0

  metadata {
    name      = "${var.name}-acme-http01-solver"
    namespace = local.namespace
    labels    = local.common_labels
  }
  spec {
    pod_selector {
      match_labels = { "acme.cert-manager.io/http01-solver" = "true" }
    }
    policy_types = ["Ingress"]
    ingress {
      ports {
        port     = "8089"
        protocol = "TCP"
      }
      from {
        namespace_selector {
          match_labels = var.ingress_controller_namespace_labels
        }
      }
    }
  }
}
