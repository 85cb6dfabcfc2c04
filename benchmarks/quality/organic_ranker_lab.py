"""Organic world: what the history ranker's variants serve, on the pipeline runs of ``organic_world.py``.

Run ``benchmarks/quality/organic_world.py --no-write --work W`` first (it leaves ``W/run-<seed>`` and
``W/store-<seed>``); then each subcommand reads those runs and prints one JSON line per seed:

* ``variant --set trainer.X=Y ...``: retrain only the history ranker of the pushed bundle (the run's own
  sequence encoder, through its numpy forward pass, and the run's ExampleGen output) with the overrides, swap it
  into a copy of the store, and serve the same new users as the benchmark, without exploration. ``--zero K..``
  zeroes dense-feature weights of the retrained ranker afterwards (e.g. all four: the item biases alone).
* ``converged --C C --cols 0,1,2,3 [--center]``: the ``personal_off`` form fitted as an L2 logistic regression to
  convergence (sklearn, train + eval impressions) instead of Adam with early stopping.
* ``probe``: the ideal weights of the ranker's features -- the online users' *true* click logits regressed on
  item effects plus the features of every candidate -- and what the argmax of that fit would serve.

Used to choose the history ranker's defaults (docs/models.md); results in
``benchmarks/results/organic_ranker_lab.jsonl``.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import recflow  # noqa: F401  (must come before TensorFlow)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import organic_world as ow  # noqa: E402
import pandas as pd  # noqa: E402

import serving  # noqa: E402,F401
from recflow.config import load_config  # noqa: E402
from recflow.models.history_ranking import history_features  # noqa: E402
from recflow.models.sequence import numpy_user_state  # noqa: E402
from recflow.simulator import OrganicShop, SimulatorConfig  # noqa: E402
from recflow.training import history_ranking as hr  # noqa: E402
from recflow.training.sequence_retrieval import item_rows_of, load_events  # noqa: E402

ITEMS, TRAIN_USERS = 10, 1000


class _Array:
    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def numpy(self) -> np.ndarray:
        return self.a


class NumpyEncoder:
    """The bundle's sequence encoder through its numpy forward pass, with the trainer's encoder interface."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.w = weights

    def __call__(self, part: dict[str, np.ndarray], training: bool = False) -> _Array:
        return _Array(numpy_user_state(self.w, part["hist_items"], part["hist_types"], part["hist_gaps"]))

    def item_vectors(self) -> np.ndarray:
        v = self.w["item_embedding"]
        if "item_bias" in self.w:
            v = np.concatenate([v, self.w["item_bias"].reshape(len(v), -1)], axis=1)
        return v


class _Seq:
    def __init__(self, encoder: NumpyEncoder) -> None:
        self.encoder = encoder


def _run_dir(work: Path, seed: int) -> Path:
    return Path(sorted(glob.glob(str(work / f"run-{seed}/pipeline-runs/*/artifacts/*")))[-1])


def _model_dir(store: Path) -> Path:
    return sorted((store / "versions").iterdir())[-1] / "model"


def _bundle(vdir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    with np.load(vdir / "sequence_encoder.npz") as z:
        w = {k: z[k] for k in z.files}
    meta = json.loads((vdir / "history_ranker.json").read_text())
    items = pd.read_parquet(vdir / "sequence_items.parquet")
    n_vocab = int(json.loads((vdir / "sequence_encoder.json").read_text())["n_items"]) - 1
    vocab = [""] * n_vocab
    for i, r in zip(items["item_id"], items["row"], strict=True):
        if 0 <= int(r) < n_vocab:
            vocab[int(r)] = str(i)
    return w, meta, vocab


def _serve(store: Path, seed: int, users: int) -> float:
    sim = SimulatorConfig(world="organic", seed=seed)
    organic = sim.organic.model_copy(update={"items": ITEMS, "users": TRAIN_USERS})
    serve, fb, rec = ow.recflow_api(store, epsilon=0.0, new_user_epsilon=0.0)
    run = ow.serve_users(OrganicShop(organic, seed=seed, start_date=sim.start_date), users, 1, serve, fb)
    rec.close()
    return float(ow.summarize_method(run)["expected_ctr"])


def _store_copy(work: Path, seed: int) -> Path:
    dst = Path(tempfile.mkdtemp(prefix=f"organic-lab-{seed}-")) / "store"
    shutil.copytree(work / f"store-{seed}", dst)
    return dst


def variant(work: Path, seed: int, overrides: list[str], users: int, zero: list[int]) -> dict[str, Any]:
    store = _store_copy(work, seed)
    vdir = _model_dir(store)
    w, meta, vocab = _bundle(vdir)
    cfg = load_config(overrides=overrides)
    spec = json.loads((vdir / "training.json").read_text()).get("feature_spec", {})
    res = hr.train_history_ranker(_run_dir(work, seed) / "example-gen/examples", vocab, _Seq(NumpyEncoder(w)),
                                  meta["item_ids"], spec, cfg.trainer, vdir)
    with np.load(vdir / "history_ranker.npz") as z:
        rw = {k: z[k] for k in z.files}
    kernel = rw["dense_kernel"].tolist()
    if zero:
        rw["dense_kernel"][zero] = 0.0
        with open(vdir / "history_ranker.npz", "wb") as fh:
            np.savez(fh, **rw)
    ctr = _serve(store, seed, users)
    shutil.rmtree(store.parent)
    return {"seed": seed, "kind": "variant", "set": overrides, "zero": zero,
            "chosen": res.report.get("chosen_candidate"), "centring": res.report.get("score_centring"),
            "eval_auc": res.report.get("eval_auc"), "dense_kernel": [round(x, 3) for x in kernel],
            "expected_ctr": ctr}


def converged(work: Path, seed: int, c: float, cols: list[int], center: bool, users: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    store = _store_copy(work, seed)
    vdir = _model_dir(store)
    w, meta, vocab = _bundle(vdir)
    cfg = load_config().trainer
    enc = NumpyEncoder(w)
    examples = _run_dir(work, seed) / "example-gen/examples"
    imp = hr._impressions(examples, meta["context_columns"])
    row_of, n_rows = item_rows_of(vocab)
    data = load_events(examples, ("train", "eval"), row_of, n_rows - 1, cfg.event_weights)
    rows, arr = hr.ranker_rows(imp, data, enc, enc.item_vectors(), row_of, meta["item_ids"],
                               cfg.sequence_config().max_len)
    imp = imp.iloc[rows].reset_index(drop=True)
    is_train = (imp["_split"] == "train").to_numpy()
    labels = imp["clicked"].to_numpy().astype(np.float32)
    n_items = len(meta["item_ids"])
    offset = hr.score_offsets(arr["state"][is_train], enc.item_vectors(), meta["item_ids"], row_of) if center else None
    inputs, _, mean, std = hr._ranker_inputs(imp, arr, meta["context_columns"], is_train, offset)
    x = np.hstack([np.eye(n_items + 1)[inputs.item][:, :n_items], inputs.dense[:, cols]])
    lr = LogisticRegression(C=c, max_iter=5000).fit(x, labels)
    coef = lr.coef_[0]
    with np.load(vdir / "history_ranker.npz") as z:
        rw = {k: z[k] for k in z.files}
    rw["item_bias"] = np.append(coef[:n_items], 0.0).astype(np.float32)
    kernel = np.zeros(4, np.float32)
    kernel[cols] = coef[n_items:]
    rw["dense_kernel"], rw["dense_bias"] = kernel, np.array([lr.intercept_[0]], np.float32)
    for key in ("item_vector", "position_bias", "item_context"):
        if key in rw:
            rw[key][:] = 0
    rw.pop("score_offset", None)
    if offset is not None:
        rw["score_offset"] = offset.astype(np.float32)
    meta.update(score_mean=mean, score_std=std)
    (vdir / "history_ranker.json").write_text(json.dumps(meta))
    with open(vdir / "history_ranker.npz", "wb") as fh:
        np.savez(fh, **rw)
    ctr = _serve(store, seed, users)
    shutil.rmtree(store.parent)
    return {"seed": seed, "kind": "converged", "C": c, "cols": cols, "center": center,
            "dense_kernel": [round(float(k), 3) for k in kernel], "expected_ctr": ctr}


def probe(work: Path, seed: int, users: int) -> dict[str, Any]:
    serve, fb, rec = ow.recflow_api(work / f"store-{seed}", epsilon=0.0, new_user_epsilon=0.0)
    b = rec.champion
    seq = b.sequence
    cap: dict[str, Any] = {}
    original = b.rank_with_history

    def wrapped(state: np.ndarray, entries: Any, rows: np.ndarray, context: Any) -> np.ndarray:
        ids = b.item_ids[rows]
        cand = np.array([seq.item_rows.get(str(i), -1) for i in ids], np.int64)
        cap.update(ids=[str(i) for i in ids], score=b.item_matrix[rows] @ state,
                   hist=history_features(seq.rows(entries), cand))
        cap["p"] = original(state, entries, rows, context)
        return cap["p"]

    b.rank_with_history = wrapped  # type: ignore[method-assign]
    sim = SimulatorConfig(world="organic", seed=seed)
    organic = sim.organic.model_copy(update={"items": ITEMS, "users": TRAIN_USERS})
    shop = OrganicShop(organic, seed=seed, start_date=sim.start_date)
    ids = list(shop.item_ids)
    feats, truth, served = [], [], []
    for u in range(users):
        user = shop.user(u)
        while not user.done:
            items = serve(user.user_id, list(user.history), 1)
            order = [cap["ids"].index(i) for i in ids]
            feats.append(np.column_stack([cap["score"][order], cap["hist"][order]]))
            served.append(np.asarray(cap["p"])[order])
            truth.append(shop.world.first_slot_probabilities(user.latent))
            fb(items, shop.show(user, items))
    rec.close()
    x, y, p = np.array(feats), np.array(truth), np.array(served)
    n, m, _ = x.shape
    logit = np.log(y / (1 - y))

    def ctr(scores: np.ndarray) -> float:
        return float(y[np.arange(n), scores.argmax(1)].mean())

    out: dict[str, Any] = {"seed": seed, "kind": "probe", "requests": n, "oracle": float(y.max(1).mean()),
                           "served": ctr(p)}
    names = ["score", "seen", "last", "recency"]
    for cols in ([], [0], [1], [3], [1, 2, 3], [0, 1, 2, 3]):
        design = np.hstack([np.tile(np.eye(m), (n, 1)), x[:, :, cols].reshape(n * m, len(cols))])
        beta, *_ = np.linalg.lstsq(design, logit.reshape(-1), rcond=None)
        fit = (design @ beta).reshape(n, m)
        out["+".join(names[c] for c in cols) or "items"] = {
            "expected_ctr": round(ctr(fit), 5), "weights": [round(float(v), 3) for v in beta[m:]]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["variant", "converged", "probe"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--zero", type=int, nargs="*", default=[])
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--cols", default="0,1,2,3")
    parser.add_argument("--center", action="store_true")
    args = parser.parse_args()
    for seed in args.seeds:
        if args.kind == "variant":
            row = variant(args.work, seed, args.set, args.users, args.zero)
        elif args.kind == "converged":
            row = converged(args.work, seed, args.C, [int(c) for c in args.cols.split(",")], args.center, args.users)
        else:
            row = probe(args.work, seed, args.users)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
