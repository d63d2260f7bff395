# A managed PostgreSQL for meshfleet-server on AWS: encrypted with its own KMS key (storage,
# Performance Insights), TLS required, reachable only from the given CIDRs, never public,
# backed up, monitored, and protected from deletion.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  tags = merge(var.tags, { "app.kubernetes.io/part-of" = "meshfleet" })
}

# The key the storage, snapshots and Performance Insights are encrypted with. Its policy is
# the account default (the account's IAM policies decide who may use it), stated explicitly.
resource "aws_kms_key" "db" {
  description             = "meshfleet ${var.identifier}: RDS storage and Performance Insights"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministersTheKey"
      Effect    = "Allow"
      Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
  tags = local.tags
}

resource "aws_kms_alias" "db" {
  name          = "alias/${var.identifier}-rds"
  target_key_id = aws_kms_key.db.key_id
}

resource "aws_db_subnet_group" "db" {
  name        = var.identifier
  description = "meshfleet ${var.identifier}: private subnets"
  subnet_ids  = var.subnet_ids
  tags        = local.tags
}

# Ingress on the database port from the cluster only; no egress rule (Terraform removes the
# default allow-all one), as the database starts no connection.
resource "aws_security_group" "db" {
  name        = "${var.identifier}-rds"
  description = "meshfleet ${var.identifier}: PostgreSQL from the cluster only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "db" {
  for_each = toset(var.allowed_cidrs)

  security_group_id = aws_security_group.db.id
  description       = "PostgreSQL from cluster CIDR ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 5432
  to_port           = 5432
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
  tags              = local.tags
}

# A prefix, not a name: a new major version needs a new group, created before the old one
# goes.
resource "aws_db_parameter_group" "db" {
  name_prefix = "${var.identifier}-postgres${var.engine_version}-"
  family      = "postgres${var.engine_version}"
  description = "meshfleet ${var.identifier}: TLS required, slow statements and DDL logged"

  # Every connection is encrypted (the server's URL says sslmode=require).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  # Schema changes (migrations) and slow statements go to the exported log.
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = tostring(var.slow_query_ms)
  }
  parameter {
    name  = "log_connections"
    value = "1"
  }
  parameter {
    name  = "log_disconnections"
    value = "1"
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

# Enhanced Monitoring publishes OS metrics through this role.
resource "aws_iam_role" "monitoring" {
  name = "${var.identifier}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = data.aws_caller_identity.current.account_id } }
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "db" {
  identifier     = var.identifier
  engine         = "postgres"
  engine_version = var.engine_version
  instance_class = var.instance_class

  db_name  = var.database_name
  username = var.master_username
  password = var.master_password
  port     = 5432
  # IAM authentication is on for people and tools (psql with a token); meshfleet-server
  # itself connects with the password, which its database URL carries.
  iam_database_authentication_enabled = true

  allocated_storage     = var.allocated_storage_gb
  max_allocated_storage = var.max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.db.arn

  db_subnet_group_name   = aws_db_subnet_group.db.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  multi_az               = var.multi_az
  parameter_group_name   = aws_db_parameter_group.db.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period   = var.backup_retention_days
  backup_window             = var.backup_window
  maintenance_window        = var.maintenance_window
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.identifier}-final"

  auto_minor_version_upgrade  = true
  allow_major_version_upgrade = false
  apply_immediately           = false

  monitoring_interval                   = var.monitoring_interval
  monitoring_role_arn                   = aws_iam_role.monitoring.arn
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.db.arn
  performance_insights_retention_period = var.performance_insights_retention_days
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]

  tags = local.tags

  depends_on = [aws_iam_role_policy_attachment.monitoring]
}
