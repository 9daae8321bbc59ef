"""tc_keras.propagation.windows and window_step: the key-window label step gives `vote`'s labels
(float64, ties included), its tables cover the radius exactly once, the blocked top-k is a top-k."""

import numpy as np
import pytest
from keras import ops

from tc_keras.propagation import label_step as L
from tc_keras.propagation import tiles as tiles_lib
from tc_keras.propagation import window_step as WS
from tc_keras.propagation import windows as W
from tests.test_label_step import np_vote, random_unit


def _windows_vote(feats, labels, queries, radius, tile, topk, temperature, max_logits=2 ** 25):
    """`WindowStep` on (M, h, w, .) context (first frame long-term, the others the ring)."""
    m, h, w = feats.shape[:3]
    n = h * w
    feats, labels = feats.reshape(m, n, -1), labels.reshape(m, n, -1)
    windows = W.key_windows(h, w, radius, m - 1, max_logits, tile)
    step = WS.WindowStep(windows, n, m - 1, max_logits)
    out = step(feats[0], labels[0], step.ring(feats[1:]), labels[1:], queries, topk=topk,
               temperature=temperature)
    return np.asarray(out)


@pytest.mark.parametrize("h, w, radius, tile, max_logits", [
    (7, 9, 1.5, (2, 4), 2 ** 25),  # tiles past the map's edge on both axes
    (7, 9, 2.0, (8, 8), 2 ** 25),  # one tile larger than the map
    (5, 6, 0.0, (2, 2), 2 ** 25),  # radius 0: a query's only short-term key is itself
    (6, 5, 10.0, (4, 4), 2 ** 25),  # radius larger than the map
    (9, 11, 3.0, (1, 8), 300),  # one-row tiles, many chunks (a few tiles each)
    (12, 10, 2.5, (3, 4), 1),  # one tile per chunk
])
def test_window_step_equals_dense_vote(h, w, radius, tile, max_logits):
    """Float64: the labels of `vote` with the radius mask, and of the float64 loop reference."""
    rng = np.random.default_rng(2)
    m, c, k = 4, 6, 3
    feats = random_unit(rng, m, h, w, c)
    labels = rng.uniform(size=(m, h, w, k))
    queries = random_unit(rng, h * w, c)
    allowed, short = tiles_lib.radius_mask(h, w, radius), np.arange(m) > 0
    flat_feats, flat_labels = feats.reshape(m, h * w, c), labels.reshape(m, h * w, k)
    want = np.asarray(L.vote(flat_feats, flat_labels, queries, allowed, short, topk=5,
                             temperature=0.1))
    got = _windows_vote(feats, labels, queries, radius, tile, 5, 0.1, max_logits)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    ref = np_vote(flat_feats, flat_labels, queries, allowed, short, 5, 0.1, True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_fewer_ring_candidates_than_k():
    """Radius 0 and one ring frame: 2 short-term candidates per query for a top-10."""
    rng = np.random.default_rng(4)
    h, w, m, c = 5, 6, 2, 4
    feats, labels = random_unit(rng, m, h, w, c), rng.uniform(size=(m, h, w, 2))
    queries = random_unit(rng, h * w, c)
    want = np.asarray(L.vote(feats.reshape(m, h * w, c), labels.reshape(m, h * w, 2), queries,
                             tiles_lib.radius_mask(h, w, 0.0), np.arange(m) > 0, topk=10,
                             temperature=0.1))
    got = _windows_vote(feats, labels, queries, 0.0, (1, 2), 10, 0.1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_window_step_breaks_ties_like_vote():
    """Features from 4 fixed vectors (the first frame all the fourth, queries from the others):
    exact ties at every level of similarity, the top-k's boundary among the ring's keys, blocks
    of different maxima holding tied keys; the same keys are picked. The labels are uniform
    random, so picking another key changes a label by ~0.1; summation order only by ~1e-7: a
    1e-5 tolerance tells the two apart."""
    rng = np.random.default_rng(1)
    h, w, m, k = 6, 9, 4, 5
    basis = random_unit(rng, 4, 3).astype(np.float32)
    feats = basis[rng.integers(0, 4, (m, h, w))]
    feats[0] = basis[3]
    labels = rng.uniform(size=(m, h, w, k)).astype(np.float32)
    queries = basis[rng.integers(0, 3, h * w)]
    want = np.asarray(L.vote(feats.reshape(m, h * w, 3), labels.reshape(m, h * w, k), queries,
                             tiles_lib.radius_mask(h, w, 2.0), np.arange(m) > 0, topk=10,
                             temperature=0.05))
    for tile in [(2, 4), (1, 8), (3, 3)]:
        got = _windows_vote(feats, labels, queries, 2.0, tile, 10, 0.05)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=str(tile))


def test_key_windows_cover_the_radius_once_in_vote_order():
    h, w, radius, a, b = 11, 13, 2.5, 3, 4
    windows = W.key_windows(h, w, radius, 2, 2 ** 25, (a, b))
    mask = tiles_lib.radius_mask(h, w, radius)
    tiles, _, slots = windows.bias.shape
    assert slots == a * b and windows.key_position.shape == (tiles, slots)
    real = windows.key_position[windows.key_position >= 0]
    np.testing.assert_array_equal(np.sort(real), np.arange(h * w))  # every key in one tile
    rows = [(t, s) for t0, t1, q in windows.chunks for t in range(t0, t1) for s in range(q)]
    for query in range(h * w):
        keys = []
        for block in windows.block_index[query]:
            if block == windows.blocks:
                continue
            (t, s), i = rows[block // a], block % a
            assert windows.query_index[t, s] == query
            allowed = windows.bias[t, s, i * b:(i + 1) * b] == 0
            assert allowed.any()  # blocks without a key within the radius are left out
            keys += list(windows.key_position[t, i * b:(i + 1) * b][allowed])
        assert keys == list(np.nonzero(mask[query])[0])  # each once, in increasing position


def test_choose_key_tile_and_chunks():
    assert W.choose_key_tile(60, 107, 12.0, 20, 2 ** 25) in W.KEY_TILES
    windows = W.key_windows(60, 107, 12.0, 20, 2 ** 25)
    lengths = [q for _, _, q in windows.chunks]
    assert lengths == sorted(lengths, reverse=True)
    a, b = windows.tile
    for t0, t1, q in windows.chunks:
        assert (t1 - t0) * q * 20 * a * b <= 2 ** 25 or t1 - t0 == 1
        length = (windows.query_index[t0:t1] != 0) | (windows.bias[t0:t1] == 0).any(-1)
        assert length.sum(-1).min() >= W.CHUNK_FILL * q  # padding bounded


@pytest.mark.parametrize("block", [4, 5, 20])
def test_blocked_topk_is_a_topk(block):
    rng = np.random.default_rng(6)
    logits = rng.integers(0, 6, (7, 20)).astype(np.float32)  # many ties
    want_values, want_index = ops.top_k(logits, 6)
    values, index = WS.blocked_topk(logits, 6, block)
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))
    np.testing.assert_array_equal(np.asarray(index), np.asarray(want_index))


def test_long_block_divides():
    assert WS.long_block(6420) == 30 and WS.long_block(1590) == 30
    assert WS.long_block(64) == 32 and WS.long_block(7 * 11) == 7 * 11  # no divisor: one block
