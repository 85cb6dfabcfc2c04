"""Hybrid retrieval scores (recflow.models.hybrid): row standardisation, the convex blend, the weight choice."""

import numpy as np
import pytest

from recflow.errors import DataError
from recflow.models.hybrid import blend_scores, choose_blend_weight, zscore_rows


def test_rows_are_standardised_over_their_finite_scores():
    s = np.array([[1.0, 2.0, 3.0, -np.inf], [5.0, 5.0, 5.0, 5.0]])
    z = zscore_rows(s)
    finite = z[0, :3]
    assert finite.mean() == pytest.approx(0.0) and finite.std() == pytest.approx(1.0)
    assert z[0, 3] == pytest.approx(finite.min())  # an unscorable item ties with the worst scored one
    np.testing.assert_array_equal(z[1], 0.0)  # a constant row carries no preference
    np.testing.assert_allclose(zscore_rows(3.0 * s[:1, :3] + 7.0), zscore_rows(s[:1, :3]))  # scale-free


def test_the_blend_interpolates_between_the_two_models():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6)) * 100
    np.testing.assert_allclose(blend_scores(a, b, 0.0), zscore_rows(a))
    np.testing.assert_allclose(blend_scores(a, b, 1.0), zscore_rows(b))
    np.testing.assert_allclose(blend_scores(a, b, 0.25), 0.75 * zscore_rows(a) + 0.25 * zscore_rows(b))
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        blend_scores(a, b, 1.5)
    with pytest.raises(DataError, match="differ in shape"):
        blend_scores(a, b[:, :5], 0.5)


def test_the_weight_is_the_one_that_ranks_the_validation_items_best():
    # 3 users x 5 items; the relevant item is 0 for everyone. The sequence model puts it 2nd, the item-item
    # model 3rd, but their errors differ, so a blend puts it 1st.
    seq = np.array([[0.9, 1.0, 0.1, 0.0, 0.2]] * 3)
    item_item = np.array([[0.8, 0.0, 1.0, 0.9, 0.1]] * 3)
    relevant = [np.array([0])] * 3
    weight, scores = choose_blend_weight(seq, item_item, relevant, None, k=1, grid=(0.0, 0.5, 1.0))
    assert weight == 0.5 and scores == {0.0: 0.0, 0.5: 1.0, 1.0: 0.0}
    # ties go to the smaller weight (the sequence model alone when nothing is gained)
    assert choose_blend_weight(seq, seq, relevant, None, k=2, grid=(0.0, 0.5, 1.0))[0] == 0.0
    # excluded items are never ranked
    excluded = [np.array([1])] * 3
    assert choose_blend_weight(seq, item_item, relevant, excluded, k=1, grid=(0.0,))[1][0.0] == 1.0
