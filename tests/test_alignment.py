"""GRPO-SR pieces on hand-made inputs: the gated, calibrated reward; group advantages; the loss against a direct
computation; zero policy gradient for an all-equal group; rollouts; R@K; the reward model's search and save/load."""

import numpy as np
import pytest
import torch

from genrec.align.grpo_loss import engaged_items_nll, grpo_sr_loss, rollout_batch, token_logprobs
from genrec.align.rewards import ItemEmbeddings, group_advantages, hybrid_rewards
from genrec.align.rollouts import sample_rollouts
from genrec.eval.reward_metrics import reward_at_k
from genrec.model.genrec_model import build_model
from genrec.model.vocab import SidMap
from genrec.reward.sim_model import SimRewardModel


def test_hybrid_reward_gates_zeroes_invalid_and_calibrates_hits():
    r_pref = np.array([[0.9, 0.5, 0.2, 0.7], [0.1, 0.2, 0.3, 0.4]])
    relevance = np.array([[0.1, 0.8, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9]])
    valid = np.array([[True, True, True, False], [True, True, True, True]])
    hits = np.array([[False, False, True, False], [True, False, False, False]])
    r = hybrid_rewards(r_pref, relevance, valid, hits, tau=0.5, gate=True, calibrate=True)
    # group 0: 0.9 is gated (relevance 0.1), the invalid 4th earns 0, the hit gets the group max (0.5 > own 0.2)
    np.testing.assert_allclose(r[0], [0.0, 0.5, 0.5, 0.0])
    # group 1: the hit gets the group max 0.4 (above its own 0.1)
    np.testing.assert_allclose(r[1], [0.4, 0.2, 0.3, 0.4])
    no_gate = hybrid_rewards(r_pref, relevance, valid, hits, tau=0.5, gate=False, calibrate=False)
    np.testing.assert_allclose(no_gate[0], [0.9, 0.5, 0.2, 0.0])
    # eq. 7: a hit the gate zeroed gets exactly the group's maximum gated reward, not its own ungated 0.8
    gated_hit = hybrid_rewards(np.array([[0.8, 0.3, 0.6]]), np.array([[0.0, 0.9, 0.9]]), np.ones((1, 3), bool),
                               np.array([[True, False, False]]), tau=0.5, gate=True, calibrate=True)
    np.testing.assert_allclose(gated_hit, [[0.6, 0.3, 0.6]])
    # ... and 0 when the gate zeroed the whole group
    alone = hybrid_rewards(np.array([[0.8, 0.3]]), np.array([[0.0, 0.0]]), np.ones((1, 2), bool),
                           np.array([[True, False]]), tau=0.5, gate=True, calibrate=True)
    np.testing.assert_allclose(alone, [[0.0, 0.0]])


def test_group_advantages_are_standardised_and_zero_for_equal_rewards():
    a = group_advantages(np.array([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]]))
    np.testing.assert_allclose(a[0].mean(), 0, atol=1e-12)
    np.testing.assert_allclose(a[0].std(), 1, atol=1e-9)
    np.testing.assert_allclose(a[0], (np.array([1, 2, 3, 6]) - 3) / np.std([1, 2, 3, 6]))
    assert (a[1] == 0).all()


def test_grpo_sr_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, 5, requires_grad=True)
    labels = torch.randint(0, 5, (6, 3))
    adv = torch.randn(6)
    nll = torch.tensor(1.7, requires_grad=True)
    logp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    loss, terms = grpo_sr_loss(logp, adv, nll, alpha=0.3)
    loss.backward()
    ours = logits.grad.clone(), nll.grad.clone()
    logits.grad, nll.grad = None, None
    # direct: the ratio is 1 in value, so the policy term is -mean_i(A_i) and its gradient is REINFORCE's
    logp2 = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    direct = -(adv * logp2.mean(1)).mean() + 0.3 * nll
    direct.backward()
    assert terms["loss_policy"] == pytest.approx(float(-adv.mean()), abs=1e-6)
    assert terms["loss_nll"] == pytest.approx(1.7)
    assert float(loss.detach()) == pytest.approx(float(-adv.mean() + 0.3 * 1.7), abs=1e-6)
    torch.testing.assert_close(ours[0], logits.grad)
    torch.testing.assert_close(ours[1], nll.grad)
    # the KL term (k3) is zero when the policy is the reference and positive otherwise
    _, t = grpo_sr_loss(logp, adv, None, 0.0, logp.detach(), kl_coef=0.1)
    assert t["loss_kl"] == pytest.approx(0.0, abs=1e-7)
    _, t = grpo_sr_loss(logp, adv, None, 0.0, logp.detach() - 0.5, kl_coef=0.1)
    assert t["loss_kl"] > 0.05


@pytest.fixture(scope="module")
def tiny():
    codes = np.stack([np.arange(64) // 16, (np.arange(64) // 4) % 4, np.arange(64) % 4], axis=1)
    sid_map = SidMap(np.arange(100, 164), codes, (4, 4, 4))
    torch.manual_seed(0)
    return sid_map, build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint())


def test_an_all_equal_reward_group_gives_zero_policy_gradient(tiny):
    sid_map, model = tiny
    hist = [sid_map.item_codes([100, 101, 102]), sid_map.item_codes([140])]
    codes, items = sample_rollouts(model, hist, sid_map, 4, 1.0, True, _masks(sid_map),
                                   torch.Generator().manual_seed(1))
    batch = rollout_batch(hist, codes, model.vocab, True)
    model.zero_grad()
    logp = token_logprobs(model, batch, 3)
    adv = torch.from_numpy(group_advantages(np.full((2, 4), 0.37)).reshape(-1)).float()
    loss, _ = grpo_sr_loss(logp, adv, None, alpha=0.0)
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in model.parameters())
    # and a group with different rewards does move the policy
    model.zero_grad()
    adv = torch.from_numpy(group_advantages(np.array([[0.1, 0.2, 0.3, 0.9]] * 2)).reshape(-1)).float()
    loss, _ = grpo_sr_loss(token_logprobs(model, batch, 3), adv, None, alpha=0.0)
    loss.backward()
    assert max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("merged", [True, False])
def test_the_regulariser_is_each_engaged_items_nll_given_the_prompt_alone(merged):
    """Eq. 8's NLL term by hand: one forward pass per (page, item) on <bos> history <sep> code_1 code_2 code_3,
    -sum of the three codes' log-probabilities, averaged over the items of all pages."""
    from genrec.model.samples import encode_prompt

    codes = np.stack([np.arange(64) // 16, (np.arange(64) // 4) % 4, np.arange(64) % 4], axis=1)
    sid_map = SidMap(np.arange(100, 164), codes, (4, 4, 4))
    torch.manual_seed(0)
    model = build_model("tiny", "", sid_map.sizes, merged, sid_map.fingerprint())
    model.eval()
    hist = [sid_map.item_codes([100, 101, 102]), sid_map.item_codes([140])]
    engaged = [sid_map.item_codes([120, 133]), sid_map.item_codes([150])]
    by_hand = []
    for h, items in zip(hist, engaged):
        p_ids, p_item = encode_prompt(h, model.vocab, merged)
        for item in items:
            nll = 0.0
            for level in range(3):
                prefix = model.vocab.code_tokens(item)[:level]
                ids = np.concatenate([p_ids, np.repeat(prefix[:, None], 3, axis=1)])
                is_item = np.concatenate([p_item, np.zeros(level, bool)])
                with torch.no_grad():
                    logits = model(torch.from_numpy(ids)[None], torch.from_numpy(is_item)[None],
                                   torch.ones(1, len(ids), dtype=torch.long)).logits[0, -1]
                nll -= float(torch.log_softmax(logits.float(), -1)[model.vocab.code_tokens(item)[level]])
            by_hand.append(nll)
    ours = engaged_items_nll(model, hist, engaged)
    assert float(ours.detach()) == pytest.approx(float(np.mean(by_hand)), rel=1e-4)
    assert ours.requires_grad


def _masks(sid_map):
    from genrec.model.beam_search import PrefixMasks

    return PrefixMasks(sid_map.trie())


def test_rollouts_are_items_when_constrained_and_replay_from_the_seed(tiny):
    sid_map, model = tiny
    small = SidMap(sid_map.item_ids[::5], sid_map.codes[::5], sid_map.sizes)  # a sparse catalog: most SIDs are no item
    hist = [small.item_codes([100, 105]), small.item_codes([110])]
    codes, items = sample_rollouts(model, hist, small, 16, 1.0, True, _masks(small), torch.Generator().manual_seed(3))
    assert codes.shape == (2, 16, 3) and (items >= 0).all()
    again, _ = sample_rollouts(model, hist, small, 16, 1.0, True, _masks(small), torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(codes, again)
    _, free = sample_rollouts(model, hist, small, 64, 1.0, False, None, torch.Generator().manual_seed(3))
    assert (free == -1).any(), "free sampling over a sparse catalog should produce SIDs that are no item"


def test_reward_at_k_and_relevance():
    values = np.array([[0.1, 0.9, 0.3], [0.5, 0.0, 0.2]])
    assert reward_at_k(values, [1, 2, 3]) == pytest.approx({"r@1": 0.3, "r@2": 0.7, "r@3": 0.7})
    emb = ItemEmbeddings(np.array([7, 8, 9]), np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    rel = emb.relevance([[7, 7], [8]], np.array([[9, -1], [7, 8]]), recent=5)
    np.testing.assert_allclose(rel, [[np.sqrt(0.5), -1.0], [0.0, 1.0]], atol=1e-6)
    from genrec.errors import InputDataError

    with pytest.raises(InputDataError, match=r"no embedding \(first: \[99\]\)"):
        emb.relevance([[7, 99]], np.array([[8]]), recent=5)


def test_reward_model_hard_search_save_and_load(tiny, tmp_path):
    sid_map, _ = tiny
    torch.manual_seed(0)
    model = SimRewardModel(sid_map.item_ids, sid_map.codes, sid_map.sizes, "hard", 3, 2, 8, 2, [8], sid_map.fingerprint())
    history = torch.tensor([[0, 1, 17, 2, 33, 3]])  # rows: 1-3 share level-1 code 0 with row 4; 17, 33 do not
    cand = torch.tensor([4])
    h, c = model.item_vectors(history), model.item_vectors(cand)
    idx, picked = model.search(history, cand, h, c)
    assert sorted(history[0, idx[0][picked[0]]].tolist()) == [1, 2, 3]
    model.save(tmp_path / "rm")
    loaded = SimRewardModel.load(tmp_path / "rm")
    hist = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    np.testing.assert_allclose(model.score(hist, torch.tensor([4, 0])), loaded.score(hist, torch.tensor([4, 0])))
    assert loaded.score(hist, torch.tensor([4, 0]))[1] == 0.0  # no item scores 0



def test_reward_model_item_features_share_a_vector_and_survive_save_and_load(tiny, tmp_path):
    import pandas as pd

    from genrec.errors import InputDataError
    from genrec.reward.sim_model import item_feature_values

    sid_map, _ = tiny
    ids = sid_map.item_ids
    category = np.where(np.arange(len(ids)) % 2 == 0, "A > x", "B > y").astype(object)
    category[5] = None  # a missing value is a value of its own
    items = pd.DataFrame({"item_id": ids[::-1], "category": category[::-1], "brand": ["b1"] * len(ids)})
    features = item_feature_values(items, ids, ["category", "brand"], "items.parquet")
    values, n = features["category"]
    assert n == 3 and features["brand"][1] == 1
    assert values[0] == values[2] != values[1] == values[3] and values[5] not in (values[0], values[1])
    torch.manual_seed(0)
    model = SimRewardModel(ids, sid_map.codes, sid_map.sizes, "soft", 3, 2, 8, 2, [8], "", features)
    with torch.no_grad():
        rows = torch.tensor([1, 3, 2])  # items 0 and 2 share a category, item 1 has another
        before = model.item_vectors(rows)
        model.feature_emb["category"].weight[values[0] + 1] += 1.0
        moved = model.item_vectors(rows) - before
    torch.testing.assert_close(moved[0], torch.ones(8))
    torch.testing.assert_close(moved[1], torch.ones(8))
    torch.testing.assert_close(moved[2], torch.zeros(8))
    model.save(tmp_path / "rm")
    loaded = SimRewardModel.load(tmp_path / "rm")
    hist, cand = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]]), torch.tensor([4, 9])
    np.testing.assert_allclose(model.score(hist, cand), loaded.score(hist, cand))
    with pytest.raises(InputDataError, match=r"items.parquet: 1 items of the SID table are not in the catalog"):
        item_feature_values(items[items.item_id != ids[3]], ids, ["category"], "items.parquet")
    with pytest.raises(InputDataError, match="item_id .* appears more than once"):
        item_feature_values(pd.concat([items, items.head(1)]), ids, ["category"], "items.parquet")
    with pytest.raises(InputDataError, match=r"no column \['brand'\]"):
        item_feature_values(items.drop(columns="brand"), ids, ["brand"], "items.parquet")


def test_exposure_popularity_is_the_standardised_log_count_of_each_items_exposures():
    from genrec.reward.exposures import exposure_popularity

    pop = exposure_popularity(np.array([1, 1, 1, 2, 3, 3]), 4)  # items 0-2 shown 3, 1, 2 times; item 3 never
    expected = np.log1p([3.0, 1.0, 2.0, 0.0])
    np.testing.assert_allclose(pop, (expected - expected.mean()) / expected.std())
    assert pop[0] > pop[2] > pop[1] > pop[3]
    np.testing.assert_array_equal(exposure_popularity(np.array([1, 2, 3]), 3), np.zeros(3))
    with pytest.raises(ValueError, match="beyond the 2 items"):
        exposure_popularity(np.array([1, 3]), 2)


def test_exposure_popularity_by_users_counts_each_user_once():
    from genrec.reward.exposures import exposure_popularity, exposure_reach

    rows = np.array([1, 1, 1, 2, 3, 3])  # item 0 shown 3 times to one user; item 2 twice, to two users
    users = np.array([7, 7, 7, 8, 7, 9])
    np.testing.assert_array_equal(exposure_reach(rows, users, 4), [1, 1, 2, 0])
    pop = exposure_popularity(rows, 4, users)
    expected = np.log1p([1.0, 1.0, 2.0, 0.0])
    np.testing.assert_allclose(pop, (expected - expected.mean()) / expected.std())
    assert pop[2] > pop[0] == pop[1] > pop[3]  # by exposures item 0 would lead
    with pytest.raises(ValueError, match="one user per exposure: 2 users for 6 item rows"):
        exposure_reach(rows, users[:2], 4)


def test_exposure_log_share_is_the_smoothed_log_share_of_the_exposures():
    from genrec.reward.exposures import exposure_log_share

    share = exposure_log_share(np.array([1, 1, 1, 2, 3, 3]), 4)  # counts 3, 1, 2, 0 -> 4, 2, 3, 1 of 10
    np.testing.assert_allclose(share, np.log([0.4, 0.2, 0.3, 0.1]))


def test_reward_model_popularity_adds_a_learned_weight_times_the_candidates_popularity(tiny, tmp_path):
    sid_map, _ = tiny
    ids = sid_map.item_ids
    popularity = np.linspace(-1.0, 1.0, len(ids))
    torch.manual_seed(0)
    model = SimRewardModel(ids, sid_map.codes, sid_map.sizes, "soft", 3, 2, 8, 2, [8], "", None, popularity)
    hist, cand = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8], [0, 0, 2, 9]]), torch.tensor([4, 9, 1])
    with torch.no_grad():
        before = model(hist, cand)  # the weight starts at 0: the same logits as without the prior
        model.popularity_weight.fill_(0.5)
        after = model(hist, cand)
    expected = 0.5 * torch.as_tensor(popularity[cand.numpy() - 1], dtype=torch.float32)
    torch.testing.assert_close(after - before, expected)
    model.save(tmp_path / "rm")
    loaded = SimRewardModel.load(tmp_path / "rm")
    assert loaded.hparams["popularity"] is True and float(loaded.popularity_weight) == 0.5
    np.testing.assert_allclose(model.score(hist, cand), loaded.score(hist, cand))
    plain = SimRewardModel(ids, sid_map.codes, sid_map.sizes, "soft", 3, 2, 8, 2, [8])
    plain.save(tmp_path / "plain")
    assert not hasattr(SimRewardModel.load(tmp_path / "plain"), "popularity_weight")


def test_reward_model_catalog_softmax_loss(tiny):
    from genrec.reward.fit import catalog_softmax_loss

    sid_map, _ = tiny
    torch.manual_seed(0)
    model = SimRewardModel(sid_map.item_ids, sid_map.codes, sid_map.sizes, "soft", 3, 2, 8, 2, [8])
    history = torch.tensor([[0, 1, 17, 2], [5, 6, 7, 8]])
    cand = torch.tensor([4, 9])
    with torch.no_grad():
        # each engaged exposure's item among all catalog items, by softmax_scale x cos(mean of its history, item)
        h = model.item_vectors(history)
        mean = (h * (history > 0).unsqueeze(-1)).sum(1) / (history > 0).sum(1, keepdim=True)
        u = torch.nn.functional.normalize(mean, dim=-1)
        v = torch.nn.functional.normalize(model.item_vectors(torch.arange(1, len(sid_map.item_ids) + 1)), dim=-1)
        logp = torch.log_softmax(10.0 * u @ v.T, -1)
        torch.testing.assert_close(catalog_softmax_loss(model, history, cand, torch.tensor([1.0, 0.0])), -logp[0, 3])
        torch.testing.assert_close(catalog_softmax_loss(model, history, cand, torch.ones(2)),
                                   -(logp[0, 3] + logp[1, 8]) / 2)
        assert float(catalog_softmax_loss(model, history, cand, torch.zeros(2))) == 0.0
        # the logQ correction: a fixed offset per item inside the softmax
        logq = torch.linspace(-3.0, 0.0, len(sid_map.item_ids))
        corrected = torch.log_softmax(10.0 * u @ v.T + logq, -1)
        torch.testing.assert_close(catalog_softmax_loss(model, history, cand, torch.tensor([1.0, 0.0]), logq),
                                   -corrected[0, 3])
    # it reaches the item vectors of the history and of every catalog item
    catalog_softmax_loss(model, history, cand, torch.ones(2)).backward()
    assert model.item_emb.weight.grad[[1, 2, 17, 5, 6, 7, 8]].abs().sum(-1).gt(0).all()
    assert model.item_emb.weight.grad[1:].abs().sum(-1).gt(0).all()


def test_reward_training_starts_the_output_bias_at_the_base_rate(tiny):
    from genrec.config import RewardConfig
    from genrec.reward.exposures import Exposures
    from genrec.reward.fit import train_reward_model

    sid_map, _ = tiny
    model = SimRewardModel(sid_map.item_ids, sid_map.codes, sid_map.sizes, "soft", 3, 2, 8, 2, [8])
    label = np.array([1, 0, 0, 0, 0, 0, 0, 0], np.float32)  # base rate 1/8
    data = Exposures(torch.tensor([[1, 2, 3]]), np.zeros(8, np.int64), np.arange(8), np.arange(4, 12), label,
                     np.zeros(1, np.int64), np.zeros(1), 0)
    # lr 1e-12: the bias stays where training put it before the first step
    train_reward_model(model, data, RewardConfig(epochs=1, batch_size=8, lr=1e-12), seed=0)
    assert float(model.mlp[-1].bias.detach()) == pytest.approx(np.log(1 / 7), abs=1e-5)


def test_reward_training_decays_the_learning_rate_linearly_to_zero(tiny):
    from genrec.config import RewardConfig
    from genrec.reward.exposures import Exposures
    from genrec.reward.fit import lr_factor, train_reward_model

    assert [lr_factor("linear", s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_factor("constant", 3, 4) == 1.0
    with pytest.raises(ValueError, match="cosine"):
        lr_factor("cosine", 1, 4)
    sid_map, _ = tiny
    label = np.tile(np.array([1, 0], np.float32), 50)
    data = Exposures(torch.tensor([[1, 2, 3]]), np.zeros(100, np.int64), np.arange(100) % 8, np.arange(100) % 8 + 4,
                     label, np.zeros(1, np.int64), np.zeros(1), 0)
    # 100 exposures in batches of 2: 50 steps per epoch, 100 in all; rows are logged at steps 50 and 100
    rows = {}
    for schedule in ("constant", "linear"):
        model = SimRewardModel(sid_map.item_ids, sid_map.codes, sid_map.sizes, "soft", 3, 2, 8, 2, [8])
        rows[schedule] = train_reward_model(model, data, RewardConfig(epochs=2, batch_size=2, lr_schedule=schedule),
                                            seed=0)
    assert [(r["step"], r["lr"]) for r in rows["constant"]] == [(50, 2e-3), (100, 2e-3)]
    assert [r["step"] for r in rows["linear"]] == [50, 100]
    assert [r["lr"] for r in rows["linear"]] == pytest.approx([1e-3, 0.0])
