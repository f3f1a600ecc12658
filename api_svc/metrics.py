"""Prometheus metrics of the HTTP door (``GET /metrics``; names in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 1 ms .. 10 min: a rejected request takes microseconds, a long generation minutes.
_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class ApiMetrics:
    """Counters of the door; ``model`` labels every series.

    Every request passes here two or three times, so the labelled series are looked up once
    (``labels()`` builds and hashes its key under a lock each call): the in-flight gauge and the
    disconnect counter at start, each route's and status's series on first use."""

    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        self.registry = registry
        self.model = model
        self.requests = Counter(
            "fastswitch_http_requests",
            "HTTP requests answered by the OpenAI-compatible door, by route and status code",
            ("model", "route", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "fastswitch_http_request_duration_seconds",
            "Time from a request's arrival at the door to its last byte, by route",
            ("model", "route"),
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "fastswitch_http_requests_in_flight",
            "Generation requests the door is answering now",
            ("model",),
            registry=registry,
        )
        self.disconnects = Counter(
            "fastswitch_http_client_disconnects",
            "Requests whose client left before the answer ended (each was cancelled)",
            ("model",),
            registry=registry,
        )

        self.in_flight_now = self.in_flight.labels(model)
        self.disconnected = self.disconnects.labels(model)
        self._answered: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        series = self._answered.get((route, status))
        if series is None:
            series = self._answered[(route, status)] = (
                self.requests.labels(self.model, route, str(status)),
                self.duration.labels(self.model, route),
            )
        count, duration = series
        count.inc()
        duration.observe(seconds)
