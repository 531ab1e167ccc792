"""The gateway's Prometheus metrics, declared once so every room updates the same series.

Exposed at /metrics by gateway.health. Names follow Prometheus conventions
(`_total` for counters, base units in the name).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# The `_created` companion series double every counter and tell an operator nothing.
disable_created_metrics()

# Devices (updated by the runtime's per-device supervisor, and by drivers for rejects).
DEVICE_READINGS = Counter(
    "millwright_device_readings_total", "Readings accepted into the outbox", ["device"]
)
DEVICE_ERRORS = Counter(
    "millwright_device_errors_total", "Connection or read failures", ["device"]
)
DEVICE_REJECTED = Counter(
    "millwright_device_rejected_total",
    "Device messages or values rejected as malformed", ["device", "reason"],
)
DEVICE_ONLINE = Gauge("millwright_device_online", "1 when the device is connected", ["device"])
DEVICE_POLL_OVERRUNS = Counter(
    "millwright_device_poll_overruns_total",
    "Poll slots skipped because the previous poll ran past them", ["device"],
)

# Outbox.
OUTBOX_DEPTH = Gauge("millwright_outbox_events", "Events waiting in the outbox")
OUTBOX_BYTES = Gauge("millwright_outbox_bytes", "Bytes of events waiting in the outbox")
OUTBOX_READINGS = Gauge("millwright_outbox_readings",
                        "Readings (values) in the telemetry waiting in the outbox")
OUTBOX_OLDEST_AGE = Gauge(
    "millwright_outbox_oldest_age_seconds", "Age of the oldest event waiting in the outbox"
)
OUTBOX_DROPPED = Counter(
    "millwright_outbox_dropped_total", "Events dropped by the outbox", ["reason"]
)
OUTBOX_WRITABLE = Gauge("millwright_outbox_writable", "1 when the last outbox commit succeeded")

# Uplink.
UPLINK_CONNECTED = Gauge("millwright_uplink_connected", "1 when connected to the cloud broker")
UPLINK_PUBLISHED = Counter(
    "millwright_uplink_published_events_total", "Events handed to the cloud broker"
)
UPLINK_ACKED = Counter("millwright_uplink_acked_events_total", "Events acknowledged by the broker")
UPLINK_LATENCY = Histogram(
    "millwright_uplink_ack_latency_seconds", "Publish to PUBACK latency",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Predictor.
PREDICTOR_EVALUATIONS = Counter(
    "millwright_predictor_evaluations_total", "Asset evaluations run", ["asset"]
)
PREDICTOR_SKIPPED = Counter(
    "millwright_predictor_skipped_total", "Evaluations skipped", ["asset", "reason"]
)
PREDICTOR_LATENCY = Histogram(
    "millwright_predictor_batch_seconds", "Latency of one batched model call",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
PREDICTOR_ALARMS = Counter(
    "millwright_predictor_alarms_total", "maintenance_needed events raised", ["asset"]
)
PREDICTOR_PROBABILITY = Gauge(
    "millwright_predictor_probability", "Last failure probability", ["asset"]
)

# -- outbox faults --
OUTBOX_COMMIT_FAILURES = Counter(
    "millwright_outbox_commit_failures_total",
    "Outbox transactions that failed (disk full, lock, read-only); retried with backoff",
)

# -- uplink faults --
UPLINK_ACK_TIMEOUTS = Counter(
    "millwright_uplink_ack_timeouts_total",
    "Connections given up because the cloud broker sent no PUBACK within cloud.ack_timeout_s",
)

# -- device back-pressure and inbox --
DEVICE_READINGS_REFUSED = Counter(
    "millwright_device_readings_refused_total",
    "Readings the outbox refused (disk full, commits failing); the device stays online",
    ["device"],
)
DEVICE_INBOX_BYTES = Gauge(
    "millwright_device_inbox_bytes",
    "Payload bytes of plant MQTT messages received and not yet read (bounded by "
    "inbox_max_bytes)", ["device"],
)

# -- commands from the cloud --
COMMANDS = Counter(
    "millwright_commands_total",
    "Commands from the cloud by their result (done, rejected, failed, expired, uncertain); "
    "a device the config does not name is counted as _unknown",
    ["device", "status"],
)
