"""The log simulator: deterministic, sized by its parameters, and realistic in the ways later stages rely on."""

import numpy as np
import pytest

from genrec.config import SimulatorConfig
from genrec.data import catalog
from genrec.data.simulator import GroundTruth, days_since_start, logging_policy, simulate


@pytest.fixture(scope="module")
def logs():
    return simulate(SimulatorConfig(n_users=400, n_items=600, days=14), seed=3, progress=False)


@pytest.fixture(scope="module")
def ev(logs):
    return logs.events.to_pandas()


def test_deterministic_for_a_seed():
    cfg = SimulatorConfig(n_users=60, n_items=80, days=3)
    a, b, c = (simulate(cfg, seed=s, progress=False) for s in (1, 1, 2))
    assert a.events.equals(b.events) and a.items.equals(b.items)
    assert not a.events.equals(c.events)


def test_sized_by_parameters():
    small = simulate(SimulatorConfig(n_users=100, n_items=200, days=5), seed=0, progress=False)
    more_users = simulate(SimulatorConfig(n_users=300, n_items=200, days=5), seed=0, progress=False)
    more_days = simulate(SimulatorConfig(n_users=100, n_items=200, days=15), seed=0, progress=False)
    bigger_pages = simulate(SimulatorConfig(n_users=100, n_items=200, days=5, page_size=20), seed=0, progress=False)
    n = small.events.num_rows
    assert 2.2 * n < more_users.events.num_rows < 4 * n
    assert 2.2 * n < more_days.events.num_rows < 4 * n
    assert 1.6 * n < bigger_pages.events.num_rows < 2.4 * n
    assert small.items.num_rows == 200
    assert (more_days.period_end - more_days.period_start).days == 15


def test_text_carries_category_and_brand(logs):
    items = logs.items.to_pandas()
    for _, row in items.head(50).iterrows():
        top, sub, leaf = row["category"].split(" > ")
        assert row["brand"] in row["title"] and leaf in row["title"]
        assert leaf.lower() in row["description"] and sub.lower() in row["description"]
        assert top in catalog.TAXONOMY


def test_events_are_ordered_and_causal(ev):
    assert ev["ts"].is_monotonic_increasing
    assert set(ev["event_type"]) == {"expose", "click", "cart", "order"}
    # every click follows an exposure of the same item in the same request
    exposed = set(zip(ev.loc[ev.event_type == "expose", "request_id"], ev.loc[ev.event_type == "expose", "item_id"]))
    clicks = ev[ev.event_type == "click"]
    assert all((r, i) in exposed for r, i in zip(clicks.request_id, clicks.item_id))
    counts = ev["event_type"].value_counts()
    assert counts["click"] > counts["cart"] > counts["order"] > 0
    assert 0.02 < counts["click"] / counts["expose"] < 0.2


def test_popularity_is_skewed(ev):
    exposures = ev[ev.event_type == "expose"]["item_id"].value_counts()
    top_decile = exposures.head(len(exposures) // 10).sum() / exposures.sum()
    assert top_decile > 0.25  # uniform would give 0.10


def test_position_bias(ev):
    exp = ev[ev.event_type == "expose"].groupby("position").size()
    clk = ev[ev.event_type == "click"].groupby("position").size()
    ctr = clk / exp
    assert ctr[0] > 1.5 * ctr[9]


def test_activity_varies_by_hour_and_user(ev):
    hours = ev[ev.event_type == "expose"]["ts"].dt.hour.value_counts()
    assert hours.get(20, 0) > 3 * hours.get(4, 0)
    per_user = ev.groupby("user_id").size()
    assert per_user.quantile(0.9) > 2 * per_user.quantile(0.1)


def test_ground_truth_explains_clicks(logs, ev):
    exposed = ev[ev.event_type == "expose"]
    clicked = set(zip(ev.loc[ev.event_type == "click", "request_id"], ev.loc[ev.event_type == "click", "item_id"]))
    day = (exposed["ts"] - exposed["ts"].min()).dt.days.to_numpy()
    p = logs.truth.click_probability(exposed["user_id"].to_numpy(), exposed["item_id"].to_numpy(), day)
    was_clicked = np.array([(r, i) in clicked for r, i in zip(exposed.request_id, exposed.item_id)])
    assert p[was_clicked].mean() > 1.5 * p[~was_clicked].mean()
    assert ((p >= 0) & (p <= 1)).all()


def test_interest_drifts_and_truth_roundtrips(logs, tmp_path):
    t = logs.truth
    users = np.arange(20)
    assert not np.allclose(t.user_vectors(users, 0), t.user_vectors(users, t.days - 1))
    path = tmp_path / "gt.npz"
    t.save(path)
    back = GroundTruth.load(path)
    assert np.allclose(back.click_probability(users, users, 5), t.click_probability(users, users, 5))


def test_logging_policy_is_the_one_that_served_the_pages():
    # With no popular slots every exposure must come from the user's pool of that week.
    cfg = SimulatorConfig(n_users=80, n_items=300, days=14, popular_share=0.0)
    ev = simulate(cfg, seed=5, progress=False).events.to_pandas()
    policy = logging_policy(cfg, seed=5)
    exposed = ev[ev.event_type == "expose"]
    users, days = exposed.user_id.to_numpy(), np.floor(days_since_start(exposed.ts, cfg.start_date))
    pools = policy.user_pools(users, days)
    in_pool = pools == exposed.item_id.to_numpy()[:, None]
    assert in_pool.any(axis=1).all()
    # The system shows its best-ranked candidates most, and exposure_probability says so.
    rank = in_pool.argmax(axis=1)
    assert (rank < 10).mean() > 2 * (rank >= 50).mean()
    p = policy.exposure_probability(users[:1], days[:1])[0]
    pool = pools[0]
    assert np.all(np.diff(p[pool]) <= 0) and p[np.setdiff1d(np.arange(300), pool)].max() == 0 and p.max() <= 1


def test_system_errors_persist_from_week_to_week():
    def overlap(persistence):
        pools = logging_policy(SimulatorConfig(n_users=100, n_items=2000, days=14,
                                               system_noise_persistence=persistence), seed=1).pools
        return np.mean([len(set(pools[0, u]) & set(pools[1, u])) for u in range(100)]) / pools.shape[2]

    fresh, kept = overlap(0.0), overlap(0.9)
    assert fresh < 0.3 and kept > 0.5


def test_users_have_several_interests(logs, ev):
    items = logs.items.to_pandas().set_index("item_id")
    clicks = ev[ev.event_type == "click"].join(items["category"], on="item_id")
    leaves_per_user = clicks.groupby("user_id")["category"].nunique()
    assert (leaves_per_user >= 3).mean() > 0.3


def test_images_when_asked(tmp_path):
    from PIL import Image

    from genrec.data.simulator import write_images

    cfg = SimulatorConfig(n_users=20, n_items=30, days=2, images=True, image_size=24)
    logs = simulate(cfg, seed=0, progress=False)
    items = write_images(logs.items, tmp_path, cfg, logs.truth, seed=0)
    paths = items.column("image_path").to_pylist()
    img = Image.open(tmp_path / paths[0])
    assert img.size == (24, 24) and len(set(paths)) == 30


def test_pseudo_exposures_are_ranked_unshown_candidates_and_change_no_event():
    cfg = SimulatorConfig(n_users=80, n_items=300, days=4)
    plain = simulate(cfg, seed=4, progress=False)
    logs = simulate(cfg.model_copy(update={"pseudo_exposures": True}), seed=4, progress=False)
    assert plain.pseudo_exposures is None
    assert logs.events.equals(plain.events)  # the side table draws no random numbers
    pseudo = logs.pseudo_exposures.to_pandas()
    ev = logs.events.to_pandas()
    assert len(pseudo) > 0 and pseudo["item_id"].between(0, cfg.n_items - 1).all()
    assert set(pseudo["request_id"]) <= set(ev["request_id"])
    # never an item the request showed; distinct per request; ranked after the page's slots
    shown = set(zip(ev["request_id"], ev["item_id"]))
    assert not any((r, i) in shown for r, i in zip(pseudo["request_id"], pseudo["item_id"]))
    assert not pseudo.duplicated(["request_id", "item_id"]).any()
    assert (pseudo["rank"] >= cfg.page_size).all() and (pseudo.groupby("request_id").size() <= cfg.page_size).all()
