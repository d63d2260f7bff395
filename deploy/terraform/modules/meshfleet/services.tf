# How clients reach the service: users and the API through the Ingress (TLS at the ingress
# controller), agents straight to the gateway through a TCP Service (the gateway terminates
# their mTLS itself, so no HTTP proxy may sit in between).

resource "kubernetes_service_v1" "api" {
  metadata {
    name      = "${var.name}-api"
    namespace = local.namespace
    labels    = merge(local.common_labels, local.selector["api"])
  }
  spec {
    type     = "ClusterIP"
    selector = local.selector["api"]
    port {
      name        = "http"
      port        = local.api_port
      target_port = "http"
      protocol    = "TCP"
    }
  }
}

resource "kubernetes_service_v1" "gateway" {
  metadata {
    name        = "${var.name}-gateway"
    namespace   = local.namespace
    labels      = merge(local.common_labels, local.selector["gateway"])
    annotations = var.gateway_service_annotations
  }
  spec {
    type     = var.gateway_service_type
    selector = local.selector["gateway"]
    port {
      name        = "gateway"
      port        = var.gateway_service_port
      target_port = "gateway"
      protocol    = "TCP"
    }
    # Local: the load balancer sends to nodes holding a gateway pod, and the pod sees the
    # agent's own address (logs, NetworkPolicy's ipBlock) rather than a node's.
    external_traffic_policy     = var.gateway_service_type == "ClusterIP" ? null : "Local"
    load_balancer_source_ranges = var.gateway_service_type == "LoadBalancer" ? var.gateway_allowed_cidrs : null
  }
}

resource "kubernetes_ingress_v1" "api" {
  metadata {
    name        = "${var.name}-api"
    namespace   = local.namespace
    labels      = merge(local.common_labels, local.selector["api"])
    annotations = var.ingress_annotations
  }
  spec {
    ingress_class_name = var.ingress_class_name
    tls {
      hosts       = [var.api_host]
      secret_name = var.api_tls_secret_name
    }
    rule {
      host = var.api_host
      http {
        path {
          path      = "/"
          path_type = "Prefix"
          backend {
            service {
              name = kubernetes_service_v1.api.metadata[0].name
              port {
                name = "http"
              }
            }
          }
        }
      }
    }
  }
}
