"""The case study's readers of API answers: metrics, finding rules, the lineage chart."""

from __future__ import annotations

from services.runtime.casestudy.replay import _metrics
from services.runtime.casestudy.report import _mermaid, _split_rule


def test_metrics_are_summed_per_metric_and_topic_over_the_other_labels() -> None:
    text = "\n".join(
        [
            "# HELP consenttrace_messages_consumed_total Messages consumed",
            'consenttrace_messages_consumed_total{outcome="processed",topic="a.v1"} 10.0',
            'consenttrace_messages_consumed_total{outcome="duplicate",topic="a.v1"} 2.0',
            'consenttrace_messages_consumed_total{outcome="processed",topic="b.v1"} 1e+03',
            'consenttrace_outbox_published_total{topic="a.v1"} 7.0',
            "consenttrace_ready 1.0",
        ]
    )
    assert _metrics(text) == {
        ("consenttrace_messages_consumed_total", "a.v1"): 12.0,
        ("consenttrace_messages_consumed_total", "b.v1"): 1000.0,
        ("consenttrace_outbox_published_total", "a.v1"): 7.0,
    }


def test_a_findings_rule_text_gives_the_rule_and_what_it_says() -> None:
    assert _split_rule("default-on (not eligible: basis_not_yet_lawful): Default-on…") == (
        "default-on",
        "basis_not_yet_lawful",
    )
    assert _split_rule("private-messages (withdrawal requires retrain): …") == (
        "private-messages",
        "retrain",
    )
    assert _split_rule("x (withdrawal requires destroy + erasure)") == ("x", "destroy + erasure")


def test_the_chart_marks_flagged_models_and_keeps_the_edges() -> None:
    graph = {
        "graph": [
            {
                "id": "dataset:s3://l:p#1",
                "type": "DATASET",
                "data": {"name": "p", "version": "1"},
                "outEdges": [{"origin": "dataset:s3://l:p#1", "destination": "run:r"}],
            },
            {
                "id": "run:r",
                "type": "RUN",
                "data": {"job": {"name": "train"}},
                "outEdges": [{"origin": "run:r", "destination": "model:m:a#1"}],
            },
            {
                "id": "model:m:a#1",
                "type": "MODEL",
                "data": {
                    "name": "a",
                    "version": "1",
                    "flags": [{"severity": "retrain_required"}, {"severity": "destroy_required"}],
                },
                "outEdges": [],
            },
        ]
    }
    chart = _mermaid(graph)
    assert "a#1 ⚑ destroy_required" in chart
    assert "n0 --> n1" in chart and "n1 --> n2" in chart
    assert "style n2 fill:#d62728" in chart
