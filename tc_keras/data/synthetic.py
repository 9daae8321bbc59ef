"""Synthetic videos: textured objects moving over a textured, slowly panning background.

The project's embedded training data (no downloads) and the ground truth for tests. Each video is
a deterministic function of its seed. Objects are ellipses or star-shaped polygons carrying their
own multi-scale noise texture, which moves with them (translation with bounces off the frame
edges, rotation, a slow scale oscillation), so that points on an object have a true
correspondence from frame to frame. Later objects occlude earlier ones. Masks are per frame,
0 = background, 1..K = objects in drawing order.

`render_video` returns the whole clip in memory (for tests); `iter_video` streams it frame by
frame (for long videos); `write_corpus` writes real files, and `prepared_corpus` also turns them
into training shards (the default training data when no video collection is given):

    out_dir/videos/vid_0000.mp4          H.264, `fps` frames per second
    out_dir/masks/vid_0000/00000.png     indexed (palette) PNG per frame; 00000.png = first frame
    out_dir/corpus.json                  the arguments, so the corpus can be regenerated
    out_dir/shards/                      (prepared_corpus) shards, manifest.jsonl, report.json
"""

import json
import math
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from tc_keras import atomic
from tc_keras.data import label_io
from tc_keras.data import prepare, video_writer

# Pixels per frame and degrees per frame are relative to min(H, W) so that motion looks alike at
# any resolution; at 256 px, 12 fps an object crosses a fair part of the frame within one
# 16-frame training clip.
MAX_SPEED = 0.015  # object translation, fraction of min(H, W) per frame
MAX_PAN = 0.004  # background pan, fraction of min(H, W) per frame
MAX_SPIN_DEG = 2.0  # object rotation, degrees per frame
RADIUS = (0.08, 0.2)  # object radius, fraction of min(H, W)
# The default corpus: videos, frames per video, height and width (px).
NUM_VIDEOS = 16
FRAMES = 60
SIZE = 256


def texture(rng, height, width):
    """(height, width, 3) uint8 colourful multi-scale noise with a random two-colour palette."""
    gray = np.zeros((height, width), np.float32)
    for cell, weight in ((48, 0.5), (12, 0.3), (3, 0.2)):
        small = rng.random((max(2, height // cell), max(2, width // cell))) * 255
        up = Image.fromarray(small.astype(np.uint8)).resize((width, height), Image.BICUBIC)
        gray += weight * np.asarray(up, np.float32)
    gray = (gray - gray.min()) / max(1e-6, float(gray.max() - gray.min()))
    dark, light = rng.uniform(0, 110, 3), rng.uniform(145, 255, 3)
    rgb = dark + gray[..., None] * (light - dark)
    # A few stripes give straight edges and corners, which noise alone lacks.
    if rng.random() < 0.3:
        return np.clip(rgb, 0, 255).astype(np.uint8)
    stripes = np.sin(2 * math.pi * (np.arange(width)[None, :] * rng.uniform(-0.05, 0.05)
                                    + np.arange(height)[:, None] * rng.uniform(-0.05, 0.05)))
    rgb += 30.0 * (stripes[..., None] > 0.7) * rng.choice([-1.0, 1.0], 3)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _sprite(rng, radius):
    """Textured object sprite: (S, S, 3) colours and (S, S) bool shape, S = 2 * radius."""
    size = 2 * radius
    shape = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(shape)
    if rng.random() < 0.5:
        ry = radius * rng.uniform(0.55, 1.0)
        draw.ellipse([0, radius - ry, size - 1, radius + ry], fill=255)
    else:
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n)) if n > 4 else \
            np.arange(n) * 2 * math.pi / n + rng.uniform(0, 1)
        radii = radius * rng.uniform(0.55, 1.0, n) if n > 4 else np.full(n, radius * 0.98)
        draw.polygon([(radius + r * math.cos(a), radius + r * math.sin(a))
                      for a, r in zip(angles, radii)], fill=255)
    return texture(rng, size, size), np.asarray(shape) > 127


def _bounce(x, lo, hi):
    """Reflects positions x into [lo, hi] (a ball bouncing between two walls)."""
    span = np.maximum(np.asarray(hi, np.float64) - lo, 1e-6)
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


class _Scene:
    """Random scene description; `frame(t)` renders frame t."""

    def __init__(self, seed, size, num_objects, pan, speed):
        rng = np.random.default_rng(seed)
        self.height, self.width = size
        short = min(size)
        if isinstance(num_objects, int):
            num_objects = (num_objects, num_objects)
        k = int(rng.integers(num_objects[0], num_objects[1] + 1))
        pan_speed = pan * MAX_PAN * short
        self.pan = rng.uniform(-1, 1, 2) * pan_speed  # (dx, dy) per frame
        # The background is a larger texture the frame window slides over (bouncing at its edges).
        extra = int(0.25 * short) if pan_speed > 0 else 0
        self.background = texture(rng, self.height + extra, self.width + extra)
        self.objects = []
        for _ in range(k):
            radius = int(rng.uniform(*RADIUS) * short)
            colours, shape = _sprite(rng, max(radius, 3))
            direction = rng.uniform(0, 2 * math.pi)
            v = speed * MAX_SPEED * short * rng.uniform(0.3, 1.0)
            self.objects.append(dict(
                colours=colours, shape=shape, radius=max(radius, 3),
                centre=rng.uniform(0.2, 0.8, 2) * (self.width, self.height),
                velocity=v * np.array([math.cos(direction), math.sin(direction)]),
                angle=rng.uniform(0, 2 * math.pi),
                spin=math.radians(speed * MAX_SPIN_DEG * rng.uniform(-1, 1)),
                scale_amp=speed * rng.uniform(0.0, 0.15),
                scale_period=rng.uniform(30, 90),
            ))

    def frame(self, t):
        bh, bw = self.background.shape[:2]
        span = np.array([bw - self.width, bh - self.height], np.float64)
        ox, oy = _bounce(span / 2 + self.pan * t, 0.0, span)
        ox, oy = int(round(ox)), int(round(oy))
        image = self.background[oy:oy + self.height, ox:ox + self.width].copy()
        mask = np.zeros((self.height, self.width), np.uint8)
        for index, obj in enumerate(self.objects, start=1):
            self._draw(image, mask, index, obj, t)
        return image, mask

    def _draw(self, image, mask, index, obj, t):
        r = obj["radius"]
        scale = 1.0 + obj["scale_amp"] * math.sin(2 * math.pi * t / obj["scale_period"])
        reach = r * scale * math.sqrt(2)
        cx, cy = _bounce(obj["centre"] + obj["velocity"] * t, [reach * 0.5, reach * 0.5],
                         [self.width - reach * 0.5, self.height - reach * 0.5])
        angle = obj["angle"] + obj["spin"] * t
        x0, x1 = max(0, int(cx - reach)), min(self.width, int(cx + reach) + 1)
        y0, y1 = max(0, int(cy - reach)), min(self.height, int(cy + reach) + 1)
        if x0 >= x1 or y0 >= y1:
            return
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
        c, s = math.cos(angle) / scale, math.sin(angle) / scale
        # Frame pixel -> sprite pixel (inverse rotation and scale about the centre).
        u = np.floor(c * dx + s * dy + r).astype(np.int32)
        v = np.floor(-s * dx + c * dy + r).astype(np.int32)
        size = 2 * r
        inside = (u >= 0) & (u < size) & (v >= 0) & (v < size)
        u, v = np.clip(u, 0, size - 1), np.clip(v, 0, size - 1)
        inside &= obj["shape"][v, u]
        region = image[y0:y1, x0:x1]
        region[inside] = obj["colours"][v[inside], u[inside]]
        mask[y0:y1, x0:x1][inside] = index


def iter_video(seed, frames=FRAMES, size=(SIZE, SIZE), num_objects=(1, 3), pan=1.0, speed=1.0):
    """Streams (frame uint8 (H, W, 3), mask uint8 (H, W)) pairs of one synthetic video.

    Args:
      seed: int or sequence of ints; the video is a deterministic function of it.
      frames: number of frames T.
      size: (H, W) in pixels.
      num_objects: int or inclusive (min, max) range of the number of objects K.
      pan: background pan speed as a fraction of MAX_PAN (0 = static background).
      speed: object motion as a fraction of MAX_SPEED / MAX_SPIN_DEG (0 = static objects).
    """
    scene = _Scene(seed, tuple(size), num_objects, pan, speed)
    for t in range(frames):
        yield scene.frame(t)


def render_video(seed, frames=FRAMES, size=(SIZE, SIZE), **kwargs):
    """In-memory synthetic video: (frames uint8 (T, H, W, 3), masks uint8 (T, H, W)).

    Same arguments as `iter_video`.
    """
    pairs = list(iter_video(seed, frames, size, **kwargs))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def write_corpus(out_dir, num_videos, frames=FRAMES, size=(SIZE, SIZE), fps=12, seed=0, **kwargs):
    """Writes `num_videos` synthetic videos with per-frame masks; returns the video paths.

    Video i uses seed (seed, i), so a corpus extends deterministically. Existing complete videos
    (from an earlier call with the same arguments) are kept. Other kwargs go to `iter_video`.
    """
    out_dir = pathlib.Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    args = dict(num_videos=num_videos, frames=frames, size=list(size), fps=fps, seed=seed, **kwargs)
    atomic.write_text(out_dir / "corpus.json", json.dumps(args, indent=1) + "\n")
    paths = []
    for i in range(num_videos):
        name = f"vid_{i:04d}"
        path = out_dir / "videos" / f"{name}.mp4"
        mask_dir = out_dir / "masks" / name
        if not (path.exists() and (mask_dir / f"{frames - 1:05d}.png").exists()):
            mask_dir.mkdir(parents=True, exist_ok=True)
            with video_writer.VideoWriter(path, fps) as writer:
                for t, (image, mask) in enumerate(iter_video((seed, i), frames, size, **kwargs)):
                    writer.write(image)
                    label_io.write_mask(mask_dir / f"{t:05d}.png", mask, label_io.DAVIS_MASK)
        paths.append(path)
    return paths


def prepared_corpus(out_dir, num_videos=NUM_VIDEOS, frames=FRAMES, size=(SIZE, SIZE), fps=12,
                    seed=0, workers=1, **kwargs):
    """write_corpus + prepare: returns the shard folder out_dir/shards (for `clip_dataset`).

    Both steps keep finished work, so a second call with the same arguments returns at once.
    """
    out_dir = pathlib.Path(out_dir)
    write_corpus(out_dir, num_videos, frames=frames, size=size, fps=fps, seed=seed, **kwargs)
    prepare.prepare(out_dir / "videos", out_dir / "shards", fps=fps, height=size[0],
                    workers=workers, min_frames=min(frames, prepare.DEFAULT_MIN_FRAMES))
    return out_dir / "shards"
