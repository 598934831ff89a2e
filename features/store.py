"""The Feast feature store over the ETL's tables: definitions, apply, materialize, reads.

Entities ``user``, ``item``, ``seller`` (int64 join keys ``user_id``, ``item_id``,
``seller_id``) and four feature views:

- ``user_snapshot``, ``item_snapshot``, ``seller_snapshot``: the daily snapshot tables
  (``user_features/``, ...; row of day D stamped D 00:00 UTC), TTL ``etl.snapshot_ttl_days``;
- ``user_realtime``: the user's intraday state (``user_realtime/``, stamped 1 µs after the
  activity), fed offline by the ETL and online by the push source ``user_realtime_push``
  (the stream consumer pushes the same columns), TTL ``etl.realtime_ttl_days``.

Feature schemas are read from the tables' Parquet files, so a view always serves exactly
what the ETL wrote. Request-time features (``f_ui_*``, ``f_ctx_*`` and the intraday user
counts) are not stored: :func:`assemble_features` computes them from the rows read here
with :func:`features.derived.derived_features`, the function the ETL uses.

Training sets come from Feast's point-in-time join (:func:`historical_features`,
:func:`build_training_set`); Feast's file store keeps a row iff
``ts - ttl <= event_timestamp <= ts``, the same rule the ETL applies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.config import EtlConfig, FeastConfig
from features.derived import derived_features
from features.outputs import OutputLayout, training_feature_names

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

__all__ = [
    "PUSH_SOURCE",
    "VIEWS",
    "FeatureViewSpec",
    "apply_definitions",
    "assemble_features",
    "build_training_set",
    "feast_objects",
    "historical_features",
    "load_repo_config",
    "materialize",
    "online_rows",
    "open_store",
]

logger = logging.getLogger(__name__)
REPO_TEMPLATE_DIR = Path(__file__).with_name("feature_repo")
PUSH_SOURCE = "user_realtime_push"
_LAYOUT = OutputLayout()
_NOT_FEATURES = {"user_id", "item_id", "seller_id", "event_timestamp", "date"}


@dataclass(frozen=True)
class FeatureViewSpec:
    """A feature view: its name, entity, join key, ETL table folder, and which TTL it uses."""

    name: str
    entity: str
    join_key: str
    table: str
    realtime: bool = False

    def ttl(self, etl: EtlConfig) -> timedelta:
        return timedelta(days=etl.realtime_ttl_days if self.realtime else etl.snapshot_ttl_days)


VIEWS: tuple[FeatureViewSpec, ...] = (
    FeatureViewSpec("user_snapshot", "user", "user_id", _LAYOUT.user_features),
    FeatureViewSpec("user_realtime", "user", "user_id", _LAYOUT.user_realtime, realtime=True),
    FeatureViewSpec("item_snapshot", "item", "item_id", _LAYOUT.item_features),
    FeatureViewSpec("seller_snapshot", "seller", "seller_id", _LAYOUT.seller_features),
)


_VIEW_NAMES: tuple[str, ...] = tuple(v.name for v in VIEWS)


def _view(name: str) -> FeatureViewSpec:
    for v in VIEWS:
        if v.name == name:
            return v
    raise ValueError(f"view must be one of {[v.name for v in VIEWS]}, got {name!r}")


def load_repo_config(features_dir: str | Path, feast: FeastConfig) -> RepoConfig:
    """The Feast :class:`RepoConfig` from ``feature_repo/feature_store[.redis].yaml`` with this run's paths.

    The registry and the SQLite database live in ``feast.repo_dir`` (default
    ``<features_dir>/_feast``); the redis profile takes ``feast.redis_connection``.
    """
    import yaml
    from feast import RepoConfig

    template = "feature_store.yaml" if feast.online_store == "sqlite" else f"feature_store.{feast.online_store}.yaml"
    data = yaml.safe_load((REPO_TEMPLATE_DIR / template).read_text())
    repo_dir = Path(feast.repo_dir) if feast.repo_dir else Path(features_dir) / "_feast"
    repo_dir.mkdir(parents=True, exist_ok=True)
    data["project"] = feast.project
    data["registry"]["path"] = str((repo_dir / data["registry"]["path"]).resolve())
    if feast.online_store == "sqlite":
        data["online_store"]["path"] = str((repo_dir / data["online_store"]["path"]).resolve())
    else:
        data["online_store"]["connection_string"] = feast.redis_connection
    return RepoConfig(repo_path=repo_dir.resolve(), **data)


def open_store(features_dir: str | Path, feast: FeastConfig) -> FeatureStore:
    """A :class:`feast.FeatureStore` over the ETL output in ``features_dir``."""
    from feast import FeatureStore

    config = load_repo_config(features_dir, feast)
    return FeatureStore(config=config, repo_path=str(config.repo_path))


def _feast_type(arrow_type: Any) -> Any:
    import pyarrow as pa
    from feast.types import Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp

    if pa.types.is_float64(arrow_type):
        return Float64
    if pa.types.is_float32(arrow_type):
        return Float32
    if pa.types.is_int64(arrow_type):
        return Int64
    if pa.types.is_int32(arrow_type):
        return Int32
    if pa.types.is_boolean(arrow_type):
        return Bool
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return String
    if pa.types.is_timestamp(arrow_type):
        return UnixTimestamp
    raise TypeError(f"no Feast type for Arrow type {arrow_type}")


def _table_schema(path: Path) -> Any:
    import pyarrow.dataset as ds

    files = sorted(path.glob("date=*/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{path}: no date=*/ Parquet files; run `feedrank etl` first")
    return ds.dataset(files[-1], format="parquet").schema


def feast_objects(features_dir: str | Path, etl: EtlConfig) -> list[Any]:
    """Entities, sources, the push source and the feature views over the ETL output in ``features_dir``.

    Raises
    ------
    FileNotFoundError
        If an ETL table is missing (run the ETL first).
    """
    from feast import Entity, FeatureView, Field, FileSource, PushSource
    from feast.value_type import ValueType

    root = Path(features_dir).resolve()
    entities = {name: Entity(name=name, join_keys=[f"{name}_id"], value_type=ValueType.INT64,
                             description=f"a marketplace {name} ({name}_id)")
                for name in ("user", "item", "seller")}
    objects: list[Any] = list(entities.values())
    for spec in VIEWS:
        schema = _table_schema(root / spec.table)
        fields = [Field(name=f.name, dtype=_feast_type(f.type)) for f in schema if f.name not in _NOT_FEATURES]
        source: Any = FileSource(name=f"{spec.table}_source", path=str(root / spec.table),
                                 timestamp_field="event_timestamp",
                                 description=f"ETL table {spec.table}/ (date=YYYY-MM-DD partitions)")
        if spec.realtime:
            source = PushSource(name=PUSH_SOURCE, batch_source=source,
                                description="intraday user rows; the stream consumer pushes them online")
            objects.append(source)
        objects.append(FeatureView(name=spec.name, entities=[entities[spec.entity]], ttl=spec.ttl(etl), schema=fields,
                                   source=source, online=True, tags={"owner": "features", "table": spec.table}))
    return objects


def apply_definitions(store: FeatureStore, features_dir: str | Path, etl: EtlConfig) -> list[str]:
    """Register the definitions in the store's registry (``feast apply``); returns the view names."""
    objects = feast_objects(features_dir, etl)
    store.apply(objects)
    names = [o.name for o in objects if type(o).__name__ == "FeatureView"]
    logger.info("applied entities user, item, seller and views %s to project %s", names, store.project)
    return names


def latest_snapshot_time(features_dir: str | Path) -> datetime:
    """The newest ``event_timestamp`` of the daily snapshots (the last ``date=`` partition's midnight)."""
    dates = sorted(p.name.split("=", 1)[1] for p in (Path(features_dir) / _LAYOUT.user_features).glob("date=*"))
    if not dates:
        raise FileNotFoundError(f"{features_dir}: no {_LAYOUT.user_features}/date=* partitions")
    return datetime.fromisoformat(dates[-1]).replace(tzinfo=UTC)


def materialize(store: FeatureStore, features_dir: str | Path, etl: EtlConfig, *,
                end: datetime | None = None, views: Sequence[str] | None = None) -> datetime:
    """Load the latest row per entity as of ``end`` into the online store; returns ``end``.

    ``end`` defaults to just after the newest snapshot (midnight after the last log day),
    so the online store then holds what a request right after the log would see. Each
    view is materialized from ``end - ttl`` (older rows would be expired anyway).
    """
    end = end or latest_snapshot_time(features_dir) + timedelta(microseconds=1)
    if end.tzinfo is None:
        raise ValueError(f"end must be timezone-aware, got {end!r}")
    for spec in VIEWS:
        if views is not None and spec.name not in views:
            continue
        start = end - spec.ttl(etl)
        store.materialize(start_date=start, end_date=end, feature_views=[spec.name])
        logger.info("materialized %s from %s to %s", spec.name, start.isoformat(), end.isoformat())
    return end


def _feature_refs(store: FeatureStore, view: str) -> list[str]:
    fv = store.get_feature_view(view)
    return [f"{view}:{f.name}" for f in fv.features]


def online_rows(store: FeatureStore, view: str, ids: Sequence[int]) -> pd.DataFrame:
    """The online rows of ``view`` for ``ids`` (one row per id, in order; nulls where none is stored)."""
    spec = _view(view)
    result = store.get_online_features(features=_feature_refs(store, view),
                                       entity_rows=[{spec.join_key: int(i)} for i in ids]).to_dict()
    frame = pd.DataFrame(result)
    return frame.rename(columns={c: c.split("__", 1)[-1] for c in frame.columns})


def historical_features(store: FeatureStore, entity_df: pd.DataFrame,
                        views: Sequence[str] = _VIEW_NAMES) -> pd.DataFrame:
    """Point-in-time features (Feast ``get_historical_features``) for every row of ``entity_df``.

    ``entity_df`` needs ``event_timestamp`` (UTC) and the join keys of the requested views.
    Each view is retrieved for the distinct (key, timestamp) pairs and merged back, which
    keeps every input row, in order: Feast's file store collapses rows that share key and
    timestamp (the 20 items of one request share user and time) and drops rows for which
    every stored row lies in the future.
    """
    ts = pd.to_datetime(entity_df["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    out = entity_df.copy()
    out["event_timestamp"] = ts
    for name in views:
        spec = _view(name)
        keys = out[[spec.join_key, "event_timestamp"]].drop_duplicates().reset_index(drop=True)
        got = store.get_historical_features(entity_df=keys, features=_feature_refs(store, name)).to_df()
        got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
        got = got.drop(columns=[c for c in got.columns if c not in keys.columns
                                and c not in {f.split(":")[1] for f in _feature_refs(store, name)}])
        out = out.merge(got, on=[spec.join_key, "event_timestamp"], how="left", validate="many_to_one")
    return out


def assemble_features(rows: pd.DataFrame, etl: EtlConfig) -> pd.DataFrame:
    """All ``f_*`` features, in training order, from joined entity rows and the request.

    Parameters
    ----------
    rows : pandas.DataFrame
        One row per (request, item): ``ts_us`` (or ``event_timestamp``), ``device``, ``item_id``
        and the columns of the user snapshot, user realtime, item snapshot and seller
        snapshot views (nulls where an entity has no row).
    etl : EtlConfig

    Returns
    -------
    pandas.DataFrame
        float64 columns :func:`features.outputs.training_feature_names`, on ``rows``' index.
    """
    frame = rows
    if "ts_us" not in frame.columns:
        ts = pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
        frame = frame.assign(ts_us=ts.astype("int64"))
    derived = derived_features(frame)
    names = training_feature_names(etl)
    missing = [n for n in names if n not in derived.columns and n not in frame.columns]
    if missing:
        raise KeyError(f"rows lack stored feature columns {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return pd.DataFrame({n: derived[n] if n in derived.columns
                         else pd.to_numeric(frame[n], errors="raise").astype("float64") for n in names},
                        index=frame.index)


def build_training_set(store: FeatureStore, entities: pd.DataFrame, etl: EtlConfig) -> pd.DataFrame:
    """Training rows from entity rows and Feast's point-in-time retrieval.

    Parameters
    ----------
    store : feast.FeatureStore
    entities : pandas.DataFrame
        Impression rows with at least ``ts`` (UTC), ``user_id``, ``item_id``, ``seller_id`` and
        ``device``; every other column (labels, position, propensity, ...) is kept as is, e.g.
        the non-feature columns of the ETL's ``training/`` table.
    etl : EtlConfig

    Returns
    -------
    pandas.DataFrame
        ``entities`` with every ``f_*`` column appended, computed from data strictly before ``ts``.
    """
    missing = {"ts", "user_id", "item_id", "seller_id", "device"} - set(entities.columns)
    if missing:
        raise ValueError(f"entities must have columns ts, user_id, item_id, seller_id, device; missing {sorted(missing)}")
    base = entities.drop(columns=[c for c in entities.columns if c.startswith("f_")]).reset_index(drop=True)
    joined = historical_features(store, base.assign(event_timestamp=base["ts"]))
    features = assemble_features(joined, etl)
    return pd.concat([base, features], axis=1)
