"""Prometheus series for the embedding models: requests, inputs, tokens and batches embedded,
and inputs waiting, read from each AsyncEmbedder's counters when /metrics is scraped.

Kept apart from metrics.py, whose series follow the generation engine's per-token events;
an embedding request has no tokens to stream, only a count at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferd.engine.async_embedder import AsyncEmbedder


class EmbeddingCollector(Collector):
    def __init__(self, embedders: dict[str, AsyncEmbedder]):
        """embedders: metrics label (the model's first served name) -> its queue."""
        self._embedders = embedders

    def collect(self) -> Iterator[Metric]:
        lbl = ["model"]
        requests = CounterMetricFamily("inferd_embedding_requests", "Embedding requests served.", labels=lbl)
        inputs = CounterMetricFamily("inferd_embedding_inputs", "Inputs (texts or token-id lists) "
                                     "embedded.", labels=lbl)
        tokens = CounterMetricFamily("inferd_embedding_prompt_tokens", "Tokens embedded (special "
                                     "tokens included, after truncation): what usage reports.", labels=lbl)
        batches = CounterMetricFamily("inferd_embedding_batches", "Worker steps run (each runs "
                                      "several requests' inputs together).", labels=lbl)
        waiting = GaugeMetricFamily("inferd_embedding_inputs_waiting", "Inputs queued, not yet "
                                    "running.", labels=lbl)
        for model, embedder in self._embedders.items():
            s = embedder.stats()
            requests.add_metric([model], s.requests)
            inputs.add_metric([model], s.inputs)
            tokens.add_metric([model], s.tokens)
            batches.add_metric([model], s.batches)
            waiting.add_metric([model], s.waiting_inputs)
        yield from (requests, inputs, tokens, batches, waiting)
