"""The FeedRanker service over real gRPC on loopback."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving.proto_gen import feedrank_pb2 as pb
from serving.rerank import RerankConfig, fair_prefix_minimums


def req(**kw) -> pb.RankFeedRequest:
    base = dict(request_id="r-1", user_id="12", k=20, candidate_count=200,
                context=pb.Context(device="mobile", country="DE", hour=20, day_of_week=2))
    base.update(kw)
    return pb.RankFeedRequest(**base)


def test_happy_path(server):
    stub, *_ = server
    resp = stub.RankFeed(req(exclude_item_ids=[1, 2, 3]), timeout=5)
    assert resp.request_id == "r-1" and len(resp.items) == 20
    ids = [it.item_id for it in resp.items]
    assert len(set(ids)) == 20 and not {1, 2, 3} & set(ids)
    assert [it.rank for it in resp.items] == list(range(20))
    assert resp.arm in ("champion", "challenger")
    assert resp.model_versions.ranker.startswith("v1")
    assert all(0 < it.propensity <= 1 for it in resp.items)
    assert "popularity" in resp.fallbacks


def test_same_user_same_arm(server):
    stub, *_ = server
    arms = {stub.RankFeed(req(request_id=f"r{i}", user_id="77"), timeout=5).arm for i in range(5)}
    assert len(arms) == 1
    both = {stub.RankFeed(req(request_id=f"u{u}", user_id=str(u)), timeout=5).arm for u in range(40)}
    assert both == {"champion", "challenger"}


def test_new_seller_share_and_category_limits_hold_on_every_response(server, snapshot):
    stub, *_ = server
    table = fair_prefix_minimums(20, 0.2, 0.1)
    assert table[-1] >= 2  # the rule really asks for new-seller items at this size
    for u in range(30):
        # every in-stock item is a candidate, so every new-seller item is eligible
        resp = stub.RankFeed(req(request_id=f"c{u}", user_id=str(u), k=20, candidate_count=len(snapshot)),
                             timeout=5)
        rows = snapshot.rows(np.array([it.item_id for it in resp.items]))
        assert (rows >= 0).all()
        if resp.randomized:  # exploration reorders the top slots on purpose, and says so
            assert any("exploration" in it.reasons for it in resp.items)
            continue
        cap = int(np.ceil(RerankConfig().max_category_share * 20))  # the fixture keeps the default share
        assert np.bincount(snapshot.category_ids[rows]).max() <= cap
        assert (np.cumsum(snapshot.is_new_seller[rows]) >= table).all()
        promoted = [it for it in resp.items if "new_seller_exposure" in it.reasons]
        assert promoted, "popularity alone would not show new sellers: the rule must have moved some"


BAD = [
    (dict(request_id=""), "request_id"),
    (dict(request_id="x" * 129), "request_id"),
    (dict(user_id=""), "user_id"),
    (dict(user_id="abc"), "user_id"),
    (dict(user_id="9" * 21), "user_id"),
    (dict(user_id="99999999999999999999"), "user_id"),
    (dict(k=0), "k"),
    (dict(k=-3), "k"),
    (dict(k=201), "k"),
    (dict(candidate_count=5), "candidate_count"),
    (dict(candidate_count=5000), "candidate_count"),
    (dict(exclude_item_ids=list(range(1001))), "exclude_item_ids"),
    (dict(exclude_item_ids=[-5]), "exclude_item_ids"),
    (dict(context=pb.Context(device="fridge")), "context.device"),
    (dict(context=pb.Context(country="Germany")), "context.country"),
    (dict(context=pb.Context(hour=24)), "context.hour"),
    (dict(context=pb.Context(day_of_week=7)), "context.day_of_week"),
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_input_is_invalid_argument_naming_the_field(server, change, field):
    stub, *_ = server
    with pytest.raises(grpc.RpcError) as err:
        stub.RankFeed(req(**change), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


def test_unknown_user_is_served_not_an_error(server):
    stub, *_ = server
    assert len(stub.RankFeed(req(user_id="123456789"), timeout=5).items) == 20


def test_health_and_reflection(server):
    *_, channel, _srv = server
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "feedrank.v1.FeedRanker"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"feedrank.v1.FeedRanker", "feedrank.v1.FeedRankerAdmin", "grpc.health.v1.Health"} <= names


def test_expired_deadline(server, monkeypatch):
    stub, _, router, *_ = server
    for pipeline in (router.state.champion, router.state.challenger):
        slow = pipeline._score

        def delayed(*args, _inner=slow, **kwargs):  # fault injection: a dependency that is slow
            time.sleep(0.5)
            return _inner(*args, **kwargs)

        monkeypatch.setattr(pipeline, "_score", delayed)
    with pytest.raises(grpc.RpcError) as err:
        stub.RankFeed(req(), timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_concurrent_requests_and_hot_reload_under_load(server):
    stub, admin, router, versions, *_ = server
    errors, seen = [], set()
    stop = threading.Event()

    def client(tid: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                resp = stub.RankFeed(req(request_id=f"t{tid}-{i}", user_id=str(tid * 1000 + i % 50)), timeout=5)
                seen.add(resp.model_versions.ranker.removesuffix("-c"))
            except grpc.RpcError as exc:  # any failed call fails the test
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    try:
        for v in ("v2", "v3", "v4"):
            time.sleep(0.3)
            versions.append(v)
            resp = admin.Reload(pb.ReloadRequest(), timeout=10)
            assert resp.champion.ranker == v
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert {"v1", "v4"} <= seen
    status = admin.Status(pb.StatusRequest(), timeout=5)
    assert status.champion.ranker == "v4" and status.requests_served > 50 and status.item_snapshot_size > 0


def test_failed_reload_keeps_serving(server, monkeypatch):
    stub, admin, router, *_ = server
    before = router.state

    def broken():
        raise FileNotFoundError("model version 9 is missing")

    monkeypatch.setattr(router, "_loader", broken)  # fault injection: the registry lost a version
    with pytest.raises(grpc.RpcError) as err:
        admin.Reload(pb.ReloadRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert router.state is before
    assert len(stub.RankFeed(req(), timeout=5).items) == 20


def test_every_routed_call_is_recorded_for_the_rollout(snapshot, make_state, tmp_path):
    import pyarrow.dataset as ds

    from serving.config import ServingConfig
    from serving.impression_log import ImpressionLog, RequestLog
    from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
    from serving.router import Router
    from serving.server import create_server, stop_gracefully

    impressions = ImpressionLog(tmp_path).start()
    requests = RequestLog(tmp_path).start()
    router = Router(lambda: make_state(snapshot, "v1", share=0.5, impression_log=impressions))
    srv, port = create_server(ServingConfig(), router, address="127.0.0.1:0", request_log=requests)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FeedRankerStub(channel)
            for u in range(12):
                stub.RankFeed(req(request_id=f"q{u}", user_id=str(u), k=10), timeout=5)
            with pytest.raises(grpc.RpcError):
                stub.RankFeed(req(request_id="bad", k=0), timeout=5)  # rejected before routing: not an arm's
    finally:
        stop_gracefully(srv, 1.0)
        impressions.close()
        requests.close()
    rows = ds.dataset(tmp_path / "requests", format="parquet").to_table().to_pandas()
    assert len(rows) == 12 and set(rows["arm"]) == {"champion", "challenger"} and not rows["error"].any()
    imps = ds.dataset(tmp_path / "impressions", format="parquet").to_table().to_pandas()
    assert len(imps) == 120 and set(imps["request_key"]) == set(rows["request_key"])
    by_arm = imps.groupby("request_key")["arm"].first()
    assert (by_arm.reindex(rows["request_key"]).to_numpy() == rows["arm"].to_numpy()).all()


def test_a_message_over_the_size_limit_is_refused(snapshot, make_state):
    from serving.config import LimitsConfig, ServingConfig
    from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
    from serving.router import Router
    from serving.server import create_server, stop_gracefully

    config = ServingConfig(limits=LimitsConfig(max_message_bytes=2048))
    srv, port = create_server(config, Router(lambda: make_state(snapshot, "v1")), address="127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FeedRankerStub(channel)
            assert len(stub.RankFeed(req(k=5), timeout=5).items) == 5
            with pytest.raises(grpc.RpcError) as err:  # 900 ids of 8+ bytes each: over 2 KiB
                stub.RankFeed(req(exclude_item_ids=list(range(10**9, 10**9 + 900))), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stop_gracefully(srv, 1.0)


def test_graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones(snapshot, make_state, monkeypatch):
    from serving.config import ServingConfig
    from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
    from serving.router import Router
    from serving.server import create_server, stop_gracefully

    router = Router(lambda: make_state(snapshot, "v1"))
    started = threading.Event()
    for pipeline in (router.state.champion, router.state.challenger):
        def slow(*args, _inner=pipeline._score, **kwargs):  # a call that is still running at shutdown
            started.set()
            time.sleep(0.6)
            return _inner(*args, **kwargs)

        monkeypatch.setattr(pipeline, "_score", slow)
    srv, port = create_server(ServingConfig(), router, address="127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.FeedRankerStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    future = stub.RankFeed.future(req(), timeout=10)
    assert started.wait(5)
    stopper = threading.Thread(target=stop_gracefully, args=(srv, 5.0))
    stopper.start()
    try:
        assert len(future.result(timeout=10).items) == 20  # finished within the grace period
        stopper.join(10)
        assert not stopper.is_alive()
        with pytest.raises(grpc.RpcError) as err:  # and the port takes no new call
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        channel.close()


def test_random_bytes_are_invalid_argument_and_the_server_stays_healthy(server):
    stub, *_, channel, _srv = server
    raw = channel.unary_unary("/feedrank.v1.FeedRanker/RankFeed")  # no serializers: bytes in, bytes out
    rng = np.random.default_rng(20)
    codes: dict[grpc.StatusCode, int] = {}
    for _ in range(1000):
        payload = rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
        with pytest.raises(grpc.RpcError) as err:
            raw(payload, timeout=5)
        codes[err.value.code()] = codes.get(err.value.code(), 0) + 1
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT: 1000}
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert len(stub.RankFeed(req(), timeout=5).items) == 20
