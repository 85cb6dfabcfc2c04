variable "project_id" {
  description = "GCP project of the buckets and the registry."
  type        = string
}

variable "location" {
  description = "Location of the buckets and the Artifact Registry repository (a region)."
  type        = string
}

variable "name" {
  description = "Prefix of the bucket names; bucket names are global, so include the project (e.g. <project>-recflow-dev)."
  type        = string
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets (dev only; never for the model store in prod)."
  type        = bool
  default     = false
}

variable "pipeline_root_retention_days" {
  description = "Objects under the pipeline root (intermediate artifacts) are deleted after this many days."
  type        = number
  default     = 30
}

variable "noncurrent_model_versions" {
  description = "How many older versions of each model-store object are kept."
  type        = number
  default     = 10
}
