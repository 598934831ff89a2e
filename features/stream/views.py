"""Feast definitions of the rolling real-time counts: two push sources and their feature views.

The intraday user row (``user_realtime``) is defined with the rest of the Feast repo; the
rolling counts (:data:`~features.stream.windows.USER_ROLLING`, ``ITEM_ROLLING``) are only
produced by the stream consumer, so their definitions live beside it and take the repo's
entities as arguments.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from features.stream.sink import DEFAULT_PUSH_SOURCES
from features.stream.windows import ITEM_ROLLING, USER_ROLLING, RollingCount

__all__ = ["ROLLING_TTL", "apply_rolling_views", "rolling_feature_views"]

#: Past the longest window every count is zero (the consumer pushes the zeros); a row older
#: than this has no information left.
ROLLING_TTL = timedelta(days=2)


def rolling_feature_views(user: Any, item: Any, *, offline_dir: str | Path) -> list[Any]:
    """The ``user_rolling`` and ``item_rolling`` feature views and their push sources.

    Parameters
    ----------
    user, item : feast.Entity
        The repo's entities (join keys ``user_id`` and ``item_id``).
    offline_dir : str or Path
        Folder of the push sources' batch sources (``user_rolling/``, ``item_rolling/``);
        the consumer pushes online only, so nothing is written there unless a caller pushes
        to the offline store too.

    Returns
    -------
    list
        ``[user push source, user_rolling view, item push source, item_rolling view]``, ready
        for ``FeatureStore.apply`` together with the entities.
    """
    from feast import FeatureView, Field, FileSource, PushSource
    from feast.types import Int64

    def view(name: str, entity: Any, feats: tuple[RollingCount, ...]) -> list[Any]:
        batch = FileSource(name=f"{name}_batch", path=str(Path(offline_dir) / name),
                           timestamp_field="event_timestamp")
        push = PushSource(name=DEFAULT_PUSH_SOURCES[name], batch_source=batch)
        fv = FeatureView(name=name, entities=[entity], ttl=ROLLING_TTL, source=push, online=True,
                         schema=[Field(name=f.name, dtype=Int64) for f in feats],
                         description=f"Rolling counts of the {entity.name}'s activity up to the consumer's "
                                     "watermark, pushed by `feedrank stream run`.")
        return [push, fv]

    return view("user_rolling", user, USER_ROLLING) + view("item_rolling", item, ITEM_ROLLING)


def apply_rolling_views(store: Any, offline_dir: str | Path) -> list[str]:
    """Register the rolling views next to the repo's definitions (``apply`` leaves the others alone).

    Parameters
    ----------
    store : feast.FeatureStore
        Its registry must already hold the ``user`` and ``item`` entities (``feedrank features apply``).
    offline_dir : str or Path
        As in :func:`rolling_feature_views` (the ETL's output folder).

    Returns
    -------
    list of str
        The names of the views applied.
    """
    objects = rolling_feature_views(store.get_entity("user"), store.get_entity("item"), offline_dir=offline_dir)
    store.apply(objects)
    return [o.name for o in objects if type(o).__name__ == "FeatureView"]
