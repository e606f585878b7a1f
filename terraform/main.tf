# Everything the pipeline needs on Google Cloud, from clone to a running, observable job:
# Pub/Sub (modules/pubsub), BigQuery (modules/bigquery), a bucket for Dataflow's temp and staging
# files and the Flex Template specs, an Artifact Registry repository for the image, the worker
# service account with least-privilege roles (iam.tf), the optional streaming job (dataflow.tf)
# and alert policies (monitoring.tf). docs/DEPLOY.md walks through it.

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

provider "google-beta" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

locals {
  labels            = merge({ app = "effectively-once", managed-by = "terraform" }, var.labels)
  bucket_name       = coalesce(var.bucket_name, "${var.project_id}-${var.name_prefix}")
  bigquery_location = coalesce(var.bigquery_location, var.region)
  worker_member     = "serviceAccount:${google_service_account.worker.email}"

  # The tables' layout, as pipeline/tables.py defines it (tests/test_terraform.py fails when the
  # two differ); their schemas are generated from the same module into schemas/. Partitioned by
  # day of time_column, the column each MERGE restricts its target on.
  tables = [
    {
      name        = "transaction_events"
      description = "The ledger: every accepted event exactly once."
      time_column = "event_time"
      partitioned = true
      clustering  = ["event_id", "account_id"]
    },
    {
      name        = "transactions"
      description = "Current state of each transaction, from its latest event."
      time_column = "event_time"
      partitioned = true
      clustering  = ["transaction_id", "account_id"]
    },
    {
      name        = "account_window_totals"
      description = "Exact count and sum per account, currency and fixed event-time window, recomputed from the ledger."
      time_column = "window_start"
      partitioned = true
      clustering  = ["account_id", "currency"]
    },
    {
      name        = "dead_letters"
      description = "Input the pipeline refused, with the reason; nothing is dropped silently."
      time_column = "arrival_time"
      partitioned = true
      clustering  = ["stage", "dead_letter_id"]
    },
    {
      name        = "ingest_checkpoints"
      description = "Replay checkpoints of streaming inputs."
      time_column = "updated_at"
      partitioned = false
      clustering  = []
    },
  ]

  services = [
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "dataflow.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "storage.googleapis.com",
  ]
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? toset(local.services) : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

module "pubsub" {
  source = "./modules/pubsub"

  project_id             = var.project_id
  topic_name             = "${var.name_prefix}-events"
  subscription_name      = "${var.name_prefix}-events-dataflow"
  dead_letter_topic_name = "${var.name_prefix}-dead-letters"
  ack_deadline_seconds   = var.ack_deadline_seconds
  message_retention      = "${var.message_retention_days * 86400}s"
  consumer_subscriptions = var.consumer_subscriptions
  pubsub_service_agent   = "service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  labels                 = local.labels

  depends_on = [google_project_service.apis]
}

module "bigquery" {
  source = "./modules/bigquery"

  project_id                     = var.project_id
  dataset_id                     = var.dataset_id
  staging_dataset_id             = var.staging_dataset_id
  location                       = local.bigquery_location
  staging_table_expiration_hours = var.staging_table_expiration_hours
  deletion_protection            = var.deletion_protection
  delete_contents_on_destroy     = var.force_destroy
  labels                         = local.labels
  tables = [
    for table in local.tables : merge(table, {
      schema = file("${path.module}/schemas/${table.name}.json")
    })
  ]

  depends_on = [google_project_service.apis]
}

# Dataflow's temp and staging files and the Flex Template specs (templates/<prefix>-<tag>.json,
# one per image tag, so an older version can be relaunched).
resource "google_storage_bucket" "dataflow" {
  #checkov:skip=CKV_GCP_62:Access logs would need a second bucket; Cloud Audit Logs (Data Access) record access to this working bucket where an organisation wants it.
  #checkov:skip=CKV_GCP_78:No object versioning: temp files churn (versions would only add cost), and template specs are named after their image tag, so a new version is a new object.
  name                        = local.bucket_name
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels

  # Temp files of finished work. staging/ is not expired: workers of a running job, including
  # ones added by autoscaling weeks later, read the job's staged files there.
  lifecycle_rule {
    condition {
      age            = var.temp_retention_days
      matches_prefix = ["temp/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# The image of the Flex Template launcher and of the workers (templates/Dockerfile).
resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption by default; a customer-managed key is an organisation decision that also needs key grants to the Artifact Registry service agent.
  project       = var.project_id
  location      = var.region
  repository_id = var.name_prefix
  format        = "DOCKER"
  description   = "Flex Template launcher and worker images of the effectively-once pipeline."
  labels        = local.labels

  # Every build is tagged (git describe), and a running job pulls its image whenever a worker
  # starts, so only untagged leftovers are cleaned up; delete old tags yourself once no job
  # uses them.
  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "604800s"
    }
  }

  depends_on = [google_project_service.apis]
}
