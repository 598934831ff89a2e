"""Fairness and diversity re-ranking of scored candidates.

Rules, applied in this order (DESIGN.md, "Re-ranking"):

1. **Hard filters** drop out-of-stock items, items the buyer already purchased, items of
   blocked sellers, and the caller's excluded items.
2. **New-seller exposure** (FA*IR, Zehlike et al. 2017): every prefix of length ``j`` of the
   feed holds at least ``m(j)`` items of new sellers, where ``m(j)`` is the FA*IR table
   ``binom.ppf(alpha, j, p)`` for a target share ``p`` and significance ``alpha`` (or
   ``floor(p * j)`` when ``alpha`` is None), capped by how many eligible new-seller items
   exist.
3. **Category diversity**: no category above ``max_category_share`` of the feed, and no run
   of more than ``max_category_run`` consecutive items of one category. Relaxed, with a
   reason, only when no candidate satisfies it.
4. **Seller repeat penalty**: an item's score is discounted by ``penalty ** n`` where ``n`` is
   how many items of its seller are already placed (``s - |s| (1 - penalty**n)`` so the
   discount also lowers negative scores).

One greedy pass places the feed slot by slot: the best candidate by discounted score among
those the constraints allow. It is written by hand because no maintained library combines
FA*IR's prefix table with run-length and share limits; the pass scans candidates in score
order and stops as soon as no later candidate can win, so it costs about K short scans.

Every item that a rule moves records it: ``new_seller_exposure`` on items promoted to meet
the prefix minimum, ``category_diversity`` on items pushed down by the category limits,
``seller_repeat`` on items that lost their place to the seller penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features.config import check

__all__ = ["Candidates", "RerankConfig", "RerankResult", "Reranker", "fair_prefix_minimums"]

NEW_SELLER = "new_seller_exposure"
CATEGORY = "category_diversity"
SELLER = "seller_repeat"


@dataclass(frozen=True)
class RerankConfig:
    """Settings of the re-ranking rules; each rule can be switched off.

    Parameters
    ----------
    new_seller_min_share : float
        Target share ``p`` of new-seller items in every prefix (0 disables the rule).
    new_seller_alpha : float or None
        FA*IR significance; None uses the plain proportional table ``floor(p * j)``.
    max_category_share : float
        Largest share of the feed one category may take (1 disables).
    max_category_run : int
        Longest run of consecutive items of one category (0 disables).
    seller_repeat_penalty : float
        Multiplier in (0, 1] per earlier item of the same seller (1 disables).
    blocked_sellers : tuple of int
    """

    # Defaults from the measured frontier (benchmarks/rerank_frontier.py, docs/serving.md): they
    # cost ~2% of the truth GMV of the same scores without rules, against 3.4% for the former
    # (alpha 0.1, share 0.4, run 2, penalty 0.85), whose FA*IR test at p = 0.1 asked for no
    # new-seller item at all in a 20-item feed; most of the rest was the 0.85 seller penalty.
    new_seller_min_share: float = 0.1
    new_seller_alpha: float | None = None
    max_category_share: float = 0.5
    max_category_run: int = 3
    seller_repeat_penalty: float = 0.95
    blocked_sellers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check(0.0 <= self.new_seller_min_share < 1.0, "new_seller_min_share", "in [0, 1)", self.new_seller_min_share)
        if self.new_seller_alpha is not None:
            check(0.0 < self.new_seller_alpha < 1.0, "new_seller_alpha", "in (0, 1) or null", self.new_seller_alpha)
        check(0.0 < self.max_category_share <= 1.0, "max_category_share", "in (0, 1]", self.max_category_share)
        check(self.max_category_run >= 0, "max_category_run", ">= 0", self.max_category_run)
        check(0.0 < self.seller_repeat_penalty <= 1.0, "seller_repeat_penalty", "in (0, 1]",
              self.seller_repeat_penalty)


@dataclass(frozen=True)
class Candidates:
    """Scored candidates, one entry per item (arrays of equal length N)."""

    item_ids: np.ndarray
    scores: np.ndarray
    seller_ids: np.ndarray
    category_ids: np.ndarray
    is_new_seller: np.ndarray
    in_stock: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("scores", "seller_ids", "category_ids", "is_new_seller", "in_stock"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have the length of item_ids ({n}), got {len(getattr(self, name))}")


@dataclass(frozen=True)
class RerankResult:
    """The re-ranked feed.

    Attributes
    ----------
    order : ndarray of int, shape (k',)
        Indices into the candidates, feed order; ``k' = min(k, eligible candidates)``.
    reasons : list of list of str
        Per feed slot, the rules that moved that item.
    filtered : dict of str to int
        Candidates removed by each hard filter.
    """

    order: np.ndarray
    reasons: list[list[str]]
    filtered: dict[str, int] = field(default_factory=dict)


def fair_prefix_minimums(k: int, share: float, alpha: float | None) -> np.ndarray:
    """Minimum protected items in each prefix length 1..k (the FA*IR ``mtable``), shape (k,)."""
    j = np.arange(1, k + 1)
    if share <= 0:
        return np.zeros(k, dtype=np.int64)
    if alpha is None:
        return np.floor(share * j + 1e-9).astype(np.int64)
    from scipy.stats import binom

    return np.maximum(binom.ppf(alpha, j, share), 0).astype(np.int64)


class Reranker:
    """Applies :class:`RerankConfig`'s rules to scored candidates.

    Parameters
    ----------
    config : RerankConfig
    """

    def __init__(self, config: RerankConfig) -> None:
        self.config = config
        self._blocked = np.asarray(config.blocked_sellers, dtype=np.int64)
        # The FA*IR table depends only on k: computed once per k (binom.ppf costs more than the
        # whole greedy pass), and scipy.stats imported here rather than by the first request.
        self._mtables: dict[int, list[int]] = {}
        if config.new_seller_min_share > 0 and config.new_seller_alpha is not None:
            import scipy.stats  # noqa: F401

    def _mtable(self, k: int) -> list[int]:
        table = self._mtables.get(k)
        if table is None:  # racing threads compute the same list; either assignment is fine
            cfg = self.config
            table = fair_prefix_minimums(k, cfg.new_seller_min_share, cfg.new_seller_alpha).tolist()
            self._mtables[k] = table
        return table

    def rerank(self, candidates: Candidates, k: int, *, purchased: np.ndarray | None = None,
               excluded: np.ndarray | None = None) -> RerankResult:
        """Filter, then place up to ``k`` items under the fairness and diversity rules."""
        if k <= 0:
            raise ValueError(f"k must be >= 1, got {k}")
        c = candidates
        keep = np.ones(len(c.item_ids), dtype=bool)
        filtered: dict[str, int] = {}
        for reason, drop in (
            ("out_of_stock", ~np.asarray(c.in_stock, dtype=bool)),
            ("already_purchased", np.isin(c.item_ids, purchased) if purchased is not None else None),
            ("blocked_seller", np.isin(c.seller_ids, self._blocked) if len(self._blocked) else None),
            ("excluded", np.isin(c.item_ids, excluded) if excluded is not None and len(excluded) else None),
        ):
            if drop is None:
                continue
            hit = keep & drop
            if hit.any():
                filtered[reason] = int(hit.sum())
            keep &= ~drop
        eligible = np.flatnonzero(keep)
        eligible = eligible[np.argsort(-c.scores[eligible], kind="stable")]
        order, reasons = self._place(c, eligible, min(k, len(eligible)))
        return RerankResult(order=np.asarray(order, dtype=np.int64), reasons=reasons, filtered=filtered)

    def _place(self, c: Candidates, ranked: np.ndarray, k: int) -> tuple[list[int], list[list[str]]]:
        cfg = self.config
        scores = c.scores.tolist()
        cats = c.category_ids.tolist()
        sellers = c.seller_ids.tolist()
        protected = np.asarray(c.is_new_seller, dtype=bool).tolist()
        remaining = ranked.tolist()
        n_protected_left = sum(protected[i] for i in remaining)
        mtable = [min(m, n_protected_left) for m in self._mtable(k)]
        cat_cap = max(1, int(np.ceil(cfg.max_category_share * k))) if cfg.max_category_share < 1 else k
        max_run = cfg.max_category_run if cfg.max_category_run > 0 else k
        penalty = cfg.seller_repeat_penalty
        cat_count: dict[int, int] = {}
        seller_count: dict[int, int] = {}
        last_cat, run = None, 0
        n_prot = 0
        order: list[int] = []
        reasons: dict[int, list[str]] = {}

        noted: set[tuple[int, str]] = set()

        def note(i: int, reason: str) -> None:
            if (i, reason) not in noted:  # items passed over stay on top: most notes repeat
                noted.add((i, reason))
                reasons.setdefault(i, []).append(reason)

        for j in range(k):
            need_protected = n_prot < mtable[j]
            chosen = self._scan(remaining, scores, cats, sellers, protected, need_protected, cat_count,
                                seller_count, last_cat, run, cat_cap, max_run, penalty, relax_category=False)
            relaxed = chosen is None
            if relaxed:
                chosen = self._scan(remaining, scores, cats, sellers, protected, need_protected, cat_count,
                                    seller_count, last_cat, run, cat_cap, max_run, penalty, relax_category=True)
            if chosen is None:  # no protected item left although the table asked for one
                chosen = self._scan(remaining, scores, cats, sellers, protected, False, cat_count, seller_count,
                                    last_cat, run, cat_cap, max_run, penalty, relax_category=True)
            assert chosen is not None  # remaining is non-empty while j < k
            pos = remaining.index(chosen)
            # everything ranked above the chosen item was moved down by some rule: items of other
            # sellers passed over for the new-seller minimum credit the chosen item (once); the
            # rest lost to the category limits or to the seller penalty
            skipped = remaining[:pos]
            if need_protected and skipped:
                if not all(protected[s] for s in skipped):
                    note(chosen, NEW_SELLER)
                skipped = [s for s in skipped if protected[s]]
            blocked: dict[int, bool] = {}  # per category: does a limit pass it over at this slot?
            for s in skipped:
                cat_s = cats[s]
                over = blocked.get(cat_s)
                if over is None:
                    over = blocked[cat_s] = not relaxed and not self._category_ok(cat_s, cat_count, last_cat, run,
                                                                                 cat_cap, max_run)
                key = (s, CATEGORY if over else SELLER)
                if key not in noted:  # note() inlined: this loop revisits the same items slot after slot
                    noted.add(key)
                    reasons.setdefault(s, []).append(key[1])
            remaining.pop(pos)
            order.append(chosen)
            cat = cats[chosen]
            cat_count[cat] = cat_count.get(cat, 0) + 1
            seller_count[sellers[chosen]] = seller_count.get(sellers[chosen], 0) + 1
            run = run + 1 if cat == last_cat else 1
            last_cat = cat
            n_prot += protected[chosen]
        return order, [reasons.get(i, []) for i in order]

    @staticmethod
    def _category_ok(cat: int, cat_count: dict[int, int], last_cat: int | None, run: int, cat_cap: int,
                     max_run: int) -> bool:
        return cat_count.get(cat, 0) < cat_cap and not (cat == last_cat and run >= max_run)

    def _scan(self, remaining: list[int], scores: list[float], cats: list[int], sellers: list[int],
              protected: list[bool], need_protected: bool, cat_count: dict[int, int], seller_count: dict[int, int],
              last_cat: int | None, run: int, cat_cap: int, max_run: int, penalty: float,
              relax_category: bool) -> int | None:
        best, best_score = None, -np.inf
        for i in remaining:
            raw = scores[i]
            if raw <= best_score:  # discounted scores never exceed raw ones: nothing later can win
                break
            if need_protected and not protected[i]:
                continue
            if not relax_category:  # _category_ok, inlined (the hottest line of re-ranking)
                cat = cats[i]
                if cat_count.get(cat, 0) >= cat_cap or (cat == last_cat and run >= max_run):
                    continue
            n = seller_count.get(sellers[i], 0)
            eff = raw - abs(raw) * (1.0 - penalty**n) if n else raw
            if eff > best_score:
                best, best_score = i, eff
        return best
