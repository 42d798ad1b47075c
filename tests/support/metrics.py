"""Scraping a test server's Prometheus endpoint."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

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


def wait_until_queued(
    metrics_port: int, pairs: int, calls: Sequence[Future[Any]], timeout: float = 60
) -> None:
    """Wait until ``rerankd_queue_pairs`` reaches ``pairs``: a call holds its pairs from
    admission to its answer, so ``calls`` are then in the server's handlers (a fixed sleep
    is not enough on a slow machine). Fails if one of them ends first."""
    end = time.monotonic() + timeout
    while scrape(metrics_port)[("rerankd_queue_pairs", ())] < pairs:
        assert not any(call.done() for call in calls), "a call ended before all were queued"
        assert time.monotonic() < end, f"fewer than {pairs} pairs queued after {timeout}s"
        time.sleep(0.01)
