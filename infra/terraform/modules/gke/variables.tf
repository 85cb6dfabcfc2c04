variable "project_id" {
  description = "GCP project of the cluster."
  type        = string
}

variable "name" {
  description = "Cluster name."
  type        = string
}

variable "location" {
  description = "A region (regional cluster: control plane and nodes in several zones) or a zone (zonal cluster)."
  type        = string
}

variable "network_id" {
  description = "VPC the cluster runs in."
  type        = string
}

variable "subnetwork_id" {
  description = "Subnetwork of the nodes (with the Pod and Service secondary ranges)."
  type        = string
}

variable "pods_range_name" {
  description = "Secondary range name for Pods."
  type        = string
}

variable "services_range_name" {
  description = "Secondary range name for Services."
  type        = string
}

variable "master_ipv4_cidr_block" {
  description = "The /28 of the private control plane endpoint."
  type        = string
  default     = "172.16.0.0/28"
}

variable "master_authorized_networks" {
  description = "CIDRs allowed to reach the control plane (e.g. a bastion or VPN range). Empty: only the VPC."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []
}

variable "enable_private_endpoint" {
  description = "When true the control plane has no public endpoint at all (kubectl from inside the VPC only)."
  type        = bool
  default     = false
}

variable "release_channel" {
  description = "GKE release channel."
  type        = string
  default     = "REGULAR"
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the cluster (true in prod)."
  type        = bool
  default     = true
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU pool (pipeline steps, MLflow, serving, monitoring)."
  type        = string
  default     = "e2-standard-4"
}

variable "cpu_min_nodes" {
  description = "Autoscaling minimum of the CPU pool, per zone."
  type        = number
  default     = 1
}

variable "cpu_max_nodes" {
  description = "Autoscaling maximum of the CPU pool, per zone."
  type        = number
  default     = 4
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool; must accept the accelerator (n1-* for T4/V100/P4, g2-* for L4)."
  type        = string
  default     = "n1-standard-8"
}

variable "gpu_accelerator_type" {
  description = "GPU type of the GPU pool (GKE labels its nodes cloud.google.com/gke-accelerator=<this>)."
  type        = string
  default     = "nvidia-tesla-t4"
}

variable "gpu_accelerator_count" {
  description = "GPUs per GPU node."
  type        = number
  default     = 1
}

variable "gpu_driver_version" {
  description = "GPU driver GKE installs on GPU nodes: DEFAULT or LATEST (INSTALLATION_DISABLED to install it yourself)."
  type        = string
  default     = "LATEST"
}

variable "gpu_min_nodes" {
  description = "Autoscaling minimum of the GPU pool (0: no GPU node, and no GPU bill, between training runs)."
  type        = number
  default     = 0
}

variable "gpu_max_nodes" {
  description = "Autoscaling maximum of the GPU pool, in total over its zones."
  type        = number
  default     = 2
}

variable "gpu_node_locations" {
  description = "Zones of the GPU pool (only zones that offer the accelerator). Empty: the cluster's zones."
  type        = list(string)
  default     = []
}

variable "gpu_spot" {
  description = "Use Spot VMs for the GPU pool (cheaper, may be preempted; pipeline steps are retried)."
  type        = bool
  default     = false
}

variable "gpu_pool_label" {
  description = "Value of the recflow.io/node-pool label on GPU nodes (a pipeline may select on it)."
  type        = string
  default     = "gpu"
}
