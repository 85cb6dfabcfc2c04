output "kfp_host" {
  description = "Kubeflow Pipelines host for `recflow pipeline submit --host` / kfp.Client(host=...)."
  value       = module.platform.kfp_host
}

output "mlflow_tracking_uri" {
  description = "MLflow tracking URI (MLFLOW_TRACKING_URI)."
  value       = module.platform.mlflow_tracking_uri
}

output "service_url" {
  description = "URL of the recommendation service (send the API key from Secret Manager)."
  value       = module.platform.service_url
}

output "pipeline_root" {
  description = "gs:// pipeline root for KFP runs."
  value       = "gs://${module.storage.pipeline_root_bucket}"
}

output "model_store" {
  description = "gs:// model store the pusher writes and the service reads."
  value       = "gs://${module.storage.model_store_bucket}"
}

output "image_repository" {
  description = "Artifact Registry path to push the recflow image to."
  value       = module.storage.image_repository
}

output "gpu_node_labels" {
  description = "Labels of the GPU nodes (what the pipeline's node selector may use)."
  value       = module.gke.gpu_node_labels
}

output "serving_api_key_secret" {
  description = "Secret Manager secret holding the serving API key."
  value       = module.secrets.serving_api_key_secret_id
}

output "get_credentials" {
  description = "Command that configures kubectl for the cluster."
  value       = "gcloud container clusters get-credentials ${module.gke.cluster_name} --location ${module.gke.cluster_location} --project ${var.project_id}"
}
