output "serving_api_key" {
  description = "The API key of the recommendation service."
  value       = google_secret_manager_secret_version.serving_api_key.secret_data
  sensitive   = true
}

output "serving_api_key_secret_id" {
  description = "Secret Manager id of the serving API key."
  value       = google_secret_manager_secret.serving_api_key.secret_id
}

output "mlflow_db_password" {
  description = "Password of the MLflow database user."
  value       = google_secret_manager_secret_version.mlflow_db_password.secret_data
  sensitive   = true
}

output "mlflow_db_password_secret_id" {
  description = "Secret Manager id of the MLflow database password."
  value       = google_secret_manager_secret.mlflow_db_password.secret_id
}
