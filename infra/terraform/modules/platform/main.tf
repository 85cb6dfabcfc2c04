# Everything on the cluster: Kubeflow Pipelines from its official kustomize manifests, then the recflow
# workloads from infra/k8s (MLflow, the recommendation service, Prometheus/Alertmanager, the drift CronJob)
# with the values only Terraform knows patched in, the two Secrets, and load balancers for the three endpoints.

locals {
  kfp_manifests = "github.com/kubeflow/pipelines/manifests/kustomize"
  recflow_k8s   = abspath("${path.module}/../../../k8s")
  internal_lb = {
    "networking.gke.io/load-balancer-type" = "Internal"
  }
}

# --- Kubeflow Pipelines (the same two steps as the official `kubectl apply -k` install) ---

data "kustomization_build" "kfp_cluster" {
  path = "${local.kfp_manifests}/cluster-scoped-resources?ref=${var.kfp_version}"
}

resource "kustomization_resource" "kfp_cluster_p0" {
  for_each = data.kustomization_build.kfp_cluster.ids_prio[0]
  manifest = data.kustomization_build.kfp_cluster.manifests[each.value]
}

resource "kustomization_resource" "kfp_cluster_p1" {
  for_each   = data.kustomization_build.kfp_cluster.ids_prio[1]
  manifest   = data.kustomization_build.kfp_cluster.manifests[each.value]
  wait       = true
  depends_on = [kustomization_resource.kfp_cluster_p0]
}

resource "kustomization_resource" "kfp_cluster_p2" {
  for_each   = data.kustomization_build.kfp_cluster.ids_prio[2]
  manifest   = data.kustomization_build.kfp_cluster.manifests[each.value]
  depends_on = [kustomization_resource.kfp_cluster_p1]
}

# The platform-agnostic env, with the pipeline runner's service account bound to the pipelines Google service
# account (Workload Identity): pipeline steps then read and write gs:// without keys.
data "kustomization_overlay" "kfp" {
  resources = ["${local.kfp_manifests}/env/platform-agnostic?ref=${var.kfp_version}"]

  patches {
    target {
      kind = "ServiceAccount"
      name = "pipeline-runner"
    }
    patch = yamlencode({
      apiVersion = "v1"
      kind       = "ServiceAccount"
      metadata = {
        name        = "pipeline-runner"
        annotations = { "iam.gke.io/gcp-service-account" = var.service_account_emails["pipelines"] }
      }
    })
  }
}

resource "kustomization_resource" "kfp_p0" {
  for_each   = data.kustomization_overlay.kfp.ids_prio[0]
  manifest   = data.kustomization_overlay.kfp.manifests[each.value]
  depends_on = [kustomization_resource.kfp_cluster_p2]
}

resource "kustomization_resource" "kfp_p1" {
  for_each   = data.kustomization_overlay.kfp.ids_prio[1]
  manifest   = data.kustomization_overlay.kfp.manifests[each.value]
  wait       = true
  depends_on = [kustomization_resource.kfp_p0]
}

resource "kustomization_resource" "kfp_p2" {
  for_each   = data.kustomization_overlay.kfp.ids_prio[2]
  manifest   = data.kustomization_overlay.kfp.manifests[each.value]
  depends_on = [kustomization_resource.kfp_p1]
}

# --- recflow workloads (infra/k8s) ---

data "kustomization_overlay" "recflow" {
  resources = [local.recflow_k8s]

  images {
    name     = "recflow"
    new_name = var.image
    new_tag  = var.image_tag
  }

  patches {
    patch = yamlencode({
      apiVersion = "v1"
      kind       = "ConfigMap"
      metadata   = { name = "recflow-platform", namespace = "recflow" }
      data = {
        MLFLOW_DB_HOST               = var.mlflow_db_host
        MLFLOW_ARTIFACTS_DESTINATION = "gs://${var.mlflow_artifacts_bucket}"
        MODEL_STORE_URI              = "gs://${var.model_store_bucket}"
        PIPELINE_ROOT                = "gs://${var.pipeline_root_bucket}"
      }
    })
  }

  dynamic "patches" {
    for_each = { recommender = "serving", drift-monitor = "monitoring", mlflow = "mlflow" }
    content {
      patch = yamlencode({
        apiVersion = "v1"
        kind       = "ServiceAccount"
        metadata = {
          name        = patches.key
          namespace   = "recflow"
          annotations = { "iam.gke.io/gcp-service-account" = var.service_account_emails[patches.value] }
        }
      })
    }
  }
}

resource "kustomization_resource" "recflow_p0" {
  for_each = data.kustomization_overlay.recflow.ids_prio[0]
  manifest = data.kustomization_overlay.recflow.manifests[each.value]
}

resource "kubernetes_secret_v1" "recommender_api_key" {
  metadata {
    name      = "recommender-api-key"
    namespace = "recflow"
  }
  data = {
    api-key = var.serving_api_key
  }
  depends_on = [kustomization_resource.recflow_p0]
}

resource "kubernetes_secret_v1" "mlflow_db" {
  metadata {
    name      = "mlflow-db"
    namespace = "recflow"
  }
  data = {
    password = var.mlflow_db_password
  }
  depends_on = [kustomization_resource.recflow_p0]
}

resource "kustomization_resource" "recflow_p1" {
  for_each = data.kustomization_overlay.recflow.ids_prio[1]
  manifest = data.kustomization_overlay.recflow.manifests[each.value]
  wait     = true
  depends_on = [
    kustomization_resource.recflow_p0,
    kubernetes_secret_v1.recommender_api_key,
    kubernetes_secret_v1.mlflow_db,
  ]
}

resource "kustomization_resource" "recflow_p2" {
  for_each   = data.kustomization_overlay.recflow.ids_prio[2]
  manifest   = data.kustomization_overlay.recflow.manifests[each.value]
  depends_on = [kustomization_resource.recflow_p1]
}

# --- endpoints: load balancers whose addresses become the outputs ---

resource "kubernetes_service_v1" "kfp" {
  metadata {
    name        = "ml-pipeline-ui-internal"
    namespace   = "kubeflow"
    annotations = local.internal_lb
  }
  spec {
    type     = "LoadBalancer"
    selector = { app = "ml-pipeline-ui" }
    port {
      name        = "http"
      port        = 80
      target_port = 3000
    }
  }
  wait_for_load_balancer = true
  depends_on             = [kustomization_resource.kfp_p2]
}

resource "kubernetes_service_v1" "mlflow" {
  metadata {
    name        = "mlflow-internal"
    namespace   = "recflow"
    annotations = local.internal_lb
  }
  spec {
    type     = "LoadBalancer"
    selector = { "app.kubernetes.io/name" = "mlflow" }
    port {
      name        = "http"
      port        = 5000
      target_port = 5000
    }
  }
  wait_for_load_balancer = true
  depends_on             = [kustomization_resource.recflow_p2]
}

resource "kubernetes_service_v1" "recommender" {
  metadata {
    name        = "recommender-lb"
    namespace   = "recflow"
    annotations = var.serving_load_balancer == "Internal" ? local.internal_lb : {}
  }
  spec {
    type                        = "LoadBalancer"
    selector                    = { "app.kubernetes.io/name" = "recommender" }
    load_balancer_source_ranges = var.serving_source_ranges
    port {
      name        = "http"
      port        = 80
      target_port = 8080
    }
  }
  wait_for_load_balancer = true
  depends_on             = [kustomization_resource.recflow_p2]
}
