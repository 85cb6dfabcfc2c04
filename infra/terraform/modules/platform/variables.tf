variable "kfp_version" {
  description = "Kubeflow Pipelines release whose official kustomize manifests are installed (a kubeflow/pipelines tag)."
  type        = string
  default     = "2.14.3"
}

variable "image" {
  description = "recflow image without tag, e.g. europe-west4-docker.pkg.dev/PROJECT/recflow/recflow."
  type        = string
}

variable "image_tag" {
  description = "Tag of the recflow image to deploy (tags are immutable in the registry)."
  type        = string
}

variable "service_account_emails" {
  description = "Google service account email per workload: pipelines, serving, monitoring, mlflow."
  type        = map(string)
}

variable "pipeline_root_bucket" {
  description = "Bucket of the KFP pipeline root."
  type        = string
}

variable "mlflow_artifacts_bucket" {
  description = "Bucket of the MLflow artifacts."
  type        = string
}

variable "model_store_bucket" {
  description = "Bucket of the model store."
  type        = string
}

variable "mlflow_db_host" {
  description = "Private IP of the Cloud SQL instance."
  type        = string
}

variable "mlflow_db_password" {
  description = "Password of the mlflow database user."
  type        = string
  sensitive   = true
}

variable "serving_api_key" {
  description = "API key of the recommendation service."
  type        = string
  sensitive   = true
}

variable "serving_load_balancer" {
  description = "Internal (VPC only) or External load balancer in front of the recommendation service."
  type        = string
  default     = "Internal"

  validation {
    condition     = contains(["Internal", "External"], var.serving_load_balancer)
    error_message = "serving_load_balancer must be Internal or External."
  }
}

variable "serving_source_ranges" {
  description = "Client CIDRs allowed through the recommendation service's load balancer."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}
