"""Scoping a deletion case (services.deletion.domain.scoping): what each kind of case asks
for, the dataset versions and models it resolves into, the frozen document and its digest;
and the HTTP client's reading of the other services' answers (services_client)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.base import DatasetRef, ModelRef
from contracts.events import CaseKind
from services.deletion.adapters.services_client import ServicesClient, ServiceUnavailable
from services.deletion.domain.scoping import (
    FoundVersion,
    ScopingError,
    digest,
    freeze,
    model_action,
    models_downstream,
    parse_request,
    resolve_models,
    summary,
    versions_from_listing,
    versions_of_subjects,
)

D = {"namespace": "s3://lake", "name": "posts", "version": "1"}
D_KEY = "dataset:s3://lake:posts#1"


def model(name: str) -> dict[str, str]:
    return {"namespace": "models://ml", "name": name, "version": "1"}


def mkey(name: str) -> str:
    return f"model:models://ml:{name}#1"


def node(key: str, kind: str, out: list[str], **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(data)
    if kind in ("MODEL", "DATASET"):
        ns_name, version = key.split(":", 1)[1].rsplit("#", 1)
        ns, name = ns_name.rsplit(":", 1)
        body.update(namespace=ns, name=name, version=version)
    return {
        "id": key,
        "type": kind,
        "data": body,
        "inEdges": [],
        "outEdges": [{"origin": key, "destination": d} for d in out],
    }


# posts ─ r1 ─► base ─ r2 ─► chat ;  posts ─ r3 ─► posts-clean ─ r4 ─► small
GRAPH = {
    "graph": [
        node(D_KEY, "DATASET", ["run:1", "run:3"]),
        node("run:1", "RUN", [mkey("base")]),
        node(mkey("base"), "MODEL", ["run:2"], flags=[{"severity": "destroy_required"}]),
        node("run:2", "RUN", [mkey("chat")]),
        node(mkey("chat"), "MODEL", [], flags=[{"severity": "retrain_required"}]),
        node("run:3", "RUN", ["dataset:s3://lake:posts-clean#1"]),
        node("dataset:s3://lake:posts-clean#1", "DATASET", ["run:4"]),
        node("run:4", "RUN", [mkey("small")]),
        node(mkey("small"), "MODEL", [], status="quarantined"),
    ]
}


# --- what a case asks -------------------------------------------------------------------


def test_an_automatic_erasure_asks_for_its_subjects_in_the_withdrawn_categories() -> None:
    request = parse_request(
        "subject_erasure", {"subject_ids": ["s1"], "data_categories": ["user.content"]}
    )
    assert request.kind is CaseKind.SUBJECT_ERASURE
    assert request.subjects == ("s1",) and request.categories == ("user.content",)
    assert request.selector_keys() == ["subject:s1"]
    assert request.selector()["subjects"] == ["s1"]


def test_a_manual_scope_carries_its_filters_and_descendants() -> None:
    request = parse_request(
        CaseKind.CATEGORY_PURGE,
        {
            "categories": ["user.contact", "user.contact"],
            "jurisdictions": ["DE"],
            "collected_until": "2024-01-01T00:00:00Z",
            "include_descendants": True,
        },
    )
    assert request.categories == ("user.contact",) and request.include_descendants
    assert request.selector()["collected_until"] == "2024-01-01T00:00:00Z"
    assert request.selector_keys() == ["category:user.contact"]
    dataset = parse_request("dataset_purge", {"dataset": D})
    assert dataset.selector_keys() == [D_KEY]
    assert dataset.selector()["dataset_versions"] == [D]


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("subject_erasure", "subject_ids"),
        ("category_purge", "categories"),
        ("dataset_purge", "dataset"),
        ("model_destruction", "model"),
    ],
)
def test_a_scope_without_what_its_kind_needs_is_refused(kind: str, field: str) -> None:
    with pytest.raises(ScopingError, match=field):
        parse_request(kind, {})


# --- dataset versions -------------------------------------------------------------------


def answer(dataset: dict[str, str], **categories: int) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "record_count": 10,
        "categories": [
            {"category": c.replace("_", "."), "records": n} for c, n in categories.items()
        ],
    }


def test_versions_of_subjects_merge_per_version_once_per_category() -> None:
    other = {**D, "version": "2"}
    answers = {
        "s1": [
            answer(D, user_content_private=2),
            answer(D, user_content_private=2, user_content_public=1),  # asked per category
        ],
        "s2": [answer(D, user_contact=4), answer(other, user_content_public=3)],
    }
    found = versions_of_subjects(answers, ["user.content"])
    assert [v.dataset.key for v in found] == [D_KEY, "dataset:s3://lake:posts#2"]
    first = found[0]
    assert first.records == 3 and first.subjects == {"s1"}
    assert first.categories == {"user.content.private": 2, "user.content.public": 1}
    assert first.record_count == 10
    everything = versions_of_subjects(answers)
    assert everything[0].records == 7 and everything[0].subjects == {"s1", "s2"}


def test_versions_from_a_listing_keep_empty_versions() -> None:
    found = versions_from_listing([{"dataset": D, "records": 0, "record_count": 0}])
    assert found[0].dataset.key == D_KEY and found[0].records == 0


# --- models -----------------------------------------------------------------------------


def test_direct_models_have_no_other_model_on_their_path() -> None:
    reached = models_downstream(GRAPH, D_KEY)
    assert {k: direct for k, (_, direct) in reached.items()} == {
        mkey("base"): True,
        mkey("chat"): False,
        mkey("small"): True,
    }
    assert models_downstream(GRAPH, mkey("base")) == {mkey("chat"): (GRAPH["graph"][4], True)}
    assert models_downstream({"graph": []}, D_KEY) == {}


def test_model_actions_follow_flags_and_the_case() -> None:
    erasure = CaseKind.SUBJECT_ERASURE
    assert model_action(erasure, case_severity=None, severities=["destroy_required"]) == (
        "destroyed"
    )
    assert model_action(erasure, case_severity=None, severities=["review"]) == "superseded"
    destruction = CaseKind.MODEL_DESTRUCTION
    assert model_action(destruction, case_severity=None, severities=()) == "destroyed"
    assert model_action(destruction, case_severity="retrain_required", severities=()) == (
        "superseded"
    )


def test_a_data_case_reaches_direct_models_and_descendants_when_chosen() -> None:
    request = parse_request("subject_erasure", {"subject_ids": ["s1"]})
    found = resolve_models(request, {D_KEY: GRAPH})
    assert [(m.model.name, m.relation, m.action) for m in found] == [
        ("base", "direct", "destroyed"),
        ("small", "direct", "superseded"),
    ]
    assert found[1].status == "quarantined" and found[1].via == D_KEY
    wider = parse_request("subject_erasure", {"subject_ids": ["s1"], "include_descendants": True})
    names = {m.model.name: m.relation for m in resolve_models(wider, {D_KEY: GRAPH})}
    assert names == {"base": "direct", "chat": "descendant", "small": "direct"}
    assert resolve_models(request, {D_KEY: None}) == []


def test_a_model_destruction_targets_its_model_and_descendants_when_chosen() -> None:
    scope = {"model": model("base"), "severity": "retrain_required"}
    alone = resolve_models(parse_request("model_destruction", scope), {mkey("base"): GRAPH})
    assert [(m.model.name, m.relation) for m in alone] == [("base", "case")]
    # its own destroy_required flag wins over the case's retrain severity
    assert alone[0].action == "destroyed"
    both = resolve_models(
        parse_request("model_destruction", {**scope, "include_descendants": True}),
        {mkey("base"): GRAPH},
    )
    assert [(m.model.name, m.relation, m.action) for m in both] == [
        ("base", "case", "destroyed"),
        ("chat", "descendant", "superseded"),
    ]
    unknown = resolve_models(parse_request("model_destruction", scope), {mkey("base"): None})
    assert [(m.model.name, m.action) for m in unknown] == [("base", "superseded")]


# --- the frozen document ----------------------------------------------------------------


def frozen(**overrides: Any) -> dict[str, Any]:
    request = parse_request("subject_erasure", {"subject_ids": ["s1", "s2"]})
    versions = [FoundVersion(DatasetRef.model_validate(D), 3, 10, {"s1"}, {"user.a": 3})]
    models = resolve_models(request, {D_KEY: GRAPH})
    return freeze(request, versions=versions, models=models, systems=["crm"], **overrides)


def test_the_frozen_document_says_what_the_case_reaches() -> None:
    targets = frozen()
    assert targets["kind"] == "subject_erasure" and targets["systems"] == ["crm"]
    assert targets["records"]["keys"] == ["subject:s1", "subject:s2"]
    assert targets["records"]["found"] == 3
    assert [m["key"] for m in targets["models"]] == [mkey("base"), mkey("small")]
    assert json.loads(json.dumps(targets)) == targets
    assert summary(targets) == (
        "3 record(s) found now, 1 dataset version(s), 2 model(s) (1 to be destroyed,"
        " 1 to be superseded), 1 webhook system(s)"
    )
    destruction = freeze(
        parse_request("model_destruction", {"model": model("x")}),
        versions=[],
        models=[],
        systems=[],
    )
    assert destruction["records"] is None


def test_the_digest_is_of_the_content_and_changes_with_it() -> None:
    assert digest(frozen()) == digest(json.loads(json.dumps(frozen())))
    assert digest(frozen()).startswith("sha256:") and len(digest(frozen())) == 71
    assert digest(frozen()) != digest(frozen(notes=["something else"]))


@given(st.permutations(["a", "b", "c", "d"]), st.permutations(["x", "y", "z"]))
def test_the_digest_does_not_depend_on_the_order_things_were_found(
    versions: list[str], systems: list[str]
) -> None:
    request = parse_request("subject_erasure", {"subject_ids": ["s"]})
    found = [
        FoundVersion(DatasetRef(namespace="ns", name=v, version="1"), records=1) for v in versions
    ]
    in_order = sorted(found, key=lambda f: f.dataset.name)
    a = freeze(request, versions=found, models=[], systems=systems)
    b = freeze(request, versions=in_order, models=[], systems=sorted(systems))
    assert digest(a) == digest(b)


# --- the HTTP client ----------------------------------------------------------------------


def client(handler: Any, **urls: str | None) -> ServicesClient:
    return ServicesClient(
        urls.get("registry", "http://registry"),
        urls.get("lineage", "http://lineage"),
        transport=httpx.MockTransport(handler),
    )


async def test_the_client_reads_answers_and_tells_unknown_from_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/dataset-versions":
            assert request.url.params["subject_id"] == "s1"
            return httpx.Response(200, json=[answer(D, user_a=1)])
        if request.url.path == "/api/v1/model-status":
            return httpx.Response(404, json={"detail": "lineage has never seen it"})
        if request.url.path == "/api/v1/lineage/graph":
            assert request.url.params["direction"] == "downstream"
            return httpx.Response(200, json=GRAPH)
        return httpx.Response(404, json={"detail": "Not Found"})

    async with client(handler) as services:
        assert (await services.subjects_versions(["s1"], ["user.a", "user.b"]))["s1"][0][
            "dataset"
        ] == D
        assert await services.model_status(ModelRef.model_validate(model("m"))) is None
        assert (await services.downstream(D_KEY, 3)) == GRAPH
        with pytest.raises(ServiceUnavailable, match="has no GET /api/v1/dataset-versions/holding"):
            await services.versions_holding({"categories": ["user.a"]})


async def test_the_client_says_what_is_unavailable() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with client(down) as services:
        with pytest.raises(ServiceUnavailable, match="registry: http://registry cannot be"):
            await services.dataset_version(DatasetRef.model_validate(D))
    async with client(lambda r: httpx.Response(503, text="busy")) as services:
        with pytest.raises(ServiceUnavailable, match="answered 503"):
            await services.downstream(D_KEY, 1)
    async with client(lambda r: httpx.Response(403, json={"detail": "no"})) as services:
        with pytest.raises(ServiceUnavailable, match="SERVICE_API_KEY"):
            await services.subject_versions("s1")
    async with client(down, lineage=None) as services:
        with pytest.raises(ServiceUnavailable, match="set LINEAGE_URL"):
            await services.model_status(ModelRef.model_validate(model("m")))
