# One Google service account per workload, each bound to exactly one Kubernetes service account through
# Workload Identity, with bucket-level roles only (no project-wide storage roles):
#   pipelines  - read/write the pipeline root; write new model versions to the model store
#   serving    - read the model store
#   monitoring - read the model store (reference statistics of the champion) and the pipeline root (training data stats)
#   mlflow     - read/write the MLflow artifact bucket (clients go through the server's artifact proxy)

resource "google_service_account" "workload" {
  for_each     = var.workloads
  project      = var.project_id
  account_id   = "${var.name}-${each.key}"
  display_name = "recflow ${each.key} (${each.value.namespace}/${each.value.service_account})"
}

resource "google_service_account_iam_member" "workload_identity" {
  for_each           = var.workloads
  service_account_id = google_service_account.workload[each.key].name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${each.value.namespace}/${each.value.service_account}]"
}

locals {
  bucket_grants = {
    pipelines_root_admin     = { workload = "pipelines", bucket = var.pipeline_root_bucket, role = "roles/storage.objectUser" }
    pipelines_model_creator  = { workload = "pipelines", bucket = var.model_store_bucket, role = "roles/storage.objectCreator" }
    pipelines_model_viewer   = { workload = "pipelines", bucket = var.model_store_bucket, role = "roles/storage.objectViewer" }
    serving_model_viewer     = { workload = "serving", bucket = var.model_store_bucket, role = "roles/storage.objectViewer" }
    monitoring_model_viewer  = { workload = "monitoring", bucket = var.model_store_bucket, role = "roles/storage.objectViewer" }
    monitoring_root_viewer   = { workload = "monitoring", bucket = var.pipeline_root_bucket, role = "roles/storage.objectViewer" }
    mlflow_artifacts_objects = { workload = "mlflow", bucket = var.mlflow_artifacts_bucket, role = "roles/storage.objectUser" }
  }
}

resource "google_storage_bucket_iam_member" "workload" {
  for_each = local.bucket_grants
  bucket   = each.value.bucket
  role     = each.value.role
  member   = "serviceAccount:${google_service_account.workload[each.value.workload].email}"
}
