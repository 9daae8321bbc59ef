"""The tiling of a feature map for the radius-restricted label step (`label_step.vote_local`).

NumPy only, computed once per video size: which query positions form each tile, which key
positions form its key region, which of those lie within the radius of each query, and the work
model that picks the tile shape. Also the dense (N, N) radius mask of `label_step.vote`.

Shape legend: h w feature size, N = h*w, T tiles of P = ty*tx query positions, R key-region
positions per tile.
"""

import dataclasses

import numpy as np

# Candidates per block of the joint top-k (`vote_local`); regions are padded to a multiple of it.
TOPK_BLOCK = 32


# Tile candidates of `vote_local` (`choose_tile`). Smaller tiles waste fewer keys ((ty + 2r)(tx + 2r)
# region vs the (2r + 1)^2 window) but gather more key features per query (R / P copies of the
# context); `choose_tile` weighs the two. TILE_GATHER_COST: the cost of gathering one key's
# features for a tile, in query-key products (2 cores: gathering a key's S*C floats, about 6 GB/s,
# takes as long as about 100 query-key products of S*C multiply-adds, about 300 GFLOP/s).
TILE_SIDES = (4, 6, 8, 10, 12, 16, 24, 32)
TILE_GATHER_COST = 100


def _within(query_yx, key_yx, radius, strict=False):
    """Bool (..., Q, R): key within `radius` of query, from (..., Q, 2) and (..., R, 2) cells;
    distance <= radius, or < radius when `strict` (docs/METHOD.md, "CRW protocol")."""
    d2 = np.sum((query_yx[..., :, None, :].astype(np.float32)
                 - key_yx[..., None, :, :].astype(np.float32)) ** 2, -1)
    # Squared distances between cells are integers, exact in float32.
    return d2 < float(radius) ** 2 if strict else d2 <= float(radius) ** 2


def radius_mask(height, width, radius, strict=False):
    """(N, N) bool: key position within `radius` feature cells of the query position (Euclidean;
    distance <= radius, or < radius when `strict`).

    Rows are query positions, columns key positions, both row-major (y * width + x).
    """
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    pos = np.stack([ys.ravel(), xs.ravel()], -1)  # (N, 2)
    return _within(pos, pos, radius, strict)


@dataclasses.dataclass(frozen=True)
class LocalTiles:
    """Precomputed tiling of an h x w feature map for `vote_local` (numpy; see `local_tiles`).

    Attributes:
      query_index: (T, P) int32 flat query positions of each tile, row-major within the tile.
        Tiles at the bottom/right edge are padded with repeats of their own last row/column.
      key_index: (T, R) int32 flat key positions of each tile's key region, increasing, then
        -1 padding up to a multiple of TOPK_BLOCK (never allowed).
      allowed: (T, P, R) bool, region key within the radius of the tile query.
      slot: (N,) int32, for each position its index into the flattened (T*P) tile outputs.
    """

    query_index: np.ndarray
    key_index: np.ndarray
    allowed: np.ndarray
    slot: np.ndarray


def _region(tile, height, width, radius):
    """(ry, rx) region of a (ty, tx) tile: the tile grown by floor(radius), inside the map."""
    r = int(np.floor(radius))
    return min(tile[0] + 2 * r, height), min(tile[1] + 2 * r, width)


def _padded(ry, rx):
    """Slots of a ry x rx key region padded to whole TOPK_BLOCK blocks."""
    return -(-ry * rx // TOPK_BLOCK) * TOPK_BLOCK


def choose_tile(height, width, radius):
    """The (ty, tx) query tile of `vote_local` with the least estimated work on an h x w map.

    Work of a tiling = tiles x (padded) region x (queries per tile + TILE_GATHER_COST): the
    query-key products and the key features gathered. At 30x53 features (size 240) and radius 12
    this picks full-height bands 8 cells wide; at 60x107 (480p) 12x12 tiles.
    """
    best = None
    for ty in sorted({min(s, height) for s in TILE_SIDES} | {height}):
        for tx in sorted({min(s, width) for s in TILE_SIDES} | {width}):
            ry, rx = _region((ty, tx), height, width, radius)
            region = _padded(ry, rx)
            tiles = -(-height // ty) * -(-width // tx)
            work = tiles * region * (ty * tx + TILE_GATHER_COST)
            if best is None or work < best[0]:
                best = (work, (ty, tx))
    return best[1]


def local_tiles(height, width, radius, tile=None, strict=False):
    """`LocalTiles` for an h x w feature map, a radius in feature cells and a (ty, tx) tile.

    A tile's key region is (ty + 2r) x (tx + 2r) positions (r = floor(radius)), or the whole
    height/width where the map is smaller, shifted inside the map at its borders: one size for
    all tiles, and it holds every key within the radius of any query of the tile. Regions are
    padded to a multiple of TOPK_BLOCK slots (key index -1, never allowed). `tile` None:
    `choose_tile`. `strict`: keys strictly inside the radius (see `radius_mask`).
    """
    tile = choose_tile(height, width, radius) if tile is None else tile
    ty, tx = min(tile[0], height), min(tile[1], width)
    r = int(np.floor(radius))
    ry, rx = _region((ty, tx), height, width, radius)
    pad = _padded(ry, rx) - ry * rx
    query_index, key_index, query_yx, key_yx = [], [], [], []
    for y0 in range(0, height, ty):
        for x0 in range(0, width, tx):
            qy, qx = np.meshgrid(np.minimum(np.arange(y0, y0 + ty), height - 1),
                                 np.minimum(np.arange(x0, x0 + tx), width - 1), indexing="ij")
            oy, ox = np.clip(y0 - r, 0, height - ry), np.clip(x0 - r, 0, width - rx)
            ky, kx = np.meshgrid(np.arange(oy, oy + ry), np.arange(ox, ox + rx), indexing="ij")
            query_index.append((qy * width + qx).ravel())
            key_index.append(np.concatenate([(ky * width + kx).ravel(), np.full(pad, -1)]))
            query_yx.append(np.stack([qy.ravel(), qx.ravel()], -1))
            key_yx.append(np.stack([ky.ravel(), kx.ravel()], -1))
    query_index = np.stack(query_index).astype(np.int32)  # (T, P)
    # A position repeated as padding takes the output of its first (real) occurrence.
    _, slot = np.unique(query_index.ravel(), return_index=True)  # (N,), positions in order
    allowed = _within(np.stack(query_yx), np.stack(key_yx), radius, strict)  # (T, P, ry*rx)
    allowed = np.pad(allowed, [(0, 0), (0, 0), (0, pad)])  # padding slots: never allowed
    return LocalTiles(query_index=query_index,
                      key_index=np.stack(key_index).astype(np.int32),
                      allowed=allowed, slot=slot.astype(np.int32))
