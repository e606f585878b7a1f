# The events topic, the pipeline's subscription, and a dead-letter topic for the other
# subscriptions on the topic.

resource "google_pubsub_topic" "events" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption by default; a customer-managed key is an organisation decision that also needs key grants to the Pub/Sub service agent.
  project = var.project_id
  name    = var.topic_name
  labels  = var.labels
}

# The subscription the Dataflow job reads. retain_acked_messages and the retention make replay
# possible: `gcloud pubsub subscriptions seek` back to a time (or a snapshot) re-delivers what
# was already acknowledged, and the idempotent sink makes that harmless. It never expires, so a
# job stopped for weeks finds it again. No dead_letter_policy: Dataflow does not support one on
# a subscription it reads. It acknowledges a message once it has committed it durably in its own
# storage and then retries failing work itself, so Pub/Sub never sees a failed delivery and a
# delivery-attempt count would mean nothing. The pipeline dead-letters on its own, into the
# BigQuery table dead_letters, with the reason.
resource "google_pubsub_subscription" "pipeline" {
  project                    = var.project_id
  name                       = var.subscription_name
  topic                      = google_pubsub_topic.events.id
  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = var.message_retention
  retain_acked_messages      = true
  labels                     = var.labels

  expiration_policy {
    ttl = ""
  }
}

# Why a dead-letter topic when the pipeline's subscription has no dead-letter policy: the events
# topic also feeds other consumers (var.consumer_subscriptions: an archive, a notifier), which
# Pub/Sub can dead-letter. What they fail to process max_delivery_attempts times goes to this
# topic, and the hold subscription keeps it (Pub/Sub drops messages published to a topic without
# subscriptions) for inspection, and for re-publication to the events topic once fixed.
resource "google_pubsub_topic" "dead_letters" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption by default; a customer-managed key is an organisation decision that also needs key grants to the Pub/Sub service agent.
  project = var.project_id
  name    = var.dead_letter_topic_name
  labels  = var.labels
}

resource "google_pubsub_subscription" "dead_letters_hold" {
  project                    = var.project_id
  name                       = "${var.dead_letter_topic_name}-hold"
  topic                      = google_pubsub_topic.dead_letters.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.message_retention
  retain_acked_messages      = true
  labels                     = var.labels

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "consumers" {
  for_each = { for s in var.consumer_subscriptions : s.name => s }

  project              = var.project_id
  name                 = each.key
  topic                = google_pubsub_topic.events.id
  ack_deadline_seconds = each.value.ack_deadline_seconds
  filter               = each.value.filter
  labels               = var.labels

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letters.id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dynamic "push_config" {
    for_each = each.value.push_endpoint == null ? [] : [each.value.push_endpoint]
    content {
      push_endpoint = push_config.value
    }
  }

  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's service agent moves undeliverable messages: it publishes them to the dead-letter
# topic and acknowledges them on the subscription they came from. Granted only where it applies:
# on the dead-letter topic when some subscription dead-letters, and on those subscriptions; not
# on the pipeline's subscription, which has no dead-letter policy.
resource "google_pubsub_topic_iam_member" "service_agent_publishes_dead_letters" {
  count = length(var.consumer_subscriptions) > 0 ? 1 : 0

  project = var.project_id
  topic   = google_pubsub_topic.dead_letters.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${var.pubsub_service_agent}"
}

resource "google_pubsub_subscription_iam_member" "service_agent_acks_dead_letters" {
  for_each = google_pubsub_subscription.consumers

  project      = var.project_id
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${var.pubsub_service_agent}"
}
