provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_client_config" "current" {}

# Both Kubernetes providers talk to the new cluster with the caller's Google credentials.
provider "kubernetes" {
  host                   = "https://${module.gke.endpoint}"
  token                  = data.google_client_config.current.access_token
  cluster_ca_certificate = base64decode(module.gke.ca_certificate)
}

provider "kustomization" {
  kubeconfig_raw = yamlencode({
    apiVersion      = "v1"
    kind            = "Config"
    current-context = "recflow"
    clusters = [{
      name = "recflow"
      cluster = {
        server                     = "https://${module.gke.endpoint}"
        certificate-authority-data = module.gke.ca_certificate
      }
    }]
    contexts = [{ name = "recflow", context = { cluster = "recflow", user = "recflow" } }]
    users    = [{ name = "recflow", user = { token = data.google_client_config.current.access_token } }]
  })
}
