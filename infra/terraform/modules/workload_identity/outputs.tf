output "emails" {
  description = "Google service account email of each workload (annotated on its Kubernetes service account)."
  value       = { for k, sa in google_service_account.workload : k => sa.email }
}
