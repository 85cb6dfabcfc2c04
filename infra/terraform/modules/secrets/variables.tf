variable "project_id" {
  description = "GCP project of the secrets."
  type        = string
}

variable "name" {
  description = "Prefix of the secret ids (e.g. recflow-dev)."
  type        = string
}

variable "replica_locations" {
  description = "Regions the secrets are replicated to (user-managed replication keeps them in your regions)."
  type        = list(string)
}
