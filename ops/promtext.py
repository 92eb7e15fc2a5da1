"""Scrape a service's /metrics and query the samples: what the progress view and the report read.

Prometheus text is parsed with prometheus_client's own parser, so counters (``_total``), gauges and
histograms (``_bucket``/``_sum``/``_count``) come back exactly as Prometheus would store them.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    """Samples of one scrape: sample name -> list of (labels, value)."""

    url: str
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    ok: bool = True
    error: str = ""
    text: str = ""  # the raw exposition, kept so a run can save its services' final /metrics

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(v for lab, v in self.samples.get(name, []) if _matches(lab, labels) and not math.isnan(v))

    def has(self, name: str) -> bool:
        return name in self.samples

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """``name`` summed per value of ``label`` (e.g. jobs by trigger)."""
        out: dict[str, float] = {}
        for lab, v in self.samples.get(name, []):
            if _matches(lab, labels) and label in lab:
                out[lab[label]] = out.get(lab[label], 0.0) + v
        return out

    def histogram(self, name: str, **labels: str) -> tuple[list[tuple[float, float]], float, float]:
        """(cumulative buckets [(le, count)], sum, count) of histogram ``name``, summed over other labels."""
        buckets: dict[float, float] = {}
        for lab, v in self.samples.get(f"{name}_bucket", []):
            if _matches(lab, labels):
                le = float(lab.get("le", "inf"))
                buckets[le] = buckets.get(le, 0.0) + v
        return (sorted(buckets.items()), self.total(f"{name}_sum", **labels), self.total(f"{name}_count", **labels))

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.samples if n.startswith(prefix))


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def parse(text: str, url: str = "") -> Scrape:
    out = Scrape(url, text=text)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def scrape(url: str, timeout: float = 3.0) -> Scrape:
    """GET ``url`` (a /metrics endpoint); a failure gives an empty Scrape with ``ok`` False."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return parse(resp.read().decode("utf-8", "replace"), url)
    except Exception as exc:  # unreachable, not started yet, exited: the caller shows it
        return Scrape(url, ok=False, error=f"{type(exc).__name__}: {exc}")


def merge(scrapes: list[Scrape]) -> Scrape:
    """Samples of several instances of one service (e.g. two trainers) in one Scrape (values summed
    by the query functions, since each instance's samples are kept side by side)."""
    out = Scrape(",".join(s.url for s in scrapes), ok=any(s.ok for s in scrapes))
    for s in scrapes:
        for name, values in s.samples.items():
            out.samples.setdefault(name, []).extend(values)
    return out


def quantile_from_buckets(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (what Prometheus' histogram_quantile bounds)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    for le, count in buckets:
        if count >= target:
            return le
    return buckets[-1][0]
