"""Adapters that map real logs from other sources into the event-log contract."""

from features.adapters.taobao import TaobaoConfig, TaobaoReport, adapt_taobao

__all__ = ["TaobaoConfig", "TaobaoReport", "adapt_taobao"]
