"""tc_keras.propagation.propagate: exact propagation of masks and keypoints through a generated video with
features that make nearest neighbours exact, the streaming buffers and the presets (the label step
itself: tests/test_label_step.py)."""

import dataclasses

import keras
import numpy as np
import pytest

from tc_keras.propagation import metrics
from tc_keras.propagation import context
from tc_keras.propagation import label_step
from tc_keras.propagation import propagate as P
from tc_keras.propagation import presets
from tc_keras.model.encoder import FEATURE_STRIDE
from tests.test_label_step import random_unit

CELL = FEATURE_STRIDE


def test_model_size_and_presets():
    assert presets.model_size(480, 854, presets.PRESETS["crw"]) == (480, 856)
    assert presets.model_size(480, 854, presets.PRESETS["paper"]) == (320, 320)
    assert presets.model_size(240, 320, dataclasses.replace(presets.PRESETS["crw"], size=120)) == (120, 160)
    paper = presets.PRESETS["paper"]
    assert (paper.context, paper.topk, paper.joint_topk, paper.minmax) == (7, 5, False, True)
    crw = presets.PRESETS["crw"]
    assert (crw.context, crw.radius, crw.topk, crw.joint_topk) == (20, 12.0, 10, True)
    with pytest.raises(ValueError, match="topk"):
        presets.PropagationConfig(topk=0)
    with pytest.raises(ValueError, match="square"):
        presets.PropagationConfig(square=True)


def test_keypoint_heatmaps_round_trip():
    joints = np.array([[20.0, 12.0], [44.0, 36.0], [np.nan, np.nan]])
    maps = P.keypoint_heatmaps(joints, (48, 64), (6, 8))
    assert maps.shape == (6, 8, 3)
    assert not maps[..., 2].any()
    back = P.decode_keypoints(maps[..., :2], (48, 64))
    # Joints at cell centres: the top-3 weighted mean is within a fraction of a cell.
    np.testing.assert_allclose(back, joints[:2], atol=0.3 * CELL)


# ---------------------------------------------------------------------- exact synthetic video

# Cell codes: 0 = background; 1..9 = the 3x3 cells of the object. Each code has its own colour.
_PALETTE = np.array([[30, 30, 30], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0],
                     [250, 0, 250], [0, 250, 250], [250, 130, 0], [130, 0, 250], [250, 250, 250]],
                    np.uint8)


def synthetic_video(frames=5, size=64, step=(0, 1)):
    """A 3x3-cell object with one colour per cell, moving `step` cells per frame over a plain
    background; returns uint8 frames (T, H, W, 3) and masks (T, H, W) (1 = object)."""
    video = np.empty((frames, size, size, 3), np.uint8)
    masks = np.zeros((frames, size, size), np.uint8)
    for t in range(frames):
        codes = np.zeros((size // CELL, size // CELL), np.int64)
        y, x = 1 + t * step[0], 1 + t * step[1]
        codes[y:y + 3, x:x + 3] = np.arange(1, 10).reshape(3, 3)
        pixels = np.kron(codes, np.ones((CELL, CELL), np.int64))
        video[t] = _PALETTE[pixels]
        masks[t] = pixels > 0
    return video, masks


def ideal(mask):
    """What a perfect propagation gives: the true mask at cell resolution, bilinearly upsampled
    and thresholded (object corners are rounded off by the upsampling)."""
    h, w = mask.shape
    cells = mask.reshape(h // CELL, CELL, w // CELL, CELL).mean((1, 3)).astype(np.float32)
    up = keras.ops.image.resize(cells[None, ..., None], (h, w), interpolation="bilinear")
    return (np.asarray(up)[0, ..., 0] > 0.5).astype(mask.dtype)


def code_embed(frames):
    """Cell colour -> one-hot code: nearest neighbours are exact on `synthetic_video`."""
    frames = np.asarray(frames, np.float32)
    b, h, w, _ = frames.shape
    # (B, H, W, 3) -> (B, h, 8, w, 8, 3) -> cell means (B, h, w, 3)
    cells = frames.reshape(b, h // CELL, CELL, w // CELL, CELL, 3).mean((2, 4))
    d = np.linalg.norm(cells[..., None, :] - _PALETTE.astype(np.float32), axis=-1)
    return np.eye(len(_PALETTE), dtype=np.float32)[np.argmin(d, -1)]


@pytest.mark.parametrize("preset", ["default", "paper_native", "crw_small_radius"])
def test_mask_propagation_is_exact_on_translating_object(preset):
    video, masks = synthetic_video(step=(1, 1) if preset == "crw_small_radius" else (0, 1))
    config = {
        "default": presets.PRESETS["default"],
        # The paper's matching rule at native size (the square 320 resize would blur the cells).
        "paper_native": dataclasses.replace(presets.PRESETS["paper"], size=None, square=False),
        # A radius just large enough for the diagonal motion of one cell per frame.
        "crw_small_radius": dataclasses.replace(presets.PRESETS["crw"], radius=1.5, context=3),
    }[preset]
    out = list(P.propagate_mask(iter(video), masks[0], code_embed, config))
    assert len(out) == len(video)
    for t, (frame, pred) in enumerate(out):
        assert frame is video[t] or np.array_equal(frame, video[t])
        want = masks[t] if t == 0 else ideal(masks[t])
        np.testing.assert_array_equal(pred, want, err_msg=f"frame {t}")
        assert metrics.iou(pred == 1, masks[t] == 1) > 0.95


def test_mask_propagation_keeps_object_ids_and_chunking_is_invisible(monkeypatch):
    video, masks = synthetic_video(frames=4)
    first = masks[0].astype(np.uint8) * 7  # object id 7
    whole = [m for _, m in P.propagate_mask(video, first, code_embed)]
    monkeypatch.setattr(context, "MAX_LOGITS", 50)  # forces many query chunks
    chunked = [m for _, m in P.propagate_mask(video, first, code_embed)]
    for t in range(4):
        assert set(np.unique(whole[t])) == {0, 7}
        np.testing.assert_array_equal(whole[t], chunked[t])
        want = masks[t] if t == 0 else ideal(masks[t])
        np.testing.assert_array_equal(whole[t] == 7, want == 1)


@pytest.mark.parametrize("radius", [1.0, None])
def test_local_and_dense_paths_propagate_the_same(radius):
    """Random features over a few frames: `vote_local` and dense `vote` give the same labels,
    traced into the step or run on NumPy arrays (`host`, as a TFLite interpreter); no radius takes
    the dense step."""
    rng = np.random.default_rng(4)
    feats = random_unit(rng, 6, 5, 7, 8).astype(np.float32)  # (T, h, w, C) per frame
    frames = [np.full((5 * CELL, 7 * CELL, 3), t, np.uint8) for t in range(len(feats))]
    calls = []

    def embed(x):  # frame t (all pixels t) -> feats[t], for each frame of the batch
        return feats[np.asarray(x)[:, 0, 0, 0].astype(int)]

    def counted(*args, **kwargs):
        calls.append(1)
        return np.asarray(label_step.vote_local(*args, **kwargs))

    def on_arrays(*args, **kwargs):
        assert all(a is None or isinstance(a, np.ndarray) for a in args)
        return np.asarray(label_step.vote(*args, **kwargs))

    config = dataclasses.replace(presets.PRESETS["default"], radius=radius, context=3, topk=4)
    labels0 = rng.uniform(size=(5, 7, 2)).astype(np.float32)

    def run(steps, embed=embed):
        return [x for _, x in P.Propagator(embed, config, steps).run(frames, labels0)]

    dense = run(context.DENSE)
    host = run(context.LabelSteps("host", on_arrays, counted, host=True))
    assert bool(calls) == (radius is not None)
    runs = {"keras": run(context.KERAS), "host": host,
            "host dense": run(context.LabelSteps("host dense", on_arrays, host=True)),
            # An embed returning float64 arrays (any callable returning arrays is allowed).
            "float64 embed": run(context.KERAS, lambda x: embed(x).astype(np.float64))}
    for name, got in runs.items():
        for t, (a, b) in enumerate(zip(got, dense)):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=f"{name}, frame {t}")


def test_bfloat16_affinity_is_opt_in():
    """`KERAS_BFLOAT16` keeps its ring in bfloat16 and propagates the exact synthetic video
    exactly (codes one-hot: exact in bfloat16); the default keeps float32."""
    video, masks = synthetic_video(frames=4)
    assert context.KERAS.affinity is None
    for steps, dtype in ((context.KERAS_BFLOAT16, "bfloat16"), (context.KERAS, "float32")):
        prop = P.Propagator(code_embed, presets.PRESETS["default"], steps)
        out = list(P.propagate_mask(iter(video), masks[0], code_embed, prop.config, steps))
        for t, (_, pred) in enumerate(out):
            np.testing.assert_array_equal(pred, masks[t] if t == 0 else ideal(masks[t]))
        h, w = prop.feature_size(64, 64)
        next(iter(prop.run(iter(video), np.ones((h, w, 2), np.float32))))
        assert prop.context.feats.dtype.name == dtype


def test_label_steps_are_chosen_explicitly():
    video, masks = synthetic_video(frames=2)
    with pytest.raises(TypeError, match="steps must be a LabelSteps"):
        list(P.propagate_mask(video, masks[0], code_embed, presets.PRESETS["default"],
                              label_step.vote))


def test_identity_baseline_copies_the_first_mask():
    video, masks = synthetic_video(frames=3)
    out = [m for _, m in P.propagate_mask(video, masks[0], None)]
    for m in out:
        np.testing.assert_array_equal(m, masks[0])


def test_keypoint_propagation_follows_the_object():
    video, _ = synthetic_video(frames=5)
    # Joints at the centres of object cells (1, 1) and (3, 2) (cell coordinates y, x).
    joints0 = np.array([[1.5 * CELL, 1.5 * CELL], [2.5 * CELL, 3.5 * CELL], [np.nan, np.nan]])
    out = [j for _, j in P.propagate_keypoints(video, joints0, code_embed)]
    for t, joints in enumerate(out):
        want = joints0 + [t * CELL, 0]
        np.testing.assert_allclose(joints[:2], want[:2], atol=0.25 * CELL)
        assert np.isnan(joints[2]).all()


def test_bad_inputs_raise_clear_errors():
    video, masks = synthetic_video(frames=2)
    with pytest.raises(ValueError, match="no object"):
        list(P.propagate_mask(video, np.zeros_like(masks[0]), code_embed))
    with pytest.raises(ValueError, match="mask is 32x64"):
        list(P.propagate_mask(video, masks[0][:, :32], code_embed))
    with pytest.raises(ValueError, match="no frames"):
        list(P.propagate_mask(iter([]), masks[0], code_embed))
    mixed = [video[0], video[1][:32]]
    with pytest.raises(ValueError, match="frame 1"):
        list(P.propagate_mask(mixed, masks[0], code_embed))


@pytest.mark.parametrize("steps", ["KERAS", "DENSE"])
def test_context_buffers_stay_bounded(steps):
    """Only first + `context` frames are kept: the buffers never grow with the video."""
    video, masks = synthetic_video(frames=5)
    onehot = np.stack([masks[0] == 0, masks[0] == 1], -1).astype(np.float32)

    def held(context_frames, frames):
        config = dataclasses.replace(presets.PRESETS["default"], context=context_frames)
        prop = P.Propagator(code_embed, config, getattr(context, steps))
        h, w = prop.feature_size(64, 64)
        labels0 = onehot.reshape(h, CELL, w, CELL, 2).mean((1, 3))
        sizes = {prop.context.nbytes for _ in prop.run(iter(video[:frames]), labels0)}
        assert len(sizes) == 1, sizes  # the same at every frame
        return sizes.pop(), h * w

    two, n = held(2, 5)
    assert held(2, 3)[0] == two < held(4, 5)[0]  # grows with the context, not the video
    if steps == "DENSE":  # float32 features (C = the palette's size), labels (K = 2), 1 + 2 frames
        assert two == 4 * (1 + 2) * n * (len(_PALETTE) + 2)


def test_default_preset_is_the_follow_up_protocol():
    assert presets.PRESETS["default"] == presets.PRESETS["crw"] == presets.PropagationConfig()


def test_masks_on_a_dev_sequence_match_the_dense_reference(shared_data):
    """Real frames and a random ResNet-18: the compiled local path (graph context, `vote_local`)
    gives the masks of the dense `vote` with the radius mask (`context.DENSE`), up to a handful of
    pixels where float summation order may flip a near tie (at most 0.1%), and the same J&F."""
    from tc_keras.export import encoder_io
    from tc_keras.data import label_io
    from tc_keras.data import video

    root = shared_data / "davis2016-dev"
    frames = list(video.iter_frames(root / "JPEGImages/480p/blackswan"))[:8]
    gt = [label_io.read_mask(root / f"Annotations/480p/blackswan/{t:05d}.png")[0]
          for t in range(8)]
    config = dataclasses.replace(presets.PRESETS["default"], size=120, context=5)
    embed = encoder_io.load_encoder("random", 18)
    fast = [m for _, m in P.propagate_mask(frames, gt[0], embed, config)]
    ref = [m for _, m in P.propagate_mask(frames, gt[0], embed, config, context.DENSE)]
    differing = sum(int((a != b).sum()) for a, b in zip(fast, ref))
    assert differing <= 1e-3 * sum(m.size for m in ref), differing
    scores = [metrics.davis_summary({"s": metrics.evaluate_frames(gt, m, [1])})["J&F-Mean"]
              for m in (fast, ref)]
    assert abs(scores[0] - scores[1]) <= 1e-3, scores
