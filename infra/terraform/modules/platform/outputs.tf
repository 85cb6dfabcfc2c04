output "kfp_host" {
  description = "Kubeflow Pipelines endpoint (UI and API through the UI's proxy), reachable from the VPC."
  value       = "http://${kubernetes_service_v1.kfp.status[0].load_balancer[0].ingress[0].ip}"
}

output "mlflow_tracking_uri" {
  description = "MLflow tracking URI, reachable from the VPC."
  value       = "http://${kubernetes_service_v1.mlflow.status[0].load_balancer[0].ingress[0].ip}:5000"
}

output "service_url" {
  description = "URL of the recommendation service."
  value       = "http://${kubernetes_service_v1.recommender.status[0].load_balancer[0].ingress[0].ip}"
}
