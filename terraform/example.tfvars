# Copy to terraform.tfvars (git-ignored by your own rules, it names your project) and edit.
# Everything but project_id and region has a default; see variables.tf.

project_id = "my-project"
region     = "europe-west1"

# name_prefix = "effectively-once"  # make/dataflow.mk's NAME_PREFIX must match
labels = {
  team = "data-platform"
}

# Where alerts go (gcloud beta monitoring channels list); empty: console only.
notification_channels = []

# The bytes one merge cycle should bill at your input rate: cycle_bytes_billed as printed by
# `python -m bench.cost_model --events_per_second N --json`. The default is a placeholder; the
# alert fires when cycles bill cycle_bytes_alert_factor times it.
# expected_cycle_bytes_billed = 2000000000
# cycle_bytes_alert_factor    = 2

# Other consumers of the events topic, dead-lettered by Pub/Sub after 10 failed deliveries.
# consumer_subscriptions = [
#   { name = "effectively-once-events-archive", push_endpoint = "https://archive.example.com/push" },
# ]

# Buckets backfill files come from, besides the stack's own bucket.
# input_buckets = ["my-landing-bucket"]

# Who may launch jobs as the worker service account (they also need roles/dataflow.developer).
# launcher_members = ["group:data-eng@example.com"]

# Second apply, once `make image template` has built the template: let Terraform run the
# streaming job (or use `make launch` instead, not both).
# dataflow_job = {
#   template_path = "gs://my-project-effectively-once/templates/effectively-once-f55082e.json"
#   image         = "europe-west1-docker.pkg.dev/my-project/effectively-once/pipeline:f55082e"
#   # streaming_mode = "exactly_once"
#   # parameters     = { window_size_seconds = "300" }
# }

# Tear down: set both, apply, then destroy (docs/DEPLOY.md).
# deletion_protection = false
# force_destroy       = true
