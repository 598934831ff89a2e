"""The ranking-slot gate: first come, first served, deadlines honoured while waiting, over real gRPC too."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.admission import FifoGate
from serving.config import LimitsConfig, ServingConfig
from serving.errors import DeadlineExceeded
from serving.metrics import StageTimer
from serving.pipeline import PopularityPipeline, Scored
from serving.proto_gen import feedrank_pb2 as pb
from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
from serving.requests import parse_request
from serving.router import Router, RouterState
from serving.server import create_server, stop_gracefully


def _wait_for(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def test_waiters_get_the_slot_in_arrival_order():
    gate = FifoGate(1)
    gate.acquire()
    order: list[int] = []

    def waiter(i: int) -> None:
        with gate.enter():
            order.append(i)

    threads = []
    for i in range(6):  # each thread queues before the next starts: arrival order is 0..5
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        _wait_for(lambda n=i + 1: gate.waiting == n)
    gate.release()
    for t in threads:
        t.join(5)
    assert order == list(range(6))
    assert gate.waiting == 0
    gate.acquire(time.monotonic())  # the slot is free again: no wait, even with a deadline of now
    gate.release()


def test_a_waiter_past_its_deadline_leaves_the_queue_and_the_slot_goes_to_the_next():
    gate = FifoGate(1)
    gate.acquire()
    with pytest.raises(DeadlineExceeded, match="ranking slot"):
        gate.acquire(time.monotonic() + 0.05)
    assert gate.waiting == 0
    got = threading.Event()

    def waiter() -> None:
        with gate.enter(time.monotonic() + 5):
            got.set()

    t = threading.Thread(target=waiter)
    t.start()
    _wait_for(lambda: gate.waiting == 1)
    gate.release()  # handed to the live waiter, not to the one that gave up
    t.join(5)
    assert got.is_set() and gate.waiting == 0


def test_slots_bound_the_holders_at_once():
    gate = FifoGate(2)
    inside, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with gate.enter():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.01)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] == 2 and gate.waiting == 0
    with pytest.raises(ValueError, match="slots"):
        FifoGate(0)


class _HeldPipeline(PopularityPipeline):
    """Injects a slow dependency: ranking blocks until the test opens ``release``."""

    def __init__(self, *args, started: threading.Event, release: threading.Event, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started, self.release = started, release

    def _score(self, request, timer, deadline, candidates=None):
        self.started.set()
        assert self.release.wait(10)
        return super()._score(request, timer, deadline, candidates)


def _serve_held(kind, snapshot, make_state, config: ServingConfig):
    """A server whose only arm is a ``kind`` pipeline over the popularity one; ``(pipeline, server, channel, stub)``."""
    base = make_state(snapshot, "v1").champion
    pipeline = kind(snapshot=base.snapshot, reranker=base.reranker, exploration=base.exploration,
                    versions=base.versions, started=threading.Event(), release=threading.Event())
    router = Router(lambda: RouterState(champion=pipeline, challenger=None, challenger_share=0.0, salt="s"))
    srv, port = create_server(config, router, address="127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return pipeline, srv, channel, pb_grpc.FeedRankerStub(channel)


def test_over_grpc_a_queued_call_honours_its_deadline_and_health_answers_meanwhile(snapshot, make_state):
    held, srv, channel, stub = _serve_held(_HeldPipeline, snapshot, make_state,
                                           ServingConfig(max_workers=4, ranking_slots=1))
    started, release = held.started, held.release
    try:
        first = stub.RankFeed.future(pb.RankFeedRequest(request_id="a", user_id="1", k=5, candidate_count=50),
                                     timeout=10)
        assert started.wait(5)  # the one slot is taken
        with pytest.raises(grpc.RpcError) as err:
            stub.RankFeed(pb.RankFeedRequest(request_id="b", user_id="2", k=5, candidate_count=50), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # threads are not all stuck in ranking
        queued = stub.RankFeed.future(pb.RankFeedRequest(request_id="c", user_id="3", k=5, candidate_count=50),
                                      timeout=10)
        release.set()
        assert len(first.result().items) == 5 and len(queued.result().items) == 5
    finally:
        release.set()
        channel.close()
        stop_gracefully(srv, 1.0)


def test_ranking_slots_is_validated():
    with pytest.raises(ValueError, match="ranking_slots"):
        ServingConfig(ranking_slots=-1)


class _BatchingPipeline(_HeldPipeline):
    """Fetches queued calls' candidates in one batch (popular rows) and records each batch's size."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    def retrieve_many(self, requests):
        self.batches.append([r.request_id for r in requests])
        return [self.snapshot.popular_rows(r.candidate_count) for r in requests]

    def _score(self, request, timer, deadline, candidates=None):
        if request.request_id == "first":
            self.started.set()
            assert self.release.wait(10)
        if candidates is None:
            return PopularityPipeline._score(self, request, timer, deadline)
        assert request.request_id in {i for b in self.batches for i in b}
        pop = self.snapshot.popularity[candidates]
        return Scored(rows=candidates, score=pop, p_purchase=np.zeros(len(pop)), expected_gmv=np.zeros(len(pop)))


def test_the_slot_holder_fetches_candidates_for_the_calls_queued_behind_it(snapshot, make_state):
    pipeline, srv, channel, stub = _serve_held(_BatchingPipeline, snapshot, make_state,
                                               ServingConfig(max_workers=8, ranking_slots=1, retrieval_batch=3))
    started, release = pipeline.started, pipeline.release
    base = make_state(snapshot, "v1").champion
    feeds = {}
    try:
        first = stub.RankFeed.future(pb.RankFeedRequest(request_id="first", user_id="1", k=5, candidate_count=50),
                                     timeout=10)
        assert started.wait(5)  # "first" holds the slot; four calls queue behind it
        queued = {}
        for i in range(4):
            queued[f"q{i}"] = stub.RankFeed.future(
                pb.RankFeedRequest(request_id=f"q{i}", user_id=str(10 + i), k=5, candidate_count=50), timeout=10)
            _wait_for(lambda n=i + 1: srv.feed_service._gate.waiting == n)
        release.set()
        feeds = {key: [it.item_id for it in f.result().items] for key, f in {"first": first, **queued}.items()}
    finally:
        release.set()
        channel.close()
        stop_gracefully(srv, 1.0)
    # q0 takes the slot and fetches its own and the next two calls' candidates (retrieval_batch 3);
    # q3, alone in the queue when its turn comes, retrieves in rank as usual
    assert pipeline.batches == [["q0", "q1", "q2"]]
    for key, items in feeds.items():  # the same feeds as the unbatched pipeline gives
        request = parse_request(pb.RankFeedRequest(request_id=key, user_id=str(10 + int(key[1:]) if key != "first"
                                                                                  else 1), k=5, candidate_count=50),
                                LimitsConfig())
        assert items == [it.item_id for it in base.rank(request, arm="champion", timer=StageTimer(),
                                                         deadline=None).items]
