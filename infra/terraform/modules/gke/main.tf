# A private, VPC-native GKE cluster with Workload Identity and two autoscaled node pools: CPU for everything and
# GPU for the trainers only (tainted, so nothing else lands there, and scaled from zero).

locals {
  # Taint and labels of the GPU pool. The KFP pipeline's trainer tasks carry the matching toleration and node
  # selector (pipelines/placement); tests/test_infra.py compares the compiled pipeline with these blocks.
  gpu_taint = {
    key    = "nvidia.com/gpu"
    value  = "present"
    effect = "NO_SCHEDULE"
  }
  oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
}

# The nodes' own identity: only what the kubelet needs (logs, metrics, image pulls). Workloads never use it:
# with GKE_METADATA they get their own Google service account through Workload Identity.
resource "google_service_account" "nodes" {
  project      = var.project_id
  account_id   = substr("${var.name}-nodes", 0, 30)
  display_name = "GKE nodes of ${var.name}"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "this" {
  # checkov:skip=CKV_GCP_12:NetworkPolicy is enforced by Dataplane V2 (datapath_provider ADVANCED_DATAPATH), which must not be combined with the legacy network_policy addon
  # checkov:skip=CKV_GCP_65:Google Groups for RBAC needs a Google Workspace domain, which a recflow deployment may not have; RBAC is granted to individual users and service accounts
  project             = var.project_id
  name                = var.name
  location            = var.location
  network             = var.network_id
  subnetwork          = var.subnetwork_id
  deletion_protection = var.deletion_protection

  # The default pool is replaced by the two managed pools below.
  remove_default_node_pool = true
  initial_node_count       = 1

  networking_mode   = "VPC_NATIVE"
  datapath_provider = "ADVANCED_DATAPATH" # Dataplane V2: NetworkPolicy enforcement built in

  ip_allocation_policy {
    cluster_secondary_range_name  = var.pods_range_name
    services_secondary_range_name = var.services_range_name
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = var.enable_private_endpoint
    master_ipv4_cidr_block  = var.master_ipv4_cidr_block
    master_global_access_config {
      enabled = true
    }
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  release_channel {
    channel = var.release_channel
  }

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  enable_shielded_nodes       = true
  enable_intranode_visibility = true

  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  addons_config {
    http_load_balancing {
      disabled = false
    }
    gce_persistent_disk_csi_driver_config {
      enabled = true
    }
  }

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }

  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
    managed_prometheus {
      enabled = false # recflow runs its own Prometheus/Alertmanager (infra/k8s)
    }
  }

  resource_labels = {
    app = "recflow"
  }

  # Only used for the short-lived default pool; the same hardening as the real pools.
  node_config {
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.oauth_scopes
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  lifecycle {
    ignore_changes = [node_config, initial_node_count]
  }
}

resource "google_container_node_pool" "cpu" {
  project  = var.project_id
  name     = "cpu"
  cluster  = google_container_cluster.this.id
  location = var.location

  autoscaling {
    min_node_count = var.cpu_min_nodes
    max_node_count = var.cpu_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.cpu_machine_type
    image_type      = "COS_CONTAINERD"
    disk_size_gb    = 100
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.oauth_scopes
    labels = {
      "recflow.io/node-pool" = "cpu"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}

resource "google_container_node_pool" "gpu" {
  project        = var.project_id
  name           = "gpu"
  cluster        = google_container_cluster.this.id
  location       = var.location
  node_locations = length(var.gpu_node_locations) > 0 ? var.gpu_node_locations : null

  # Scaled from zero: the cluster autoscaler adds a node when a trainer Pod asks for nvidia.com/gpu and
  # removes it when the node has been idle.
  autoscaling {
    total_min_node_count = var.gpu_min_nodes
    total_max_node_count = var.gpu_max_nodes
    location_policy      = "ANY"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.gpu_machine_type
    image_type      = "COS_CONTAINERD"
    disk_size_gb    = 100
    spot            = var.gpu_spot
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.oauth_scopes

    guest_accelerator {
      type  = var.gpu_accelerator_type
      count = var.gpu_accelerator_count
      # GKE installs the NVIDIA driver itself (no driver DaemonSet to apply).
      gpu_driver_installation_config {
        gpu_driver_version = var.gpu_driver_version
      }
    }

    # GKE adds cloud.google.com/gke-accelerator=<type> and cloud.google.com/gke-nodepool=gpu by itself.
    labels = {
      "recflow.io/node-pool" = var.gpu_pool_label
    }

    taint {
      key    = local.gpu_taint.key
      value  = local.gpu_taint.value
      effect = local.gpu_taint.effect
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}
