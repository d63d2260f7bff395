# One Deployment and one PodDisruptionBudget per role. Every role listens on the API port
# (/healthz, /readyz and /metrics are served there whatever the role); only the gateway also
# listens on 8443.

resource "kubernetes_deployment_v1" "role" {
  for_each = var.roles

  metadata {
    name      = "${var.name}-${each.key}"
    namespace = local.namespace
    labels    = merge(local.common_labels, local.selector[each.key])
  }

  spec {
    replicas               = each.value.replicas
    revision_history_limit = 5

    selector {
      match_labels = local.selector[each.key]
    }

    # One new pod up and ready before an old one goes: agents reconnect to the gateway
    # replicas that stay, and a background job's lease moves within job_lease_ms.
    strategy {
      type = "RollingUpdate"
      rolling_update {
        max_surge       = "1"
        max_unavailable = "0"
      }
    }

    template {
      metadata {
        labels = merge(local.common_labels, local.selector[each.key])
        annotations = {
          # A changed secret or setting rolls the pods (they read both only at start).
          "meshfleet.dev/config-sha256" = sha256(jsonencode([local.env, var.database_url, var.sealing_key]))
        }
      }

      spec {
        service_account_name             = kubernetes_service_account_v1.server.metadata[0].name
        automount_service_account_token  = false
        enable_service_links             = false
        termination_grace_period_seconds = 30

        dynamic "image_pull_secrets" {
          for_each = var.image_pull_secrets
          content {
            name = image_pull_secrets.value
          }
        }

        security_context {
          run_as_non_root = true
          run_as_user     = 65532
          run_as_group    = 65532
          fs_group        = 65532
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        # Spread each role over zones, then nodes, so losing one leaves the others serving.
        topology_spread_constraint {
          max_skew           = 1
          topology_key       = "topology.kubernetes.io/zone"
          when_unsatisfiable = "ScheduleAnyway"
          label_selector {
            match_labels = local.selector[each.key]
          }
        }
        topology_spread_constraint {
          max_skew           = 1
          topology_key       = "kubernetes.io/hostname"
          when_unsatisfiable = "ScheduleAnyway"
          label_selector {
            match_labels = local.selector[each.key]
          }
        }

        container {
          name              = "server"
          image             = local.image
          image_pull_policy = "Always"
          args              = ["--config", "${local.secrets_dir}/${local.secrets_file}"]

          dynamic "env" {
            for_each = merge(local.env, { MESHFLEET_ROLES = each.key })
            content {
              name  = env.key
              value = env.value
            }
          }

          port {
            name           = "http"
            container_port = local.api_port
            protocol       = "TCP"
          }

          dynamic "port" {
            for_each = each.key == "gateway" ? [local.gateway_port] : []
            content {
              name           = "gateway"
              container_port = port.value
              protocol       = "TCP"
            }
          }

          resources {
            requests = {
              cpu    = each.value.cpu_request
              memory = each.value.memory_request
            }
            limits = {
              cpu    = each.value.cpu_limit
              memory = each.value.memory_limit
            }
          }

          # Start-up applies migrations before the listener opens: give it up to 5 minutes
          # before liveness counts.
          startup_probe {
            http_get {
              path = "/healthz"
              port = "http"
            }
            period_seconds    = 5
            failure_threshold = 60
          }

          liveness_probe {
            http_get {
              path = "/healthz"
              port = "http"
            }
            period_seconds    = 10
            timeout_seconds   = 2
            failure_threshold = 3
          }

          # /readyz answers 503 while the database is unreachable: the pod leaves the Service
          # instead of failing requests.
          readiness_probe {
            http_get {
              path = "/readyz"
              port = "http"
            }
            period_seconds    = 5
            timeout_seconds   = 2
            failure_threshold = 2
          }

          security_context {
            allow_privilege_escalation = false
            privileged                 = false
            read_only_root_filesystem  = true
            run_as_non_root            = true
            run_as_user                = 65532
            run_as_group               = 65532
            capabilities {
              drop = ["ALL"]
            }
            seccomp_profile {
              type = "RuntimeDefault"
            }
          }

          volume_mount {
            name       = "secrets"
            mount_path = local.secrets_dir
            read_only  = true
          }

          dynamic "volume_mount" {
            for_each = var.gateway_tls_secret_name == null ? [] : [local.gateway_tls_dir]
            content {
              name       = "gateway-tls"
              mount_path = volume_mount.value
              read_only  = true
            }
          }
        }

        volume {
          name = "secrets"
          secret {
            secret_name  = kubernetes_secret_v1.server.metadata[0].name
            default_mode = "0440"
          }
        }

        dynamic "volume" {
          for_each = var.gateway_tls_secret_name == null ? [] : [var.gateway_tls_secret_name]
          content {
            name = "gateway-tls"
            secret {
              secret_name  = volume.value
              default_mode = "0440"
            }
          }
        }
      }
    }
  }

  # An apply ends when the new pods are ready, or fails if they never are.
  wait_for_rollout = true
}

resource "kubernetes_pod_disruption_budget_v1" "role" {
  for_each = var.roles

  metadata {
    name      = "${var.name}-${each.key}"
    namespace = local.namespace
    labels    = merge(local.common_labels, local.selector[each.key])
  }

  spec {
    # One replica at a time through node drains; with a single replica, a drain still
    # proceeds (nothing else could move it).
    max_unavailable = "1"
    selector {
      match_labels = local.selector[each.key]
    }
  }
}
