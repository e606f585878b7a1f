# Alert policies: refused input growing, the subscription falling behind, a job failing.
# docs/DEPLOY.md, Watch the job, says what to do when one fires.

locals {
  job_name_prefix = "${var.name_prefix}-"
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
