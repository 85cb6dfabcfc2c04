# Buckets: all private (uniform bucket-level access, public access prevention enforced); the model store is
# versioned so a pushed champion can always be restored. Artifact Registry holds the recflow images.

resource "google_storage_bucket" "pipeline_root" {
  # checkov:skip=CKV_GCP_78:intermediate pipeline artifacts are reproducible scratch data deleted by lifecycle after N days; versioning would only keep garbage
  # checkov:skip=CKV_GCP_62:access is audited with Cloud Audit Logs (data access logs), not with legacy usage-log buckets
  project                     = var.project_id
  name                        = "${var.name}-pipeline-root"
  location                    = var.location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  lifecycle_rule {
    condition {
      age = var.pipeline_root_retention_days
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket" "mlflow_artifacts" {
  # checkov:skip=CKV_GCP_62:access is audited with Cloud Audit Logs (data access logs), not with legacy usage-log buckets
  project                     = var.project_id
  name                        = "${var.name}-mlflow-artifacts"
  location                    = var.location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  versioning {
    enabled = true
  }
}

resource "google_storage_bucket" "model_store" {
  # checkov:skip=CKV_GCP_62:access is audited with Cloud Audit Logs (data access logs), not with legacy usage-log buckets
  project                     = var.project_id
  name                        = "${var.name}-model-store"
  location                    = var.location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      num_newer_versions = var.noncurrent_model_versions
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84:images hold no secrets or data; Google-managed encryption is enough and a CMEK key ring would outlive `terraform destroy`
  project       = var.project_id
  location      = var.location
  repository_id = "recflow"
  format        = "DOCKER"
  description   = "recflow images (pipeline components, MLflow, serving, monitoring)"

  docker_config {
    immutable_tags = true
  }
}
