"""Prometheus instruments for every decision and every store failure.

Labels are bounded: ``policy`` is the policy's name (its text form when unnamed), never a user
key or address, so the number of series does not grow with the number of keys. Limiters that
share a registry share its instruments.
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ._decision import Decision
from ._policy import Policy

__all__ = ["REGISTRY", "Metrics", "metrics_for"]

#: 50 µs to 1 s: a healthy decision on loopback is ~100-300 µs, a timed-out one ~timeout.
DURATION_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0)
#: Labelled counter children kept per (policy, outcome, degraded); a bound, not a tuning knob.
_MAX_CACHED_CHILDREN = 4096
#: An allowed decision with this share of the capacity left or less counts as near the limit.
NEAR_LIMIT_SHARE = 0.2


class Metrics:
    """The instruments registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._children: dict[tuple[Policy, bool, bool], tuple[Counter, Counter]] = {}
        self.decisions = Counter(
            "sluicegate_decisions_total",
            "Rate-limit decisions, by policy, outcome (allowed or throttled) and whether the shared store was used.",
            ["policy", "outcome", "degraded"],
            registry=registry,
        )
        self.near_limit = Counter(
            "sluicegate_near_limit_total",
            f"Allowed decisions that left {NEAR_LIMIT_SHARE:.0%} of the capacity or less.",
            ["policy"],
            registry=registry,
        )
        self.duration = Histogram(
            "sluicegate_decision_duration_seconds",
            "Time to make a decision, store call and fallback included.",
            ["store"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "sluicegate_store_errors_total",
            "Store calls that failed, by kind (timeout, connection, readonly, oom, busy, noscript, cluster, other).",
            ["store", "error"],
            registry=registry,
        )
        self.fallback_active = Gauge(
            "sluicegate_fallback_active",
            "1 while the circuit breaker is open and decisions use the fallback.",
            ["store"],
            registry=registry,
            multiprocess_mode="livemax",  # serve --workers: 1 while any live worker's is open
        )
        self.breaker_transitions = Counter(
            "sluicegate_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered (open or closed).",
            ["state"],
            registry=registry,
        )

    def count(self, decision: Decision) -> None:
        """Count one decision. A ``hit_all`` counts per policy: when it is allowed, every item
        admitted the request; when it is denied, each denying item throttled it (the items that
        had room decided nothing, since nothing was consumed)."""
        for each in decision.results or (decision,):
            if decision.allowed or not each.allowed:
                counters = self._counters(each.policy, each.allowed, decision.degraded)
                counters[0].inc()
                if each.allowed and each.remaining <= each.limit * NEAR_LIMIT_SHARE:
                    counters[1].inc()

    def _counters(self, policy: Policy, allowed: bool, degraded: bool) -> tuple[Counter, Counter]:
        """The labelled children for one kind of decision, looked up once: ``labels()`` takes a
        lock and builds a tuple on every call, which showed in profiles of the hot path."""
        key = (policy, allowed, degraded)
        children = self._children.get(key)
        if children is None:
            label = policy_label(policy)
            outcome = "allowed" if allowed else "throttled"
            children = (
                self.decisions.labels(label, outcome, "true" if degraded else "false"),
                self.near_limit.labels(label),
            )
            if len(self._children) >= _MAX_CACHED_CHILDREN:  # policies made up on the fly: stay bounded
                self._children.clear()
            self._children[key] = children
        return children


def policy_label(policy: Policy) -> str:
    return policy.name if policy.name is not None else str(policy)


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def metrics_for(registry: CollectorRegistry) -> Metrics:
    """The instruments on ``registry``, registered the first time it is asked for."""
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = Metrics(registry)
        return metrics
