"""Rollup semantics (SPEC section 2), driven by a fake clock."""

from __future__ import annotations

import itertools
import random

import pytest
from rollup_kit import Kit, resource, span

from costproc.model import KIND_CONSUMER, KIND_SERVER

TRACE_A, TRACE_B, TRACE_C = 0xA, 0xB, 0xC


def test_nested_spans_are_one_job_counted_once() -> None:
    kit = Kit()
    kit.add(
        span(TRACE_A, 1, None, 0, 100, job="j1", job_type="checkout", tenant="acme"),
        span(TRACE_A, 2, 1, 10, 60),
        span(TRACE_A, 3, 2, 20, 40),
    )
    kit.wait(1.0)
    assert kit.sink.jobs == []  # still inside completion_wait
    kit.wait(1.5)
    job = kit.sink.job("j1")
    assert (job.outcome, job.attempts) == ("success", 1)
    assert (job.labels.job_type, job.labels.tenant, job.labels.service) == (
        "checkout",
        "acme",
        "svc",
    )
    assert job.cost.cpu_seconds == pytest.approx(0.1)  # union of nested spans, not 0.1+0.05+0.02
    assert job.duration_seconds == pytest.approx(0.1)


def test_children_before_parents_across_requests() -> None:
    kit = Kit()
    kit.add(span(TRACE_A, 3, 2, 20, 40), span(TRACE_A, 4, 3, 25, 30))
    kit.wait(1.0)
    kit.add(span(TRACE_A, 2, 1, 10, 60))
    kit.wait(1.0)
    kit.add(span(TRACE_A, 1, None, 0, 100, job="j1"))
    kit.wait(2.5)
    assert [j.job_id for j in kit.sink.jobs] == ["j1"]
    assert kit.sink.attempts[0].cost.cpu_seconds == pytest.approx(0.1)
    assert kit.rollup.traces[TRACE_A.to_bytes(16, "big")].waiting == {}


def test_completion_wait_restarts_with_each_span() -> None:
    kit = Kit()
    kit.add(span(TRACE_A, 1, None, 0, 100, job="j1"))
    kit.wait(1.5)
    kit.add(span(TRACE_A, 2, 1, 10, 20))
    kit.wait(1.5)
    assert kit.sink.jobs == []
    kit.wait(1.0)
    assert len(kit.sink.jobs) == 1 and kit.sink.late == []


def test_one_trace_many_jobs_batch_consumer() -> None:
    """A consumer's per-message spans carry job IDs; the batch is the trace's own job."""
    kit = Kit()
    kit.add(
        span(TRACE_A, 11, 1, 10, 30, job="msg-1"),
        span(TRACE_A, 12, 1, 40, 70, job="msg-2"),
        span(TRACE_A, 21, 11, 15, 25),  # a child of msg-1 without job ID inherits it
        span(TRACE_A, 1, None, 0, 100, kind=KIND_CONSUMER),
    )
    kit.wait(2.5)
    by_id = {j.job_id: j for j in kit.sink.jobs}
    trace_job = TRACE_A.to_bytes(16, "big").hex()
    assert set(by_id) == {"msg-1", "msg-2", trace_job}
    assert by_id["msg-1"].cost.cpu_seconds == pytest.approx(0.02)
    assert by_id["msg-2"].cost.cpu_seconds == pytest.approx(0.03)
    # The batch's own job is not billed for the time its message jobs took.
    assert by_id[trace_job].cost.cpu_seconds == pytest.approx(0.05)


def test_one_job_across_three_services() -> None:
    a, b, c = resource("gateway"), resource("orders"), resource("stock")
    kit = Kit()
    kit.add(
        span(TRACE_A, 3, 2, 30, 50, res=c, kind=KIND_SERVER),
        span(TRACE_A, 2, 1, 20, 60, res=b, kind=KIND_SERVER),
        span(TRACE_A, 1, None, 0, 100, job="order-7", res=a, kind=KIND_SERVER, job_type="order"),
    )
    kit.wait(2.5)
    job = kit.sink.job("order-7")
    assert job.labels.service == "gateway" and job.labels.job_type == "order"
    # Busy time is per instance: each service's own interval counts on its own instance.
    assert job.cost.cpu_seconds == pytest.approx(0.1 + 0.04 + 0.02)


@pytest.mark.parametrize(
    ("second_outcome", "expected_outcome"),
    [("success", "success"), ("failure", "failure")],
    ids=["fail-then-succeed", "fail-twice"],
)
def test_retry_in_a_new_trace(second_outcome: str, expected_outcome: str) -> None:
    kit = Kit(retry_window=10.0)
    kit.add(span(TRACE_A, 1, None, 0, 100, job="pay-1", error=True))
    kit.wait(2.5)
    assert kit.sink.jobs == [] and [a.outcome for a in kit.sink.attempts] == ["failure"]
    kit.add(span(TRACE_B, 1, None, 5000, 5200, job="pay-1", outcome=second_outcome))
    kit.wait(2.5)
    if expected_outcome == "failure":
        assert kit.sink.jobs == []  # still waiting for another retry
        kit.wait(10.0)
    job = kit.sink.job("pay-1")
    assert (job.outcome, job.attempts) == (expected_outcome, 2)
    assert job.cost.cpu_seconds == pytest.approx(0.3)  # both attempts
    assert job.duration_seconds == pytest.approx(5.2)  # first span start to last span end
    # Decided by the successful attempt, else by the last to close: TRACE_B either way.
    assert job.trace_id == TRACE_B.to_bytes(16, "big")


def test_attempt_after_job_closed_starts_a_new_job() -> None:
    kit = Kit()
    kit.add(span(TRACE_A, 1, None, 0, 100, job="j"))
    kit.wait(2.5)
    kit.add(span(TRACE_B, 1, None, 0, 100, job="j"))
    kit.wait(2.5)
    assert [(j.job_id, j.attempts) for j in kit.sink.jobs] == [("j", 1), ("j", 1)]


@pytest.mark.parametrize(
    ("root_kw", "outcome"),
    [
        ({}, "success"),
        ({"error": True}, "failure"),
        ({"outcome": "failure"}, "failure"),
        ({"outcome": "success", "error": True}, "success"),  # the attribute wins over status
    ],
    ids=["ok", "error-status", "outcome-attribute", "attribute-over-status"],
)
def test_attempt_outcome(root_kw: dict[str, object], outcome: str) -> None:
    kit = Kit()
    kit.add(
        span(TRACE_A, 1, None, 0, 100, job="j", **root_kw), span(TRACE_A, 2, 1, 10, 20, error=True)
    )
    kit.wait(2.5)
    assert kit.sink.job("j").outcome == outcome  # a child's error does not fail the attempt


def test_several_topmost_spans_fail_if_any_fails_labels_from_earliest() -> None:
    kit = Kit()
    kit.add(
        span(TRACE_A, 2, 1, 50, 90, job="j", job_type="late-one", error=True),
        span(TRACE_A, 3, 1, 10, 40, job="j", job_type="early-one"),
        span(TRACE_A, 1, None, 0, 100),
    )
    kit.wait(2.5)
    job = kit.sink.job("j")
    assert job.outcome == "failure" and job.attempts == 1
    assert job.labels.job_type == "early-one"


def test_labels_fall_back_to_resource_then_unknown() -> None:
    kit = Kit()
    res = resource("worker", job_type="nightly", tenant="globex")
    kit.add(span(TRACE_A, 1, None, 0, 10, job="a", res=res), span(TRACE_B, 1, None, 0, 10, job="b"))
    kit.wait(2.5)
    assert (
        kit.sink.job("a").labels.job_type == "nightly"
        and kit.sink.job("a").labels.tenant == "globex"
    )
    assert (
        kit.sink.job("b").labels.job_type == "unknown"
        and kit.sink.job("b").labels.tenant == "unknown"
    )


def test_trace_without_job_id_is_its_own_job() -> None:
    kit = Kit()
    kit.add(span(TRACE_A, 1, None, 0, 100), span(TRACE_A, 2, 1, 0, 50))
    kit.wait(2.5)
    assert [j.job_id for j in kit.sink.jobs] == [TRACE_A.to_bytes(16, "big").hex()]


def test_untagged_traces_dropped_when_configured() -> None:
    kit = Kit(untagged_traces="drop")
    kit.add(
        span(TRACE_A, 1, None, 0, 100),
        span(TRACE_A, 2, 1, 0, 50),
        span(TRACE_B, 1, None, 0, 10, job="x"),
    )
    kit.wait(2.5)
    assert [j.job_id for j in kit.sink.jobs] == ["x"]
    assert kit.rollup.dropped_untagged == 2


def test_missing_root_is_incomplete_after_max_wait() -> None:
    kit = Kit(max_wait=60.0)
    kit.add(span(TRACE_A, 2, 1, 10, 60), span(TRACE_A, 3, 2, 20, 30))
    kit.wait(30.0)
    assert kit.sink.jobs == []
    kit.wait(35.0)
    job = kit.sink.job(TRACE_A.to_bytes(16, "big").hex())
    assert job.outcome == "incomplete"
    assert job.cost.cpu_seconds == pytest.approx(0.05)
    assert kit.rollup.span_count == 2  # remembered for late spans until late_span_window


def test_late_span_is_priced_and_counted_not_observed() -> None:
    kit = Kit()
    kit.add(span(TRACE_A, 1, None, 0, 100, job="j"))
    kit.wait(2.5)
    kit.add(span(TRACE_A, 2, 1, 150, 170))  # outside the root: new busy time
    kit.add(span(TRACE_A, 3, 1, 10, 20))  # inside the root: already billed, no new cpu
    kit.add(span(TRACE_A, 4, 2, 150, 160, egress_bytes=1e9, egress_class="internet"))
    kit.wait(2.5)
    assert len(kit.sink.jobs) == 1
    late = kit.sink.late
    assert [n for _, _, n in late] == [1, 1, 1]
    assert [c.cpu_seconds for _, c, _ in late] == pytest.approx([0.02, 0.0, 0.0])
    assert late[2][1].by_component["egress"] == pytest.approx(1.0)


def test_late_span_after_trace_forgotten_starts_new_attempt() -> None:
    kit = Kit(late_span_window=5.0)
    kit.add(span(TRACE_A, 1, None, 0, 100, job="j"))
    kit.wait(10.0)
    assert kit.rollup.traces == {}
    kit.add(span(TRACE_A, 2, 1, 10, 20, job="j"))
    kit.wait(2.5)
    assert [j.job_id for j in kit.sink.jobs] == ["j", "j"]


def test_eviction_at_trace_cap() -> None:
    kit = Kit(max_inflight_traces=2)
    kit.add(span(TRACE_A, 1, None, 0, 10, job="a"), span(TRACE_B, 1, None, 0, 10, job="b"))
    kit.add(span(TRACE_C, 1, None, 0, 10, job="c"))
    assert [(j.job_id, j.outcome) for j in kit.sink.jobs] == [("a", "evicted")]
    assert kit.sink.evicted == {"max_inflight_traces": 1}
    assert [a.outcome for a in kit.sink.attempts] == ["evicted"]
    assert len(kit.rollup.traces) == 2
    kit.wait(2.5)
    assert sorted((j.job_id, j.outcome) for j in kit.sink.jobs[1:]) == [
        ("b", "success"),
        ("c", "success"),
    ]


def test_eviction_at_span_cap_orphans_priced_not_lost() -> None:
    kit = Kit(max_inflight_spans=3)
    kit.add(span(TRACE_A, 2, 1, 0, 10), span(TRACE_A, 3, 1, 0, 10))  # waiting for parent 1
    kit.add(span(TRACE_B, 1, None, 0, 10, job="b"), span(TRACE_B, 2, 1, 0, 5))
    assert kit.rollup.span_count == 2
    evicted = kit.sink.job(TRACE_A.to_bytes(16, "big").hex())
    assert evicted.outcome == "evicted"
    assert evicted.cost.cpu_seconds == pytest.approx(0.01)


def test_job_cap_evicts_oldest_open_job() -> None:
    kit = Kit(max_inflight_traces=2, retry_window=30.0)
    kit.add(span(TRACE_A, 1, None, 0, 10, job="a", error=True))
    kit.wait(2.5)  # attempt closed, job waits for a retry
    assert kit.sink.jobs == []
    kit.add(span(TRACE_B, 1, None, 0, 10, job="b"), span(TRACE_C, 1, None, 0, 10, job="c"))
    assert [(j.job_id, j.outcome) for j in kit.sink.jobs] == [("a", "evicted")]
    assert kit.sink.evicted == {"max_inflight_jobs": 1}


def test_duplicate_span_ignored() -> None:
    kit = Kit()
    root = span(TRACE_A, 1, None, 0, 100, job="j")
    kit.add(root)
    assert kit.rollup.add([span(TRACE_A, 1, None, 0, 100, job="j")]) == 1
    kit.wait(2.5)
    assert kit.sink.job("j").cost.cpu_seconds == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("child_kw", "local_roots", "closes_after"),
    [
        ({"kind": KIND_SERVER}, True, 2.5),
        ({"kind": KIND_CONSUMER}, True, 2.5),
        ({"remote_parent": True}, True, 2.5),
        ({"kind": KIND_SERVER}, False, 62.5),  # max_wait, then completion_wait
        ({}, True, 62.5),  # an INTERNAL span with a missing parent still waits
    ],
    ids=["server", "consumer", "remote-flag", "disabled", "internal-waits"],
)
def test_local_roots(child_kw: dict[str, object], local_roots: bool, closes_after: float) -> None:
    kit = Kit(local_roots=local_roots)
    kit.add(span(TRACE_A, 5, 4, 0, 10, **child_kw))
    kit.wait(closes_after - 0.6)
    assert kit.sink.jobs == []
    kit.wait(0.75)
    outcome = "incomplete" if closes_after > 60 else "success"
    assert [j.outcome for j in kit.sink.jobs] == [outcome]


def test_flush_closes_everything_open() -> None:
    kit = Kit()
    kit.add(span(TRACE_A, 1, None, 0, 10, job="a"), span(TRACE_B, 2, 1, 0, 10))
    kit.rollup.flush()
    assert sorted(j.outcome for j in kit.sink.jobs) == ["incomplete", "success"]
    assert kit.rollup.jobs == {}


def test_parent_cycle_does_not_hang() -> None:
    kit = Kit(max_wait=5.0)
    kit.add(span(TRACE_A, 1, 2, 0, 10), span(TRACE_A, 2, 1, 0, 10))
    kit.wait(6.0)
    kit.wait(2.5)
    assert [j.outcome for j in kit.sink.jobs] == ["incomplete"]


def _workload() -> list[list]:  # type: ignore[type-arg]
    """Three traces: nested jobs, a batch with message jobs, a retried job."""
    web = resource("web", "w1", cpu=2.0, memory=4.0, concurrency=4.0)
    db = resource("db", "d1", cpu=1.0, memory=2.0)
    return [
        span(
            TRACE_A, 1, None, 0, 100, job="order-1", res=web, job_type="checkout", egress_bytes=5e5
        ),
        span(TRACE_A, 2, 1, 10, 90, res=web),
        span(TRACE_A, 3, 2, 20, 70, res=db, measured=(0.01, None, None)),
        span(TRACE_A, 4, 3, 30, 40, res=db),
        span(TRACE_B, 1, None, 0, 300, res=web, kind=KIND_CONSUMER),
        span(TRACE_B, 2, 1, 10, 100, job="m-1", res=web),
        span(TRACE_B, 3, 2, 20, 60, res=db),
        span(TRACE_B, 4, 1, 110, 200, job="m-2", res=web, error=True),
        span(TRACE_B, 5, 4, 120, 130, res=db, metered=(("api", 0.5),)),
        span(TRACE_C, 1, None, 0, 50, job="m-2", res=web),
    ]  # type: ignore[return-value]


def _summary(kit: Kit) -> list[tuple[object, ...]]:
    return sorted(
        (j.job_id, j.outcome, j.attempts, round(j.cost.total, 12), round(j.cost.cpu_seconds, 12))
        for j in kit.sink.jobs
    )


def test_arrival_order_does_not_matter() -> None:
    """Any order and any split over requests gives the same jobs and costs."""
    spans = _workload()
    reference = Kit(retry_window=5.0)
    reference.add(*spans)
    reference.wait(10.0)
    expected = _summary(reference)
    # Worked by hand: web holds 0.5 core and 1 GB per job, db 1 core and 2 GB.
    # order-1 cpu: web 0.1 s x 0.5 + db measured 0.01 + db span 4 0.01 s x 1 = 0.07;
    # memory: web 0.1 x 1 + db 0.05 x 2 = 0.2 GB-s ($0.02); egress 5e5 B = $0.0005.
    # The batch trace's own job: 300 ms less its two message jobs' 180 ms = 0.12 s on web.
    assert expected == [
        (TRACE_B.to_bytes(16, "big").hex(), "success", 1, 0.072, 0.06),
        ("m-1", "success", 1, 0.102, 0.085),
        ("m-2", "success", 2, 0.596, 0.08),
        ("order-1", "success", 1, 0.0905, 0.07),
    ]
    rng = random.Random(1)
    for _ in range(30):
        order = rng.sample(spans, len(spans))
        cuts = sorted(rng.sample(range(1, len(order)), 3))
        kit = Kit(retry_window=5.0)
        for lo, hi in itertools.pairwise([0, *cuts, len(order)]):
            kit.add(*[_copy(s) for s in order[lo:hi]])
            kit.wait(0.5)
        kit.wait(10.0)
        assert _summary(kit) == expected


def _copy(s):  # type: ignore[no-untyped-def]
    return span(
        int.from_bytes(s.trace_id, "big"),
        int.from_bytes(s.span_id, "big"),
        int.from_bytes(s.parent_id, "big") if s.parent_id else None,
        (s.start - 1_767_225_600_000_000_000) / 1e6,
        (s.end - 1_767_225_600_000_000_000) / 1e6,
        job=s.job_id,
        res=s.resource,
        kind=s.kind,
        error=s.error,
        job_type=s.job_type,
        measured=s.measured,
        metered=s.metered,
        egress_bytes=s.egress_bytes,
        egress_class=s.egress_class,
    )


def test_idle_traces_make_room_before_open_ones_are_evicted() -> None:
    kit = Kit(max_inflight_traces=2)
    kit.add(span(TRACE_A, 1, None, 0, 10, job="a"))
    kit.wait(2.5)  # a closed: its trace is idle, kept for late spans
    kit.add(span(TRACE_B, 1, None, 0, 10, job="b"), span(TRACE_C, 1, None, 0, 10, job="c"))
    assert kit.sink.evicted == {}
    assert TRACE_A.to_bytes(16, "big") not in kit.rollup.traces
    kit.wait(2.5)
    assert sorted(j.job_id for j in kit.sink.jobs) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("caps", "spans", "reason"),
    [
        ({"max_inflight_spans": 10}, 8, None),
        ({"max_inflight_spans": 10}, 9, "max_inflight_spans"),
        ({"max_inflight_traces": 10}, 9, "max_inflight_traces"),
    ],
    ids=["below", "spans", "traces"],
)
def test_pressure_above_watermark(caps: dict[str, int], spans: int, reason: str | None) -> None:
    kit = Kit(backpressure_watermark=0.9, **caps)
    kit.add(*[span(0x100 + i, 1, None, 0, 10, job=f"j{i}") for i in range(spans)])
    assert kit.rollup.pressure() == reason
    kit.wait(2.5)  # closed traces are idle: they no longer press
    assert kit.rollup.pressure() is None


def test_tick_budget_closes_in_slices() -> None:
    kit = Kit()
    kit.add(*[span(0x100 + i, 1, None, 0, 10, job=f"j{i}") for i in range(5)])
    kit.clock.advance(3.0)
    assert kit.rollup.tick(budget=2) is True
    assert len(kit.sink.jobs) == 2
    assert kit.rollup.tick(budget=2) is True
    assert kit.rollup.tick(budget=2) is False
    assert len(kit.sink.jobs) == 5


def test_sidecars_and_gateway_agree_when_job_ids_travel_as_baggage() -> None:
    """SPEC 2.11: each sidecar sees only its service; job IDs on every span make the
    per-job cost the sidecars report add up to what a gateway sees for the whole trace."""
    front, back = resource("front", cpu=2.0), resource("back", cpu=1.0)
    spans = [
        # front: a SERVER root whose parent is in an uninstrumented proxy (remote parent)
        lambda: span(
            TRACE_A, 2, 1, 0, 100, job="j", res=front, kind=KIND_SERVER, remote_parent=True
        ),
        lambda: span(TRACE_A, 3, 2, 10, 40, job="j", res=front),
        # back: called by front; its SERVER span's parent lives in the front sidecar
        lambda: span(TRACE_A, 5, 3, 15, 35, job="j", res=back, kind=KIND_SERVER),
        lambda: span(TRACE_A, 6, 5, 20, 30, job="j", res=back),
    ]
    gateway = Kit(local_roots=True)
    gateway.add(*[make() for make in spans])
    gateway.wait(2.5)
    sidecars = [Kit(local_roots=True), Kit(local_roots=True)]
    sidecars[0].add(*[make() for make in spans[:2]])
    sidecars[1].add(*[make() for make in spans[2:]])
    for kit in sidecars:
        kit.wait(2.5)
    gateway_cost = gateway.sink.job("j").cost.cpu_seconds
    sidecar_cost = sum(kit.sink.job("j").cost.cpu_seconds for kit in sidecars)
    assert gateway_cost == pytest.approx(0.1 * 2.0 + 0.02 * 1.0)
    assert sidecar_cost == pytest.approx(gateway_cost)
