# The streaming job, when var.dataflow_job is set (else launch it with `make launch`).
#
# Streaming mode: at-least-once by default. Dataflow's exactly-once mode deduplicates every
# message and state update against persistent storage; at-least-once skips that (cheaper, lower
# latency) and may process a message twice. This pipeline is idempotent at every tier (dedup
# state, MERGE that inserts only absent event_ids, dead letters keyed by a hash of their content),
# so a duplicate changes no table: the extra guarantee would be paid for and never used.
# exactly_once is one variable away.
locals {
  streaming_mode_experiments = {
    at_least_once = ["streaming_mode_at_least_once"]
    exactly_once  = []
  }
}

resource "google_dataflow_flex_template_job" "streaming" {
  count    = var.dataflow_job == null ? 0 : 1
  provider = google-beta

  project                 = var.project_id
  region                  = var.region
  name                    = coalesce(var.dataflow_job.name, "${var.name_prefix}-streaming")
  container_spec_gcs_path = var.dataflow_job.template_path
  sdk_container_image     = var.dataflow_job.image
  service_account_email   = google_service_account.worker.email
  temp_location           = "gs://${google_storage_bucket.dataflow.name}/temp"
  staging_location        = "gs://${google_storage_bucket.dataflow.name}/staging"
  enable_streaming_engine = true
  additional_experiments  = local.streaming_mode_experiments[var.dataflow_job.streaming_mode]
  max_workers             = var.dataflow_job.max_workers
  num_workers             = var.dataflow_job.num_workers
  machine_type            = var.dataflow_job.machine_type
  subnetwork              = var.dataflow_job.subnetwork
  ip_configuration        = var.dataflow_job.private_ips ? "WORKER_IP_PRIVATE" : null
  labels                  = local.labels
  transform_name_mapping  = var.dataflow_job.transform_name_mapping

  # Template parameters (templates/metadata.json): the stack's input and warehouse, after the
  # caller's extra ones (which may not set these: see the variable's validation).
  parameters = merge(var.dataflow_job.parameters, {
    input_subscription       = module.pubsub.subscription_id
    warehouse                = "bigquery:${var.project_id}.${module.bigquery.dataset_id}"
    bigquery_staging_dataset = "${var.project_id}.${module.bigquery.staging_dataset_id}"
    bigquery_location        = local.bigquery_location
  })

  # terraform destroy drains: no new messages are pulled, and what was pulled is merged first.
  on_delete = "drain"

  depends_on = [
    google_project_iam_member.worker,
    google_pubsub_subscription_iam_member.worker,
    google_bigquery_dataset_iam_member.worker,
    google_storage_bucket_iam_member.worker,
    google_artifact_registry_repository_iam_member.worker,
  ]
}
