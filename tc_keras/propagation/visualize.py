"""Pictures: patch boxes (thetas) drawn on clip frames, masks and keypoints blended over frames.

NumPy only.
"""

import math

import numpy as np

from tc_keras.data import label_io
from tc_keras import ops as tops

GREEN = (0, 255, 0)
RED = (255, 40, 40)


def denormalize(frames):
    """ImageNet-normalised float frames (..., 3) -> uint8 RGB."""
    x = np.asarray(frames, np.float32) * np.asarray(tops.IMAGENET_STD) + np.asarray(tops.IMAGENET_MEAN)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def theta_corners(theta, height, width):
    """(2, 3) theta -> (4, 2) pixel (x, y) corners of the region it samples, in drawing order."""
    corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], np.float64)
    xy = corners @ np.asarray(theta, np.float64).T  # (4, 2) normalised
    return np.stack([((xy[:, 0] + 1) * width - 1) / 2, ((xy[:, 1] + 1) * height - 1) / 2], -1)


def draw_theta(image, theta, color, thickness=2):
    """Draws the quadrilateral of `theta` on a copy of the (H, W, 3) uint8 image."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    pts = theta_corners(theta, h, w)
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        n = int(np.ceil(np.abs(b - a).max())) + 1
        line = a[None] + np.linspace(0, 1, n)[:, None] * (b - a)[None]
        for dy in range(thickness):
            for dx in range(thickness):
                x = np.round(line[:, 0]).astype(int) + dx
                y = np.round(line[:, 1]).astype(int) + dy
                ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
                out[y[ok], x[ok]] = color
    return out


def clip_strip(past, target, theta_true, theta_past, theta_back):
    """One row per clip: past frames with the patch's localisation in each (red), then the target
    with the ground-truth patch (green) and where the longest cycle came back to (red).

    Args:
      past: (k, H, W, 3) normalised frames; target: (H, W, 3); theta_true: (2, 3);
      theta_past: (k, 2, 3), index i = i + 1 frames back; theta_back: (2, 3).
    Returns:
      (H, (k + 1) * W, 3) uint8.
    """
    k = past.shape[0]
    tiles = [draw_theta(denormalize(past[j]), theta_past[k - 1 - j], RED) for j in range(k)]
    tgt = draw_theta(denormalize(target), theta_true, GREEN)
    tiles.append(draw_theta(tgt, theta_back, RED))
    return np.concatenate(tiles, axis=1)


# ----------------------------------------------------------------------------------- overlays

def colours(fmt, count=256):
    """(count, 3) uint8 colour per id: the mask's own palette, else the DAVIS palette."""
    palette = fmt.palette if fmt.palette and len(fmt.palette) >= 6 else label_io.DAVIS_PALETTE
    pal = np.zeros((count, 3), np.uint8)
    given = np.asarray(palette, np.uint8).reshape(-1, 3)[:count]  # (768,) -> (256, 3)
    pal[:len(given)] = given
    return pal


def overlay_mask(frame, ids, fmt, alpha=0.5):
    """uint8 (H, W, 3) frame with the objects of (H, W) `ids` blended in their colours."""
    colour = colours(fmt)[ids].astype(np.float32)
    blend = np.where((ids > 0)[..., None], (1 - alpha) * frame + alpha * colour, frame)
    return np.clip(blend, 0, 255).astype(np.uint8)


# Joint j is drawn in the DAVIS colour of id j + 1 (id 0, black, is background).
_JOINT_COLOURS = np.asarray(label_io.DAVIS_PALETTE, np.uint8).reshape(-1, 3)[1:]  # (255, 3)


def overlay_keypoints(frame, joints, radius=3):
    """uint8 (H, W, 3) frame with each (J, 2) joint drawn as a coloured disc."""
    out = frame.copy()
    h, w = out.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    for j, (x, y) in enumerate(np.asarray(joints)):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        out[disc] = _JOINT_COLOURS[j % len(_JOINT_COLOURS)]
    return out
