"""``GET /metrics``: the gateway's Prometheus metrics, one registry per gateway.

Named like the ecosystem: ``tether_`` prefix, ``_total`` counters, ``_seconds`` histograms,
statuses as labels, and no unbounded label (no event names, keys or run ids). Function ids
are bounded by registration, yet capped too: past :data:`MAX_FUNCTION_LABELS` functions
the rest count as ``other``.

The engine reports a committed batch in one call (:meth:`Metrics.committed`); per-function
children are cached, so the hot path pays a dict lookup and an increment. Gauges (queue
depth, workers, slots) are computed when scraped, the queue from one cached store read.
Durations come from what the engine already has: a run id is a ULID carrying its creation
time, so ending or first leasing a run costs no query.
"""

from __future__ import annotations

import collections
import math
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from protocol.ids import id_time

if TYPE_CHECKING:
    from gateway.registry import Registry
    from gateway.store.base import WriteBatch, WriteResult

log = structlog.get_logger("tether.metrics")

# No ``*_created`` sample beside every counter and histogram: twice the text, no use here.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Distinct ``function`` label values; later functions share the value ``other``.
MAX_FUNCTION_LABELS = 1000
OTHER = "other"
#: How long a scrape reuses the queue read of the previous one.
QUEUE_CACHE_SECONDS = 1.0
#: Flow-control reasons (issue 9) whose series exist from the start, at 0.
SKIP_REASONS = ("rate_limit", "singleton", "idempotency", "backlog_full")
DELAY_REASONS = ("throttle", "debounce", "concurrency", "batch")
#: HTTP methods kept as a label value; any other is ``other`` (a client picks the method).
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

#: Seconds, from a few milliseconds to a day: queue waits and runs that sleep.
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               300.0, 1800.0, 3600.0, 21600.0, 86400.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Checkpoint type -> (step kind, step status) of the steps it records.
STEP_KINDS = {
    "step_completed": ("run", "Completed"),
    "step_failed": ("run", "Failed"),
    "sleep_requested": ("sleep", "Sleeping"),
    "wait_requested": ("wait", "Waiting"),
    "invoke_requested": ("invoke", "Invoking"),
    "events_sent": ("send_event", "Completed"),
}


class Histogram(Collector):
    """A histogram family observed on the gateway's event loop only (and scraped there).

    It writes the same exposition text as ``prometheus_client.Histogram``, but an
    observation is a bisection and two additions: no lock, and no walk through the buckets.
    Three are observed per run on the commit path, where the library's cost showed.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = (*(float(b) for b in buckets), math.inf)
        self._les = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        if not self.labelnames:
            self._children[()] = HistogramChild(self.bounds)
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {key}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HistogramChild(self.bounds)
        return child

    def observe(self, amount: float) -> None:
        """For a family without labels."""
        self._children[()].observe(amount)

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            total, cumulative = 0, []
            for le, count in zip(self._les, child.counts, strict=True):
                total += count
                cumulative.append((le, float(total)))
            family.add_metric(list(key), cumulative, child.sum)
        return [family]


class HistogramChild:
    """One label combination's buckets (not cumulative: summed when scraped) and sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1  # le: upper bounds are inclusive
        self.sum += amount


@dataclass(slots=True)
class _Function:
    """The cached children of one ``function`` label value."""

    created: Any
    leases: Any
    queue_wait: Any
    first_step: Any
    finished: dict[str, Any] = field(default_factory=dict)
    duration: dict[str, Any] = field(default_factory=dict)


class Metrics:
    """Every metric family of one gateway, in its own :class:`CollectorRegistry`."""

    def __init__(self, *, max_functions: int = MAX_FUNCTION_LABELS) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.max_functions = max_functions
        self.events_accepted = Counter(
            "tether_events_accepted", "Events stored (duplicates excluded).", registry=r)
        self.events_duplicate = Counter(
            "tether_events_duplicate", "Events whose id was stored before.", registry=r)
        self.runs_created = Counter(
            "tether_runs_created", "Runs created.", ["function"], registry=r)
        self.runs_finished = Counter(
            "tether_runs_finished", "Runs that reached a final status.", ["function", "status"],
            registry=r)
        self.steps = Counter(
            "tether_steps", "Steps recorded, by kind and status.", ["kind", "status"],
            registry=r)
        self.checkpoints = Counter(
            "tether_checkpoints", "Checkpoints committed, by kind.", ["kind"], registry=r)
        self.checkpoints_refused = Counter(
            "tether_checkpoints_refused", "Checkpoints refused (stale fence, ended run).",
            registry=r)
        self.leases_granted = Counter(
            "tether_leases_granted", "Leases granted to workers.", ["function"], registry=r)
        self.leases_lost = Counter(
            "tether_leases_lost", "Leases lost with their worker (socket or heartbeat lost).",
            registry=r)
        self.leases_revoked = Counter(
            "tether_leases_revoked", "Leases the gateway took back (cancel, limits).",
            registry=r)
        self.queue_wait = Histogram(
            "tether_queue_wait_seconds", "From a run being ready (queued, retry or wake due) "
            "to its lease.", ["function"], buckets=RUN_BUCKETS, registry=r)
        self.first_step = Histogram(
            "tether_event_to_first_step_seconds", "From a run's creation (its event) to its "
            "first lease.", ["function"], buckets=RUN_BUCKETS, registry=r)
        self.run_duration = Histogram(
            "tether_run_duration_seconds", "From a run's creation to its final status.",
            ["function", "status"], buckets=RUN_BUCKETS, registry=r)
        self.batches_committed = Counter(
            "tether_batches_committed", "Write batches committed.", registry=r)
        self.batches_failed = Counter(
            "tether_batches_failed", "Write batches the store failed to commit whole.",
            registry=r)
        self.items_failed = Counter(
            "tether_items_failed", "Items of a batch that failed alone (the rest was applied).",
            registry=r)
        self.batch_size = Histogram(
            "tether_commit_batch_size", "Writes per committed batch (events, checkpoints, "
            "returns, releases, commands).", buckets=BATCH_BUCKETS, registry=r)
        self.commit_seconds = Histogram(
            "tether_commit_seconds", "Time to commit one batch.", buckets=COMMIT_BUCKETS,
            registry=r)
        self.http_seconds = Histogram(
            "tether_http_request_seconds", "HTTP requests, by route template.",
            ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=r)
        self.flow_skipped = Counter(
            "tether_flow_skipped", "Runs skipped by flow control, by reason.", ["reason"],
            registry=r)
        self.flow_delayed = Counter(
            "tether_flow_delayed", "Runs delayed by flow control, by reason.", ["reason"],
            registry=r)
        self.cron_missed = Counter(
            "tether_cron_ticks_missed", "Cron ticks not started (the gateway was down or late).",
            ["function"], registry=r)
        for reason in SKIP_REASONS:
            self.flow_skipped.labels(reason)
        for reason in DELAY_REASONS:
            self.flow_delayed.labels(reason)
        self._functions: dict[str, _Function] = {}
        self._labels: dict[str, str] = {}
        self._distinct = 0
        self._checkpoint_kinds: dict[str, Any] = {}
        self._step_kinds = {kind: self.steps.labels(*labels)
                            for kind, labels in STEP_KINDS.items()}
        self._http: dict[tuple[str, str, int], Any] = {}
        self.scrape = _ScrapeGauges()
        r.register(self.scrape)

    # --- labels --------------------------------------------------------------------------

    def function_label(self, function_id: str) -> str:
        """``function_id``, or ``other`` once :attr:`max_functions` values are taken."""
        label = self._labels.get(function_id)
        if label is None:
            label = function_id if self._distinct < self.max_functions else OTHER
            self._distinct += label != OTHER
            self._labels[function_id] = label
        return label

    def _fn(self, function_id: str) -> _Function:
        found = self._functions.get(function_id)
        if found is None:
            label = self.function_label(function_id)
            found = self._functions.get(label) if label == OTHER else None
            if found is None:
                found = _Function(self.runs_created.labels(label),
                                  self.leases_granted.labels(label),
                                  self.queue_wait.labels(label), self.first_step.labels(label))
                self._functions[label] = found
            self._functions[function_id] = found
        return found

    # --- what happens ----------------------------------------------------------------------

    def committed(self, batch: WriteBatch, result: WriteResult, seconds: float,
                  refused_events: int = 0) -> None:
        """A batch committed in ``seconds``: count what it did."""
        self.batches_committed.inc()
        for function_id, count in result.ticks_missed.items():
            self.cron_ticks_missed(function_id, count)
        for reason, count in result.flow_skipped.items():
            self.flow("skipped", reason, count)
        for option in result.flow_delayed:
            self.flow("delayed", option)
        self.commit_seconds.observe(seconds)
        self.batch_size.observe(len(batch.events) + len(batch.checkpoints) + len(batch.returns)
                                + len(batch.releases) + len(batch.cancels)
                                + len(batch.replays) + len(batch.forgiven))
        accepted = len(batch.events) - len(result.duplicate_events) - refused_events
        if accepted:
            self.events_accepted.inc(accepted)
        if result.duplicate_events:
            self.events_duplicate.inc(len(result.duplicate_events))
        if result.errors:
            self.items_failed.inc(len(result.errors))
        now = batch.now
        # Counters are added to once per function (and status) and batch: a counter's inc
        # takes a lock, and a batch under load holds hundreds of runs of one function.
        for function_id, count in collections.Counter(result.created_functions).items():
            self._fn(function_id).created.inc(count)
        if batch.checkpoints:
            self._checkpoints(batch, result)
        # Each function's children, looked up once per batch (a method call per run cost
        # more than the observation).
        functions: dict[str, _Function] = {}
        leased: dict[str, int] = {}
        for lease in result.leases:
            function_id = lease.function_id
            fn = functions.get(function_id)
            if fn is None:
                fn = functions[function_id] = self._fn(function_id)
            leased[function_id] = leased.get(function_id, 0) + 1
            if lease.available_at is not None:
                fn.queue_wait.observe(max(0.0, now - lease.available_at))
            if lease.first:
                fn.first_step.observe(max(0.0, now - id_time(lease.run_id)))
        for function_id, count in leased.items():
            functions[function_id].leases.inc(count)
        if result.revoked:
            self.leases_revoked.inc(len(result.revoked))
        finished: dict[Any, int] = {}
        for ended in result.ended:
            function_id = ended.function_id
            fn = functions.get(function_id)
            if fn is None:
                fn = functions[function_id] = self._fn(function_id)
            counter = fn.finished.get(ended.status)
            if counter is None:
                label = self.function_label(ended.function_id)
                counter = fn.finished[ended.status] = self.runs_finished.labels(
                    label, ended.status)
                fn.duration[ended.status] = self.run_duration.labels(label, ended.status)
            finished[counter] = finished.get(counter, 0) + 1
            fn.duration[ended.status].observe(max(0.0, now - id_time(ended.run_id)))
        for counter, count in finished.items():
            counter.inc(count)

    def _checkpoints(self, batch: WriteBatch, result: WriteResult) -> None:
        refused = result.refused
        if refused:
            counts = collections.Counter([write.message.type for index, write
                              in enumerate(batch.checkpoints) if index not in refused])
        else:
            counts = collections.Counter([write.message.type for write in batch.checkpoints])
        if refused:
            self.checkpoints_refused.inc(len(refused))
        for kind, count in counts.items():
            child = self._checkpoint_kinds.get(kind)
            if child is None:
                child = self._checkpoint_kinds[kind] = self.checkpoints.labels(kind)
            child.inc(count)
            step = self._step_kinds.get(kind)
            if step is not None:
                step.inc(count)

    def batch_failed(self) -> None:
        self.batches_failed.inc()

    def leases_dropped(self, count: int) -> None:
        """A worker went away (lost, not leaving) holding ``count`` leases."""
        if count:
            self.leases_lost.inc(count)

    def cron_ticks_missed(self, function_id: str, count: int = 1) -> None:
        """Cron ticks of ``function_id`` that were not started (for the cron scheduler)."""
        self.cron_missed.labels(self.function_label(function_id)).inc(count)

    def flow(self, decision: str, reason: str, count: int = 1) -> None:
        """A flow-control ``decision`` (``skipped`` or ``delayed``) for ``reason``; a reason
        not in :data:`SKIP_REASONS` / :data:`DELAY_REASONS` counts as ``other``."""
        skipped = decision == "skipped"
        known = SKIP_REASONS if skipped else DELAY_REASONS
        family = self.flow_skipped if skipped else self.flow_delayed
        family.labels(reason if reason in known else OTHER).inc(count)

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method if method in HTTP_METHODS else OTHER, status)
        child = self._http.get(key)
        if child is None:
            child = self._http[key] = self.http_seconds.labels(key[0], key[1], str(status))
        child.observe(seconds)

    # --- scraping ------------------------------------------------------------------------

    async def render(self, *, registry: Registry, functions: Iterable[str],
                     queue: Callable[[], Awaitable[list[tuple[str, int, float | None]]]],
                     now: float, names: Sequence[str] = ()) -> bytes:
        """The exposition text; the queue read is reused for :data:`QUEUE_CACHE_SECONDS`.

        ``names`` (``GET /metrics?name[]=...``, as Prometheus clients offer) restricts it to
        those samples: a cheap read for a script polling one counter.
        """
        if names:
            wanted = set(names)
            if not wanted & {"tether_queue_depth", "tether_queue_oldest_age_seconds",
                             "tether_workers_connected", "tether_worker_slots_free",
                             "tether_runs_in_flight"}:
                return generate_latest(self.registry.restricted_registry(sorted(wanted)))
        scrape = self.scrape
        rows: list[tuple[str, int, float | None]] | None = None
        read = scrape.queue_read
        if read is None or time.monotonic() - read >= QUEUE_CACHE_SECONDS:
            try:
                rows = await queue()
            except Exception as exc:  # the store may be briefly away: the rest still answers
                log.warning("metrics_queue_unread", error=str(exc))
        if rows is not None:
            depths: dict[str, tuple[int, float | None]] = {
                self.function_label(f): (0, None) for f in functions}
            for function_id, count, oldest in rows:
                label = self.function_label(function_id)
                had, first = depths.get(label, (0, None))
                if oldest is not None and (first is None or oldest < first):
                    first = oldest
                depths[label] = (had + count, first)
            scrape.queue = depths
            scrape.queue_read = time.monotonic()
        scrape.now = now
        scrape.workers = [(len(w.in_flight), w.capacity, w.draining) for w in registry]
        if names:
            return generate_latest(self.registry.restricted_registry(sorted(set(names))))
        return generate_latest(self.registry)


class _ScrapeGauges(Collector):
    """Gauges computed at scrape time from what :meth:`Metrics.render` gathered."""

    def __init__(self) -> None:
        self.queue: dict[str, tuple[int, float | None]] = {}
        self.queue_read: float | None = None
        self.now = 0.0
        self.workers: list[tuple[int, int, bool]] = []

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("tether_queue_depth",
                                  "Runs ready to lease and not leased, per function.",
                                  labels=["function"])
        age = GaugeMetricFamily("tether_queue_oldest_age_seconds",
                                "How long the oldest ready run has waited, per function.",
                                labels=["function"])
        for label, (count, oldest) in sorted(self.queue.items()):
            depth.add_metric([label], count)
            age.add_metric([label], max(0.0, self.now - oldest) if oldest is not None else 0.0)
        yield depth
        yield age
        yield GaugeMetricFamily("tether_workers_connected", "Workers connected to this gateway.",
                                value=len(self.workers))
        yield GaugeMetricFamily("tether_worker_slots_free",
                                "Free run slots of connected workers (draining ones excluded).",
                                value=sum(max(0, cap - busy) for busy, cap, draining
                                          in self.workers if not draining))
        yield GaugeMetricFamily("tether_runs_in_flight", "Runs leased to connected workers.",
                                value=sum(busy for busy, _, _ in self.workers))


class TimedRequests:
    """ASGI middleware: ``tether_http_request_seconds`` by route template, never raw path
    (``/e/{event_key}``, not the key)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.http_request(path, scope.get("method", ""), status,
                                      time.perf_counter() - start)
