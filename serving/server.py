"""The gRPC server: FeedRanker and FeedRankerAdmin, health, reflection, interceptors.

``create_server(config, router)`` builds and starts a server and returns ``(server, port)``
(port 0 binds a free port, as tests do); ``serve(config, router)`` runs one until SIGTERM or
SIGINT, then stops with a grace period for in-flight calls.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.admission import FifoGate
from serving.config import ServingConfig
from serving.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelUnavailable,
    ReloadFailed,
    Unauthenticated,
)
from serving.freshness import FreshnessProbe
from serving.impression_log import RequestLog, RequestRecord
from serving.metrics import ServingMetrics, StageTimer
from serving.proto_gen import feedrank_pb2 as pb
from serving.proto_gen import feedrank_pb2_grpc as pb_grpc
from serving.requests import FeedRequest, parse_request
from serving.router import FeedPipeline, ModelVersions, Router

__all__ = ["create_server", "serve", "FeedRankerService", "AdminService"]

logger = logging.getLogger(__name__)
access_log = logging.getLogger("feedrank.access")

FEED_SERVICE = pb.DESCRIPTOR.services_by_name["FeedRanker"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["FeedRankerAdmin"].full_name

# Every domain error maps to one status code, here and nowhere else.
_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ReloadFailed, grpc.StatusCode.FAILED_PRECONDITION),
]


def _status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _pb_versions(v: ModelVersions | None) -> pb.ModelVersions:
    return pb.ModelVersions() if v is None else pb.ModelVersions(retrieval=v.retrieval, ranker=v.ranker,
                                                                 purchase_model=v.purchase_model)


def _pb_model_explanation(e: Any) -> pb.ModelExplanation:
    return pb.ModelExplanation(base_value=e.base_value, raw_output=e.raw_output, other=e.other, top=[
        pb.Contribution(feature=f, value=v, contribution=c)
        for f, v, c in zip(e.features, e.values, e.contributions, strict=True)])


def _pb_explanation(e: Any) -> pb.ItemExplanation | None:
    """An item's ``ranking.explain.ItemExplanation`` as the message (None when it has none)."""
    if e is None:
        return None
    return pb.ItemExplanation(ranker=_pb_model_explanation(e.ranker), purchase_model=_pb_model_explanation(e.purchase))


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turns domain errors raised by handlers into status codes (unexpected ones into INTERNAL).

    It also parses the request itself: gRPC's own deserializer fails before any handler runs
    and answers INTERNAL ("Exception deserializing request!"), so the method is registered with
    raw bytes in and the message parsed here, bytes that do not parse answering INVALID_ARGUMENT.
    """

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        deserialize = handler.request_deserializer

        def guarded(raw: Any, context: grpc.ServicerContext) -> Any:
            try:
                request = raw if deserialize is None else deserialize(raw)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or any parser failure
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request: {len(raw)} bytes that do not parse as the method's message ({exc})")
            try:
                return inner(request, context)
            except Exception as exc:  # noqa: BLE001 - the one place errors become status codes
                code = _status_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    logger.exception("unexpected error in %s", handler_call_details.method)
                    context.abort(code, "internal error")
                context.abort(code, str(exc))

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=None,
                                                   response_serializer=handler.response_serializer)


class AdminAuthInterceptor(grpc.ServerInterceptor):
    """Admin calls need ``authorization: Bearer <token>`` when a token is configured."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if not self._token or not handler_call_details.method.startswith(f"/{ADMIN_SERVICE}/"):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization")
        # constant time: how long the comparison takes must not tell how much of a guess was right
        if isinstance(given, str) and hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            return continuation(handler_call_details)

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin calls need a valid bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


class _Ticket:
    """A call waiting for a ranking slot, as the slot holder sees it (``FifoGate.queued``)."""

    __slots__ = ("request", "pipeline", "candidates", "claimed")

    def __init__(self, request: FeedRequest, pipeline: FeedPipeline) -> None:
        self.request = request
        self.pipeline = pipeline
        self.candidates: np.ndarray | None = None
        self.claimed = False


class FeedRankerService(pb_grpc.FeedRankerServicer):
    """RankFeed: validate, route to an arm, run that arm's pipeline, answer."""

    def __init__(self, config: ServingConfig, router: Router, metrics: ServingMetrics,
                 request_log: RequestLog | None = None) -> None:
        self._config = config
        self._router = router
        self._metrics = metrics
        self._request_log = request_log
        self._gate = FifoGate(config.ranking_slots) if config.ranking_slots else None
        self._claim_lock = threading.Lock()
        self.requests_served = 0

    def _retrieve_for_queue(self, ticket: _Ticket) -> None:
        """Fetch the candidates of ``ticket`` and of the calls queued behind it for the same arm in one batch.

        A call whose turn comes later finds its candidates ready and skips retrieval (its
        ``retrieve`` stage is not observed; the batch's time is this call's). Alone in the
        queue, a call retrieves in ``rank`` as usual.
        """
        assert self._gate is not None
        with self._claim_lock:  # with several slots, two holders must not take the same calls
            batch = [t for t in self._gate.queued() if isinstance(t, _Ticket) and t.pipeline is ticket.pipeline
                     and not t.claimed and t.candidates is None][:self._config.retrieval_batch - 1]
            for t in batch:
                t.claimed = True
        if not batch:
            return
        batch.insert(0, ticket)
        try:
            found = ticket.pipeline.retrieve_many([t.request for t in batch])
        except Exception:  # noqa: BLE001 - then every call retrieves on its own, as without batching
            logger.warning("batched retrieval failed", exc_info=True)
            found = [None] * len(batch)
        for t, rows in zip(batch, found, strict=True):
            t.candidates = rows
            t.claimed = False

    def RankFeed(self, request: pb.RankFeedRequest, context: grpc.ServicerContext) -> pb.RankFeedResponse:  # noqa: N802
        start = time.perf_counter()
        arm, code = "none", grpc.StatusCode.OK
        feed_request, pipeline = None, None
        try:
            feed_request = parse_request(request, self._config.limits)
            arm, pipeline = self._router.pick(feed_request.user_id)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            timer = StageTimer()
            if self._gate is None:
                result = pipeline.rank(feed_request, arm=arm, timer=timer, deadline=deadline)
            else:
                ticket = _Ticket(feed_request, pipeline)
                with timer.stage("queue"):  # waiting for a ranking slot
                    held = self._gate.enter(deadline, ticket)
                with held:
                    if ticket.candidates is None and self._config.retrieval_batch > 1:
                        with timer.stage("retrieve"):
                            self._retrieve_for_queue(ticket)
                    result = pipeline.rank(feed_request, arm=arm, timer=timer, deadline=deadline,
                                           candidates=ticket.candidates)
            timer.observe(self._metrics, arm)
            for kind in result.fallbacks:
                self._metrics.fallbacks.labels(kind=kind).inc()
            self._metrics.observe_feed(arm, result.items)
            self.requests_served += 1
            return pb.RankFeedResponse(
                request_id=feed_request.request_id, arm=arm, randomized=result.randomized,
                fallbacks=list(result.fallbacks), model_versions=_pb_versions(pipeline.versions),
                items=[pb.RankedItem(item_id=it.item_id, rank=r, score=it.score, p_purchase=it.p_purchase,
                                     expected_gmv=it.expected_gmv, seller_id=it.seller_id,
                                     category_id=it.category_id, reasons=list(it.reasons),
                                     propensity=it.propensity, explanation=_pb_explanation(it.explanation))
                       for r, it in enumerate(result.items)])
        except Exception as exc:
            code = _status_for(exc)
            raise
        finally:
            ms = (time.perf_counter() - start) * 1000.0
            self._metrics.requests.labels(arm=arm, code=code.name).inc()
            self._metrics.stage_latency.labels(stage="total", arm=arm).observe(ms)
            if self._request_log is not None and feed_request is not None and pipeline is not None:
                self._request_log.log(RequestRecord(
                    request_key=feed_request.request_id, ts_us=feed_request.ts_us, user_id=feed_request.user_id,
                    arm=arm, model_version=pipeline.versions.ranker, latency_ms=ms,
                    error=code not in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT),
                    status_code=code.name))
            if access_log.isEnabledFor(logging.INFO):  # the JSON line costs per request even when dropped
                access_log.info(json.dumps({"request_id": request.request_id, "user_id": request.user_id,
                                            "arm": arm, "code": code.name, "latency_ms": round(ms, 3),
                                            "k": request.k}))


class AdminService(pb_grpc.FeedRankerAdminServicer):
    """Reload (registry aliases, rollout share, item snapshot) and Status."""

    def __init__(self, router: Router, feed: FeedRankerService, metrics: ServingMetrics,
                 freshness: FreshnessProbe | None = None) -> None:
        self._router = router
        self._feed = feed
        self._metrics = metrics
        self._freshness = freshness

    def Reload(self, request: pb.ReloadRequest, context: grpc.ServicerContext) -> pb.ReloadResponse:  # noqa: N802
        state = self._router.reload()  # counted in reloads_total by the router's listener
        if state.failures:
            raise ReloadFailed(f"reloaded without what did not load ({'; '.join(state.failures)}); champion "
                               f"{state.champion.versions.ranker} serves")
        return pb.ReloadResponse(champion=_pb_versions(state.champion.versions),
                                 challenger=_pb_versions(state.challenger.versions if state.challenger else None),
                                 challenger_share=state.challenger_share)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:  # noqa: N802
        state = self._router.state
        snapshot = getattr(state.champion, "snapshot_info", lambda: (0, ""))()
        return pb.StatusResponse(champion=_pb_versions(state.champion.versions),
                                 challenger=_pb_versions(state.challenger.versions if state.challenger else None),
                                 challenger_share=state.challenger_share, requests_served=self._feed.requests_served,
                                 item_snapshot_size=snapshot[0], item_snapshot_loaded_at=snapshot[1],
                                 age_seconds=self._freshness.ages() if self._freshness is not None else {})


def create_server(config: ServingConfig, router: Router, *, address: str | None = None,
                  metrics: ServingMetrics | None = None,
                  request_log: RequestLog | None = None,
                  freshness: FreshnessProbe | None = None) -> tuple[grpc.Server, int]:
    """Build and start the server; return it and the bound port.

    ``address`` defaults to ``host:port`` from the config; pass ``"127.0.0.1:0"`` for a free port.
    ``request_log``, when given, receives one :class:`RequestRecord` per routed call.
    ``freshness`` (default: the router's model ages only) feeds the freshness gauge and Status.
    """
    metrics = metrics or ServingMetrics()
    freshness = freshness or FreshnessProbe(router)
    metrics.watch_freshness(freshness)
    token = os.environ.get(config.admin_token_env) or None
    limit = config.limits.max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rankfeed"),
        interceptors=[AdminAuthInterceptor(token), ErrorInterceptor()],
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    feed = FeedRankerService(config, router, metrics, request_log)
    router.add_reload_listener(lambda outcome: metrics.reloads.labels(outcome=outcome).inc())
    pb_grpc.add_FeedRankerServicer_to_server(feed, server)
    pb_grpc.add_FeedRankerAdminServicer_to_server(AdminService(router, feed, metrics, freshness), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", FEED_SERVICE, ADMIN_SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (FEED_SERVICE, ADMIN_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = address or f"{config.host}:{config.port}"
    if config.tls_cert_file:
        creds = grpc.ssl_server_credentials([(Path(config.tls_key_file).read_bytes(),
                                              Path(config.tls_cert_file).read_bytes())])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    server.health_servicer = health_servicer  # type: ignore[attr-defined]  # for graceful shutdown
    server.feed_service = feed  # type: ignore[attr-defined]
    logger.info("FeedRanker listening on %s (port %d)", address, port)
    return server, port


def stop_gracefully(server: grpc.Server, grace_seconds: float) -> None:
    """Report NOT_SERVING to health checks, then stop, giving in-flight calls ``grace_seconds``."""
    health_servicer = getattr(server, "health_servicer", None)
    if health_servicer is not None:
        health_servicer.enter_graceful_shutdown()
    server.stop(grace_seconds).wait()


def serve(config: ServingConfig, router: Router, *, metrics: ServingMetrics | None = None,
          request_log: RequestLog | None = None, on_ready: Callable[[int], None] | None = None,
          freshness: FreshnessProbe | None = None,
          on_started: Callable[[grpc.Server], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; expose Prometheus metrics when ``metrics_port`` is set.

    ``on_started(server)`` is called once the server runs (e.g. to set more health services),
    then ``on_ready(port)``.
    """
    metrics = metrics or ServingMetrics()
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host, registry=metrics.registry)
    server, port = create_server(config, router, metrics=metrics, request_log=request_log, freshness=freshness)
    if on_started is not None:
        on_started(server)
    if on_ready is not None:
        on_ready(port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.info("shutting down, grace %.1f s", config.grace_seconds)
    stop_gracefully(server, config.grace_seconds)
