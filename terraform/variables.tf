variable "project_id" {
  type        = string
  description = "Google Cloud project that holds everything (and runs the Dataflow job)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits, hyphens)."
  }
}

variable "region" {
  type        = string
  description = "Region of the Dataflow job, the bucket, the Artifact Registry repository and (unless bigquery_location says otherwise) the datasets, e.g. europe-west1."
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name (topic, subscription, bucket suffix, repository, service account, job). make/dataflow.mk's NAME_PREFIX must match."
  default     = "effectively-once"

  validation {
    # The worker service account is "<prefix>-worker", at most 30 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{2,21}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 4-23 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource that takes labels (merged over app and managed-by)."
  default     = {}
}

variable "enable_apis" {
  type        = bool
  description = "Enable the APIs this stack uses (never disabled on destroy). Turn off where a platform team manages APIs."
  default     = true
}

variable "force_destroy" {
  type        = bool
  description = "Let terraform destroy delete a non-empty bucket and datasets with their tables. Keep false outside throwaway projects; see docs/DEPLOY.md, Tear down."
  default     = false
}

# --- Pub/Sub

variable "ack_deadline_seconds" {
  type        = number
  description = "Ack deadline of the pipeline's subscription. Dataflow extends it while it works on a message, so this is only the initial lease."
  default     = 60

  validation {
    condition     = var.ack_deadline_seconds >= 10 && var.ack_deadline_seconds <= 600
    error_message = "ack_deadline_seconds must be within 10..600."
  }
}

variable "message_retention_days" {
  type        = number
  description = "How long the subscriptions keep messages, acknowledged ones included: how far back a replay (gcloud pubsub subscriptions seek) can go. Retained messages are billed; Pub/Sub allows 10 minutes to 31 days."
  default     = 7

  validation {
    condition     = var.message_retention_days >= 1 && var.message_retention_days <= 31
    error_message = "message_retention_days must be within 1..31."
  }
}

variable "consumer_subscriptions" {
  type = list(object({
    name                  = string
    ack_deadline_seconds  = optional(number, 60)
    max_delivery_attempts = optional(number, 10)
    filter                = optional(string)
    push_endpoint         = optional(string)
  }))
  description = "Other, non-Dataflow subscriptions on the events topic (an archive, a notifier). Pub/Sub dead-letters what they fail to process to the dead-letter topic after max_delivery_attempts (5..100)."
  default     = []

  validation {
    condition     = alltrue([for s in var.consumer_subscriptions : s.max_delivery_attempts >= 5 && s.max_delivery_attempts <= 100])
    error_message = "max_delivery_attempts must be within 5..100 (Pub/Sub's limits)."
  }
}

# --- BigQuery

variable "dataset_id" {
  type        = string
  description = "BigQuery dataset of the tables (the pipeline's --warehouse=bigquery:PROJECT.DATASET)."
  default     = "effectively_once"
}

variable "staging_dataset_id" {
  type        = string
  description = "BigQuery dataset where the warehouse stages each batch before its MERGE (--bigquery_staging_dataset)."
  default     = "effectively_once_staging"
}

variable "bigquery_location" {
  type        = string
  description = "Location of both datasets; null: the region. Keep it the job's region or the multi-region containing it."
  default     = null
}

variable "staging_table_expiration_hours" {
  type        = number
  description = "Default expiration of tables in the staging dataset: what a failed batch leaves behind disappears on its own."
  default     = 24

  validation {
    condition     = var.staging_table_expiration_hours >= 1
    error_message = "staging_table_expiration_hours must be at least 1."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the tables from terraform destroy (and from replacement). Set false, apply, then destroy, to tear down."
  default     = true
}

# --- Storage, images, access

variable "bucket_name" {
  type        = string
  description = "Bucket for Dataflow temp and staging files and the Flex Template specs; null: <project_id>-<name_prefix>."
  default     = null
}

variable "temp_retention_days" {
  type        = number
  description = "Objects under temp/ are deleted after this many days (Dataflow and BigQuery load leftovers). staging/ and templates/ are kept: a running job's workers read staging/ when they start."
  default     = 7
}

variable "input_buckets" {
  type        = list(string)
  description = "Buckets the worker may read backfill or replay files from (roles/storage.objectViewer), besides its own bucket."
  default     = []
}

variable "launcher_members" {
  type        = list(string)
  description = "Principals that launch jobs as the worker service account (roles/iam.serviceAccountUser on it only), e.g. [\"group:data-eng@example.com\"]. They also need roles/dataflow.developer on the project, which this stack does not grant."
  default     = []
}

# --- Monitoring

variable "notification_channels" {
  type        = list(string)
  description = "Cloud Monitoring notification channel IDs (projects/P/notificationChannels/N) the alert policies notify. Empty: alerts show in the console only."
  default     = []
}

variable "dead_letter_alert_threshold" {
  type        = number
  description = "Alert when more dead-letter rows than this were inserted within dead_letter_alert_window_minutes (0: any)."
  default     = 0
}

variable "dead_letter_alert_window_minutes" {
  type        = number
  description = "Window of the dead-letter growth alert, in minutes."
  default     = 15
}

variable "backlog_age_alert_seconds" {
  type        = number
  description = "Alert when the subscription's oldest unacknowledged message is older than this for 5 minutes."
  default     = 900
}

# --- The streaming job (optional)

variable "dataflow_job" {
  type = object({
    template_path          = string
    image                  = string
    name                   = optional(string)
    streaming_mode         = optional(string, "at_least_once")
    max_workers            = optional(number, 5)
    num_workers            = optional(number)
    machine_type           = optional(string)
    subnetwork             = optional(string)
    private_ips            = optional(bool, false)
    parameters             = optional(map(string), {})
    transform_name_mapping = optional(map(string), {})
  })
  description = <<-EOT
    The streaming job from the subscription into the tables, run by Terraform; null (default): no
    job here (launch it with `make launch`, and do not do both). template_path and image are what
    `make template` printed (gs://BUCKET/templates/....json, REGION-docker.pkg.dev/...:TAG).
    streaming_mode: at_least_once (default; the sink is idempotent) or exactly_once. parameters:
    more template parameters (e.g. window_size_seconds); input and warehouse come from this stack.
    Changing template_path updates the running job in place (--update), with
    transform_name_mapping for renamed steps. name: default <name_prefix>-streaming.
  EOT
  default     = null

  validation {
    condition     = var.dataflow_job == null ? true : contains(["at_least_once", "exactly_once"], var.dataflow_job.streaming_mode)
    error_message = "dataflow_job.streaming_mode must be at_least_once or exactly_once."
  }

  validation {
    condition     = var.dataflow_job == null ? true : length(setintersection(keys(var.dataflow_job.parameters), ["input_files", "input_topic", "input_subscription", "warehouse", "bigquery_staging_dataset", "bigquery_location"])) == 0
    error_message = "dataflow_job.parameters must not set the input or the warehouse: this stack does."
  }
}

# --- The cost meter of merge cycles

variable "expected_cycle_bytes_billed" {
  type        = number
  description = "Bytes BigQuery is expected to bill one merge cycle at your input rate: what `python -m bench.cost_model --events_per_second N --json` prints as cycle_bytes_billed for your rate N. The default is a placeholder, not a measurement: set it. The merge_cycle_bytes_billed alert fires at this times cycle_bytes_alert_factor."
  default     = 2000000000

  validation {
    condition     = var.expected_cycle_bytes_billed > 0
    error_message = "expected_cycle_bytes_billed must be positive."
  }
}

variable "cycle_bytes_alert_factor" {
  type        = number
  description = "Alert when merge cycles bill more than this many times expected_cycle_bytes_billed each, on average over the alert's window. A pruning regression multiplies a cycle's bytes by the ledger's age in partitions, far more than this factor, while traffic bursts within a cycle stay under it."
  default     = 2

  validation {
    condition     = var.cycle_bytes_alert_factor > 1
    error_message = "cycle_bytes_alert_factor must be greater than 1."
  }
}
