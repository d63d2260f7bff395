# Inputs of the postgres-aws module: one RDS for PostgreSQL instance for meshfleet-server,
# reachable only from the cluster's CIDRs.

variable "identifier" {
  description = "Name of the DB instance and prefix of its companions (subnet group, security group, parameter group, KMS alias, monitoring role)."
  type        = string
  default     = "meshfleet"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,45}[a-z0-9]$", var.identifier)) && !can(regex("--", var.identifier))
    error_message = "identifier must start with a letter, hold only lower-case letters, digits and single hyphens, and be at most 47 characters."
  }
}

variable "vpc_id" {
  description = "VPC of the database (the cluster's VPC, or one routed to it)."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be a VPC id such as vpc-0123456789abcdef0."
  }
}

variable "subnet_ids" {
  description = "Private subnets of the DB subnet group, in at least two availability zones (RDS requires it, Multi-AZ uses them)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "subnet_ids must list at least two subnet ids (subnet-...)."
  }
}

variable "allowed_cidrs" {
  description = "CIDRs allowed to connect on the database port: the cluster's pod (and node) CIDRs, nothing wider."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_cidrs must hold at least one valid CIDR."
  }

  validation {
    condition     = !anytrue([for c in var.allowed_cidrs : endswith(c, "/0")])
    error_message = "allowed_cidrs must not open the database to every address (/0)."
  }
}

variable "engine_version" {
  description = "PostgreSQL major version (minor versions are applied by auto minor version upgrade in the maintenance window)."
  type        = string
  default     = "17"

  validation {
    condition     = contains(["15", "16", "17"], var.engine_version)
    error_message = "engine_version must be a PostgreSQL major version meshfleet is tested with: 15, 16 or 17."
  }
}

variable "instance_class" {
  description = "DB instance class."
  type        = string
  default     = "db.m7g.large"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.instance_class))
    error_message = "instance_class must look like db.m7g.large."
  }
}

variable "allocated_storage_gb" {
  description = "Initial storage (GiB, gp3)."
  type        = number
  default     = 50

  validation {
    condition     = var.allocated_storage_gb >= 20 && var.allocated_storage_gb <= 65536
    error_message = "allocated_storage_gb must be between 20 and 65536."
  }
}

variable "max_allocated_storage_gb" {
  description = "Upper bound of storage autoscaling (GiB); equal to allocated_storage_gb turns autoscaling off."
  type        = number
  default     = 500

  validation {
    condition     = var.max_allocated_storage_gb >= 20 && var.max_allocated_storage_gb <= 65536
    error_message = "max_allocated_storage_gb must be between 20 and 65536."
  }
}

variable "multi_az" {
  description = "Keep a synchronous standby in another availability zone (automatic failover). Off only for non-production."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Refuse to delete the instance (turn off, apply, then destroy, to remove it on purpose)."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Days automated backups (and point-in-time recovery) are kept."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 7 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 7 and 35."
  }
}

variable "backup_window" {
  description = "Daily backup window (UTC, hh24:mi-hh24:mi), apart from the maintenance window."
  type        = string
  default     = "02:00-03:00"

  validation {
    condition     = can(regex("^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$", var.backup_window))
    error_message = "backup_window must look like 02:00-03:00."
  }
}

variable "maintenance_window" {
  description = "Weekly maintenance window (UTC, ddd:hh24:mi-ddd:hh24:mi)."
  type        = string
  default     = "sun:04:00-sun:05:00"

  validation {
    condition     = can(regex("^(mon|tue|wed|thu|fri|sat|sun):([01][0-9]|2[0-3]):[0-5][0-9]-(mon|tue|wed|thu|fri|sat|sun):([01][0-9]|2[0-3]):[0-5][0-9]$", var.maintenance_window))
    error_message = "maintenance_window must look like sun:04:00-sun:05:00."
  }
}

variable "monitoring_interval" {
  description = "Seconds between Enhanced Monitoring samples."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 5, 10, 15, 30, 60], var.monitoring_interval)
    error_message = "monitoring_interval must be 1, 5, 10, 15, 30 or 60 (0 would turn Enhanced Monitoring off)."
  }
}

variable "performance_insights_retention_days" {
  description = "Days Performance Insights data is kept: 7 (free tier), a multiple of 31 up to 713, or 731."
  type        = number
  default     = 7

  validation {
    condition     = contains([7, 731], var.performance_insights_retention_days) || (var.performance_insights_retention_days % 31 == 0 && var.performance_insights_retention_days >= 31 && var.performance_insights_retention_days <= 713)
    error_message = "performance_insights_retention_days must be 7, a multiple of 31 up to 713, or 731."
  }
}

variable "database_name" {
  description = "Database created for meshfleet-server."
  type        = string
  default     = "meshfleet"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.database_name))
    error_message = "database_name must start with a letter and hold only lower-case letters, digits and underscores (at most 63)."
  }
}

variable "master_username" {
  description = "Master user the server connects as."
  type        = string
  default     = "meshfleet"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.master_username)) && !contains(["postgres", "rdsadmin", "admin"], var.master_username)
    error_message = "master_username must start with a letter, hold only lower-case letters, digits and underscores, and not be a reserved name (postgres, rdsadmin, admin)."
  }
}

variable "master_password" {
  description = "Master password (16-128 printable ASCII characters without /, \", @ or spaces, as RDS requires). Ends up in the Terraform state: keep the state encrypted."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.master_password) >= 16 && length(var.master_password) <= 128 && can(regex("^[!#-.0-?A-~]+$", var.master_password))
    error_message = "master_password must be 16-128 printable ASCII characters other than /, \", @ and space."
  }
}

variable "slow_query_ms" {
  description = "Statements slower than this are logged (log_min_duration_statement), in milliseconds."
  type        = number
  default     = 1000

  validation {
    condition     = var.slow_query_ms >= 100
    error_message = "slow_query_ms must be at least 100 (lower floods the log)."
  }
}

variable "tags" {
  description = "Tags on every resource (copied to snapshots)."
  type        = map(string)
  default     = {}
}
