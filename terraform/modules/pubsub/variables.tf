variable "project_id" {
  type        = string
  description = "Project of the topics and subscriptions."
}

variable "topic_name" {
  type        = string
  description = "Name of the events topic producers publish to."
}

variable "subscription_name" {
  type        = string
  description = "Name of the pipeline's (Dataflow's) subscription on the events topic."
}

variable "dead_letter_topic_name" {
  type        = string
  description = "Name of the dead-letter topic of the consumer subscriptions; its hold subscription is named <this>-hold."
}

variable "ack_deadline_seconds" {
  type        = number
  description = "Initial ack deadline of the pipeline's subscription (Dataflow extends it as it works)."
}

variable "message_retention" {
  type        = string
  description = "How long subscriptions keep messages, acknowledged ones included, as a duration such as \"604800s\"."
}

variable "consumer_subscriptions" {
  type = list(object({
    name                  = string
    ack_deadline_seconds  = optional(number, 60)
    max_delivery_attempts = optional(number, 10)
    filter                = optional(string)
    push_endpoint         = optional(string)
  }))
  description = "Non-Dataflow subscriptions on the events topic, each with a dead-letter policy to the dead-letter topic."
  default     = []
}

variable "pubsub_service_agent" {
  type        = string
  description = "Email of the project's Pub/Sub service agent (service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com), which forwards dead letters."
}

variable "labels" {
  type        = map(string)
  description = "Labels of every topic and subscription."
  default     = {}
}
