"""Diagnosis of the organic-world result: what each serving stage earns, and what the online correction costs.

Uses a pipeline run that ``organic_world.py`` left in ``--work`` (``store-SEED``) and the same new users:

* ``stages``: on every request, the expected CTR (true click probability) of retrieval's top item (the sequence
  model over the request's history), the ranking model's top item among the retrieved ones, and the item the
  Recommender actually served (after the TF-Agents policy and its exploration); no feedback posted;
* ``online_correction``: the served expected CTR with serving's LinUCB correction on or off, with or without the
  feedback posted back.

    .venv/bin/python benchmarks/quality/organic_stages.py --work /tmp/organic --seed 0

Writes benchmarks/results/organic_stages.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import recflow  # noqa: F401  (must come before TensorFlow)

# isort: split

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import serving  # noqa: E402,F401  (the package, before benchmarks/ is on the path)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import organic_world as ow  # noqa: E402

from recflow.config import load_config  # noqa: E402
from recflow.io import atomic_path  # noqa: E402
from recflow.simulator import OrganicShop, SimulatorConfig  # noqa: E402
from serving.history import parse_history  # noqa: E402
from serving.recommender import Recommender  # noqa: E402


def stages(store: Path, shop: OrganicShop, users: int) -> dict[str, Any]:
    rec = Recommender.load(store, load_config().serving)
    b = rec.champion
    totals = {"retrieval_top": 0.0, "ranking_top": 0.0, "served": 0.0}
    n = 0
    for u in range(users):
        user = shop.user(u)
        while not user.done:
            truth = shop.world.first_slot_probabilities(user.latent)
            hist = user.history[-ow.REQUEST_HISTORY:]
            served = rec.recommend(user.user_id, None, 1, hist).items[0].item_id
            ctx = b.context_for(user.user_id, None)
            top, _, _ = rec.retrieve(b, user.user_id, ctx, parse_history(hist), None)
            ids = b.item_ids[top]
            prob = b.rank(user.user_id, ids.tolist(), ctx)
            for name, item in (("retrieval_top", ids[0]), ("ranking_top", ids[int(np.argmax(prob))]),
                               ("served", served)):
                totals[name] += float(truth[shop.world.item_index([str(item)])[0]])
            n += 1
            shop.show(user, [served])
    rec.close()
    return {**{k: v / n for k, v in totals.items()}, "requests": n, "users": users}


def online(store: Path, organic: Any, seed: int, start: str, users: int) -> list[dict[str, Any]]:
    rows = []
    for feedback in (False, True):
        for on in (True, False):
            rec = Recommender.load(store, load_config(None, [f"serving.online_learning={str(on).lower()}"]).serving)
            last: dict[str, str] = {}

            def serve(u: str, h: list[dict[str, Any]], k: int, rec: Any = rec, last: dict = last) -> list[str]:
                out = rec.recommend(u, None, k, h[-ow.REQUEST_HISTORY:])
                last["r"] = out.request_id
                return [s.item_id for s in out.items]

            def fb(items: list[str], f: Any, rec: Any = rec, last: dict = last) -> None:
                rec.record_feedback(
                    [{"event_type": "impression", "item_id": i, "request_id": last["r"]} for i in items]
                    + [{"event_type": "click", "item_id": i, "request_id": last["r"]}
                       for i, hit in zip(items, f.clicks, strict=True) if hit])

            run = ow.serve_users(OrganicShop(organic, seed=seed, start_date=start), users, 1, serve,
                                 fb if feedback else None)
            rec.close()
            rows.append({"online_learning": on, "feedback_posted": feedback, **ow.summarize_method(run)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage-users", type=int, default=60)
    parser.add_argument("--online-users", type=int, default=100)
    args = parser.parse_args(argv)
    sim = SimulatorConfig(world="organic", seed=args.seed)
    store = args.work / f"store-{args.seed}"
    doc = {
        "seed": args.seed,
        "store": str(store),
        "stages": stages(store, OrganicShop(sim.organic, seed=args.seed, start_date=sim.start_date),
                         args.stage_users),
        "online_correction": online(store, sim.organic, args.seed, sim.start_date, args.online_users),
    }
    print(json.dumps(doc, indent=2))
    out = ROOT / "benchmarks" / "results" / "organic_stages.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
