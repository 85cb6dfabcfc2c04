# The two secrets of the platform, generated here and kept in Secret Manager (the source of truth; rotate by
# tainting the random_password and re-applying). The platform module copies them into Kubernetes Secrets.
# Their values are also in the Terraform state: keep the state in a private, versioned GCS bucket.

resource "random_password" "serving_api_key" {
  length  = 48
  special = false
}

# Alphanumeric only: it is embedded in the MLflow backend-store URI.
resource "random_password" "mlflow_db" {
  length  = 32
  special = false
}

resource "google_secret_manager_secret" "serving_api_key" {
  # checkov:skip=CKV_GCP_125:Google-managed encryption; a CMEK key ring would outlive `terraform destroy` of the platform
  project   = var.project_id
  secret_id = "${var.name}-serving-api-key"
  replication {
    user_managed {
      dynamic "replicas" {
        for_each = var.replica_locations
        content {
          location = replicas.value
        }
      }
    }
  }
}

resource "google_secret_manager_secret_version" "serving_api_key" {
  secret      = google_secret_manager_secret.serving_api_key.id
  secret_data = random_password.serving_api_key.result
}

resource "google_secret_manager_secret" "mlflow_db_password" {
  # checkov:skip=CKV_GCP_125:Google-managed encryption; a CMEK key ring would outlive `terraform destroy` of the platform
  project   = var.project_id
  secret_id = "${var.name}-mlflow-db-password"
  replication {
    user_managed {
      dynamic "replicas" {
        for_each = var.replica_locations
        content {
          location = replicas.value
        }
      }
    }
  }
}

resource "google_secret_manager_secret_version" "mlflow_db_password" {
  secret      = google_secret_manager_secret.mlflow_db_password.id
  secret_data = random_password.mlflow_db.result
}
