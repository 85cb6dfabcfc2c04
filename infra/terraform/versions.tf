terraform {
  required_version = ">= 1.6"

  # State in a private, versioned GCS bucket created once by hand, one prefix per environment (see
  # infra/README.md):
  #   terraform init -backend-config=environments/<name>.gcs.tfbackend -backend-config="bucket=<project>-tfstate"
  backend "gcs" {}

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.49.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "2.38.0"
    }
    kustomization = {
      source  = "kbst/kustomization"
      version = "0.9.6"
    }
    random = {
      source  = "hashicorp/random"
      version = "3.7.2"
    }
  }
}
