variable "project_id" {
  type        = string
  description = "Project of the datasets."
}

variable "dataset_id" {
  type        = string
  description = "Dataset of the tables."
}

variable "staging_dataset_id" {
  type        = string
  description = "Dataset of the warehouse's per-batch staging tables."
}

variable "location" {
  type        = string
  description = "Location of both datasets (a region or multi-region)."
}

variable "staging_table_expiration_hours" {
  type        = number
  description = "Default table expiration in the staging dataset, in hours."
}

variable "tables" {
  type = list(object({
    name        = string
    description = string
    schema      = string
    time_column = string
    partitioned = bool
    clustering  = list(string)
  }))
  description = "The tables: BigQuery JSON schema, day partitioning on time_column when partitioned, clustering columns (may be empty)."
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to destroy or replace the tables."
  default     = true
}

variable "delete_contents_on_destroy" {
  type        = bool
  description = "Let terraform destroy delete the datasets with the tables in them."
  default     = false
}

variable "labels" {
  type        = map(string)
  description = "Labels of the datasets and tables."
  default     = {}
}
