output "private_ip" {
  description = "Private IP of the instance (MLflow connects to it directly over TLS)."
  value       = google_sql_database_instance.mlflow.private_ip_address
}

output "database" {
  description = "Database name."
  value       = google_sql_database.mlflow.name
}

output "user" {
  description = "Database user of the MLflow server."
  value       = google_sql_user.mlflow.name
}

output "connection_name" {
  description = "Instance connection name (for the Cloud SQL Auth Proxy, if preferred over private IP)."
  value       = google_sql_database_instance.mlflow.connection_name
}
