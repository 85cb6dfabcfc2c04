output "cluster_name" {
  description = "Name of the cluster."
  value       = google_container_cluster.this.name
}

output "cluster_location" {
  description = "Region or zone of the cluster."
  value       = google_container_cluster.this.location
}

output "endpoint" {
  description = "Control plane endpoint (private nodes; public endpoint only if enable_private_endpoint is false)."
  value       = google_container_cluster.this.endpoint
  sensitive   = true
}

output "ca_certificate" {
  description = "Cluster CA certificate (base64)."
  value       = google_container_cluster.this.master_auth[0].cluster_ca_certificate
  sensitive   = true
}

output "workload_pool" {
  description = "Workload Identity pool of the cluster."
  value       = "${var.project_id}.svc.id.goog"
}

output "gpu_node_labels" {
  description = "Labels every GPU node carries (set by recflow and by GKE)."
  value = {
    "recflow.io/node-pool"             = var.gpu_pool_label
    "cloud.google.com/gke-accelerator" = var.gpu_accelerator_type
    "cloud.google.com/gke-nodepool"    = google_container_node_pool.gpu.name
  }
}
