output "address" {
  description = "Host name of the instance."
  value       = aws_db_instance.db.address
}

output "port" {
  description = "Port of the instance."
  value       = aws_db_instance.db.port
}

output "database_name" {
  description = "Database created for meshfleet-server."
  value       = aws_db_instance.db.db_name
}

output "username" {
  description = "Master user name."
  value       = aws_db_instance.db.username
}

output "database_url" {
  description = "URL for meshfleet-server (MESHFLEET_DATABASE_URL): TLS required, password URL-encoded."
  value       = "postgres://${var.master_username}:${urlencode(var.master_password)}@${aws_db_instance.db.address}:${aws_db_instance.db.port}/${var.database_name}?sslmode=require"
  sensitive   = true
}

output "instance_arn" {
  description = "ARN of the DB instance."
  value       = aws_db_instance.db.arn
}

output "security_group_id" {
  description = "Security group of the instance (ingress on 5432 from allowed_cidrs only)."
  value       = aws_security_group.db.id
}

output "kms_key_arn" {
  description = "KMS key encrypting storage, snapshots and Performance Insights."
  value       = aws_kms_key.db.arn
}
