variable "project_id" {
  description = "GCP project of the service accounts."
  type        = string
}

variable "name" {
  description = "Prefix of the service account ids (at most 17 characters: ids are limited to 30)."
  type        = string
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

variable "workloads" {
  description = "Kubernetes namespace and service account of each workload (the Workload Identity subjects)."
  type = map(object({
    namespace       = string
    service_account = string
  }))
  default = {
    pipelines  = { namespace = "kubeflow", service_account = "pipeline-runner" }
    serving    = { namespace = "recflow", service_account = "recommender" }
    monitoring = { namespace = "recflow", service_account = "drift-monitor" }
    mlflow     = { namespace = "recflow", service_account = "mlflow" }
  }

  validation {
    condition     = alltrue([for k in ["pipelines", "serving", "monitoring", "mlflow"] : contains(keys(var.workloads), k)])
    error_message = "workloads must define pipelines, serving, monitoring and mlflow."
  }
}
