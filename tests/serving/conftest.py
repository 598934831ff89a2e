"""A real FeedRanker server on a free loopback port, serving the popularity pipeline over a simulated catalog."""

from __future__ import annotations

import grpc
import pyarrow.dataset as ds
import pytest

from serving.config import ServingConfig
from serving.exploration import ExplorationConfig
from serving.pipeline import PopularityPipeline
from serving.rerank import RerankConfig, Reranker
from serving.router import ModelVersions, Router, RouterState
from serving.server import create_server, stop_gracefully
from serving.snapshot import snapshot_from_tables


@pytest.fixture(scope="session")
def snapshot(small_logs):
    def read(t):
        return ds.dataset(small_logs / t, format="parquet").to_table().to_pandas()

    events = read("events")
    return snapshot_from_tables(read("items"), read("sellers"), events, as_of=events["ts"].max(),
                                new_seller_days=30)


def popularity_state(snapshot, version: str, share: float = 0.0, impression_log=None) -> RouterState:
    def pipeline(v):
        return PopularityPipeline(snapshot=snapshot, reranker=Reranker(RerankConfig(new_seller_min_share=0.2, new_seller_alpha=0.1)),
                                  exploration=ExplorationConfig(share=0.1, top_n=5),
                                  versions=ModelVersions(retrieval="pop", ranker=v, purchase_model="none"),
                                  impression_log=impression_log)

    return RouterState(champion=pipeline(version), challenger=pipeline(version + "-c"), challenger_share=share,
                       salt="test-salt")


@pytest.fixture(scope="session")
def make_state():
    """``make_state(snapshot, version, share=0.0, impression_log=None) -> RouterState``."""
    return popularity_state


@pytest.fixture()
def server(snapshot):
    """(stub, admin_stub, router, versions list) over a running server; versions[-1] is what reload loads."""
    from serving.proto_gen import feedrank_pb2_grpc as pb_grpc

    versions = ["v1"]
    router = Router(lambda: popularity_state(snapshot, versions[-1], share=0.5))
    srv, port = create_server(ServingConfig(max_workers=8), router, address="127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.FeedRankerStub(channel), pb_grpc.FeedRankerAdminStub(channel), router, versions, channel, srv
    channel.close()
    stop_gracefully(srv, 1.0)

