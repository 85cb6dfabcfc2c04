# dev: zonal cluster, Spot GPUs, no deletion protection, buckets deletable.
#   terraform plan -var-file=environments/dev.tfvars -var-file=dev.local.tfvars
environment          = "dev"
cluster_zone         = "europe-west4-a"
deletion_protection  = false
force_destroy        = true
cpu_max_nodes        = 3
gpu_max_nodes        = 1
gpu_node_locations   = []
gpu_spot             = true
db_tier              = "db-custom-1-3840"
db_high_availability = false
