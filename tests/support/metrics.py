"""Scraping a test server's Prometheus endpoint."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

#: (metric sample name, sorted label pairs) -> value, as scraped from /metrics.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics_port: int) -> Samples:
    """Every sample of the server's Prometheus endpoint, parsed with prometheus_client."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def queued_pairs(metrics_port: int) -> float:
    """``rerankd_queue_pairs``: pairs admitted and not yet finished (a call holds its pairs
    from admission until its answer, so this shows which calls a handler has taken in)."""
    return scrape(metrics_port)[("rerankd_queue_pairs", ())]
