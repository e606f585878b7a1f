output "topic_id" {
  description = "The events topic, projects/P/topics/T."
  value       = google_pubsub_topic.events.id
}

output "subscription_id" {
  description = "The pipeline's subscription, projects/P/subscriptions/S (its --input_subscription)."
  value       = google_pubsub_subscription.pipeline.id
}

output "subscription_name" {
  description = "Short name of the pipeline's subscription."
  value       = google_pubsub_subscription.pipeline.name
}

output "dead_letter_topic_id" {
  description = "The dead-letter topic, projects/P/topics/T."
  value       = google_pubsub_topic.dead_letters.id
}

output "dead_letter_subscription_id" {
  description = "The subscription that holds dead-lettered messages, projects/P/subscriptions/S."
  value       = google_pubsub_subscription.dead_letters_hold.id
}

output "consumer_subscription_ids" {
  description = "The consumer subscriptions, by name."
  value       = { for name, s in google_pubsub_subscription.consumers : name => s.id }
}
