"""A small Python client of the FeedRanker service."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from serving.proto_gen import feedrank_pb2 as pb
from serving.proto_gen import feedrank_pb2_grpc as pb_grpc

__all__ = ["FeedClient", "format_feed"]


class FeedClient:
    """Calls RankFeed (and the admin calls) on ``address`` (``host:port``).

    Parameters
    ----------
    address : str
    admin_token : str, optional
        Bearer token for Reload and Status when the server requires one.
    timeout : float
        Per-call deadline in seconds.
    root_certificates : bytes, optional
        PEM certificates to trust; given, the channel uses TLS (the server's ``tls_cert_file``
        or the CA that signed it). Without, the channel is plaintext.
    """

    def __init__(self, address: str, *, admin_token: str | None = None, timeout: float = 5.0,
                 root_certificates: bytes | None = None) -> None:
        if root_certificates is None:
            self._channel = grpc.insecure_channel(address)
        else:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates))
        self._feed = pb_grpc.FeedRankerStub(self._channel)
        self._admin = pb_grpc.FeedRankerAdminStub(self._channel)
        self._metadata = (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        self.timeout = timeout

    def rank(self, user_id: int | str, *, k: int = 20, candidate_count: int = 0, request_id: str | None = None,
             device: str = "", country: str = "", hour: int = -1, day_of_week: int = -1,
             exclude_item_ids: Sequence[int] = (), explain: bool = False,
             explain_top: int = 0) -> pb.RankFeedResponse:
        """RankFeed; with ``explain`` each item carries ``explain_top`` contributions per model (0: the server's default)."""
        import uuid

        return self._feed.RankFeed(pb.RankFeedRequest(
            request_id=request_id or uuid.uuid4().hex, user_id=str(user_id), k=k, candidate_count=candidate_count,
            exclude_item_ids=list(exclude_item_ids), explain=explain, explain_top=explain_top,
            context=pb.Context(device=device, country=country, hour=hour, day_of_week=day_of_week)),
            timeout=self.timeout)

    def reload(self) -> pb.ReloadResponse:
        return self._admin.Reload(pb.ReloadRequest(), timeout=max(self.timeout, 60.0), metadata=self._metadata)

    def status(self) -> pb.StatusResponse:
        return self._admin.Status(pb.StatusRequest(), timeout=self.timeout, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FeedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_feed(response: pb.RankFeedResponse) -> str:
    """The feed as a text table."""
    head = (f"request {response.request_id}  arm {response.arm}  ranker {response.model_versions.ranker}"
            f"{'  randomized' if response.randomized else ''}"
            f"{'  fallbacks: ' + ','.join(response.fallbacks) if response.fallbacks else ''}")
    lines = [head, f"{'rank':>4} {'item':>8} {'seller':>7} {'cat':>4} {'p_purchase':>10} {'E[GMV]':>9} "
                   f"{'score':>9}  reasons"]
    for it in response.items:
        lines.append(f"{it.rank:>4} {it.item_id:>8} {it.seller_id:>7} {it.category_id:>4} {it.p_purchase:>10.4f} "
                     f"{it.expected_gmv:>9.3f} {it.score:>9.4f}  {','.join(it.reasons)}")
        if it.HasField("explanation"):
            for label, e in (("ranker", it.explanation.ranker), ("purchase", it.explanation.purchase_model)):
                lines.append(_format_explanation(label, e))
    return "\n".join(lines)


def _format_explanation(label: str, e: pb.ModelExplanation) -> str:
    """``label raw = base + contributions + other`` and the contributions, e.g. for ``feedrank rank --explain``."""
    parts = "  ".join(f"{c.feature}={c.value:.4g}:{c.contribution:+.4f}" for c in e.top)
    return (f"{'':>6}{label:<8} raw {e.raw_output:+.4f} = base {e.base_value:+.4f} "
            f"{sum(c.contribution for c in e.top) + e.other:+.4f}  ({parts}  other:{e.other:+.4f})")
