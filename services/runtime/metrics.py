"""Prometheus metrics every service exposes on ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CONSUMED",
    "DEAD_LETTERED",
    "HANDLER_SECONDS",
    "OUTBOX_OLDEST_PENDING_SECONDS",
    "OUTBOX_PENDING",
    "OUTBOX_PUBLISHED",
    "READY",
    "RETRIES",
]

CONSUMED = Counter(
    "consenttrace_messages_consumed_total",
    "Messages consumed, by topic and outcome (processed, duplicate, dead_lettered).",
    ["topic", "outcome"],
)
DEAD_LETTERED = Counter(
    "consenttrace_dead_lettered_total", "Messages sent to <topic>.dlq.", ["topic", "reason"]
)
RETRIES = Counter(
    "consenttrace_handler_retries_total",
    "Retries of a message's processing, by kind (transient, unexpected; batch_fallback: its"
    " batch failed as a whole and is processed again one record at a time, each several"
    " times slower: a steady rate means a bad event or a defect in a batch handler).",
    ["topic", "kind"],
)
HANDLER_SECONDS = Histogram(
    "consenttrace_handler_seconds", "Time to process one message, retries included.", ["topic"]
)
OUTBOX_PUBLISHED = Counter(
    "consenttrace_outbox_published_total", "Outbox rows published to Kafka.", ["topic"]
)
OUTBOX_PENDING = Gauge(
    "consenttrace_outbox_pending",
    "Outbox rows committed but not yet published (counted up to 1,000,000; every replica of"
    " a service reports the same table: take the max).",
)
OUTBOX_OLDEST_PENDING_SECONDS = Gauge(
    "consenttrace_outbox_oldest_pending_seconds",
    "Age of the oldest unpublished outbox row (0 when none): how far behind the relay is.",
)
READY = Gauge("consenttrace_ready", "1 when the service's broker and database are reachable.")
