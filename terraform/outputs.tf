output "topic" {
  description = "Topic producers publish events to (projects/P/topics/T)."
  value       = module.pubsub.topic_id
}

output "subscription" {
  description = "The pipeline's subscription, its --input_subscription (projects/P/subscriptions/S)."
  value       = module.pubsub.subscription_id
}

output "dead_letter_topic" {
  description = "Dead-letter topic of the consumer subscriptions (projects/P/topics/T)."
  value       = module.pubsub.dead_letter_topic_id
}

output "dead_letter_hold_subscription" {
  description = "Subscription that keeps what Pub/Sub dead-letters, for inspection and re-publication."
  value       = module.pubsub.dead_letter_subscription_id
}

output "warehouse" {
  description = "The pipeline's --warehouse option."
  value       = "bigquery:${var.project_id}.${module.bigquery.dataset_id}"
}

output "bigquery_staging_dataset" {
  description = "The pipeline's --bigquery_staging_dataset option (PROJECT.DATASET)."
  value       = "${var.project_id}.${module.bigquery.staging_dataset_id}"
}

output "tables" {
  description = "Fully qualified IDs of the tables, by name."
  value       = module.bigquery.table_ids
}

output "bucket" {
  description = "Bucket of Dataflow's temp (temp/) and staging (staging/) files and the template specs (templates/)."
  value       = google_storage_bucket.dataflow.name
}

output "image_repository" {
  description = "Artifact Registry path images are pushed to (REGION-docker.pkg.dev/PROJECT/REPOSITORY)."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "worker_service_account" {
  description = "Email of the service account the launcher and workers run as."
  value       = google_service_account.worker.email
}

output "job_id" {
  description = "ID of the Terraform-managed streaming job; null when var.dataflow_job is null."
  value       = try(google_dataflow_flex_template_job.streaming[0].job_id, null)
}

output "make_env" {
  description = "make/dataflow.mk's variables for this stack; `make dataflow-env` writes them to build/dataflow.env, which the make targets read."
  value       = <<-EOT
    PROJECT := ${var.project_id}
    REGION := ${var.region}
    NAME_PREFIX := ${var.name_prefix}
    BUCKET := ${google_storage_bucket.dataflow.name}
    AR_REPOSITORY := ${google_artifact_registry_repository.images.repository_id}
    SERVICE_ACCOUNT := ${google_service_account.worker.email}
    SUBSCRIPTION := ${module.pubsub.subscription_id}
    DATASET := ${module.bigquery.dataset_id}
    STAGING_DATASET := ${module.bigquery.staging_dataset_id}
    BIGQUERY_LOCATION := ${local.bigquery_location}
  EOT
}
