# A Cloud Monitoring dashboard of the pipeline: what its events became (the run summary's
# counters, live), what the writes and merge cycles cost, and whether the job keeps up with the
# subscription. It watches what the alerts in monitoring.tf watch, selected the same way: the
# jobs whose name starts with local.job_name_prefix, and the pipeline's subscription.
#
# Every chart is PromQL, like the dead-letter alert. Dataflow exports each Beam counter as
# dataflow.googleapis.com/job/user_counter, the counter's name in the metric_name label, one
# series per job and step whose value is the job's total so far (a GAUGE): a chart takes delta()
# over a window per series, then sums the steps. A Beam Distribution gets no distribution-valued
# series: Dataflow reports it as four such counters, its name suffixed _MEAN, _MAX, _MIN and
# _COUNT (Dataflow's guide "Use Cloud Monitoring for Dataflow pipelines", custom metrics; Beam's
# runners/dataflow/dataflow_metrics.py reads them back the same way), each an aggregate over
# the job's life, not over the chart's window. The distributions' charts show those.
#
# tests/test_dashboard.py checks that every counter named here and in monitoring.tf is one
# pipeline/metrics.py declares.

locals {
  # The window each rate is taken over: several of Dataflow's samples of a counter, so a late
  # sample does not show as a dip.
  dashboard_rate_window_minutes = 5

  dashboard_jobs         = "monitored_resource=\"dataflow_job\",job_name=~\"${local.job_name_prefix}.*\""
  dashboard_subscription = "monitored_resource=\"pubsub_subscription\",subscription_id=\"${module.pubsub.subscription_name}\""
  dashboard_per_minute   = "[${local.dashboard_rate_window_minutes}m])) / ${local.dashboard_rate_window_minutes}"

  # Sections top to bottom, their charts dashboard_per_row to a row. A chart's series: a legend
  # and a PromQL query; unit is the Cloud Monitoring unit of its values; thresholds draw the
  # lines its alert fires at.
  dashboard_sections = [
    {
      title    = "Outcomes"
      subtitle = "What the input became: the run summary's counters, per minute."
      charts = [
        {
          # Lines read counts every delivery of a message, redeliveries and replays included;
          # accepted counts the events that were new to the ledger.
          title  = "Read and accepted"
          y_axis = "per minute"
          unit   = "1"
          series = [
            { legend = "messages read", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"lines_read\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
            { legend = "accepted (new ledger rows)", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"ledger_rows_inserted\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
          ]
        },
        {
          title  = "Identical duplicates dropped, by tier"
          y_axis = "events per minute"
          unit   = "1"
          series = [
            { legend = "pipeline (DedupByEventId)", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"identical_duplicates_pipeline\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
            { legend = "warehouse (the ledger)", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"identical_duplicates_warehouse\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
          ]
        },
        {
          # Parse dead letters are counted at every parse, a redelivered message's included; the
          # rows inserted are new rows of the dead_letters table only, which replays do not add to.
          title  = "Conflicts and other dead letters, by stage"
          y_axis = "records per minute"
          unit   = "1"
          series = [
            { legend = "parse (every parse)", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"dead_letters_parse\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
            { legend = "conflicting version", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"conflicts_dead_lettered\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
            { legend = "new rows in dead_letters", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"dead_letters_rows_inserted\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
          ]
        },
      ]
    },
    {
      title    = "Writes"
      subtitle = "Staged appends and the merge cycles that take them into the tables."
      charts = [
        {
          # Staged rows include the warehouse tier's duplicates and conflicts, so staged above
          # transaction_events is input the ledger already held.
          title  = "Rows staged, and rows merged by table"
          y_axis = "rows per minute"
          unit   = "1"
          series = [
            { legend = "staged", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"ledger_rows_staged\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
            { legend = "transaction_events", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"ledger_rows_inserted\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
            { legend = "transactions", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"transactions_rows_upserted\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
            { legend = "account_window_totals", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"window_totals_rows_upserted\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
            { legend = "dead_letters", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"dead_letters_rows_inserted\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
          ]
        },
        {
          title  = "Merge cycles"
          y_axis = "cycles per minute"
          unit   = "1"
          series = [
            { legend = "cycles", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycles\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
          ]
        },
        {
          # Transient errors retried, staging appends and merge cycles alike: a retry changes
          # nothing, but BigQuery bills a retried cycle's jobs again.
          title  = "Write retries"
          y_axis = "retries per minute"
          unit   = "1"
          series = [
            { legend = "retries", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"merge_retries\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
          ]
        },
      ]
    },
    {
      title    = "Cost of merge cycles"
      subtitle = "What BigQuery bills the cycles' jobs (docs/BIGQUERY.md), and how long cycles take."
      charts = [
        {
          # The quantity the merge_cycle_bytes_billed alert evaluates, over its window: a pruning
          # regression shows here as a line that climbs with the ledger's age.
          title  = "Bytes billed per merge cycle"
          y_axis = "bytes per cycle"
          unit   = "By"
          thresholds = [
            { label = "expected", value = var.expected_cycle_bytes_billed },
            { label = "alert", value = var.expected_cycle_bytes_billed * var.cycle_bytes_alert_factor },
          ]
          series = [
            { legend = "per cycle", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycle_bytes_billed\",${local.dashboard_jobs}}[${local.cycle_cost_window_minutes}m])) / (sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycles\",${local.dashboard_jobs}}[${local.cycle_cost_window_minutes}m])) > 0)" },
          ]
        },
        {
          title  = "Bytes billed by merge cycles"
          y_axis = "bytes per minute"
          unit   = "By"
          series = [
            { legend = "bytes billed", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycle_bytes_billed\",${local.dashboard_jobs}}${local.dashboard_per_minute}" },
          ]
        },
        {
          # Slot-milliseconds per millisecond: the slots the cycles keep busy, on average.
          title  = "Slots used by merge cycles"
          y_axis = "slots (average)"
          unit   = "1"
          series = [
            { legend = "slots", query = "sum by (job_name) (delta(dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycle_slot_ms\",${local.dashboard_jobs}}[${local.dashboard_rate_window_minutes}m])) / (${local.dashboard_rate_window_minutes} * 60000)" },
          ]
        },
        {
          title  = "Merge cycle duration (since the job started)"
          y_axis = "seconds"
          unit   = "s"
          series = [
            { legend = "mean", query = "avg by (job_name) (dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycle_seconds_MEAN\",${local.dashboard_jobs}})" },
            { legend = "max", query = "max by (job_name) (dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycle_seconds_MAX\",${local.dashboard_jobs}})" },
          ]
        },
        {
          title  = "Merge cycle lag: oldest committed row, arrival to commit (since the job started)"
          y_axis = "seconds"
          unit   = "s"
          series = [
            { legend = "mean", query = "avg by (job_name) (dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycle_lag_seconds_MEAN\",${local.dashboard_jobs}})" },
            { legend = "max", query = "max by (job_name) (dataflow_googleapis_com:job_user_counter{metric_name=\"merge_cycle_lag_seconds_MAX\",${local.dashboard_jobs}})" },
          ]
        },
      ]
    },
    {
      title    = "Backlog and lag"
      subtitle = "Whether the job keeps up with the subscription."
      charts = [
        {
          title      = "Oldest unacknowledged message"
          y_axis     = "age"
          unit       = "s"
          thresholds = [{ label = "alert", value = var.backlog_age_alert_seconds }]
          series = [
            { legend = "oldest unacked", query = "max by (subscription_id) (pubsub_googleapis_com:subscription_oldest_unacked_message_age{${local.dashboard_subscription}})" },
          ]
        },
        {
          title  = "Undelivered messages"
          y_axis = "messages"
          unit   = "1"
          series = [
            { legend = "undelivered", query = "sum by (subscription_id) (pubsub_googleapis_com:subscription_num_undelivered_messages{${local.dashboard_subscription}})" },
          ]
        },
        {
          # System lag: how long data has waited in the job; watermark age: how far behind event
          # time the job's output is complete.
          title  = "System lag and data watermark age"
          y_axis = "seconds"
          unit   = "s"
          series = [
            { legend = "system lag", query = "max by (job_name) (dataflow_googleapis_com:job_system_lag{${local.dashboard_jobs}})" },
            { legend = "data watermark age", query = "max by (job_name) (dataflow_googleapis_com:job_data_watermark_age{${local.dashboard_jobs}})" },
          ]
        },
      ]
    },
  ]

  # The mosaic grid: the full width Cloud Monitoring allows, charts of equal width across it.
  dashboard_columns       = 48
  dashboard_chart_width   = 16
  dashboard_chart_height  = 16
  dashboard_header_height = 4
  dashboard_per_row       = floor(local.dashboard_columns / local.dashboard_chart_width)

  dashboard_section_heights = [
    for section in local.dashboard_sections :
    local.dashboard_header_height + ceil(length(section.charts) / local.dashboard_per_row) * local.dashboard_chart_height
  ]
  dashboard_section_tops = [
    for i, section in local.dashboard_sections : sum(concat([0], slice(local.dashboard_section_heights, 0, i)))
  ]

  dashboard_tiles = flatten([
    for i, section in local.dashboard_sections : concat(
      [{
        xPos   = 0
        yPos   = local.dashboard_section_tops[i]
        width  = local.dashboard_columns
        height = local.dashboard_header_height
        widget = {
          title         = section.title
          sectionHeader = { subtitle = section.subtitle, dividerBelow = true }
        }
      }],
      [
        for j, chart in section.charts : {
          xPos   = (j % local.dashboard_per_row) * local.dashboard_chart_width
          yPos   = local.dashboard_section_tops[i] + local.dashboard_header_height + floor(j / local.dashboard_per_row) * local.dashboard_chart_height
          width  = local.dashboard_chart_width
          height = local.dashboard_chart_height
          widget = {
            title = chart.title
            # thresholds only where a chart has them: the API answers in protobuf JSON, which
            # leaves an empty list out, and Terraform would plan to put it back every time.
            xyChart = merge(
              {
                chartOptions = { mode = "COLOR" }
                yAxis        = { label = chart.y_axis, scale = "LINEAR" }
                dataSets = [
                  for series in chart.series : {
                    plotType           = "LINE"
                    legendTemplate     = series.legend
                    minAlignmentPeriod = "60s"
                    timeSeriesQuery    = { prometheusQuery = series.query, unitOverride = chart.unit }
                  }
                ]
              },
              { for key, value in { thresholds = try(chart.thresholds, []) } : key => value if length(value) > 0 },
            )
          }
        }
      ],
    )
  ])
}

resource "google_monitoring_dashboard" "pipeline" {
  project = var.project_id
  dashboard_json = jsonencode({
    displayName  = "${var.name_prefix}: pipeline"
    mosaicLayout = { columns = local.dashboard_columns, tiles = local.dashboard_tiles }
  })
}
