# Alert policies: refused input growing, the subscription falling behind, a job failing, merge
# cycles billing more than the cost model expects. docs/DEPLOY.md, Watch the job, says what to
# do when one fires; dashboard.tf charts what they watch.

locals {
  job_name_prefix = "${var.name_prefix}-"

  # The window of bytes billed per merge cycle (the alert and its chart): it spans many cycles
  # at any merge interval a streaming job would run with, so one heavy cycle is averaged with
  # its neighbours and a counter sampled a little before the other moves the ratio little.
  cycle_cost_window_minutes = 30
}

# Dead letters land in the BigQuery table dead_letters, not in Pub/Sub, so the honest signal is
# the job's counter of rows actually inserted there, dead_letters_rows_inserted (both sinks add
# to it, parse and conflict dead letters alike). It counts new rows only: a replayed or
# redelivered message that is already a dead letter adds nothing, so at-least-once delivery
# and replays do not inflate it (dead_letters_parse, by contrast, counts every parse, duplicates
# included). Dataflow exports Beam counters as dataflow.googleapis.com/job/user_counter, with
# the counter's name in the metric_name label.
resource "google_monitoring_alert_policy" "dead_letters_growing" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: dead letters growing"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "More than ${var.dead_letter_alert_threshold} dead-letter rows inserted in ${var.dead_letter_alert_window_minutes} min"
    condition_prometheus_query_language {
      query               = <<-EOT
        sum by (job_name) (
          delta(dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job",metric_name="dead_letters_rows_inserted",job_name=~"${local.job_name_prefix}.*"}[${var.dead_letter_alert_window_minutes}m])
        ) > ${var.dead_letter_alert_threshold}
      EOT
      duration            = "0s"
      evaluation_interval = "60s"
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The pipeline refused input; it is kept in BigQuery, not lost. What, and why:

      ```sql
      SELECT stage, error, COUNT(*) AS n
      FROM `${var.project_id}.${module.bigquery.dataset_id}.dead_letters`
      WHERE arrival_time > TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 HOUR)
      GROUP BY stage, error ORDER BY n DESC
      ```

      Fix the producer, then replay the corrected events (docs/DEPLOY.md, Dead letters).
    EOT
  }
}

# The oldest message the job has not acknowledged: grows when the job is down, stuck (a bundle
# failing again and again) or too small for the input rate.
resource "google_monitoring_alert_policy" "subscription_backlog_age" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: subscription backlog too old"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Oldest unacked message older than ${var.backlog_age_alert_seconds} s"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${module.pubsub.subscription_name}\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.backlog_age_alert_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The job is behind on ${module.pubsub.subscription_id}. Check that a job named
      ${local.job_name_prefix}... is running (`gcloud dataflow jobs list --region ${var.region} --status active`),
      then its logs for a failing step and its autoscaling (max workers). Nothing is lost while
      messages wait: they are retained ${var.message_retention_days} days (docs/DEPLOY.md, Watch the job).
    EOT
  }
}

# A job of this stack failed (streaming or a backfill).
resource "google_monitoring_alert_policy" "job_failed" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: Dataflow job failed"
  combiner              = "OR"
  severity              = "CRITICAL"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Job ${local.job_name_prefix}* failed"
    condition_threshold {
      filter          = "resource.type = \"dataflow_job\" AND resource.labels.job_name = starts_with(\"${local.job_name_prefix}\") AND metric.type = \"dataflow.googleapis.com/job/is_failed\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A Dataflow job of ${var.name_prefix} failed: read its error in the job's logs, fix, relaunch (docs/DEPLOY.md). Every tier is idempotent: relaunching over the same input is safe."
  }
}

# Bytes billed per merge cycle, the cost meter's signal: bytes billed by the cycles' jobs over the
# cycles that ran, in a window. A cycle takes what arrived in its interval and every statement
# restricts what it reads, so at a steady rate the figure holds still; it climbs with the ledger
# when a statement stops pruning, which is what this alert is for, and such a regression lasts,
# so the condition must hold a while before it fires. Both counters are job totals (see
# dead_letters_growing): delta() per series, summed by job; a window without a cycle gives no
# ratio rather than a division by zero.
resource "google_monitoring_alert_policy" "merge_cycle_bytes_billed" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: merge cycles bill too many bytes"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Bytes billed per merge cycle above ${var.cycle_bytes_alert_factor} x ${var.expected_cycle_bytes_billed} over ${local.cycle_cost_window_minutes} min"
    condition_prometheus_query_language {
      query               = <<-EOT
        sum by (job_name) (
          delta(dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job",metric_name="merge_cycle_bytes_billed",job_name=~"${local.job_name_prefix}.*"}[${local.cycle_cost_window_minutes}m])
        )
        /
        (
          sum by (job_name) (
            delta(dataflow_googleapis_com:job_user_counter{monitored_resource="dataflow_job",metric_name="merge_cycles",job_name=~"${local.job_name_prefix}.*"}[${local.cycle_cost_window_minutes}m])
          ) > 0
        )
        > ${var.expected_cycle_bytes_billed * var.cycle_bytes_alert_factor}
      EOT
      duration            = "600s"
      evaluation_interval = "60s"
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Merge cycles billed more than ${var.cycle_bytes_alert_factor} times the expected
      ${var.expected_cycle_bytes_billed} bytes each, on average over ${local.cycle_cost_window_minutes} min.
      The dashboard "${var.name_prefix}: pipeline", Cost of merge cycles, shows since when.
      The most expensive jobs of the worker:

      ```sql
      SELECT job_id, statement_type, total_bytes_billed, total_slot_ms
      FROM `region-${lower(local.bigquery_location)}`.INFORMATION_SCHEMA.JOBS_BY_PROJECT
      WHERE creation_time > TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 HOUR)
        AND user_email = "${google_service_account.worker.email}"
      ORDER BY total_bytes_billed DESC LIMIT 20
      ```

      A figure that grows with the ledger's age is a statement that stopped pruning: see
      docs/BIGQUERY.md for what each statement reads, and --bigquery_dedup_horizon_days (a
      template parameter) to bound the ledger lookup. If the input rate rose for good, rerun
      `python -m bench.cost_model --events_per_second N --json` and set
      expected_cycle_bytes_billed to its cycle_bytes_billed.
    EOT
  }
}
