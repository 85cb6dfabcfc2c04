"""The history ranker's candidate grid keeps one Keras model at a time (issue 17): each fitted candidate's weights
go to a file, only the chosen one is rebuilt, and it holds exactly the weights its fit ended with."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import pytest

import recflow  # noqa: F401  (sets the Keras flavour before TensorFlow loads)

# isort: split
from recflow.models.history_ranking import MAX_POSITIONS, N_DENSE, RankerInputs, build_keras_ranker
from recflow.training import history_ranking as hr


def _clicks_world(seed: int = 3, n: int = 1200, n_items: int = 30, dim: int = 4
                  ) -> tuple[RankerInputs, np.ndarray, np.ndarray, np.ndarray, list[list[str]]]:
    """Impressions whose clicks follow the item, the state x item match and the first dense feature."""
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(n, dim)).astype(np.float32)
    item = rng.integers(0, n_items, n)
    item_vec = rng.normal(size=(n_items + 1, dim))
    dense = rng.normal(size=(n, N_DENSE)).astype(np.float32)
    context = rng.integers(0, 3, (n, 1))
    logit = -1.5 + 0.8 * dense[:, 0] + 0.6 * np.sum(state * item_vec[item], 1) + 0.3 * (item % 3)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    inputs = RankerInputs(state, item, dense, context, rng.integers(0, MAX_POSITIONS, n))
    is_train = np.arange(n) < int(0.7 * n)
    return inputs, labels, np.ones(n, np.float32), is_train, [["a", "b"]]


def _config(**update: Any) -> Any:
    from recflow.training.tfrs_trainer import TrainerConfig

    return TrainerConfig(history_ranking_l2=(0.01, 1.0), history_ranking_min_eval_clicks=5, history_ranking_epochs=3,
                         batch_size=128, early_stopping_patience=1, **update)


@pytest.mark.parametrize("selection", ["one_standard_error", "min_loss"])
def test_the_chosen_candidate_is_rebuilt_with_its_fitted_weights_and_one_model_lives_at_a_time(
        monkeypatch: pytest.MonkeyPatch, selection: str) -> None:
    inputs, labels, weights, is_train, vocabs = _clicks_world()
    cfg = _config(history_ranking_selection=selection)
    n_items = 30
    built: list[weakref.ref[Any]] = []
    alive_at_build: list[int] = []
    fitted_weights: list[list[np.ndarray]] = []

    def spy_build(*args: Any, **kwargs: Any) -> Any:
        gc.collect()
        alive_at_build.append(sum(r() is not None for r in built))
        model = build_keras_ranker(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    real_save = hr.CandidateWeights.save

    def spy_save(self: hr.CandidateWeights, model: Any) -> int:
        fitted_weights.append([w.copy() for w in model.get_weights()])
        return real_save(self, model)

    monkeypatch.setattr(hr, "build_keras_ranker", spy_build)
    monkeypatch.setattr(hr.CandidateWeights, "save", spy_save)
    (loss, model, hist, mask), trials = hr._fit_l2_grid(inputs, labels, weights, is_train, True, n_items, vocabs,
                                                        cfg)
    candidates = hr.ranker_candidates(cfg, True)
    assert len(trials) == len(candidates) == len(fitted_weights) == 4
    # every candidate was built with no earlier model alive; then the chosen one once more
    assert len(built) == len(candidates) + 1 and alive_at_build == [0] * len(built)
    gc.collect()
    assert [r() is not None for r in built] == [False] * len(candidates) + [True]
    chosen = [t["chosen"] for t in trials].index(True)
    if selection == "min_loss":
        assert chosen == int(np.argmin([t["eval_log_loss"] for t in trials]))
    else:
        pick, _ = hr.one_standard_error_choice(
            [hr._eval_losses(_rebuilt(cfg, candidates[k], inputs, labels, weights, is_train, n_items, vocabs,
                                      fitted_weights[k]), inputs, labels, weights, ~is_train, len(vocabs),
                             hr.dense_mask_of(candidates[k].dense_features)) for k in range(len(candidates))])
        assert chosen == pick
    got = model.get_weights()
    assert len(got) == len(fitted_weights[chosen])
    for a, b in zip(got, fitted_weights[chosen], strict=True):
        np.testing.assert_array_equal(a, b)
    assert mask == hr.dense_mask_of(candidates[chosen].dense_features)
    # the returned model scores the eval rows exactly as the fitted candidate did
    again = hr._eval_losses(model, inputs, labels, weights, ~is_train, len(vocabs), mask)
    assert float(np.mean(again)) == loss == trials[chosen]["eval_log_loss"]
    assert hist.history == trials[chosen]["history"] and len(hist.history["loss"]) == trials[chosen]["epochs_run"]
    # distinct candidates really ended with distinct weights (the check above can tell them apart)
    assert any(not np.array_equal(a, b) for a, b in zip(fitted_weights[2][:3], fitted_weights[3][:3], strict=True))


def _rebuilt(cfg: Any, cand: Any, inputs: RankerInputs, labels: np.ndarray, weights: np.ndarray,
             is_train: np.ndarray, n_items: int, vocabs: list[list[str]], values: list[np.ndarray]) -> Any:
    model = build_keras_ranker(n_items, inputs.state.shape[1], [len(v) for v in vocabs], l2=cand.l2,
                               personal=cand.personal, dense_mask=hr.dense_mask_of(cand.dense_features))
    model.set_weights(values)
    return model


def test_without_eval_clicks_only_the_first_candidate_is_fitted() -> None:
    inputs, labels, weights, is_train, vocabs = _clicks_world(seed=4)
    (loss, model, hist, mask), trials = hr._fit_l2_grid(inputs, labels, weights, is_train, False, 30, vocabs,
                                                        _config())
    assert [t["candidate"] for t in trials] == [hr.SCORE_ONLY] and trials[0]["chosen"]
    assert np.isnan(loss) and mask == hr.dense_mask_of(("score",)) and "val_loss" not in hist.history
    assert model.get_layer("item_vector").get_weights()[0].any() == np.False_  # personal terms off: still zero


def test_candidate_weights_round_trip_and_clean_up() -> None:
    rng = np.random.default_rng(0)
    models = [build_keras_ranker(n_items=5, state_dim=3, context_sizes=[2]) for _ in range(2)]
    values = [[rng.normal(size=w.shape).astype(w.dtype) for w in m.get_weights()] for m in models]
    for m, v in zip(models, values, strict=True):
        m.set_weights(v)
    with hr.CandidateWeights() as saved:
        assert [saved.save(m) for m in models] == [0, 1]
        folder = saved._path(0).parent
        assert sorted(p.name for p in folder.iterdir()) == ["candidate_0.npz", "candidate_1.npz"]
        fresh = build_keras_ranker(n_items=5, state_dim=3, context_sizes=[2])
        saved.restore(1, fresh)
        for a, b in zip(fresh.get_weights(), values[1], strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(IndexError, match="no saved candidate 2"):
            saved.restore(2, fresh)
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="outside its with block"):
        saved.save(models[0])
