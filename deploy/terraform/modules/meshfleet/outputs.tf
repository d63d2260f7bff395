output "namespace" {
  description = "Namespace the service runs in."
  value       = local.namespace
}

output "deployments" {
  description = "Deployment name per role."
  value       = { for role, d in kubernetes_deployment_v1.role : role => d.metadata[0].name }
}

output "api_service" {
  description = "ClusterIP Service of the API (port 8080), the Ingress's backend."
  value       = kubernetes_service_v1.api.metadata[0].name
}

output "gateway_service" {
  description = "Service agents connect to (TCP, the gateway terminates mTLS)."
  value       = kubernetes_service_v1.gateway.metadata[0].name
}

output "gateway_load_balancer" {
  description = "Host name or IP of the gateway's load balancer (once provisioned): point gateway_address's DNS name at it."
  value = try(
    coalesce(kubernetes_service_v1.gateway.status[0].load_balancer[0].ingress[0].hostname, kubernetes_service_v1.gateway.status[0].load_balancer[0].ingress[0].ip),
    null,
  )
}

output "public_url" {
  description = "Where users and agents reach the API."
  value       = "https://${var.api_host}"
}

output "gateway_address" {
  description = "Where agents reach the gateway (written into install manifests)."
  value       = var.gateway_address
}
