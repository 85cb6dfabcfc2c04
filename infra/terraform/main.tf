locals {
  name = "recflow-${var.environment}"
  # Bucket names are global: prefixed with the project id.
  bucket_prefix = "${var.project_id}-${local.name}"
  # Zonal cluster (cheaper, dev) when cluster_zone is set; regional otherwise (prod).
  cluster_location = var.cluster_zone != "" ? var.cluster_zone : var.region
}

resource "google_project_service" "apis" {
  for_each = toset([
    "container.googleapis.com",
    "compute.googleapis.com",
    "sqladmin.googleapis.com",
    "servicenetworking.googleapis.com",
    "secretmanager.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
  ])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

module "network" {
  source     = "./modules/network"
  project_id = var.project_id
  region     = var.region
  name       = local.name
  depends_on = [google_project_service.apis]
}

module "gke" {
  source                     = "./modules/gke"
  project_id                 = var.project_id
  name                       = local.name
  location                   = local.cluster_location
  network_id                 = module.network.network_id
  subnetwork_id              = module.network.subnetwork_id
  pods_range_name            = module.network.pods_range_name
  services_range_name        = module.network.services_range_name
  master_authorized_networks = var.master_authorized_networks
  deletion_protection        = var.deletion_protection
  cpu_machine_type           = var.cpu_machine_type
  cpu_min_nodes              = var.cpu_min_nodes
  cpu_max_nodes              = var.cpu_max_nodes
  gpu_machine_type           = var.gpu_machine_type
  gpu_accelerator_type       = var.gpu_accelerator_type
  gpu_accelerator_count      = var.gpu_accelerator_count
  gpu_max_nodes              = var.gpu_max_nodes
  gpu_node_locations         = var.gpu_node_locations
  gpu_spot                   = var.gpu_spot
}

module "storage" {
  source        = "./modules/storage"
  project_id    = var.project_id
  location      = var.region
  name          = local.bucket_prefix
  force_destroy = var.force_destroy
  depends_on    = [google_project_service.apis]
}

module "secrets" {
  source            = "./modules/secrets"
  project_id        = var.project_id
  name              = local.name
  replica_locations = [var.region]
  depends_on        = [google_project_service.apis]
}

module "mlflow_db" {
  source              = "./modules/mlflow_db"
  project_id          = var.project_id
  region              = var.region
  name                = local.name
  network_id          = module.network.network_id
  tier                = var.db_tier
  high_availability   = var.db_high_availability
  deletion_protection = var.deletion_protection
  db_password         = module.secrets.mlflow_db_password
  # Cloud SQL's private IP needs the private services peering of the network module.
  depends_on = [module.network]
}

module "workload_identity" {
  source                  = "./modules/workload_identity"
  project_id              = var.project_id
  name                    = local.name
  pipeline_root_bucket    = module.storage.pipeline_root_bucket
  mlflow_artifacts_bucket = module.storage.mlflow_artifacts_bucket
  model_store_bucket      = module.storage.model_store_bucket
  # The Workload Identity pool exists once the cluster does.
  depends_on = [module.gke]
}

module "platform" {
  source                  = "./modules/platform"
  kfp_version             = var.kfp_version
  image                   = "${module.storage.image_repository}/recflow"
  image_tag               = var.image_tag
  service_account_emails  = module.workload_identity.emails
  pipeline_root_bucket    = module.storage.pipeline_root_bucket
  mlflow_artifacts_bucket = module.storage.mlflow_artifacts_bucket
  model_store_bucket      = module.storage.model_store_bucket
  mlflow_db_host          = module.mlflow_db.private_ip
  mlflow_db_password      = module.secrets.mlflow_db_password
  serving_api_key         = module.secrets.serving_api_key
  serving_load_balancer   = var.serving_load_balancer
  serving_source_ranges   = var.serving_source_ranges
}
