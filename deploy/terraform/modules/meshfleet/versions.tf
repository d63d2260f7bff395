terraform {
  # optional() object attributes with defaults need 1.3; 1.5 is the floor of every module here.
  required_version = ">= 1.5.0"

  # The *_v1 resources used here are the same in 2.36+ and 3.x (3.0 only deprecated the
  # unversioned ones).
  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.36, < 4.0"
    }
  }
}
