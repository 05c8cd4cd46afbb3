"""Prometheus metrics of one daemon, in its own registry (SPEC §9)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_EVENT_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    """The daemon's counters, gauges and histograms."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.runs = Counter(
            "watcherd_runs", "Run status changes", ["status", "pipeline"], registry=r
        )
        self.detection_lag = Histogram(
            "watcherd_detection_lag_seconds",
            "now - file mtime / Last-Modified when a change is committed",
            ["schedule"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.dispatch_lag = Histogram(
            "watcherd_dispatch_lag_seconds",
            "Queued commit to dispatch start",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.poll_duration = Histogram(
            "watcherd_poll_duration_seconds",
            "Duration of one datastore poll",
            ["schedule"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.poll_files = Gauge(
            "watcherd_poll_files", "Files seen by the last poll", ["schedule"], registry=r
        )
        self.poll_errors = Counter(
            "watcherd_poll_errors", "Failed poll attempts", ["schedule"], registry=r
        )
        self.poll_overruns = Counter(
            "watcherd_poll_overruns",
            "Polls that overran their interval",
            ["schedule"],
            registry=r,
        )
        self.queue_depth = Gauge("watcherd_queue_depth", "Queued runs", registry=r)
        self.running = Gauge("watcherd_running_runs", "Running runs", registry=r)
        self.timer_lateness = Histogram(
            "watcherd_timer_lateness_seconds",
            "Queued commit - due instant",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.slots_not_run = Counter(
            "watcherd_slots_not_run",
            "Missed time slots not run (catch_up policy)",
            ["schedule"],
            registry=r,
        )
        # Blob events through a Storage Queue (SPEC §4): per queue, and the lag per schedule.
        self.blob_events_received = Counter(
            "watcherd_blob_events_received", "Blob events read from a queue", ["queue"], registry=r
        )
        self.blob_events_ignored = Counter(
            "watcherd_blob_events_ignored",
            "Blob events that started nothing (unmatched, event_type, create_file, gone, folder)",
            ["queue", "reason"],
            registry=r,
        )
        self.blob_messages_poisoned = Counter(
            "watcherd_blob_messages_poisoned",
            "Queue messages moved to the poison queue",
            ["queue"],
            registry=r,
        )
        self.blob_event_lag = Histogram(
            "watcherd_blob_event_lag_seconds",
            "Event time to the commit of its Queued run",
            ["schedule"],
            buckets=_EVENT_LAG_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
