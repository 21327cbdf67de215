"""A month of logs of a paginated e-commerce feed, simulated with a known ground truth.

The story of one request: a user who is active that day opens the feed at an hour drawn from a
diurnal profile; the existing system fills a page with a mix of popular items and items it believes
the user likes (a noisy estimate whose error mostly persists from week to week, its best guesses shown
most often); the user examines position k with probability (k+1)^-decay and
clicks an examined item with her true preference p(u, i, day); carts follow clicks, orders follow
carts. Users page through several requests per session, and their interests drift slowly over the
month. The true preference of any user-item pair on any day is saved (ground_truth.npz) so that
reward models and alignment can be measured against the truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from genrec.config import SimulatorConfig
from genrec.data import catalog
from genrec.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, PSEUDO_EXPOSURES_SCHEMA

GROUND_TRUTH_FILE = "ground_truth.npz"
US_PER_DAY = 86_400_000_000
US_PER_S = 1_000_000
# Relative activity by hour of day (UTC): quiet at night, a lunch bump, an evening peak.
HOUR_PROFILE = np.array([2, 1, 1, 1, 1, 2, 4, 6, 7, 7, 7, 8, 10, 9, 7, 7, 8, 9, 11, 13, 14, 12, 8, 4], dtype=float)
POOL_SIZE = 100  # items in the existing system's personalised candidate pool per user and week


@dataclass
class GroundTruth:
    """The simulator's hidden truth: p(click | examined) for any user, item and day."""

    user_start: np.ndarray  # (n_users, d) interest vector on day 0
    user_end: np.ndarray  # (n_users, d) interest vector after `days` days
    item_vec: np.ndarray  # (n_items, d)
    item_logpop_z: np.ndarray  # (n_items,) standardised log popularity
    item_leaf: np.ndarray  # (n_items,) index of the true leaf category
    days: int
    preference_scale: float
    popularity_scale: float
    ctr_bias: float

    def user_vectors(self, user_ids: np.ndarray, day: np.ndarray | float) -> np.ndarray:
        frac = np.clip(np.asarray(day, dtype=np.float32) / max(self.days - 1, 1), 0, 1)
        frac = np.broadcast_to(frac, np.shape(user_ids))[..., None]
        return (1 - frac) * self.user_start[user_ids] + frac * self.user_end[user_ids]

    def click_probability(self, user_ids, item_ids, day) -> np.ndarray:
        """P(click | the item is examined) for each (user, item, day): the true preference in [0, 1]."""
        user_ids = np.asarray(user_ids)
        item_ids = np.asarray(item_ids)
        u = self.user_vectors(user_ids, day)
        v = self.item_vec[item_ids]
        cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1) + 1e-9)
        logit = self.preference_scale * cos + self.popularity_scale * self.item_logpop_z[item_ids] + self.ctr_bias
        return 1.0 / (1.0 + np.exp(-logit))

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            user_start=self.user_start,
            user_end=self.user_end,
            item_vec=self.item_vec,
            item_logpop_z=self.item_logpop_z,
            item_leaf=self.item_leaf,
            scalars=np.array([self.days, self.preference_scale, self.popularity_scale, self.ctr_bias]),
        )

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        """Load ground_truth.npz written by the simulator (plain arrays; nothing is unpickled)."""
        with np.load(path, allow_pickle=False) as z:
            days, pref, pop, bias = z["scalars"].tolist()
            return cls(z["user_start"], z["user_end"], z["item_vec"], z["item_logpop_z"], z["item_leaf"],
                       int(days), pref, pop, bias)


@dataclass
class SimulatedLogs:
    events: pa.Table
    items: pa.Table
    truth: GroundTruth
    period_start: datetime
    period_end: datetime
    pseudo_exposures: pa.Table | None = None  # request_id, item_id, rank (simulator.pseudo_exposures)


def load_truth(raw_dir: str | Path | None) -> GroundTruth | None:
    """The simulator's ground truth from ingest's folder, or None when the logs did not come from the simulator."""
    from genrec.data.io import ingest_files

    path = ingest_files(raw_dir) / GROUND_TRUTH_FILE if raw_dir else None
    return GroundTruth.load(path) if path is not None and path.is_file() else None


def days_since_start(timestamps, start_date) -> np.ndarray:
    """Days (float) from the simulated period's first midnight (UTC) to each timestamp: the truth's `day`."""
    import pandas as pd

    start = pd.Timestamp(start_date.isoformat(), tz="UTC")
    return (pd.Series(timestamps) - start).dt.total_seconds().to_numpy() / 86400.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-9)


def _build_catalog(cfg: SimulatorConfig, rng: np.random.Generator):
    leaves = catalog.leaves()
    n_top = len(catalog.TAXONOMY)
    n_sub = max(leaf.sub_idx for leaf in leaves) + 1
    d = cfg.latent_dim
    top_c = rng.normal(0, 1.0, (n_top, d))
    sub_c = rng.normal(0, 0.6, (n_sub, d))
    leaf_c = np.stack([top_c[lf.top_idx] + sub_c[lf.sub_idx] for lf in leaves]) + rng.normal(0, 0.4, (len(leaves), d))
    brands = catalog.brand_names(rng)
    brand_c = rng.normal(0, 0.25, (n_top, catalog.BRANDS_PER_TOP, d))

    # Some leaves are bigger than others.
    leaf_weight = rng.dirichlet(np.full(len(leaves), 2.0))
    item_leaf = rng.choice(len(leaves), size=cfg.n_items, p=leaf_weight)
    item_brand = rng.integers(0, catalog.BRANDS_PER_TOP, cfg.n_items)
    tops = np.array([leaves[k].top_idx for k in item_leaf])
    item_vec = leaf_c[item_leaf] + brand_c[tops, item_brand] + rng.normal(0, 0.3, (cfg.n_items, d))

    # Zipf-like popularity over a random ranking of items.
    ranks = rng.permutation(cfg.n_items) + 1
    pop = ranks.astype(float) ** -cfg.zipf_exponent
    pop /= pop.sum()
    logpop = np.log(pop)
    logpop_z = (logpop - logpop.mean()) / (logpop.std() + 1e-9)

    titles, descs, paths, brand_col, prices = [], [], [], [], []
    top_names = list(catalog.TAXONOMY)
    price_noise = rng.lognormal(0, 0.45, cfg.n_items)
    for i in range(cfg.n_items):
        lf = leaves[item_leaf[i]]
        brand = brands[lf.top][item_brand[i]]
        t, s = catalog.item_texts(rng, lf, brand)
        titles.append(t)
        descs.append(s)
        paths.append(lf.path)
        brand_col.append(brand)
        prices.append(round(catalog.BASE_PRICE[top_names[lf.top_idx]] * price_noise[i] * (1 + 0.1 * item_brand[i]), 2))
    items = {
        "item_id": np.arange(cfg.n_items, dtype=np.int64),
        "title": titles,
        "description": descs,
        "category": paths,
        "brand": brand_col,
        "price": np.array(prices),
        "image_path": [None] * cfg.n_items,
    }
    return leaves, leaf_c, leaf_weight, item_leaf, item_brand, item_vec, pop, logpop_z, items


def _build_users(cfg: SimulatorConfig, rng: np.random.Generator, leaf_c, leaf_weight):
    n_leaves = len(leaf_c)
    k = rng.integers(1, cfg.interests_per_user + 1, cfg.n_users)
    start = np.zeros((cfg.n_users, cfg.latent_dim))
    end = np.zeros_like(start)
    for u in range(cfg.n_users):
        interests = rng.choice(n_leaves, size=k[u], replace=False, p=leaf_weight)
        weights = rng.dirichlet(np.ones(k[u]))
        start[u] = weights @ leaf_c[interests]
        new_interest = rng.choice(n_leaves, p=leaf_weight)
        end[u] = (1 - cfg.drift) * start[u] + cfg.drift * leaf_c[new_interest]
    noise = rng.normal(0, 0.3, start.shape)
    # Activity: a heavy-tailed share of days on which the user is active.
    activity = np.clip(cfg.daily_active_share * rng.lognormal(0, 0.7, cfg.n_users) / np.exp(0.7**2 / 2), 0.02, 0.95)
    hour_shift = rng.integers(-2, 3, cfg.n_users)
    return start + noise, end + noise, activity, hour_shift


def _system_pools(cfg, rng, truth: GroundTruth, n_weeks: int) -> np.ndarray:
    """The existing system's personalised candidates: top items by a noisy score, refreshed weekly.

    The noise has a persistent part (the same every week, drawn per user chunk from a fixed seed so
    that no (users x items) matrix is kept) and a fresh part; the pool moves with the user's drift.
    """
    # int32: item ids fit, and a month of a million users keeps its pools in half the memory
    pool = np.zeros((n_weeks, cfg.n_users, min(POOL_SIZE, cfg.n_items)), dtype=np.int32)
    iv = _unit(truth.item_vec).astype(np.float32)
    chunk = max(1, 2_000_000 // cfg.n_items)
    persistent_seed = int(rng.integers(2**62))
    keep = np.float32(np.sqrt(cfg.system_noise_persistence))
    fresh = np.float32(np.sqrt(1.0 - cfg.system_noise_persistence))
    for w in range(n_weeks):
        uv = _unit(truth.user_vectors(np.arange(cfg.n_users), w * 7)).astype(np.float32)
        for lo in range(0, cfg.n_users, chunk):
            shape = (len(uv[lo : lo + chunk]), cfg.n_items)
            noise = (keep * np.random.default_rng([persistent_seed, lo]).standard_normal(shape, dtype=np.float32)
                     + fresh * rng.standard_normal(shape, dtype=np.float32))
            s = uv[lo : lo + chunk] @ iv.T + cfg.system_noise * noise
            top = np.argpartition(-s, pool.shape[2] - 1, axis=1)[:, : pool.shape[2]]
            # Best first: the page draws the pool's items by rank (pool_rank_weights).
            pool[w, lo : lo + chunk] = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), 1), 1)
    return pool


def pool_rank_weights(pool_size: int, decay: float) -> np.ndarray:
    """P(a personalised slot shows the pool's item of rank r) ~ (r + 1) ** -decay (0: uniform)."""
    w = (np.arange(pool_size) + 1.0) ** -decay
    return w / w.sum()


def _first_unique(cands: np.ndarray, keep_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: mask of the first `keep_n` distinct values in order, and their positions."""
    order = np.argsort(cands, axis=1, kind="stable")
    srt = np.take_along_axis(cands, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    keep = ~dup
    pos = np.cumsum(keep, axis=1) - 1
    keep &= pos < keep_n
    return keep, pos


@dataclass
class LoggingPolicy:
    """The existing system that served the logged pages: each slot popular or from the user's weekly pool."""

    pools: np.ndarray  # (weeks, n_users, pool size) personalised candidates, best first, refreshed weekly
    rank_weights: np.ndarray  # (pool size,) P(a personalised slot shows the pool's item of each rank)
    popularity: np.ndarray  # (n_items,) distribution the popular slots are drawn from
    popular_share: float
    page_size: int

    def user_pools(self, user_ids: np.ndarray, days: np.ndarray) -> np.ndarray:
        """(N, pool size): each request's pool (that user's, of that day's week), best first."""
        weeks = np.minimum(np.asarray(days, dtype=np.int64) // 7, len(self.pools) - 1)
        return self.pools[weeks, np.asarray(user_ids)]

    def exposure_probability(self, user_ids: np.ndarray, days: np.ndarray) -> np.ndarray:
        """(N, n_items): approximate P(item is on the page) for requests of these users on these days.

        Each of ~page_size slots shows item i with q_i = share * pop_i + (1 - share) * w(rank of i in the pool)
        (the de-duplication of the real draw is ignored).
        """
        pools = self.user_pools(user_ids, days)
        from_pool = np.zeros((len(pools), len(self.popularity)))
        np.put_along_axis(from_pool, pools, np.broadcast_to(self.rank_weights, pools.shape), axis=1)
        q = self.popular_share * self.popularity[None, :] + (1 - self.popular_share) * from_pool
        return 1.0 - (1.0 - q) ** self.page_size


def _world(cfg: SimulatorConfig, seed: int):
    """Catalog, users, truth and the existing system: everything drawn before the first request."""
    rng = np.random.default_rng(seed)
    leaves, leaf_c, leaf_weight, item_leaf, item_brand, item_vec, pop, logpop_z, items = _build_catalog(cfg, rng)
    u_start, u_end, activity, hour_shift = _build_users(cfg, rng, leaf_c, leaf_weight)
    truth = GroundTruth(u_start.astype(np.float32), u_end.astype(np.float32), item_vec.astype(np.float32),
                        logpop_z.astype(np.float32), item_leaf.astype(np.int32), cfg.days,
                        cfg.preference_scale, cfg.popularity_scale, cfg.ctr_bias)
    pools = _system_pools(cfg, rng, truth, (cfg.days + 6) // 7)
    policy = LoggingPolicy(pools, pool_rank_weights(pools.shape[2], cfg.pool_rank_decay), pop, cfg.popular_share,
                           cfg.page_size)
    return rng, items, truth, policy, activity, hour_shift


def logging_policy(cfg: SimulatorConfig, seed: int) -> LoggingPolicy:
    """The existing system of the logs `simulate(cfg, seed)` writes, re-derived (for headroom analyses)."""
    _, _, _, policy, _, _ = _world(cfg, seed)
    return policy


@dataclass
class Requests:
    """Every feed request of the month, in the order the simulator serves them (user by user, day by day)."""

    user: np.ndarray
    day: np.ndarray
    ts: np.ndarray  # microseconds from the period's first midnight


def _requests(cfg: SimulatorConfig, rng: np.random.Generator, activity, hour_shift) -> Requests:
    """Active user-days (weekends a little busier), requests per active user-day, sessions and request times."""
    weekday0 = datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day).weekday()
    day_factor = np.array([1.2 if (weekday0 + d) % 7 >= 5 else 1.0 for d in range(cfg.days)])
    p_active = np.clip(activity[:, None] * day_factor[None, :], 0, 0.98)
    act_u, act_d = np.nonzero(rng.random((cfg.n_users, cfg.days)) < p_active)
    n_req = 1 + rng.poisson(max(cfg.requests_per_active_day - 1, 0), len(act_u))
    req_user = np.repeat(act_u, n_req)
    req_day = np.repeat(act_d, n_req)
    first_of_day = np.zeros(len(req_user), dtype=bool)
    first_of_day[np.cumsum(n_req) - n_req] = True
    # A user pages through several requests per session; a few days have a second or third session.
    new_session = first_of_day | (rng.random(len(req_user)) < 0.15)
    session_idx = np.cumsum(new_session) - 1
    n_sessions = session_idx[-1] + 1 if len(session_idx) else 0
    sess_user = req_user[new_session]
    hour_p = HOUR_PROFILE / HOUR_PROFILE.sum()
    sess_hour = (rng.choice(24, size=n_sessions, p=hour_p) + hour_shift[sess_user]).clip(0, 22)
    sess_start = (req_day[new_session].astype(np.int64) * US_PER_DAY + sess_hour * 3_600 * US_PER_S
                  + rng.integers(0, 3_600 * US_PER_S, n_sessions))
    gaps = (rng.exponential(40.0, len(req_user)) * US_PER_S).astype(np.int64)
    gaps[new_session] = 0
    csum = np.cumsum(gaps)
    req_ts = sess_start[session_idx] + csum - csum[new_session][session_idx]
    return Requests(req_user, req_day, req_ts)


@dataclass
class Month:
    """A simulated month before its events are drawn: the catalog, the truth and the period. `chunks()` then draws
    the events a bounded number of requests at a time, so a month of any size is written in bounded memory."""

    cfg: SimulatorConfig
    items: pa.Table
    truth: GroundTruth
    period_start: datetime
    period_end: datetime
    n_requests: int
    _rng: np.random.Generator
    _policy: "LoggingPolicy"
    _requests: Requests

    def chunks(self, progress: bool = True, requests_per_chunk: int = 200_000):
        """Yield (events, pseudo-exposures or None) tables, one per chunk of requests, each sorted by time; the
        random draws are those of one pass over every request, so the month does not depend on the chunking of
        the output, only on `requests_per_chunk` (keep the default: the demo's figures were measured with it).

        event_id is request_id * 1000 + position * 4 + the event type's intensity: unique without a global sort,
        and in time order it breaks ties exactly as that order does (request, then position, then type).
        """
        base_us = int(self.period_start.timestamp()) * US_PER_S
        period_end_us = self.cfg.days * US_PER_DAY
        r = self._requests
        bounds = range(0, len(r.user), requests_per_chunk)
        for lo in tqdm(bounds, desc="simulate requests", unit="chunk", disable=not progress):
            hi = min(len(r.user), lo + requests_per_chunk)
            ev, pseudo = _simulate_requests(self.cfg, self._rng, self.truth, self._policy, r.user[lo:hi], r.day[lo:hi],
                                            r.ts[lo:hi], lo)
            ts = np.minimum(ev["ts"], period_end_us - 1)
            order = np.lexsort((ev["tie"], ts))
            events = pa.table({
                "event_id": pa.array(ev["tie"][order].astype(np.int64)),
                "user_id": pa.array(ev["user"][order].astype(np.int64)),
                "item_id": pa.array(ev["item"][order].astype(np.int64)),
                "event_type": pa.DictionaryArray.from_arrays(
                    pa.array(ev["type"][order].astype(np.int8)), pa.array(["expose", "click", "cart", "order"])
                ).cast(pa.string()),
                "ts": pa.array(ts[order] + base_us, type=pa.timestamp("us", tz="UTC")),
                "request_id": pa.array(ev["request"][order].astype(np.int64)),
                "position": pa.array(ev["position"][order].astype(np.int32)),
            }, schema=EVENTS_SCHEMA)
            side = None
            if self.cfg.pseudo_exposures:
                side = pa.table({"request_id": pa.array(pseudo["request"].astype(np.int64)),
                                 "item_id": pa.array(pseudo["item"].astype(np.int64)),
                                 "rank": pa.array(pseudo["rank"].astype(np.int32))}, schema=PSEUDO_EXPOSURES_SCHEMA)
            yield events, side


def plan_month(cfg: SimulatorConfig, seed: int) -> Month:
    """Everything drawn before the first request: catalog, users, truth, the existing system and the requests."""
    rng, items, truth, policy, activity, hour_shift = _world(cfg, seed)
    period_start = datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day, tzinfo=timezone.utc)
    requests = _requests(cfg, rng, activity, hour_shift)
    period_end = datetime.fromtimestamp(period_start.timestamp() + cfg.days * 86_400, tz=timezone.utc)
    return Month(cfg, pa.table(items, schema=ITEMS_SCHEMA), truth, period_start, period_end, len(requests.user), rng,
                 policy, requests)


def simulate(cfg: SimulatorConfig, seed: int, progress: bool = True) -> SimulatedLogs:
    """Simulate the logs in memory: events (in time order) and items in the canonical schema, plus the ground truth.
    For a month larger than memory, write `plan_month(cfg, seed).chunks()` out instead (the ingest stage does)."""
    month = plan_month(cfg, seed)
    parts = list(month.chunks(progress))
    events = pa.concat_tables([p[0] for p in parts]) if parts else EVENTS_SCHEMA.empty_table()
    events = events.take(pc.sort_indices(events, [("ts", "ascending"), ("event_id", "ascending")]))
    pseudo = None
    if cfg.pseudo_exposures:
        pseudo = pa.concat_tables([p[1] for p in parts]) if parts else PSEUDO_EXPOSURES_SCHEMA.empty_table()
    return SimulatedLogs(events, month.items, month.truth, month.period_start, month.period_end, pseudo)


def _simulate_requests(cfg, rng, truth, policy: LoggingPolicy, req_user, req_day, req_ts, first_request: int
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pages, exposures, clicks, carts and orders for a chunk of requests (numbered from `first_request`); and the
    pseudo-exposures (the system's distinct candidates after the page's, by rank), which draw no random numbers."""
    P = cfg.page_size
    examine = (np.arange(P) + 1.0) ** -cfg.position_decay
    out: dict[str, list] = {k: [] for k in ("user", "item", "type", "ts", "request", "position", "tie")}
    pseudo: dict[str, list] = {k: [] for k in ("request", "item", "rank")}
    users, days, ts = req_user, req_day, req_ts
    m = len(users)
    lo = first_request
    # The existing system: each slot is popular or personalised; draw twice the page, keep distinct items.
    is_pop = rng.random((m, 2 * P)) < cfg.popular_share
    pop_draw = rng.choice(len(policy.popularity), size=(m, 2 * P), p=policy.popularity)
    pool = policy.user_pools(users, days)
    pers_draw = np.take_along_axis(pool, rng.choice(pool.shape[1], size=(m, 2 * P), p=policy.rank_weights), axis=1)
    cands = np.where(is_pop, pop_draw, pers_draw)
    keep, pos = _first_unique(cands, P)
    if cfg.pseudo_exposures:
        ranked, rank = _first_unique(cands, 2 * P)
        p_rows, p_cols = np.nonzero(ranked & ~keep)
        pseudo["request"].append((lo + p_rows).astype(np.int64))
        pseudo["item"].append(cands[p_rows, p_cols])
        pseudo["rank"].append(rank[p_rows, p_cols])
    rows, cols = np.nonzero(keep)
    item = cands[rows, cols]
    position = pos[rows, cols]
    user = users[rows]
    pref = truth.click_probability(user, item, days[rows])
    clicked = rng.random(len(item)) < examine[position] * pref
    carted = clicked & (rng.random(len(item)) < np.minimum(1.0, cfg.cart_rate * 2 * pref))
    ordered = carted & (rng.random(len(item)) < cfg.order_rate)
    req_id = (lo + rows).astype(np.int64)
    t_expose = ts[rows]
    t_click = t_expose + ((3 + 2 * position + rng.exponential(10, len(item))) * US_PER_S).astype(np.int64)
    t_cart = t_click + ((5 + rng.exponential(30, len(item))) * US_PER_S).astype(np.int64)
    t_order = t_cart + ((10 + rng.exponential(60, len(item))) * US_PER_S).astype(np.int64)
    for etype, mask, t in ((0, slice(None), t_expose), (1, clicked, t_click), (2, carted, t_cart), (3, ordered, t_order)):
        out["user"].append(user[mask])
        out["item"].append(item[mask])
        out["type"].append(np.full(len(user[mask]), etype, dtype=np.int8))
        out["ts"].append(t[mask])
        out["request"].append(req_id[mask])
        out["position"].append(position[mask])
        # Ties in ts are broken by request, then position, then event type (intensity order).
        out["tie"].append(req_id[mask] * 1_000 + position[mask] * 4 + etype)

    def joined(parts: dict[str, list]) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.array([], dtype=np.int64) for k, v in parts.items()}

    return joined(out), joined(pseudo)


def write_images(items: pa.Table, items_dir: Path, cfg: SimulatorConfig, truth: GroundTruth, seed: int) -> pa.Table:
    """Draw one PNG per item under items_dir/images and fill image_path (relative to items_dir)."""
    leaves = catalog.leaves()
    img_dir = items_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    paths = []
    brand_idx = items.column("brand").to_pylist()
    names = {b: i for i, b in enumerate(sorted(set(brand_idx)))}
    for item_id, leaf in tqdm(list(zip(items.column("item_id").to_pylist(), truth.item_leaf)), desc="draw images", unit="img"):
        rel = f"images/{item_id}.png"
        catalog.draw_item_image(items_dir / rel, leaves[int(leaf)], names[brand_idx[item_id]] % 6, cfg.image_size, rng)
        paths.append(rel)
    idx = items.schema.get_field_index("image_path")
    return items.set_column(idx, items.schema.field(idx), pa.array(paths, type=pa.string()))


def count_event_types(events: pa.Table) -> dict[str, int]:
    """Events of each type in a table (or a chunk of one)."""
    counts = {r["values"]: r["counts"] for r in pc.value_counts(events.column("event_type")).to_pylist()}
    return {t: int(counts.get(t, 0)) for t in ("expose", "click", "cart", "order")}


def describe(counts: dict[str, int], n_items: int) -> dict:
    """Headline numbers of a simulation from its event counts by type, for the manifest and MLflow."""
    return {"n_events": sum(counts.values()), "n_items": n_items, **{f"n_{k}": v for k, v in counts.items()},
            "ctr": counts["click"] / max(counts["expose"], 1)}


def save_truth_summary(path: Path, cfg: SimulatorConfig) -> None:
    path.write_text(json.dumps({"formula": "sigmoid(preference_scale * cos(u(day), v_i) + popularity_scale * "
                                           "logpop_z_i + ctr_bias); u(day) interpolates user_start -> user_end",
                                "examination": f"(position + 1) ** -{cfg.position_decay}"}, indent=2))
