"""Re-ranking for long-tail exposure (smooth xQuAD) and diversity (MMR): hand-computed picks, the wrapper, and
the trade-off measured by the Evaluator."""

import json

import numpy as np
import pandas as pd
import pytest
from example_data import write_taste_group_examples
from test_evaluator import FAST

from recflow.baselines import ALSRecommender
from recflow.errors import ConfigError
from recflow.evaluation.evaluator import UNRERANKED, evaluate_recommenders
from recflow.evaluation.report import METRICS_NAME, write_report
from recflow.recommender import Recommender
from recflow.reranking import (
    ReRankedRecommender,
    RerankingConfig,
    make_reranker,
    mmr_order,
    normalised_relevance,
    tail_preferences,
    xquad_order,
)


def test_relevance_is_min_max_scaled_or_rank_based():
    np.testing.assert_allclose(normalised_relevance([3.0, 2.0, 1.0], 3), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(normalised_relevance(None, 4), [1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(normalised_relevance([0.2, 0.2], 2), [1.0, 0.5])  # all equal: by rank


def test_xquad_picks_by_hand():
    rel = np.array([1.0, 0.9, 0.5, 0.2])
    tail = np.array([False, False, True, True])
    # lambda 0.5, P(tail|u) 0.5. 1st: 0.5*rel + 0.25 -> item 0 (head). 2nd: the head is covered (factor 0),
    # the tail not (1): item 1 0.45, item 2 0.25 + 0.25 = 0.5, item 3 0.35 -> item 2. 3rd: each group holds
    # half the list: item 1 0.45 + 0.125 = 0.575 beats item 3 0.1 + 0.125 -> item 1.
    assert xquad_order(rel, tail, 0.5, 0.5, 3) == [0, 2, 1]
    assert xquad_order(rel, tail, 0.5, 0.0, 3) == [0, 1, 2]  # strength 0: the base ranking
    # a user who never touches the long tail gets no tail boost at all
    assert xquad_order(rel, tail, 0.0, 0.5, 4) == [0, 1, 2, 3]
    assert xquad_order(rel, tail, 0.5, 0.5, 10) == [0, 2, 1, 3]  # never more than the pool


def test_mmr_picks_by_hand():
    rel = np.array([1.0, 0.9, 0.8])
    same = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=float)  # items 0 and 1 share a category
    # lambda 0.5: 1st item 0; 2nd item 1 0.45 - 0.5 < item 2 0.4 - 0 -> item 2; then item 1
    assert mmr_order(rel, same, 0.5, 3) == [0, 2, 1]
    assert mmr_order(rel, same, 0.0, 3) == [0, 1, 2]
    assert mmr_order(rel, same, 0.05, 3) == [0, 1, 2]  # a small penalty does not beat a 0.1 relevance gap


class _Scored:
    """A base recommender with scores: item j scores 10 - j for everybody; honours exclusions."""

    name = "scored"

    def __init__(self, items: list[str]) -> None:
        self.items = items

    def recommend_with_scores(self, user_ids, k, exclude=None):
        exclude = exclude or {}
        out = []
        for u in user_ids:
            row = [(i, 10.0 - j) for j, i in enumerate(self.items) if i not in exclude.get(u, set())]
            out.append(row[:k])
        return out

    def recommend(self, user_ids, k, exclude=None):
        return [[i for i, _ in row] for row in self.recommend_with_scores(user_ids, k, exclude)]


class _Unscored(_Scored):
    name = "unscored"

    recommend_with_scores = None  # type: ignore[assignment]

    def recommend(self, user_ids, k, exclude=None):
        return [[i for i, _ in row] for row in _Scored.recommend_with_scores(self, user_ids, k, exclude)]


ITEMS = ["h1", "h2", "h3", "t1", "t2", "t3"]


def test_wrapper_reranks_the_pool_and_keeps_exclusions():
    base = _Scored(ITEMS)
    head = frozenset({"h1", "h2", "h3"})
    plain = ReRankedRecommender(base, "xquad", 0.0, 6, head=head, default_tail_preference=0.5)
    assert isinstance(plain, Recommender) and plain.name == "scored+xquad(0)"
    assert plain.recommend(["u"], 3) == [["h1", "h2", "h3"]]
    fair = ReRankedRecommender(base, "xquad", 0.9, 6, head=head, tail_preference={"fan": 1.0},
                               default_tail_preference=0.5)
    lists = fair.recommend(["cold", "fan"], 4, exclude={"fan": {"t1"}})
    assert lists[0] == ["h1", "t1", "h2", "t2"]  # alternates: each group's coverage resets the other's boost
    # a long-tail fan starts with the tail; once the list holds only tail items, head items are not boosted
    # but still win on relevance, and the tail boost returns as soon as the tail is under-represented
    assert lists[1] == ["t2", "h1", "t3", "h2"]
    # without scores the base's rank order is the relevance: the same picks here
    unscored = ReRankedRecommender(_Unscored(ITEMS), "xquad", 0.9, 6, head=head, default_tail_preference=0.5)
    assert unscored.recommend(["cold"], 4) == [["h1", "t1", "h2", "t2"]]
    cats = {"h1": "A", "h2": "A", "h3": "B", "t1": "A", "t2": "B", "t3": "C"}
    diverse = ReRankedRecommender(base, "mmr", 0.6, 6, categories=cats)
    assert diverse.recommend(["u"], 3) == [["h1", "h3", "t3"]]


def test_make_reranker_from_the_training_log():
    train = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u2", "u3"],
            "item_id": ["a", "a", "a", "a", "a", "b", "c"],
            "event_type": ["click"] * 6 + ["impression"],
        }
    )
    prefs, default = tail_preferences(train, frozenset({"a"}))
    assert prefs == {"u1": 0.0, "u2": pytest.approx(1 / 3)} and default == pytest.approx(1 / 6)
    base = _Scored(["a", "b", "c"])
    assert make_reranker(base, RerankingConfig(), train) is base  # off by default
    assert make_reranker(base, RerankingConfig(method="xquad", strength=0.0), train) is base
    equal = make_reranker(base, RerankingConfig(method="xquad", strength=0.5), train, head_share=0.8)
    assert isinstance(equal, ReRankedRecommender) and equal.head == {"a"}
    assert equal.tail_preference == {} and equal.default_tail_preference == 0.5  # tail_target 0.5 for all
    personal = make_reranker(base, RerankingConfig(method="xquad", strength=0.5, tail_target=None), train)
    assert personal.tail_preference["u2"] == pytest.approx(1 / 3)
    assert personal.default_tail_preference == pytest.approx(1 / 6)
    with pytest.raises(ConfigError, match="categories"):
        make_reranker(base, RerankingConfig(method="mmr", strength=0.5), train, items=None)
    with pytest.raises(ValueError):
        RerankingConfig(method="xquad", strength=1.5)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return write_taste_group_examples(tmp_path_factory.mktemp("examples"))


def test_evaluator_measures_the_tradeoff(examples, tmp_path):
    train = pd.read_parquet(examples / "train.parquet")
    candidate = ALSRecommender(factors=8, iterations=8, regularization=0.05, alpha=2.0, seed=3).fit(train)
    config = FAST.model_copy(update={"baselines": ("popularity",),
                                     "reranking": RerankingConfig(method="xquad", strength=0.6, candidates=40)})
    result = evaluate_recommenders(examples, candidate, config)
    assert list(result.methods) == ["candidate", UNRERANKED, "popularity"]
    fair, raw = result.candidate.metrics, result.methods[UNRERANKED].metrics
    assert result.candidate.name == "als+xquad(0.6)" and result.reranking["method"] == "xquad"
    assert fair["long_tail_share@5"] > raw["long_tail_share@5"] + 0.05
    assert fair["novelty@5"] > raw["novelty@5"]  # long-tail items are the less popular ones
    assert fair["ndcg@5"] <= raw["ndcg@5"] + 1e-9  # fairness is not free here
    test = result.significance["without_reranking"]
    assert test.mean_diff == pytest.approx(fair["ndcg@5"] - raw["ndcg@5"])
    assert fair["exclusion_violations"] == 0
    html = write_report(tmp_path / "eval", result).read_text()
    assert "re-ranked with <b>xquad</b>" in html and "without re-ranking" in html
    doc = json.loads((tmp_path / "eval" / METRICS_NAME).read_text())
    assert doc["reranking"]["strength"] == 0.6 and doc["methods"][UNRERANKED]["role"] == "reference"
