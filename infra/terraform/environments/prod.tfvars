# prod: regional cluster, GPU pool in three zones, HA Cloud SQL, deletion protection, buckets kept.
#   terraform plan -var-file=environments/prod.tfvars -var-file=prod.local.tfvars
environment          = "prod"
cluster_zone         = ""
deletion_protection  = true
force_destroy        = false
cpu_max_nodes        = 5
gpu_max_nodes        = 4
gpu_node_locations   = ["europe-west4-a", "europe-west4-b", "europe-west4-c"]
gpu_spot             = false
db_tier              = "db-custom-2-7680"
db_high_availability = true
