"""Popularity by context segment: the fallback for unknown users and for short candidate lists.

A segment is (request device, hour band). An event's device is its impression's device when
it has one, else the user's device; its hour is the UTC hour of the event. Scores::

    score_s(i) = sum of event weights of item i in segment s + global_weight * (sum over all segments)

Event weights are :func:`features.popularity.event_weights` with ``config.popularity_weights``
(the one popularity count; the segments and the global mix are this module's).

Device code 0 (unknown device) stands for "any device": its segments count every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.popularity import event_weights
from retrieval.config import ServingConfig
from retrieval.inputs import HOUR_US, Vocabulary, hour_band
from retrieval.logs import EventLog

__all__ = ["SegmentPopularity"]


@dataclass(frozen=True)
class SegmentPopularity:
    """Most popular items per segment, and over everything.

    Attributes
    ----------
    devices : Vocabulary
    hour_bands : tuple of int
    segment_item_ids : ndarray of int64, shape (n_segments, depth)
        Item ids by descending score; -1 pads. Segment ``s = device_code * len(hour_bands) + band``.
    segment_scores : ndarray of float64, shape (n_segments, depth)
    global_item_ids : ndarray of int64, shape (G,)
        Every item with a weighted event, by descending global score.
    global_scores : ndarray of float64, shape (G,)
    """

    devices: Vocabulary
    hour_bands: tuple[int, ...]
    segment_item_ids: np.ndarray
    segment_scores: np.ndarray
    global_item_ids: np.ndarray
    global_scores: np.ndarray

    @classmethod
    def fit(cls, log: EventLog, *, devices: Vocabulary, hour_bands: tuple[int, ...], config: ServingConfig,
            end_us: int, start_us: int | None = None) -> SegmentPopularity:
        """Count weighted events in ``[start_us, end_us)`` per segment."""
        ev = log.events
        ts = ev["ts_us"].to_numpy()
        mask = ts < end_us
        if start_us is not None:
            mask &= ts >= start_us
        ev = ev[mask]
        weights = event_weights(ev["type"].to_numpy(), config.popularity_weights)
        imp = log.impressions
        imp_device = pd.Series(devices.encode(imp["device"].to_numpy()), index=imp["impression_id"].to_numpy())
        imp_device = imp_device[~imp_device.index.duplicated()]
        user_device = pd.Series(devices.encode(log.users["device"].to_numpy()), index=log.users["user_id"].to_numpy())
        device = imp_device.reindex(ev["impression_id"].to_numpy()).fillna(0).to_numpy(dtype=np.int64)
        device = np.where(device > 0, device,
                          user_device.reindex(ev["user_id"].to_numpy()).fillna(0).to_numpy(dtype=np.int64))
        band = hour_band((ev["ts_us"].to_numpy() // HOUR_US) % 24, hour_bands)
        n_bands = len(hour_bands)

        items, item_index = np.unique(ev["item_id"].to_numpy(), return_inverse=True)
        global_counts = np.bincount(item_index, weights=weights, minlength=len(items))
        order = np.lexsort((items, -global_counts))
        order = order[global_counts[order] > 0]
        depth = config.popularity_depth
        n_segments = len(devices) * n_bands
        seg_ids = np.full((n_segments, depth), -1, dtype=np.int64)
        seg_scores = np.zeros((n_segments, depth), dtype=np.float64)
        for s in range(n_segments):
            dev, b = divmod(s, n_bands)
            in_seg = (band == b) & ((device == dev) | (dev == 0))
            counts = np.bincount(item_index[in_seg], weights=weights[in_seg], minlength=len(items))
            score = counts + config.popularity_global_weight * global_counts
            top = np.lexsort((items, -score))[:depth]
            top = top[score[top] > 0]
            seg_ids[s, :len(top)] = items[top]
            seg_scores[s, :len(top)] = score[top]
        return cls(devices=devices, hour_bands=tuple(hour_bands), segment_item_ids=seg_ids, segment_scores=seg_scores,
                   global_item_ids=items[order], global_scores=global_counts[order])

    def segments(self, device_codes: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """Segment of each request (device code 0 = any device); -1 where the hour is unknown (< 0)."""
        devices = np.where((device_codes >= 0) & (device_codes < len(self.devices)), device_codes, 0)
        hours = np.asarray(hours, dtype=np.int64)
        segment = devices * len(self.hour_bands) + hour_band(np.maximum(hours, 0), self.hour_bands)
        return np.where(hours >= 0, segment, -1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an ``.npz`` file (the vocabulary and bands go to the metadata)."""
        return {"segment_item_ids": self.segment_item_ids, "segment_scores": self.segment_scores,
                "global_item_ids": self.global_item_ids, "global_scores": self.global_scores}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, devices: Vocabulary,
                    hour_bands: tuple[int, ...]) -> SegmentPopularity:
        return cls(devices=devices, hour_bands=tuple(hour_bands),
                   **{k: np.asarray(arrays[k]) for k in ("segment_item_ids", "segment_scores", "global_item_ids",
                                                         "global_scores")})
