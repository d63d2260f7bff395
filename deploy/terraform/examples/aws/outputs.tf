output "public_url" {
  description = "Where users reach the API and dashboard (point api_host at the Ingress's load balancer)."
  value       = module.meshfleet.public_url
}

output "gateway_load_balancer" {
  description = "Point gateway_host's DNS record (CNAME) at this name."
  value       = module.meshfleet.gateway_load_balancer
}

output "database_address" {
  description = "Host name of the RDS instance."
  value       = module.postgres.address
}

output "database_kms_key_arn" {
  description = "KMS key of the database's storage and Performance Insights."
  value       = module.postgres.kms_key_arn
}
