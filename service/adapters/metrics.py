"""Every Prometheus metric the service exports, in one per-app registry.

Each app gets its own :class:`CollectorRegistry`, so several apps in one process (tests)
never collide on metric names. The HTTP metrics are recorded by the access middleware
(:mod:`service.doors.http.access`), the rest by the engine, the stores, the records and
the DICOM node.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.adapters.drift import DriftMonitor

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class ServiceMetrics:
    """Every metric the service exports, registered in a private registry."""

    def __init__(self, drift_reference_size: int = 200, drift_window: int = 200) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: what arrives against the first answers (service.adapters.drift)
        self.drift = DriftMonitor(drift_reference_size, drift_window)
        self.registry.register(self.drift)
        self._http(self.registry)
        self._engine(self.registry)
        self._uploads(self.registry)
        self._records(self.registry)
        self._dicom(self.registry)

    def _http(self, r: CollectorRegistry) -> None:
        self.refusals = Counter(
            "bonexr_refusals_total",
            "Images refused as not eligible (the header or content gate), by reason.",
            ["reason"],
            registry=r,
        )
        self.shadow_jobs = Counter(
            "bonexr_shadow_jobs_total",
            "Studies offered to the shadow bundle: queued, not_sampled, dropped (queue full), "
            "answered, failed.",
            ["outcome"],
            registry=r,
        )
        self.requests = Counter(
            "bonexr_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "bonexr_http_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def _engine(self, r: CollectorRegistry) -> None:
        self.views_scored = Counter(
            "bonexr_views_scored_total",
            "Views passed through the models (router and a part's model); a study's views "
            "are each scored once, plus once more for a view routed to another part.",
            registry=r,
        )
        self.studies_answered = Counter(
            "bonexr_studies_answered_total",
            "Studies answered by the triage core, by door (http, dicom).",
            ["door"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "bonexr_queue_wait_seconds",
            "Time a predict request waited in the micro-batching queue.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "bonexr_batch_size",
            "Images per micro-batch run by the engine worker.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "bonexr_inference_seconds",
            "ONNX Runtime time per model call (router or a body part's model).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_ready = Gauge(
            "bonexr_model_ready", "1 when the model bundle is loaded and warmed.", registry=r
        )
        self.model_info = Gauge(
            "bonexr_model_info", "Loaded bundle (value 1).", ["name", "version"], registry=r
        )

    def _uploads(self, r: CollectorRegistry) -> None:
        self.uploads = Counter(
            "bonexr_uploads_total",
            "Accepted uploads: 'new' stored a file, 'duplicate' matched a stored one.",
            ["outcome"],
            registry=r,
        )
        self.uploads_deleted = Counter(
            "bonexr_uploads_deleted_total",
            "Uploads removed, by reason (client DELETE or retention sweep).",
            ["reason"],
            registry=r,
        )
        self.uploads_stored = Gauge(
            "bonexr_uploads_stored",
            "Uploads currently in the store (counted at scrape time).",
            registry=r,
        )
        self.queue_depth = Gauge(
            "bonexr_queue_depth", "Predictions waiting for a batch.", registry=r
        )
        self.in_flight = Gauge(
            "bonexr_in_flight", "Predictions in the batch being computed.", registry=r
        )
        self.queue_limit = Gauge(
            "bonexr_queue_limit", "Most predictions allowed to wait (then 429).", registry=r
        )
        self.rejected = Counter(
            "bonexr_rejected_overload", "Predictions refused with 429 (queue full).", registry=r
        )

    def _records(self, r: CollectorRegistry) -> None:
        self.served_probability = Histogram(
            "bonexr_served_probability",
            "Calibrated study P(abnormal) of each recorded study, by body part (drift "
            "shows here first).",
            ["part"],
            buckets=tuple(i / 10 for i in range(1, 11)),
            registry=r,
        )
        self.reviews = Counter(
            "bonexr_reviews_total",
            "Reader verdicts recorded, by body part and verdict.",
            ["part", "reader_result"],
            registry=r,
        )

    def _dicom(self, r: CollectorRegistry) -> None:
        self.dicom_instances = Counter(
            "bonexr_dicom_instances_total",
            "DICOM instances received, by way in (stow, c-store) and outcome (eligible, "
            "not_eligible: recorded and never scored, rejected: not taken, own_result: one of "
            "bonexr's results sent back, ignored).",
            ["via", "outcome"],
            registry=r,
        )
        self.dicom_studies = Counter(
            "bonexr_dicom_studies_total",
            "Received studies answered (answered, refused: a report that says why; error: "
            "to be tried again).",
            ["outcome"],
            registry=r,
        )
        self.dicom_deliveries = Counter(
            "bonexr_dicom_delivery_attempts_total",
            "Result delivery attempts by destination and outcome (delivered, retry, failed).",
            ["destination", "outcome"],
            registry=r,
        )
        self.dicom_pending = Gauge(
            "bonexr_dicom_deliveries_pending",
            "Results waiting on disk for a destination (counted at scrape time).",
            ["destination"],
            registry=r,
        )
        self.dicom_failed = Gauge(
            "bonexr_dicom_deliveries_failed",
            "Results a destination refused for good, kept in the node's failed/ folder.",
            ["destination"],
            registry=r,
        )

    def count_stored_with(self, counter: Callable[[], int]) -> None:
        self.uploads_stored.set_function(lambda: float(counter()))
