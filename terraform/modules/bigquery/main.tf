# The warehouse dataset with the pipeline's tables, and the staging dataset of its load jobs.

resource "google_bigquery_dataset" "warehouse" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption by default; a customer-managed key is an organisation decision that also needs key grants to the BigQuery service agent.
  project                    = var.project_id
  dataset_id                 = var.dataset_id
  location                   = var.location
  description                = "Effectively-once pipeline: the ledger, current transactions, window totals, dead letters."
  delete_contents_on_destroy = var.delete_contents_on_destroy
  labels                     = var.labels
}

# Each batch is loaded here, MERGEd into the warehouse and dropped; a batch that failed half-way
# leaves its staging table behind, which the default expiration removes.
resource "google_bigquery_dataset" "staging" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption by default; a customer-managed key is an organisation decision that also needs key grants to the BigQuery service agent.
  project                     = var.project_id
  dataset_id                  = var.staging_dataset_id
  location                    = var.location
  description                 = "Effectively-once pipeline: per-batch staging tables of the MERGEs; they expire on their own."
  default_table_expiration_ms = var.staging_table_expiration_hours * 3600 * 1000
  delete_contents_on_destroy  = true
  labels                      = var.labels
}

resource "google_bigquery_table" "tables" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption by default; a customer-managed key is an organisation decision that also needs key grants to the BigQuery service agent.
  for_each = { for table in var.tables : table.name => table }

  project             = var.project_id
  dataset_id          = google_bigquery_dataset.warehouse.dataset_id
  table_id            = each.key
  description         = each.value.description
  schema              = each.value.schema
  clustering          = length(each.value.clustering) > 0 ? each.value.clustering : null
  deletion_protection = var.deletion_protection
  labels              = var.labels

  dynamic "time_partitioning" {
    for_each = each.value.partitioned ? [each.value.time_column] : []
    content {
      type  = "DAY"
      field = time_partitioning.value
    }
  }
}
