"""The gateway's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.gateway.generation import ChoiceResult


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter("autothink_gateway_requests_total", "Requests answered", ["endpoint", "status"], registry=registry)
        self.latency = Histogram(
            "autothink_gateway_request_seconds", "Time to the complete response", ["endpoint"], registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter("autothink_gateway_tokens_total", "Tokens by kind", ["kind"], registry=registry)
        self.choices = Counter("autothink_gateway_choices_total", "Choices by the mode the model used", ["mode"], registry=registry)
        self.think_rate = Gauge("autothink_gateway_think_rate", "Share of choices (since start) in which the model thought", registry=registry)
        self.in_flight = Gauge("autothink_gateway_in_flight", "Requests being served", registry=registry)
        self.version = Gauge("autothink_gateway_policy_version", "Policy version being served", registry=registry)
        self.budget_forced = Counter("autothink_gateway_budget_forced_total", "Choices whose reasoning the thinking budget cut", registry=registry)
        self.aborted = Counter("autothink_gateway_aborted_total", "Requests whose client left before the end (generation aborted)", registry=registry)
        self.internal_errors = Counter("autothink_gateway_internal_errors_total", "Requests that failed inside the gateway (5xx)", registry=registry)
        self.swap_pause = Gauge("autothink_gateway_swap_pause_seconds", "How long the last hot swap paused the scheduler", registry=registry)
        self.swaps = Gauge("autothink_gateway_swaps", "Hot swaps since start", registry=registry)
        self._thought = 0
        self._total = 0
        # the labelled children, looked up once (``labels()`` takes a lock and builds a key per call)
        self._tokens = {k: self.tokens.labels(k) for k in ("prompt", "reasoning", "answer")}
        self._choices = {k: self.choices.labels(k) for k in ("think", "no_think")}

    def record(self, prompt_tokens: int, results: Sequence[ChoiceResult]) -> None:
        self._tokens["prompt"].inc(prompt_tokens)
        for r in results:
            self._tokens["reasoning"].inc(r.reasoning_tokens)
            self._tokens["answer"].inc(r.answer_tokens)
            self._choices["think" if r.thought else "no_think"].inc()
            self.budget_forced.inc(r.budget_forced)
            self._thought += r.thought
            self._total += 1
        if self._total:
            self.think_rate.set(self._thought / self._total)
