# One root module for every environment. The defaults below are the production (safe) values;
# environments/<name>.tfvars sets every environment-specific variable explicitly (tests/test_infra.py checks that
# dev and prod set the same ones), and a local, uncommitted <name>.local.tfvars holds project_id and
# master_authorized_networks (see local.tfvars.example and infra/README.md).

variable "project_id" {
  description = "GCP project to deploy into (no default: set it in <environment>.local.tfvars or -var)."
  type        = string
}

variable "environment" {
  description = "Environment name, part of every resource name; set by environments/<name>.tfvars."
  type        = string

  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "Pass -var-file=environments/dev.tfvars or -var-file=environments/prod.tfvars."
  }
}

variable "region" {
  description = "Region of the cluster, buckets, database and registry."
  type        = string
  default     = "europe-west4"
}

variable "cluster_zone" {
  description = "Zone of a zonal cluster; empty for a regional cluster."
  type        = string
  default     = ""
}

variable "deletion_protection" {
  description = "Protect the cluster and the database from deletion."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets."
  type        = bool
  default     = false
}

variable "master_authorized_networks" {
  description = "CIDRs allowed to reach the cluster's control plane endpoint (your workstation or VPN)."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU pool."
  type        = string
  default     = "e2-standard-4"
}

variable "cpu_min_nodes" {
  description = "Minimum CPU nodes per zone."
  type        = number
  default     = 1
}

variable "cpu_max_nodes" {
  description = "Maximum CPU nodes per zone."
  type        = number
  default     = 5
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool."
  type        = string
  default     = "n1-standard-8"
}

variable "gpu_accelerator_type" {
  description = "GPU type; must equal the accelerator the pipeline's trainer tasks select (tests/test_infra.py checks)."
  type        = string
  default     = "nvidia-tesla-t4"
}

variable "gpu_accelerator_count" {
  description = "GPUs per GPU node."
  type        = number
  default     = 1
}

variable "gpu_max_nodes" {
  description = "Maximum GPU nodes (the pool scales from zero)."
  type        = number
  default     = 4
}

variable "gpu_node_locations" {
  description = "Zones of the GPU pool (zones that have the accelerator); empty: the cluster's zones."
  type        = list(string)
  default     = ["europe-west4-a", "europe-west4-b", "europe-west4-c"]
}

variable "gpu_spot" {
  description = "Spot VMs for the GPU pool."
  type        = bool
  default     = false
}

variable "db_tier" {
  description = "Cloud SQL machine tier."
  type        = string
  default     = "db-custom-2-7680"
}

variable "db_high_availability" {
  description = "Regional (HA) Cloud SQL instance."
  type        = bool
  default     = true
}

variable "kfp_version" {
  description = "Kubeflow Pipelines release to install."
  type        = string
  default     = "2.14.3"
}

variable "image_tag" {
  description = "Tag of the recflow image in Artifact Registry to deploy (the CPU image of infra/docker)."
  type        = string
  default     = "0.1.0-cpu"
}

variable "serving_load_balancer" {
  description = "Internal or External load balancer for the recommendation service."
  type        = string
  default     = "Internal"
}

variable "serving_source_ranges" {
  description = "Client CIDRs allowed to call the recommendation service."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}
