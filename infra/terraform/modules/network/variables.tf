variable "project_id" {
  description = "GCP project that holds the network."
  type        = string
}

variable "region" {
  description = "Region of the subnetwork, the Cloud NAT and the cluster."
  type        = string
}

variable "name" {
  description = "Prefix of every resource name (e.g. recflow-dev)."
  type        = string
}

variable "subnet_cidr" {
  description = "Primary range of the cluster subnetwork (node IPs)."
  type        = string
  default     = "10.10.0.0/20"
}

variable "pods_cidr" {
  description = "Secondary range for Pod IPs (VPC-native cluster)."
  type        = string
  default     = "10.20.0.0/14"
}

variable "services_cidr" {
  description = "Secondary range for Service IPs."
  type        = string
  default     = "10.24.0.0/20"
}

variable "private_service_prefix_length" {
  description = "Prefix length of the range reserved for private services access (Cloud SQL private IP)."
  type        = number
  default     = 20
}
