output "dataset_id" {
  description = "The warehouse dataset's ID."
  value       = google_bigquery_dataset.warehouse.dataset_id
}

output "staging_dataset_id" {
  description = "The staging dataset's ID."
  value       = google_bigquery_dataset.staging.dataset_id
}

output "table_ids" {
  description = "PROJECT.DATASET.TABLE of every table, by name."
  value       = { for name, table in google_bigquery_table.tables : name => "${var.project_id}.${table.dataset_id}.${table.table_id}" }
}
