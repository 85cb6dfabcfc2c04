"""SHAP explanations of the ranking model's click probability over its raw request features.

The explainer is model-agnostic (``shap.PermutationExplainer`` with an independent masker), because the
ranking model starts with embedding lookups, which gradient explainers cannot attribute through (shap #3440).
Raw features (user id, item id, hour, weekday, device, region) are encoded as integer codes into a small
table of values; the model function decodes each row and calls the ranking SavedModel in one batch. The
background sample (random known users, catalog items and logged contexts, seeded) is what "absent" means for
a feature: an attribution says how much this feature's value moved the probability away from the background.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.bundle import ServingBundle
from serving.recommender import Recommendation

FEATURES: tuple[str, ...] = ("user_id", "item_id", "hour", "weekday", "device", "region")


def explain_slate(
    bundle: ServingBundle, rec: Recommendation, background: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Per item of ``rec``: the base value, the model's probability and each raw feature's SHAP value."""
    import shap

    rng = np.random.default_rng(seed)
    users = list(bundle.user_index)
    bg_users = (
        [users[i] for i in rng.choice(len(users), size=background)] if users else [rec.user_id] * background
    )
    bg_items = [str(bundle.item_ids[i]) for i in rng.choice(bundle.trained_items, size=background)]
    contexts = list(bundle.user_context.values()) or [bundle.default_context]
    bg_ctx = [contexts[i] for i in rng.choice(len(contexts), size=background)]
    values: dict[str, list[Any]] = {f: [] for f in FEATURES}

    def code(feature: str, value: Any) -> int:
        table = values[feature]
        if value not in table:
            table.append(value)
        return table.index(value)

    def encode(user: str, item: str, ctx: dict[str, Any]) -> list[int]:
        full = {**bundle.default_context, **ctx}
        return [code("user_id", user), code("item_id", item), *(code(f, full.get(f)) for f in FEATURES[2:])]

    bg = np.array([encode(u, i, c) for u, i, c in zip(bg_users, bg_items, bg_ctx, strict=True)], dtype=float)
    rows = np.array([encode(rec.user_id, s.item_id, rec.context) for s in rec.items], dtype=float)

    def model(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=int)
        decoded = {f: [values[f][c] for c in x[:, j]] for j, f in enumerate(FEATURES)}
        return bundle.rank_rows(decoded["user_id"], decoded["item_id"], decoded)

    masker = shap.maskers.Independent(bg, max_samples=background)
    explainer = shap.PermutationExplainer(model, masker, feature_names=list(FEATURES), seed=seed)
    result = explainer(rows, max_evals=2 * len(FEATURES) + 1, silent=True)
    probabilities = model(rows)  # one batched call for every item, not one per item
    out = []
    for n, slot in enumerate(rec.items):
        out.append(
            {
                "item_id": slot.item_id,
                "position": slot.position,
                "click_probability": float(probabilities[n]),
                "base_value": float(np.asarray(result.base_values)[n]),
                "attributions": [
                    {
                        "feature": f,
                        "value": _plain(values[f][int(rows[n, j])]),
                        "shap_value": float(result.values[n, j]),
                    }
                    for j, f in enumerate(FEATURES)
                ],
            }
        )
    return {
        "request_id": rec.request_id,
        "model_version": rec.model_version,
        "method": "shap.PermutationExplainer",
        "background_size": background,
        "items": out,
    }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
