"""Pure tensor functions shared by the layers, the losses, the data pipeline and the exports.

Everything here is written with `keras.ops`, so it runs on any Keras backend and converts to
TFLite builtin ops.

Shape legend for the whole code base: B batch, T time, H W spatial, C channels, N = H*W.

Coordinate convention (used everywhere: sampler, ground-truth thetas, losses, boxes):
normalised coordinates run over [-1, 1] across the *edges* of the image, so pixel i of a W-pixel
row has its centre at x = (2i + 1) / W - 1 ("align_corners=False"). A theta is a (2, 3) affine map
from output-grid coordinates (x_o, y_o, 1) to input coordinates (x_i, y_i). With this convention
the same theta picks the same region of a frame at pixel resolution (240x240 -> 80x80 patch) and
at feature resolution (30x30 -> 10x10), which is what the tracker relies on.
"""


from keras import ops

# ImageNet statistics used to normalise RGB frames (docs/METHOD.md, "Frames").
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The patch is 1/3 of the frame on each side (docs/METHOD.md, "Patch").
PATCH_SCALE = 1.0 / 3.0
# The training clip: k past frames and one square crop for the whole clip (docs/METHOD.md, "Clip sampling");
# the data pipeline and the model share them.
NUM_PAST = 4
CROP_SIZE = 240
# The contrastive random walk's clip and graph nodes (docs/METHOD.md, "Contrastive random walk"):
# 4 frames of 256 px, each cut into 64 px patches every 32 px (7 x 7 = 49 nodes per frame), or
# the cells of its feature map as the nodes; the data pipeline and the model share them.
WALK_CLIP_LEN = 4
WALK_FRAME_SIZE = 256
WALK_NODE_PATCH = 64
WALK_NODE_STRIDE = 32
WALK_NODES = ("patches", "cells")


def patch_size(frame_size):
    """Side in pixels (or cells) of the patch cut from a `frame_size` frame: 80 for 240."""
    return int(round(frame_size * PATCH_SCALE))


def node_grid(frame_size, patch, stride):
    """Side of the walk's grid of patch nodes: windows of `patch` px every `stride` px that fit
    in a `frame_size` frame (7 for 256, 64, 32)."""
    return (frame_size - patch) // stride + 1


def normalize_frames(frames):
    """RGB frames with values in [0, 255] (any dtype) -> ImageNet-normalised float32, same shape."""
    x = ops.cast(frames, "float32") / 255.0
    mean = ops.convert_to_tensor(IMAGENET_MEAN, "float32")
    std = ops.convert_to_tensor(IMAGENET_STD, "float32")
    return (x - mean) / std


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """Divides `x` by its L2 norm along `axis` (features are compared by cosine)."""
    sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq, epsilon))


def base_grid(height, width, dtype="float32"):
    """Pixel-centre grid over [-1, 1]^2: (height, width, 3) of (x, y, 1)."""
    xs = (2.0 * ops.arange(width, dtype=dtype) + 1.0) / width - 1.0
    ys = (2.0 * ops.arange(height, dtype=dtype) + 1.0) / height - 1.0
    gx = ops.broadcast_to(xs[None, :], (height, width))
    gy = ops.broadcast_to(ys[:, None], (height, width))
    return ops.stack([gx, gy, ops.ones_like(gx)], axis=-1)


def affine_grid(theta, height, width):
    """Maps a (height, width) output grid through `theta`.

    Args:
      theta: (B, 2, 3) affine maps, output coords -> input coords.
      height, width: python ints, size of the output grid.
    Returns:
      (B, height, width, 2) input coordinates (x, y) in the normalised convention.
    """
    grid = ops.cast(base_grid(height, width), theta.dtype)
    # (H, W, 3) x (B, 2, 3) -> (B, H, W, 2)
    return ops.einsum("hwk,bjk->bhwj", grid, theta)


def bilinear_sample(image, coords):
    """Bilinear sampling with zero padding, written with gathers (TFLite builtin ops only).

    Args:
      image: (B, H, W, C) float.
      coords: (B, h, w, 2) normalised (x, y) sample positions; outside [-1, 1] reads zeros
        (each of the four neighbours outside the image contributes zero).
    Returns:
      (B, h, w, C). Differentiable w.r.t. `image` and `coords`.

    The four neighbours of every sample are read with one gather of whole rows of C channels from
    the image flattened to (B*H*W, C): its gradient adds rows back (a segment sum over rows), not
    single values, and no index is repeated over channels.
    """
    shape = ops.shape(image)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    cshape = ops.shape(coords)
    out_h, out_w = cshape[1], cshape[2]
    dtype = image.dtype
    coords = ops.cast(coords, dtype)
    fw = ops.cast(width, dtype)
    fh = ops.cast(height, dtype)
    # Normalised -> pixel coordinates (pixel centres at integers).
    px = ((coords[..., 0] + 1.0) * fw - 1.0) * 0.5  # (B, h, w)
    py = ((coords[..., 1] + 1.0) * fh - 1.0) * 0.5
    x0 = ops.floor(px)
    y0 = ops.floor(py)
    wx1 = px - x0
    wy1 = py - y0
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1
    # Row of (b, 0, 0) in the flattened image: (B,) -> (B, 1, 1).
    base = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
    rows, weights = [], []
    for dy, wy in ((0.0, wy0), (1.0, wy1)):
        for dx, wx in ((0.0, wx0), (1.0, wx1)):
            xi = x0 + dx
            yi = y0 + dy
            valid = (xi >= 0.0) & (xi <= fw - 1.0) & (yi >= 0.0) & (yi <= fh - 1.0)
            weights.append(wx * wy * ops.cast(valid, dtype))  # (B, h, w)
            xc = ops.cast(ops.clip(xi, 0.0, fw - 1.0), "int32")
            yc = ops.cast(ops.clip(yi, 0.0, fh - 1.0), "int32")
            rows.append(base + yc * width + xc)  # (B, h, w) rows of the flattened image
    # (B, H, W, C) -> (B*H*W, C); 4 x (B, h, w) -> (4*B*h*w,) rows -> (4, B, h, w, C)
    flat = ops.reshape(image, (-1, channels))
    values = ops.take(flat, ops.reshape(ops.stack(rows), (-1,)), axis=0)
    values = ops.reshape(values, (4, batch, out_h, out_w, channels))
    weights = ops.expand_dims(ops.stack(weights), -1)  # (4, B, h, w, 1)
    return ops.sum(values * weights, axis=0)


def affine_sample(image, theta, height, width):
    """Spatial transformer: samples a (height, width) grid of `image` (B, H, W, C) through theta."""
    return bilinear_sample(image, affine_grid(theta, height, width))


def theta_from_params(tx, ty, angle, scale=PATCH_SCALE):
    """(B,) translation and rotation -> (B, 2, 3) theta with a fixed isotropic scale.

    theta = [[s cos a, -s sin a, tx], [s sin a, s cos a, ty]] (docs/METHOD.md, "Localizer").
    """
    c = ops.cos(angle) * scale
    s = ops.sin(angle) * scale
    row0 = ops.stack([c, -s, tx], axis=-1)
    row1 = ops.stack([s, c, ty], axis=-1)
    return ops.stack([row0, row1], axis=-2)


def affinity_softmax(image_feats, query_feats, temperature):
    """Softmax over image positions of scaled dot products.

    Args:
      image_feats: (B, H, W, C) image features.
      query_feats: (B, h, w, C) query (patch) features.
      temperature: python float; logits are dot / temperature.
    Returns:
      (B, h, w, N) with N = H*W positions in row-major (y*W + x) order; sums to 1 over N.
    """
    shape = ops.shape(image_feats)
    # (B, H, W, C) -> (B, N, C)
    img = ops.reshape(image_feats, (shape[0], shape[1] * shape[2], shape[3]))
    logits = ops.einsum("bhwc,bnc->bhwn", query_feats, img) / temperature
    return ops.softmax(logits, axis=-1)


def warp_points(theta, num_points=20):
    """Warps a num_points x num_points grid over [-1, 1]^2: (B, num_points**2, 2)."""
    # Grid from -1 to 1 inclusive (docs/METHOD.md, "l_theta").
    lin = ops.linspace(-1.0, 1.0, num_points, dtype=theta.dtype)
    gx = ops.broadcast_to(lin[None, :], (num_points, num_points))
    gy = ops.broadcast_to(lin[:, None], (num_points, num_points))
    # (P, P, 3) -> (P*P, 3)
    pts = ops.reshape(ops.stack([gx, gy, ops.ones_like(gx)], -1), (num_points * num_points, 3))
    return ops.einsum("pk,bjk->bpj", pts, theta)
