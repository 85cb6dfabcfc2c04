output "pipeline_root_bucket" {
  description = "Bucket of the KFP pipeline root."
  value       = google_storage_bucket.pipeline_root.name
}

output "mlflow_artifacts_bucket" {
  description = "Bucket of the MLflow artifact store."
  value       = google_storage_bucket.mlflow_artifacts.name
}

output "model_store_bucket" {
  description = "Bucket of the versioned model store (the pusher writes, serving reads)."
  value       = google_storage_bucket.model_store.name
}

output "image_repository" {
  description = "Docker repository path, e.g. europe-west4-docker.pkg.dev/PROJECT/recflow."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}
