output "network_id" {
  description = "Self link/id of the VPC."
  value       = google_compute_network.this.id
}

output "network_name" {
  description = "Name of the VPC."
  value       = google_compute_network.this.name
}

output "subnetwork_id" {
  description = "Id of the cluster subnetwork."
  value       = google_compute_subnetwork.cluster.id
}

output "pods_range_name" {
  description = "Name of the secondary range for Pods."
  value       = "pods"
}

output "services_range_name" {
  description = "Name of the secondary range for Services."
  value       = "services"
}

output "private_services_connection" {
  description = "The private services peering (Cloud SQL private IP depends on it)."
  value       = google_service_networking_connection.private_services.id
}
