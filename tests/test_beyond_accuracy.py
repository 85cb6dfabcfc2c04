"""Beyond-accuracy metrics on hand-computed cases, and their place in the Evaluator's result and report."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from example_data import write_taste_group_examples
from test_evaluator import FAST

from recflow.baselines import ALSRecommender
from recflow.evaluation.beyond_accuracy import (
    CatalogContext,
    beyond_accuracy_metrics,
    exposure_by_group,
    exposure_counts,
    exposure_gini,
    gini,
    head_items,
    interaction_counts,
    intra_list_diversity,
    long_tail_share,
    novelty,
)
from recflow.evaluation.config import BeyondAccuracyConfig
from recflow.evaluation.evaluator import evaluate_recommenders
from recflow.evaluation.report import METRICS_NAME, write_report


def _counts(**values: int) -> pd.Series:
    return pd.Series(values, dtype=np.int64).sort_index()


def test_interaction_counts_skip_impressions_and_include_the_catalog():
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3"],
            "item_id": ["a", "a", "a", "b", "b"],
            "event_type": ["view", "click", "impression", "purchase", "impression"],
        }
    )
    counts = interaction_counts(events, catalog=["a", "b", "c"])
    assert counts.to_dict() == {"a": 2, "b": 1, "c": 0}


def test_head_is_the_fewest_items_reaching_the_share():
    counts = _counts(a=50, b=30, c=10, d=5, e=5, f=0)
    assert head_items(counts, 0.8) == {"a", "b"}  # 50 + 30 = 80 of 100
    assert head_items(counts, 0.85) == {"a", "b", "c"}
    assert head_items(counts, 0.92) == {"a", "b", "c", "d"}  # d and e tie at 5: item id decides
    assert head_items(counts, 1.0) == {"a", "b", "c", "d", "e"}  # never an item nobody touched
    assert head_items(_counts(a=0, b=0), 0.8) == frozenset()
    with pytest.raises(ValueError):
        head_items(counts, 0.0)


def test_novelty_is_mean_smoothed_self_information():
    counts = _counts(a=6, b=0)  # p(a) = 7/8, p(b) = 1/8 (add-one over N = 6 and 2 items)
    expected = (-math.log2(7 / 8) + 3.0 + 3.0) / 3
    assert novelty([["a", "b"], ["b"]], counts) == pytest.approx(expected)
    assert novelty([["a", "b", "zzz"]], counts, k=1) == pytest.approx(-math.log2(7 / 8))
    # an item outside the counts is as novel as one nobody interacted with: -log2(1 / (N + |I|)) = 3 bits
    assert novelty([["zzz"]], counts) == pytest.approx(3.0)


def test_intra_list_diversity_by_category_and_by_embedding():
    categories = {"x1": "c1", "x2": "c1", "x3": "c2"}
    # [x1, x2, x3]: pairs (x1,x2) same, (x1,x3) and (x2,x3) differ -> 2/3; [x1, x2] -> 0; [x3] is skipped
    lists = [["x1", "x2", "x3"], ["x1", "x2"], ["x3"]]
    assert intra_list_diversity(lists, categories=categories) == pytest.approx(1 / 3)
    assert intra_list_diversity(lists, categories=categories, k=2) == pytest.approx(0.0)
    # an unknown item forms its own group "(none)": it differs from c1
    assert intra_list_diversity([["x1", "new"]], categories=categories) == pytest.approx(1.0)
    emb = {"x1": np.array([1.0, 0.0]), "x2": np.array([0.0, 1.0]), "x3": np.array([1.0, 1.0])}
    expected = (1.0 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert intra_list_diversity([["x1", "x2", "x3"]], embeddings=emb) == pytest.approx(expected)
    assert math.isnan(intra_list_diversity([["x1"]], categories=categories))
    with pytest.raises(ValueError):
        intra_list_diversity(lists)


def test_gini_exposure_and_long_tail_share():
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)  # sum |xi - xj| = 24 over 2 * n^2 * mean = 32
    assert gini([2, 2, 2]) == pytest.approx(0.0)
    assert math.isnan(gini([0, 0]))
    recs = [["a", "b"], ["a", "c"]]
    assert exposure_counts(recs, ["a", "b", "c", "d"]).to_dict() == {"a": 2, "b": 1, "c": 1, "d": 0}
    # exposure [0, 1, 1, 2]: 2 * (1*0 + 2*1 + 3*1 + 4*2) / (4 * 4) - 5/4 = 0.375
    assert exposure_gini(recs, ["a", "b", "c", "d"]) == pytest.approx(0.375)
    assert long_tail_share(recs, head={"a"}) == pytest.approx(0.5)
    assert long_tail_share(recs, head={"a"}, k=1) == pytest.approx(0.0)
    assert exposure_by_group(recs, {"a": "g1", "b": "g2"}) == {"(none)": 0.25, "g1": 0.5, "g2": 0.25}


def test_metrics_of_an_ids_only_log_leave_out_category_diversity():
    train = pd.DataFrame({"user_id": ["u1", "u2", "u2"], "item_id": ["a", "a", "b"], "event_type": ["click"] * 3})
    bare = CatalogContext.from_train(train, None, ["a", "b", "c"], head_share=0.6)
    assert bare.head == {"a"} and bare.group_reference() == {}
    metrics = beyond_accuracy_metrics([["a", "c"], ["b", "c"]], bare, k=2)
    assert set(metrics) == {"novelty@2", "long_tail_share@2", "exposure_gini@2"}
    assert metrics["long_tail_share@2"] == pytest.approx(0.75)
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "category": ["x", "x", None]})
    full = CatalogContext.from_train(train, items, ["a", "b", "c"], head_share=0.6)
    assert full.group_reference() == {"train": {"(none)": 0.0, "x": 1.0}, "catalog": {"(none)": 1 / 3, "x": 2 / 3}}
    assert beyond_accuracy_metrics([["a", "b"]], full, k=2)["diversity@2"] == pytest.approx(0.0)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return write_taste_group_examples(tmp_path_factory.mktemp("examples"))


def test_evaluator_reports_beyond_accuracy_for_every_method(examples, tmp_path):
    train = pd.read_parquet(examples / "train.parquet")
    candidate = ALSRecommender(factors=8, iterations=8, regularization=0.05, alpha=2.0, seed=3).fit(train)
    result = evaluate_recommenders(examples, candidate, FAST)
    for m in result.methods.values():
        for name in ("diversity", "novelty", "long_tail_share", "exposure_gini"):
            assert np.isfinite(m.metrics[f"{name}@5"]), (m.label, name)
        assert sum(m.exposure.values()) == pytest.approx(1.0)
    pop, als = result.methods["popularity"].metrics, result.candidate.metrics
    # popularity shows the same few head items to everybody; ALS follows each user's taste group
    assert pop["long_tail_share@5"] < als["long_tail_share@5"]
    assert pop["novelty@5"] < als["novelty@5"] and pop["exposure_gini@5"] > als["exposure_gini@5"]
    table = result.exposure_table()
    assert {"category", "train", "catalog", "candidate", "popularity"} <= set(table.columns)
    assert table["catalog"].tolist() == pytest.approx([0.25] * 4)

    report = write_report(tmp_path / "eval", result).read_text()
    assert "Beyond accuracy" in report and "Exposure by category" in report
    doc = json.loads((tmp_path / "eval" / METRICS_NAME).read_text())
    assert doc["methods"]["candidate"]["long_tail_share@5"] == pytest.approx(als["long_tail_share@5"])
    assert set(doc["exposure_by_group"]) >= {"train", "catalog", "candidate", "als"}
    assert doc["long_tail"]["head_share"] == 0.8 and doc["long_tail"]["head_items"] > 0
    off = evaluate_recommenders(examples, candidate,
                                FAST.model_copy(update={"beyond_accuracy": BeyondAccuracyConfig(enabled=False)}))
    assert "novelty@5" not in off.candidate.metrics and off.exposure_table().empty
