# meshfleet-server on an existing EKS cluster with its database on RDS: the database admits
# the cluster's subnets only, the pods may reach the database's subnets only (besides DNS and
# webhooks), and the database URL goes from one module to the other without passing through
# a variable file.

provider "aws" {
  region = var.region
}

data "aws_eks_cluster" "this" {
  name = var.eks_cluster_name
}

data "aws_eks_cluster_auth" "this" {
  name = var.eks_cluster_name
}

provider "kubernetes" {
  host                   = data.aws_eks_cluster.this.endpoint
  cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.this.token
}

# With the VPC CNI, pods take their addresses from the cluster's subnets: those CIDRs are
# what the database must admit.
data "aws_subnet" "cluster" {
  for_each = toset(data.aws_eks_cluster.this.vpc_config[0].subnet_ids)
  id       = each.value
}

data "aws_subnet" "database" {
  for_each = toset(var.database_subnet_ids)
  id       = each.value
}

# Characters that need no escaping anywhere (URL, shell, TOML) and that RDS accepts.
resource "random_password" "database" {
  length           = 40
  special          = true
  override_special = "-_.~"
}

module "postgres" {
  source = "../../modules/postgres-aws"

  identifier      = "meshfleet"
  vpc_id          = data.aws_eks_cluster.this.vpc_config[0].vpc_id
  subnet_ids      = var.database_subnet_ids
  allowed_cidrs   = [for s in data.aws_subnet.cluster : s.cidr_block]
  master_password = random_password.database.result
  multi_az        = var.multi_az
  tags            = { environment = "production" }
}

module "meshfleet" {
  source = "../../modules/meshfleet"

  image_tag      = var.image_tag
  database_url   = module.postgres.database_url
  database_cidrs = [for s in data.aws_subnet.database : s.cidr_block]
  sealing_key    = var.sealing_key

  # ingress-nginx terminates the API's TLS with a certificate cert-manager keeps in
  # meshfleet-api-tls (both installed in the cluster beforehand).
  api_host            = var.api_host
  ingress_class_name  = "nginx"
  api_tls_secret_name = "meshfleet-api-tls"
  ingress_annotations = { "cert-manager.io/cluster-issuer" = var.cert_manager_cluster_issuer }
  # cert-manager's HTTP-01 solver pod answers in the service's namespace, behind its
  # default-deny policy.
  allow_acme_http01_solver = true

  # A Network Load Balancer (layer 4): TLS passes through to the gateway, which terminates
  # the agents' mTLS itself.
  gateway_address = "https://${var.gateway_host}"
  gateway_service_annotations = {
    "service.beta.kubernetes.io/aws-load-balancer-type"                    = "external"
    "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"         = "ip"
    "service.beta.kubernetes.io/aws-load-balancer-scheme"                  = "internet-facing"
    "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes" = "preserve_client_ip.enabled=true"
  }

  # Sized per role: the gateway holds one stream per connected agent, the worker delivers
  # webhooks and runs rollouts, the API serves users and the dashboard.
  roles = {
    api     = { replicas = 2, cpu_request = "250m", memory_request = "256Mi", cpu_limit = "1", memory_limit = "512Mi" }
    gateway = { replicas = 3, cpu_request = "500m", memory_request = "512Mi", cpu_limit = "2", memory_limit = "1Gi" }
    worker  = { replicas = 2, cpu_request = "250m", memory_request = "256Mi", cpu_limit = "1", memory_limit = "512Mi" }
  }
}
