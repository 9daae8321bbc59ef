"""tc_keras.propagation.label_step and tiles: the dense and local label steps against a float64 NumPy reference."""

import numpy as np
import pytest

from tc_keras.propagation import label_step as L
from tc_keras.propagation import tiles as tiles_lib


# ---------------------------------------------------------------------------------- references

def np_vote(feats, labels, queries, allowed, short_term, topk, temperature, joint):
    """Float64 loop reference of `vote`."""
    m, n, _ = feats.shape
    out = np.zeros((len(queries), labels.shape[-1]))
    for q, query in enumerate(queries):
        logits = feats @ query / temperature  # (M, N)
        if allowed is not None:
            for f in range(m):
                if short_term[f]:
                    logits[f, ~allowed[q]] = L.MASKED_LOGIT
        if joint:
            flat = logits.ravel()
            idx = np.argsort(-flat, kind="stable")[:topk]
            wts = np.exp(flat[idx] - flat[idx].max())
            wts /= wts.sum()
            out[q] = wts @ labels.reshape(m * n, -1)[idx]
        else:
            for f in range(m):
                p = np.exp(logits[f] - logits[f].max())
                p /= p.sum()
                idx = np.argsort(-p, kind="stable")[:topk]
                out[q] += p[idx] @ labels[f, idx] / m
    return out


def random_unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("radius", [None, 1.5])
def test_vote_matches_float64_reference(joint, radius):
    rng = np.random.default_rng(0)
    h, w, m, c, k = 4, 5, 3, 8, 3
    feats = random_unit(rng, m, h * w, c)
    labels = rng.uniform(size=(m, h * w, k))
    queries = random_unit(rng, h * w, c)
    allowed = None if radius is None else tiles_lib.radius_mask(h, w, radius)
    short = np.array([False, True, True])
    got = L.vote(feats.astype("float32"), labels.astype("float32"), queries.astype("float32"),
                 allowed, short, topk=4, temperature=0.1, joint_topk=joint)
    want = np_vote(feats, labels, queries, allowed, short, 4, 0.1, joint)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def _local(feats, labels, queries, radius, tile, topk, temperature, joint):
    """`vote_local` on (M, N, .) context (first frame long-term) -> (Q=N, K) like `vote`."""
    h, w = feats.shape[1:3]
    feats, labels = feats.reshape(len(feats), h * w, -1), labels.reshape(len(labels), h * w, -1)
    tiles = tiles_lib.local_tiles(h, w, radius, tile)
    out = L.vote_local(feats[:1], labels[:1], feats[1:].transpose(1, 0, 2),
                       labels[1:].transpose(1, 0, 2), queries[tiles.query_index],
                       tiles.key_index, tiles.allowed, topk=topk, temperature=temperature,
                       joint_topk=joint)
    return np.asarray(out).reshape(-1, labels.shape[-1])[tiles.slot]


@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("h, w, radius, tile", [
    (7, 9, 1.5, (3, 4)),   # edge tiles padded on both axes, non-integer radius
    (7, 9, 2.0, (8, 8)),   # tile larger than the map
    (5, 6, 0.0, (2, 2)),   # radius 0: a query's only short-term key is itself
    (6, 5, 10.0, (4, 4)),  # radius larger than the map: region = whole map
    (9, 11, 3.0, (1, 11)),  # whole-row bands
])
def test_vote_local_equals_dense_vote(joint, h, w, radius, tile):
    """Float64: same labels as `vote` with the radius mask (and the float64 loop reference)."""
    rng = np.random.default_rng(2)
    m, c, k = 4, 6, 3
    feats = random_unit(rng, m, h, w, c)
    labels = rng.uniform(size=(m, h, w, k))
    queries = random_unit(rng, h * w, c)
    topk = 5 if joint else 12  # per-frame top-k above the region size where the radius is 0
    allowed, short = tiles_lib.radius_mask(h, w, radius), np.arange(m) > 0
    flat_feats, flat_labels = feats.reshape(m, h * w, c), labels.reshape(m, h * w, k)
    want = np.asarray(L.vote(flat_feats, flat_labels, queries, allowed, short, topk=topk,
                             temperature=0.1, joint_topk=joint))
    got = _local(feats, labels, queries, radius, tile, topk, 0.1, joint)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    ref = np_vote(flat_feats, flat_labels, queries, allowed, short, topk, 0.1, joint)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_vote_local_breaks_ties_like_vote():
    """One-hot features: many keys tie exactly; the same ones are picked. The labels are uniform
    random, so picking another key changes a label by ~0.1; summation order (thread count, load)
    only by ~1e-7: a 1e-5 tolerance tells the two apart."""
    rng = np.random.default_rng(3)
    h, w, m, k = 6, 7, 4, 5
    feats = np.eye(3)[rng.integers(0, 3, (m, h, w))].astype(np.float32)
    labels = rng.uniform(size=(m, h, w, k)).astype(np.float32)
    queries = np.eye(3)[rng.integers(0, 3, h * w)].astype(np.float32)
    want = np.asarray(L.vote(feats.reshape(m, h * w, 3), labels.reshape(m, h * w, k), queries,
                             tiles_lib.radius_mask(h, w, 2.0), np.arange(m) > 0, topk=10,
                             temperature=0.05))
    np.testing.assert_allclose(_local(feats, labels, queries, 2.0, (4, 4), 10, 0.05, True),
                               want, rtol=0, atol=1e-5)


def test_local_tiles_cover_the_radius():
    h, w, radius = 13, 17, 3.5
    tiles = tiles_lib.local_tiles(h, w, radius, (4, 5))
    t, p = tiles.query_index.shape
    r = tiles.key_index.shape[1]
    assert tiles.allowed.shape == (t, p, r)
    real = (4 + 6) * (5 + 6)
    assert r == -(-real // tiles_lib.TOPK_BLOCK) * tiles_lib.TOPK_BLOCK  # padded to whole blocks
    assert np.all(tiles.key_index[:, real:] == -1) and not tiles.allowed[:, :, real:].any()
    np.testing.assert_array_equal(tiles.query_index.ravel()[tiles.slot], np.arange(h * w))
    assert np.all(np.diff(tiles.key_index[:, :real], axis=1) > 0)  # increasing: `vote`'s order
    dense = tiles_lib.radius_mask(h, w, radius)
    for i in range(t):
        # Every key within the radius of a tile query lies in the tile's region, and `allowed`
        # is the dense mask restricted to the region.
        rows = dense[tiles.query_index[i]]  # (P, N)
        assert rows.sum() == tiles.allowed[i].sum()
        np.testing.assert_array_equal(rows[:, tiles.key_index[i, :real]], tiles.allowed[i, :, :real])


def test_choose_tile_weighs_wasted_keys_against_gathers():
    assert tiles_lib.choose_tile(30, 53, 12.0) == (30, 8)   # size 240: full-height bands
    assert tiles_lib.choose_tile(60, 107, 12.0) == (12, 12)  # 480p
    assert tiles_lib.choose_tile(5, 6, 12.0) == (5, 6)      # the map fits in one region


def test_radius_mask_counts():
    mask = tiles_lib.radius_mask(5, 5, 1)
    assert mask.shape == (25, 25)
    assert mask[12].sum() == 5        # centre: itself + 4 neighbours
    assert mask[0].sum() == 3         # corner
    assert tiles_lib.radius_mask(5, 5, 0).sum() == 25
    strict = tiles_lib.radius_mask(5, 5, 1, strict=True)
    assert strict[12].sum() == 1 and not tiles_lib.radius_mask(5, 5, 0, strict=True).any()


@pytest.mark.parametrize("strict", [True, False])
def test_key_at_exactly_the_radius(strict):
    """Query 0 of a 1x5 map and the one matching key, in the short-term frame at distance exactly
    2 = radius: excluded when strict (crw: distance < radius), included otherwise (default:
    distance <= radius), by the dense mask (`vote`) and by the tiles (`vote_local`)."""
    h, w, radius = 1, 5, 2.0
    e0, e1 = np.eye(2)
    feats = np.tile(e1, (2, h * w, 1))  # (M, N, C): first (long-term) frame and one short-term
    feats[1, 2] = e0
    labels = np.tile([1.0, 0.0], (2, h * w, 1))  # (M, N, K)
    labels[1, 2] = [0.0, 1.0]
    queries = np.tile(e1, (h * w, 1))
    queries[0] = e0
    want = [1.0, 0.0] if strict else [0.0, 1.0]
    mask = tiles_lib.radius_mask(h, w, radius, strict)
    assert mask[0].tolist() == [True, True, not strict, False, False]
    dense = L.vote(feats, labels, queries, mask, np.array([False, True]), topk=1,
                   temperature=0.1)
    np.testing.assert_allclose(np.asarray(dense)[0], want, atol=1e-6)
    tiles = tiles_lib.local_tiles(h, w, radius, (1, 2), strict=strict)
    local = L.vote_local(feats[:1], labels[:1], feats[1:].transpose(1, 0, 2),
                         labels[1:].transpose(1, 0, 2), queries[tiles.query_index],
                         tiles.key_index, tiles.allowed, topk=1, temperature=0.1)
    np.testing.assert_allclose(np.asarray(local).reshape(-1, 2)[tiles.slot][0], want, atol=1e-6)


def test_minmax_normalize_each_channel_to_unit_range():
    labels = np.array([[0.2, 5.0], [0.6, 1.0], [0.4, 3.0]], np.float32)  # (N, K)
    out = np.asarray(L.minmax_normalize(labels))
    np.testing.assert_allclose(out, [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], atol=1e-6)


@pytest.mark.parametrize("topk", [1, 10, 60])
def test_blocked_joint_topk_on_unpadded_regions_and_large_k(topk):
    """Regions that are not a whole number of blocks (tiles made elsewhere, older exports) and a
    k above the number of blocks give `vote`'s labels too."""
    rng = np.random.default_rng(5)
    h, w, m, c, k = 7, 9, 3, 6, 2
    feats = random_unit(rng, m, h, w, c)
    labels = rng.uniform(size=(m, h, w, k))
    queries = random_unit(rng, h * w, c)
    tiles = tiles_lib.local_tiles(h, w, 1.5, (3, 4))
    real = int((tiles.key_index[0] >= 0).sum())
    flat_feats, flat_labels = feats.reshape(m, h * w, c), labels.reshape(m, h * w, k)
    got = L.vote_local(flat_feats[:1], flat_labels[:1], flat_feats[1:].transpose(1, 0, 2),
                       flat_labels[1:].transpose(1, 0, 2), queries[tiles.query_index],
                       tiles.key_index[:, :real], tiles.allowed[:, :, :real], topk=topk,
                       temperature=0.1)
    got = np.asarray(got).reshape(-1, k)[tiles.slot]
    want = np.asarray(L.vote(flat_feats, flat_labels, queries, tiles_lib.radius_mask(h, w, 1.5),
                             np.arange(m) > 0, topk=topk, temperature=0.1))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
