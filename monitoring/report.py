"""``feedrank monitor report``: one page (Markdown and HTML, PNG plots) of a serving window.

What the Grafana dashboard shows, for people without Grafana, from the logs serving writes:
latency per arm and errors (``requests/``), served feeds per arm (``impressions/``: requests,
exploration, new-seller share and categories per feed when the bundle's item snapshot is
given; CTR/CVR and GMV per request when the contract ``events`` are given), freshness, drift
and skew. Every section says what it was computed from; a missing source leaves its section
saying so rather than an empty plot.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.drift import DriftReport
from monitoring.skew import SkewReport

__all__ = ["MonitorReport", "feed_summary", "latency_summary", "write_report"]


@dataclass
class MonitorReport:
    """The sections of a report; ``write_report`` renders them."""

    title: str
    window: str
    requests: pd.DataFrame | None = None
    impressions: pd.DataFrame | None = None
    items: pd.DataFrame | None = None  # item_id, is_new_seller, category_id (the bundle's item snapshot)
    events: pd.DataFrame | None = None  # the contract's events (impression_id, type, price_paid, quantity)
    drift: DriftReport | None = None
    skew: SkewReport | None = None
    freshness: dict[str, float] = field(default_factory=dict)


def latency_summary(requests: pd.DataFrame) -> pd.DataFrame:
    """Per arm: calls, error rate, latency p50/p95/p99 (ms)."""
    rows = []
    for arm, g in requests.groupby("arm", sort=True):
        lat = g["latency_ms"].to_numpy()
        rows.append({"arm": arm, "calls": len(g), "error_rate": float(g["error"].mean()),
                     "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                     "p99_ms": float(np.percentile(lat, 99))})
    return pd.DataFrame(rows)


def feed_summary(impressions: pd.DataFrame, items: pd.DataFrame | None = None,
                 events: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per arm: feeds, impressions, randomized share; with ``items`` the new-seller share of impressions
    and distinct categories per feed; with ``events`` CTR, CVR (purchases per impression) and GMV per feed."""
    imp = impressions
    if items is not None:
        imp = imp.merge(items[["item_id", "is_new_seller", "category_id"]], on="item_id", how="left")
    if events is not None and len(events):
        ev = events.dropna(subset=["impression_id"])
        clicks = ev[ev["type"] == "click"].groupby("impression_id").size()
        buys = ev[ev["type"] == "purchase"]
        gmv = (buys["price_paid"] * buys["quantity"]).groupby(buys["impression_id"]).sum()
        imp = imp.assign(clicked=imp["impression_id"].map(clicks).fillna(0) > 0,
                         purchased=imp["impression_id"].map(buys.groupby("impression_id").size()).fillna(0) > 0,
                         gmv=imp["impression_id"].map(gmv).fillna(0.0))
    rows = []
    for arm, g in imp.groupby("arm", sort=True):
        feeds = g.groupby("request_id")
        row: dict[str, Any] = {"arm": arm, "feeds": feeds.ngroups, "impressions": len(g),
                               "randomized_share": float(feeds["randomized"].first().mean())}
        if items is not None:
            row["new_seller_share"] = float(g["is_new_seller"].astype(float).mean())
            row["categories_per_feed"] = float(feeds["category_id"].nunique().mean())
        if "clicked" in g.columns:
            row["ctr"] = float(g["clicked"].mean())
            row["cvr"] = float(g["purchased"].mean())
            row["gmv_per_feed"] = float(g["gmv"].sum() / max(feeds.ngroups, 1))
        rows.append(row)
    return pd.DataFrame(rows)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot_latency(path: Path, requests: pd.DataFrame) -> None:
    fig = _figure(8, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ts = pd.to_datetime(requests["ts"], utc=True)
    span = (ts.max() - ts.min()).total_seconds()
    freq = "1min" if span < 3 * 3600 else "1h"
    for arm, g in requests.assign(bucket=ts.dt.floor(freq)).groupby("arm", sort=True):
        q = g.groupby("bucket")["latency_ms"]
        ax.plot(q.quantile(0.5).index, q.quantile(0.5).to_numpy(), label=f"{arm} p50")
        ax.plot(q.quantile(0.99).index, q.quantile(0.99).to_numpy(), linestyle="--", label=f"{arm} p99")
    ax.set_ylabel("ms")
    ax.set_title(f"RankFeed latency per arm (per {freq})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _plot_bars(path: Path, names: list[str], values: list[float], *, title: str, xlabel: str,
               lines: tuple[float, ...] = ()) -> None:
    fig = _figure(8, 0.3 * len(names) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    ax.barh(y, values, color="tab:blue")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    for x, style in zip(lines, ("--", ":"), strict=False):
        ax.axvline(x, color="tab:red", linestyle=style)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


def _table_md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g") if len(frame) else "(no rows)"


def write_report(report: MonitorReport, out_dir: str | Path, *, top: int = 20) -> Path:
    """Write ``report.md``, ``report.html``, the PNGs and ``monitor.json`` into ``out_dir``; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str, pd.DataFrame | None, str | None]] = []  # title, text, table, png
    summary: dict[str, Any] = {"title": report.title, "window": report.window}

    if report.requests is not None and len(report.requests):
        lat = latency_summary(report.requests)
        _plot_latency(out / "latency.png", report.requests)
        sections.append(("Latency and errors per arm", "From the request log (one row per RankFeed call).", lat,
                         "latency.png"))
        summary["latency"] = lat.to_dict(orient="records")
    else:
        sections.append(("Latency and errors per arm", "No request log in this window.", None, None))

    if report.impressions is not None and len(report.impressions):
        feeds = feed_summary(report.impressions, report.items, report.events)
        note = "From the impression log" + (", the bundle's item snapshot" if report.items is not None else "") + \
            (" and the contract events (CTR, CVR, GMV)." if report.events is not None else
             "; no events given, so no CTR/CVR/GMV.")
        sections.append(("Served feeds per arm", note, feeds, None))
        summary["feeds"] = feeds.to_dict(orient="records")
    else:
        sections.append(("Served feeds per arm", "No impression log in this window.", None, None))

    if report.freshness:
        fresh = pd.DataFrame([{"source": k, "age_hours": v / 3600.0} for k, v in sorted(report.freshness.items())])
        sections.append(("Freshness", "Hours since each source was brought up to date.", fresh, None))
        summary["freshness_seconds"] = report.freshness

    if report.drift is not None:
        frame = report.drift.to_frame()
        shown = frame.head(top)
        cfg = report.drift.config
        _plot_bars(out / "drift.png", shown["feature"].tolist(), shown["psi"].tolist(),
                   title=f"PSI, {report.drift.current} vs {report.drift.reference}", xlabel="PSI",
                   lines=(cfg.psi_warn, cfg.psi_alert))
        text = (f"{report.drift.current} against {report.drift.reference}; {cfg.bins} quantile bins of the reference "
                f"plus a missing bin; warn at PSI {cfg.psi_warn} or JS {cfg.js_warn}, alert at PSI {cfg.psi_alert} or "
                f"JS {cfg.js_alert}. Alerts: {', '.join(report.drift.flagged()) or 'none'}.")
        sections.append(("Drift", text, shown, "drift.png"))
        summary["drift"] = frame.to_dict(orient="records")
    if report.skew is not None:
        frame = report.skew.to_frame()
        shown = frame.head(top)
        _plot_bars(out / "skew.png", shown["feature"].tolist(), shown["mismatch_rate"].tolist(),
                   title="Training/serving skew: share of rows that differ", xlabel="mismatch rate",
                   lines=(report.skew.config.alert_rate,))
        text = (f"{report.skew.requests} sampled requests recomputed through the point-in-time path; flagged at a "
                f"mismatch rate of {report.skew.config.alert_rate}: {', '.join(report.skew.flagged()) or 'none'}.")
        sections.append(("Training/serving skew", text, shown, "skew.png"))
        summary["skew"] = frame.to_dict(orient="records")

    md = [f"# {report.title}", "", f"Window: {report.window}", ""]
    body = [f"<h1>{html.escape(report.title)}</h1>", f"<p>Window: {html.escape(report.window)}</p>"]
    for title, text, table, png in sections:
        md += [f"## {title}", "", text, ""]
        body += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(text)}</p>"]
        if table is not None:
            md += [_table_md(table), ""]
            body.append(table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
        if png is not None:
            md += [f"![{title}]({png})", ""]
            body.append(f'<img src="{png}" alt="{html.escape(title)}">')
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>"
                                     f"{html.escape(report.title)}</title><style>body{{font-family:sans-serif;"
                                     "max-width:60em}} td,th{padding:2px 8px;text-align:right}</style></head><body>"
                                     + "\n".join(body) + "</body></html>")
    (out / "monitor.json").write_text(json.dumps(summary, indent=2, default=float))
    return out / "report.md"
