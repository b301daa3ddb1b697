"""Prometheus metrics (one registry per app, so several apps can live in one process).

With WORKERS > 1 each process keeps its own counters: scrape each worker's pod or run
one worker per pod (the recommended layout on Kubernetes)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "embed_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "embed_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.grpc_requests = Counter(
            "embed_grpc_requests",
            "gRPC calls by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.grpc_seconds = Histogram(
            "embed_grpc_request_duration_seconds",
            "gRPC call latency by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Per model (label `model`): a server may serve several (MODEL_REPOSITORY).
        model = ["model"]
        self.queue_seconds = Histogram(
            "embed_queue_duration_seconds",
            "Time a request's images waited for a forward pass",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_seconds = Histogram(
            "embed_compute_duration_seconds",
            "Time of one forward pass with pooling",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.preprocess_seconds = Histogram(
            "embed_preprocess_duration_seconds",
            "Time to fetch, decode and preprocess a request's images",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "embed_batch_size", "Images per forward pass", model, buckets=BATCH_BUCKETS, registry=registry
        )
        self.images = Counter("embed_images", "Images embedded", model, registry=registry)
        self.texts = Counter("embed_texts", "Texts embedded (text tower)", model, registry=registry)
        self.inferences = Counter(
            "embed_inference_count", "Inferences (images) run by the model", model, registry=registry
        )
        self.executions = Counter(
            "embed_execution_count",
            "Forward passes run by the model (inference_count / execution_count = mean batch size)",
            model,
            registry=registry,
        )
        self.images_waiting = Gauge(
            "embed_images_waiting",
            "Inputs (images and texts) admitted and not yet answered",
            model,
            registry=registry,
        )
        # The embedding cache (app/cache): per model, and the shared tier's state.
        self.cache_hits = Counter(
            "embed_cache_hits",
            "Inputs answered from the embedding cache, by tier (local, shared)",
            ["model", "tier"],
            registry=registry,
        )
        self.cache_misses = Counter(
            "embed_cache_misses", "Inputs not in the embedding cache (computed)", model, registry=registry
        )
        self.cache_coalesced = Counter(
            "embed_cache_coalesced",
            "Inputs that waited for an identical input being computed instead of computing it again",
            model,
            registry=registry,
        )
        self.cache_evictions = Counter(
            "embed_cache_evictions",
            "Entries pushed out of the local cache (CACHE_BYTES)",
            model,
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "embed_cache_bytes", "Bytes held by the local embedding cache", model, registry=registry
        )
        self.cache_shared_errors = Counter(
            "embed_cache_shared_errors",
            "Calls to the shared cache (CACHE_URL) that failed or timed out",
            model,
            registry=registry,
        )
        self.cache_shared_up = Gauge(
            "embed_cache_shared_up",
            "1 while the shared cache (CACHE_URL) answers, 0 while it is skipped as down",
            registry=registry,
        )
        self.in_flight = Gauge(
            "embed_requests_in_flight", "HTTP requests and gRPC calls being served", registry=registry
        )
        self.load_seconds = Gauge(
            "embed_model_load_duration_seconds",
            "Time to load and warm up the model",
            model,
            registry=registry,
        )
        # Gauge rather than Info: one series per loaded model, removed when it unloads.
        self.model = Gauge(
            "embed_model_info",
            "The loaded models (value 1)",
            ["model", "model_id", "model_type", "device", "dtype"],
            registry=registry,
        )

    def record_execution(self, model: str, batch_size: int, compute_ns: int, queue_ns: list[int]) -> None:
        self.executions.labels(model).inc()
        self.inferences.labels(model).inc(batch_size)
        self.batch_size.labels(model).observe(batch_size)
        self.compute_seconds.labels(model).observe(compute_ns / 1e9)
        queue = self.queue_seconds.labels(model)
        for ns in queue_ns:
            queue.observe(ns / 1e9)
