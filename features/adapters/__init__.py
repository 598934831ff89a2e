"""Adapters from real logs into the event-log contract: any interaction log, and the Taobao log as one configuration."""

from features.adapters.interactions import (
           InteractionsConfig,
           InteractionsReport,
           adapt_interactions,
)
from features.adapters.taobao import TaobaoConfig, TaobaoReport, adapt_taobao

__all__ = ["InteractionsConfig", "InteractionsReport", "TaobaoConfig", "TaobaoReport", "adapt_interactions",
           "adapt_taobao"]
