terraform {
  required_version = ">= 1.5.0"

  # 6.0 changed nothing this module uses (its upgrade guide's aws_db_instance change is about
  # character_set_name with restores).
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}
