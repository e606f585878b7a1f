# The worker service account runs the Flex Template launcher and the Dataflow workers. Each role
# is granted on the narrowest resource that can hold it; only two are project-wide, because
# neither exists at a smaller scope.

resource "google_service_account" "worker" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-worker"
  display_name = "Dataflow worker: ${var.name_prefix}"
  description  = "Runs the Flex Template launcher and the workers of the effectively-once pipeline."
}

# roles/dataflow.worker: lease and report work items, Streaming Engine and shuffle, write logs
# and metrics (the job's counters among them): Dataflow grants it at project level only.
# roles/bigquery.jobUser: the warehouse's MERGEs, queries and load jobs are BigQuery jobs, which
# are created in a project; the data they may touch is limited by the dataset grants below.
resource "google_project_iam_member" "worker" {
  for_each = toset(["roles/dataflow.worker", "roles/bigquery.jobUser"])

  project = var.project_id
  role    = each.value
  member  = local.worker_member
}

# Read and acknowledge the pipeline's subscription, and nothing else in Pub/Sub: subscriber
# (consume, acknowledge, seek) plus viewer for subscriptions.get, which Dataflow's Pub/Sub source
# calls to read the subscription's settings. (--input_topic would create a subscription and need
# project-wide rights; this stack supports --input_subscription only.)
resource "google_pubsub_subscription_iam_member" "worker" {
  for_each = toset(["roles/pubsub.subscriber", "roles/pubsub.viewer"])

  project      = var.project_id
  subscription = module.pubsub.subscription_name
  role         = each.value
  member       = local.worker_member
}

# Create, read, write and drop tables in the two datasets only (MERGE targets, staging tables).
resource "google_bigquery_dataset_iam_member" "worker" {
  for_each = {
    warehouse = module.bigquery.dataset_id
    staging   = module.bigquery.staging_dataset_id
  }

  project    = var.project_id
  dataset_id = each.value
  role       = "roles/bigquery.dataEditor"
  member     = local.worker_member
}

# Temp and staging files, and the template spec the launcher reads.
resource "google_storage_bucket_iam_member" "worker" {
  bucket = google_storage_bucket.dataflow.name
  role   = "roles/storage.objectAdmin"
  member = local.worker_member
}

# Backfill and replay files kept elsewhere: read only.
resource "google_storage_bucket_iam_member" "worker_reads_inputs" {
  for_each = toset(var.input_buckets)

  bucket = each.value
  role   = "roles/storage.objectViewer"
  member = local.worker_member
}

# The launcher VM and every worker pull the image.
resource "google_artifact_registry_repository_iam_member" "worker" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = local.worker_member
}

# Who may start jobs that run as the worker (on this service account, not project-wide).
resource "google_service_account_iam_member" "launchers" {
  for_each = toset(var.launcher_members)

  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}
