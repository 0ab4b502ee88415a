"""``observe_many`` must leave a histogram as repeated ``observe`` calls do."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from services.runtime.metrics import observe_many

_amounts = st.one_of(
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.sampled_from([b for b in Histogram.DEFAULT_BUCKETS if math.isfinite(b)]),  # on a bound
)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


@given(st.lists(st.tuples(_amounts, st.integers(min_value=0, max_value=600)), max_size=8))
def test_observe_many_counts_what_repeated_observe_counts(
    observations: list[tuple[float, int]],
) -> None:
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    expected = Histogram("h_seconds", "test", ["topic"], registry=one_by_one).labels("t")
    actual = Histogram("h_seconds", "test", ["topic"], registry=at_once).labels("t")
    for amount, times in observations:
        for _ in range(times):
            expected.observe(amount)
        observe_many(actual, amount, times)
    want, got = _samples(one_by_one), _samples(at_once)
    assert want.keys() == got.keys()
    for key, value in want.items():
        if key[0] == "h_seconds_sum":  # added up in another order: the last bits may differ
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-9)
        else:
            assert got[key] == value, key


def test_an_amount_past_every_bound_counts_in_the_infinite_bucket_only() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "test", registry=registry)
    observe_many(histogram, 1e9, 3)
    samples = _samples(registry)
    assert samples[("h_seconds_bucket", "10.0")] == 0
    assert samples[("h_seconds_bucket", "+Inf")] == 3
    assert samples[("h_seconds_count", "")] == 3
    assert samples[("h_seconds_sum", "")] == 3e9
