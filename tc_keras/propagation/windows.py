"""The key windows of the radius-restricted label step (`label_step.window_logits` and after).

NumPy only, computed once per video size. The short-term keys are cut into key tiles of a x b
positions (all S frames of a tile are one contiguous block of the ring); each tile is matched
against its query window, the queries within the radius of at least one of its keys (a union of
disks, not a square), gathered by index. A query is in about (a*b + 2r(a + b) + pi r^2) / (a*b)
windows; the products computed per needed product (the waste of a tile against its window) are
about 1.3-1.7 for 4x4 to 4x8 tiles at radius 12, against 2.9 for the 12x12 query tiles of
`tiles.local_tiles` with their square key regions, and the S-frame keys are never copied (the one
query frame is).

The radius is applied inside the matmul: the queries of a window carry A = a*b extra channels,
0 or MASKED_LOGIT per key position of the tile, and the keys the one-hot of their position in the
tile, so that a key out of the radius (or a position past the map's edge) gets its logit lowered
by MASKED_LOGIT with no pass over the logits.

Candidates are blocks of b keys, one row of a tile in one frame: contiguous in `vote`'s order
(frame, row, column), so that the blocked top-k keeps `vote`'s tie order. `block_index` lists a
query's blocks in that order.

Shape legend: h w feature size, N = h*w, S short-term frames, A = a*b key positions per tile,
T tiles, Q window slots, G = (window rows) blocks of one frame per query.
"""

import dataclasses
import functools

import numpy as np

from tc_keras.propagation.tiles import radius_mask

# Key tile candidates (a rows, b columns; b is the block of the top-k), and the work model that
# picks one (`choose_key_tile`), in query-key products of C = 512 multiply-adds (about 5 ns of
# CPU): gathering a query into a window costs about 60 (measured: 0.27 us per window slot,
# concatenation included), and the top-k about 2 per block of b keys of one frame (the maxima,
# their gather per query and the top-k over them).
KEY_TILES = ((2, 8), (4, 4), (4, 8), (8, 8), (8, 4))
WINDOW_GATHER_COST = 60
BLOCK_COST = 2
# Tiles computed together have windows of at least this fraction of the longest (the padding).
CHUNK_FILL = 0.9
# Bias of a masked product; lowers a logit of magnitude <= 1/temperature far below any other.
MASKED_BIAS = -1e4


@dataclasses.dataclass(frozen=True)
class KeyWindows:
    """Key tiles and their query windows for an h x w map (numpy; see `key_windows`).

    Attributes:
      tile: (a, b) key tile.
      key_position: (T, A) int32, the map position of each key slot of each tile (row-major
        inside the tile), -1 past the map's edge. Tiles are stored in this order (the ring's).
      query_index: (T, Q) int32, the window's query positions, increasing, then 0 padding.
      bias: (T, Q, A) float32, 0 where the key is within the radius of the window query,
        MASKED_BIAS where not (padding slots: everywhere).
      chunks: ((t0, t1, q), ...): tile ranges computed together, each with its window length q.
      block_index: (N, G) int32, for each query its blocks of one frame in `vote`'s order, as
        (window row) * (a) + (tile row): window row = the row of the (tile, window slot) pair
        among all chunks' (t1 - t0) * q rows; `blocks` (past the last row) marks padding.
      blocks: the number of window rows times a (the padding index of `block_index`).
    """

    tile: tuple
    key_position: np.ndarray
    query_index: np.ndarray
    bias: np.ndarray
    chunks: tuple
    block_index: np.ndarray
    blocks: int


def _disk(radius, strict=False):
    """(2R+1, 2R+1) bool: the offsets (dy, dx) within the radius (`tiles.radius_mask`'s test;
    `strict`: distance < radius)."""
    reach = int(np.ceil(radius))
    side = 2 * reach + 1
    return radius_mask(side, side, radius, strict)[reach * side + reach].reshape(side, side), reach


def _windows(height, width, radius, tile, strict=False):
    """[(tile row, tile column, key positions (A,), window queries (Q,), allowed (Q, A))] in
    raster order of the tiles."""
    a, b = tile
    disk, reach = _disk(radius, strict)
    out = []
    for ty in range(-(-height // a)):
        for tx in range(-(-width // b)):
            ky, kx = np.divmod(np.arange(a * b), b)
            ky, kx = ky + ty * a, kx + tx * b
            real = (ky < height) & (kx < width)
            # Candidate queries: the tile grown by the reach, inside the map (row-major order).
            qy, qx = np.meshgrid(np.arange(max(ty * a - reach, 0), min(ty * a + a + reach, height)),
                                 np.arange(max(tx * b - reach, 0), min(tx * b + b + reach, width)),
                                 indexing="ij")
            qy, qx = qy.ravel(), qx.ravel()
            dy, dx = qy[:, None] - ky[None], qx[:, None] - kx[None]  # (Q', A)
            near = (np.abs(dy) <= reach) & (np.abs(dx) <= reach) & real[None]
            ok = np.zeros_like(near)
            ok[near] = disk[dy[near] + reach, dx[near] + reach]
            keep = ok.any(1)
            out.append((ty, tx, np.where(real, ky * width + kx, -1),
                        (qy * width + qx)[keep], ok[keep]))
    return out


def _chunks(lengths, short, slots, max_logits):
    """((t0, t1, q), ...): runs of tiles (lengths decreasing), each padded to its first window's
    length q, with at most `max_logits` logits and windows at least CHUNK_FILL of q."""
    chunks, t0, count = [], 0, len(lengths)
    while t0 < count:
        t1 = t0 + 1  # sizes decrease: the chunk's first window is its longest
        while (t1 < count and (t1 + 1 - t0) * lengths[t0] * short * slots <= max_logits
               and lengths[t1] >= CHUNK_FILL * lengths[t0]):
            t1 += 1
        chunks.append((t0, t1, int(lengths[t0])))
        t0 = t1
    return tuple(chunks)


def choose_key_tile(height, width, radius, short, max_logits, strict=False):
    """The (a, b) of `KEY_TILES` with the least estimated work per window slot (windows padded per
    chunk): a*b*S products, the gather, and the a*S blocks of the top-k."""
    best = None
    for a, b in KEY_TILES:
        lengths = sorted((len(f[3]) for f in _windows(height, width, radius, (a, b), strict)),
                         reverse=True)
        slots = sum((t1 - t0) * q for t0, t1, q in _chunks(lengths, short, a * b, max_logits))
        work = slots * (a * b * short + WINDOW_GATHER_COST + BLOCK_COST * a * short)
        if best is None or work < best[0]:
            best = (work, (a, b))
    return best[1]


@functools.lru_cache(maxsize=8)
def key_windows(height, width, radius, short, max_logits, tile=None, strict=False):
    """`KeyWindows` for an h x w map, a radius in feature cells and S short-term frames.

    Tiles are stored by decreasing window size and computed in chunks of at most `max_logits`
    logits (a chunk's windows padded to its longest). `tile` None: `choose_key_tile`. Cached: a
    dataset's videos of one size share them (about 1 s at 480p); their arrays are not to be
    written. `strict`: keys strictly inside the radius (`tiles.radius_mask`).
    """
    if tile is None:
        tile = choose_key_tile(height, width, radius, short, max_logits, strict)
    a, b = tile
    found = _windows(height, width, radius, tile, strict)
    found.sort(key=lambda f: -len(f[3]))  # stable: equal sizes keep raster order
    count, slots = len(found), a * b
    lengths = np.array([len(f[3]) for f in found])
    chunks = _chunks(lengths, short, slots, max_logits)
    q_max = int(lengths.max())
    query_index = np.zeros((count, q_max), np.int32)
    bias = np.full((count, q_max, slots), MASKED_BIAS, np.float32)
    rows, useful = [], []  # (query, window row, tile row, tile column); block has a key
    start = 0
    for t0, t1, qc in chunks:
        for t in range(t0, t1):
            ty, tx, _, queries, ok = found[t]
            query_index[t, :len(queries)] = queries
            bias[t, :len(queries)] = np.where(ok, 0.0, MASKED_BIAS)
            window_rows = start + (t - t0) * qc + np.arange(len(queries))
            rows.append(np.stack([queries, window_rows, np.full_like(queries, ty),
                                  np.full_like(queries, tx)], -1))
            useful.append(ok.reshape(len(queries), a, b).any(-1).ravel())  # (Q * a,)
        start += (t1 - t0) * qc
    rows = np.concatenate(rows)  # (pairs, 4)
    # Each (query, tile) pair gives a blocks, one per tile row i (key row ty*a + i), those with a
    # key within the radius kept. `vote`'s order within a frame is (key row, column): sort by
    # (query, ty*a + i, tx).
    i = np.arange(a)
    useful = np.concatenate(useful)
    query = np.repeat(rows[:, 0], a)[useful]
    key_row = (rows[:, 2:3] * a + i).ravel()[useful]
    column = np.repeat(rows[:, 3], a)[useful]
    block = (rows[:, 1:2] * a + i).ravel()[useful]
    order = np.lexsort((column, key_row, query))
    query, block = query[order], block[order]
    n = height * width
    per_query = np.bincount(query, minlength=n)
    blocks = start * a
    block_index = np.full((n, per_query.max()), blocks, np.int32)
    first = np.concatenate([[0], np.cumsum(per_query)[:-1]])
    block_index[query, np.arange(len(query)) - first[query]] = block
    return KeyWindows(tile=(a, b), key_position=np.stack([f[2] for f in found]).astype(np.int32),
                      query_index=query_index, bias=bias, chunks=tuple(chunks),
                      block_index=block_index, blocks=blocks)
