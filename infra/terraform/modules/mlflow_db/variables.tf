variable "project_id" {
  description = "GCP project of the instance."
  type        = string
}

variable "region" {
  description = "Region of the instance (same as the cluster)."
  type        = string
}

variable "name" {
  description = "Instance name prefix."
  type        = string
}

variable "network_id" {
  description = "VPC the private IP is allocated in (private services access must exist)."
  type        = string
}

variable "tier" {
  description = "Machine tier of the instance."
  type        = string
  default     = "db-custom-1-3840"
}

variable "high_availability" {
  description = "REGIONAL availability (a standby in another zone) instead of ZONAL."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Refuse deletion of the instance (true in prod)."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Number of daily backups kept."
  type        = number
  default     = 7
}

variable "db_password" {
  description = "Password of the mlflow user (from the secrets module)."
  type        = string
  sensitive   = true
}
