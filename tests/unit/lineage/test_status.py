"""Model status (services.lineage.domain.status): what may be set, which changes are
allowed, the effective status, "is it clean?", and the what-if impact on models."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID, uuid5

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.base import DatasetRef
from contracts.events import Severity
from services.lineage.adapters.registry_client import (
    RegistryClient,
    RegistryRejected,
    RegistryUnavailable,
)
from services.lineage.domain.propagation import LineageEdge, Node
from services.lineage.domain.status import (
    SETTABLE,
    TRANSITIONS,
    ExplicitStatus,
    ModelStatus,
    VersionImpact,
    decide_change,
    effective_status,
    impact_on_models,
    is_clean,
    parse_explicit,
)

A = ExplicitStatus.ACTIVE
Q = ExplicitStatus.QUARANTINED
S = ExplicitStatus.SUPERSEDED
D = ExplicitStatus.DESTROYED

statuses = st.sampled_from(list(ExplicitStatus))
current_statuses = st.one_of(st.none(), statuses)
flag_counts = st.integers(min_value=0, max_value=3)
severities = st.lists(st.sampled_from(list(Severity)), max_size=4)


# --- transitions -----------------------------------------------------------------------


def test_the_transition_table() -> None:
    assert TRANSITIONS[A] == {Q, S, D}
    assert TRANSITIONS[Q] == {A, S, D}
    assert TRANSITIONS[S] == {A, Q, D}
    assert TRANSITIONS[D] == frozenset()
    assert decide_change(S, D).changes, "superseded → destroyed"


@given(requested=statuses, destroy_flags=flag_counts)
def test_destroyed_is_terminal(requested: ExplicitStatus, destroy_flags: int) -> None:
    change = decide_change(D, requested, destroy_flags=destroy_flags)
    if requested is D:
        assert change.accepted and not change.changes, "destroying again is a no-op"
    else:
        assert change.refusal is not None
        assert "destroyed" in change.refusal and "final" in change.refusal


@given(current=current_statuses, destroy_flags=flag_counts)
def test_anything_not_destroyed_may_be_destroyed(
    current: ExplicitStatus | None, destroy_flags: int
) -> None:
    change = decide_change(current, D, destroy_flags=destroy_flags)
    assert change.accepted
    assert change.changes == (current is not D)


@given(current=current_statuses, requested=statuses)
def test_the_same_status_again_is_accepted_and_changes_nothing(
    current: ExplicitStatus | None, requested: ExplicitStatus
) -> None:
    same = current or A
    change = decide_change(current, same, destroy_flags=2)
    assert change.accepted and not change.changes


@given(current=current_statuses, requested=statuses, destroy_flags=flag_counts)
def test_an_accepted_change_follows_the_table_and_the_guards(
    current: ExplicitStatus | None, requested: ExplicitStatus, destroy_flags: int
) -> None:
    change = decide_change(current, requested, destroy_flags=destroy_flags)
    now = current or A
    if change.changes:
        assert requested in TRANSITIONS[now]
        if destroy_flags:
            assert requested is not A, "a model that must be destroyed is never made active"
            assert now is not Q or requested is D, "its quarantine ends only in destroyed"
    if not change.accepted:
        assert change.refusal is not None
        assert f"{now.value} → {requested.value}" in change.refusal
    if destroy_flags == 0 and requested is not now:
        assert change.accepted == (requested in TRANSITIONS[now])


@given(steps=st.lists(st.tuples(statuses, flag_counts), max_size=12))
def test_a_sequence_of_requests(steps: list[tuple[ExplicitStatus, int]]) -> None:
    """The state is the last accepted request; once destroyed, it stays destroyed."""
    state: ExplicitStatus | None = None
    destroyed = False
    for requested, flags in steps:
        change = decide_change(state, requested, destroy_flags=flags)
        if change.accepted:
            state = requested
        assert (state is D) == (destroyed or (change.accepted and requested is D))
        destroyed = state is D


def test_refusals_say_why() -> None:
    assert decide_change(D, A).refusal == (
        "cannot change destroyed → active: the model is destroyed, and destruction is final:"
        " no status can follow it"
    )
    assert decide_change(Q, A, destroy_flags=2).refusal == (
        "cannot change quarantined → active: the model has 2 active destroy_required flag(s),"
        " so its quarantine ends only in destroyed (or when they are retracted)"
    )
    refusal = decide_change(Q, S, destroy_flags=1).refusal
    assert refusal is not None and "quarantine ends only in destroyed" in refusal
    assert decide_change(S, A, destroy_flags=1).refusal == (
        "cannot change superseded → active: the model has 1 active destroy_required flag(s);"
        " it cannot be made active until they are retracted"
    )
    assert decide_change(None, S, destroy_flags=1).accepted, "not quarantined: may supersede"
    assert decide_change(S, Q, destroy_flags=1).accepted


def test_flagged_cannot_be_set_and_unknown_statuses_are_named() -> None:
    with pytest.raises(ValueError, match="'flagged' cannot be set: it is derived"):
        parse_explicit("flagged")
    with pytest.raises(ValueError, match="unknown status 'deleted'; settable statuses are"):
        parse_explicit("deleted")
    assert [parse_explicit(s) for s in SETTABLE] == list(ExplicitStatus)


# --- effective status and clean ------------------------------------------------------------


@given(explicit=current_statuses, flags=severities)
def test_an_override_wins_else_flags_decide(
    explicit: ExplicitStatus | None, flags: list[Severity]
) -> None:
    status = effective_status(explicit, flags)
    flagging = any(s is not Severity.EXCLUDE_FROM_FUTURE for s in flags)
    if explicit in (Q, S, D):
        assert explicit is not None and status.value == explicit.value
    else:
        assert status is (ModelStatus.FLAGGED if flagging else ModelStatus.ACTIVE)
    clean = is_clean(explicit, flags)
    assert clean == (not flagging and explicit not in (Q, D))
    if clean:
        assert status in (ModelStatus.ACTIVE, ModelStatus.SUPERSEDED)
    if status in (ModelStatus.FLAGGED, ModelStatus.QUARANTINED, ModelStatus.DESTROYED):
        assert not clean


def test_exclude_from_future_flags_no_model() -> None:
    assert effective_status(None, [Severity.EXCLUDE_FROM_FUTURE]) is ModelStatus.ACTIVE
    assert effective_status(A, [Severity.REVIEW]) is ModelStatus.FLAGGED
    assert is_clean(S, [])
    assert not is_clean(None, [Severity.REVIEW])


# --- what-if impact ------------------------------------------------------------------------

RUNS = UUID("1b0a7c2e-3d4f-4a5b-8c6d-7e8f9a0b1c2d")


def ds(name: str) -> Node:
    return Node("s3://lake", name, "v1")


def model(name: str) -> Node:
    return Node("models", name, "1", is_model=True)


def edge(source: Node, label: str, target: Node) -> LineageEdge:
    return LineageEdge(source, uuid5(RUNS, label), target)


def ref(node: Node) -> DatasetRef:
    return DatasetRef(namespace=node.namespace, name=node.name, version=node.version)


POSTS, CHATS, CLICKS = ds("posts"), ds("chats"), ds("clicks")
BASE, CHAT, RANKER = model("base"), model("chat"), model("ranker")
EDGES = {
    POSTS.identity: [edge(POSTS, "pretrain", BASE), edge(BASE, "finetune", CHAT)],
    CHATS.identity: [edge(CHATS, "finetune", CHAT)],
    CLICKS.identity: [edge(CLICKS, "rank", RANKER)],
}


def test_each_model_gets_its_most_severe_cause_and_its_shortest_path() -> None:
    impacts = impact_on_models(
        [
            VersionImpact(ref(POSTS), Severity.RETRAIN_REQUIRED),
            VersionImpact(ref(CHATS), Severity.DESTROY_REQUIRED),
            VersionImpact(ref(CLICKS), Severity.EXCLUDE_FROM_FUTURE),
        ],
        EDGES,
        {CHAT.identity: frozenset({Severity.DESTROY_REQUIRED}), BASE.identity: frozenset()},
    )
    by_name = {i.model.name: i for i in impacts}
    assert set(by_name) == {"base", "chat"}, "exclude_from_future reaches no model"
    base, chat = by_name["base"], by_name["chat"]
    assert base.severity is Severity.RETRAIN_REQUIRED
    assert base.evidence_path == (
        "dataset:s3://lake:posts#v1",
        f"run:{uuid5(RUNS, 'pretrain')}",
        "model:models:base#1",
    )
    assert not base.already_flagged and base.escalates and base.current_severity is None
    assert chat.severity is Severity.DESTROY_REQUIRED
    assert chat.evidence_path[0] == "dataset:s3://lake:chats#v1" and len(chat.evidence_path) == 3
    assert [(c[0].name, c[1]) for c in chat.causes] == [
        ("chats", Severity.DESTROY_REQUIRED),
        ("posts", Severity.RETRAIN_REQUIRED),
    ]
    assert chat.already_flagged and not chat.escalates


def test_a_model_flagged_less_severely_now_escalates() -> None:
    (impact,) = impact_on_models(
        [VersionImpact(ref(CLICKS), Severity.DESTROY_REQUIRED)],
        EDGES,
        {RANKER.identity: frozenset({Severity.RETRAIN_REQUIRED})},
    )
    assert not impact.already_flagged and impact.escalates
    assert impact.current_severity is Severity.RETRAIN_REQUIRED


# --- the registry client (what inputs and what-if answer 503 with) ---------------------------


Handler = Callable[[httpx.Request], httpx.Response]


async def _client_answer(handler: Handler, call: str = "composition") -> object:
    transport = httpx.MockTransport(handler)
    async with RegistryClient("http://registry:8002/", transport=transport) as registry:
        if call == "composition":
            return await registry.composition(ref(POSTS))
        return await registry.what_if_withdrawal({"subject_id": "s"})


async def test_the_registry_client_says_why_the_registry_cannot_answer() -> None:
    with pytest.raises(RegistryUnavailable, match="set REGISTRY_URL for the lineage service"):
        RegistryClient(None)

    def answer(status: int, body: object) -> Handler:
        return lambda request: httpx.Response(status, json=body)

    assert await _client_answer(answer(404, {"detail": "no sealed dataset version x"})) is None
    assert await _client_answer(answer(200, {"records": 3})) == {"records": 3}
    cases: list[tuple[Handler, str]] = [
        (answer(404, {"detail": "Not Found"}), "has no GET /api/v1/dataset-version/composition"),
        (answer(502, {"detail": "bad gateway"}), "answered 502"),
        (answer(401, {"detail": "no key"}), "refused lineage's key .401: no key.; set SERVICE"),
    ]
    for handler, message in cases:
        with pytest.raises(RegistryUnavailable, match=message):
            await _client_answer(handler)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed", request=request)

    with pytest.raises(RegistryUnavailable, match="cannot be reached: ConnectError: All conn"):
        await _client_answer(refuse)
    with pytest.raises(RegistryRejected) as rejected:
        await _client_answer(answer(422, {"detail": [{"msg": "bad"}]}), call="what-if")
    assert rejected.value.status_code == 422 and rejected.value.detail == [{"msg": "bad"}]
