"""tc_keras.propagation.propagate and label_maps: exact propagation of masks and keypoints through a
generated video with features that make nearest neighbours exact, the streaming buffers, the
presets and each protocol's resizing against hand-computed cases (the label step itself:
tests/test_label_step.py)."""

import dataclasses

import keras
import numpy as np
import pytest
from PIL import Image

from tc_keras.propagation import metrics
from tc_keras.propagation import context
from tc_keras.propagation import label_maps
from tc_keras.propagation import label_step
from tc_keras.propagation import propagate as P
from tc_keras.propagation import presets
from tc_keras.model.encoder import FEATURE_STRIDE
from tests.test_label_step import random_unit

CELL = FEATURE_STRIDE
PAPER, CRW, DEFAULT = (presets.PRESETS[k] for k in ("paper", "crw", "default"))


def test_model_size_and_presets():
    # crw: native frame, the grid the convolutions give (ceil(854 / 8) = 107); default rounds the
    # frame to a multiple of 8 first (856 px, also 107 cells).
    assert presets.model_size(480, 854, CRW) == (480, 854)
    assert presets.feature_size(480, 854, CRW) == (60, 107)
    assert presets.model_size(480, 854, DEFAULT) == (480, 856)
    assert presets.feature_size(480, 854, DEFAULT) == (60, 107)
    assert presets.feature_size(100, 130, CRW) == (13, 17)
    assert presets.feature_size(100, 130, DEFAULT) == (12, 16)  # 96 x 128 px (12.5 rounds to 12)
    assert presets.model_size(480, 854, PAPER) == (320, 320)
    assert presets.feature_size(480, 854, PAPER) == (40, 40)
    assert presets.model_size(240, 320, dataclasses.replace(CRW, size=120)) == (120, 160)
    assert (PAPER.context, PAPER.topk, PAPER.joint_topk, PAPER.minmax) == (7, 5, False, True)
    assert (PAPER.antialias, PAPER.label_resize, PAPER.output_resize, PAPER.predict_first,
            PAPER.min_label_pixels) == (False, "nearest_bilinear", "bilinear_nearest", True, 12)
    assert (CRW.context, CRW.radius, CRW.topk, CRW.joint_topk) == (20, 12.0, 10, True)
    assert (CRW.native_grid, CRW.antialias, CRW.strict_radius, CRW.label_resize) == (
        True, False, True, "bilinear")
    with pytest.raises(ValueError, match="topk"):
        presets.PropagationConfig(topk=0)
    with pytest.raises(ValueError, match="square"):
        presets.PropagationConfig(square=True)
    with pytest.raises(ValueError, match="label_resize must be one of"):
        presets.PropagationConfig(label_resize="cubic")
    with pytest.raises(ValueError, match="output_resize must be one of"):
        presets.PropagationConfig(output_resize="nearest")
    with pytest.raises(ValueError, match="min_label_pixels"):
        presets.PropagationConfig(min_label_pixels=-1)


def test_native_grid_of_a_davis_frame_with_a_random_resnet18():
    """854x480 frames go to the encoder as they are and give 107x60 features (ceil(n / 8) per
    side: stride-2 stages round up); the first frame's labels land on that grid."""
    from tc_keras.export import encoder_io  # noqa: PLC0415

    frame = np.random.default_rng(0).integers(0, 256, (480, 854, 3), np.uint8)
    seen = []
    embed = encoder_io.load_encoder("random", 18)
    prop = P.Propagator(lambda x: seen.append(x.shape) or embed(x), CRW)
    assert prop.feature_size(480, 854) == (60, 107)
    assert tuple(prop._features([frame])[0].shape) == (60 * 107, 512)
    assert seen == [(1, 480, 854, 3)]  # not resized
    mask = np.zeros((480, 854), np.uint8)
    mask[100:200, 300:500] = 3
    ids, labels = label_maps.mask_labels(mask, CRW)
    assert ids.tolist() == [0, 3] and labels.shape == (60, 107, 2)
    with pytest.raises(ValueError, match="7x854 .HxW.; this encoder needs at least 8 px"):
        embed(np.zeros((1, 7, 854, 3), np.uint8))


def test_frames_resized_without_antialiasing_hand_computed():
    """The reference protocol resizes frames with plain bilinear interpolation (half-pixel
    centres, no low-pass filter). 16x24 -> 8x8: rows 2i and 2i+1 averaged; columns sample
    (j + 0.5) * 3 - 0.5 = 3j + 1 exactly."""
    frame = np.random.default_rng(1).integers(0, 256, (16, 24, 3)).astype(np.uint8)
    want = np.round((frame[0::2, 1::3].astype(np.float64) + frame[1::2, 1::3]) / 2)
    got = np.asarray(P.resize_frame(frame, 8, 8, antialias=False))
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(np.asarray(P.resize_frame(frame, 8, 8)), want)  # antialiased
    seen = []
    config = dataclasses.replace(PAPER, size=8)
    P.Propagator(lambda x: seen.append(np.asarray(x)) or np.ones((1, 1, 1, 4)), config)._features(
        [frame])
    np.testing.assert_array_equal(seen[0][0], want)


def test_bilinear_label_downsampling_without_antialiasing_hand_computed():
    """crw: one-hot maps shrink to the grid as OpenCV's default resize does: output cell j
    samples (j + 0.5) * W / w - 0.5, between two pixels, the borders clamped."""
    mask = np.zeros((16, 16), np.uint8)
    mask[3:5, 4:12] = 5  # rows 3-4, columns 4-11
    ids, labels = label_maps.mask_labels(mask, CRW)
    # Cell (0, 0) samples rows 3, 4 and columns 3, 4: half object. Cell (0, 1): columns 11, 12.
    np.testing.assert_allclose(labels[..., 1], [[0.5, 0.5], [0.0, 0.0]], atol=1e-6)
    _, area = label_maps.mask_labels(mask, DEFAULT)
    np.testing.assert_allclose(area[..., 1], [[0.125, 0.125], [0.0, 0.0]], atol=1e-6)
    # 20 px wide -> 3 cells (ceil): columns sample 2.833, 9.5, 16.167 (rows: 3.5 of 8 rows).
    mask = np.zeros((8, 20), np.uint8)
    mask[:, 3] = mask[:, 16] = 1
    ids, labels = label_maps.mask_labels(mask, CRW)
    np.testing.assert_allclose(labels[0, :, 1], [5 / 6, 0.0, 5 / 6], atol=1e-6)
    np.testing.assert_allclose(labels.sum(-1), 1.0, atol=1e-6)


def test_nearest_resizes_as_pil_and_opencv():
    # PIL (the reference's label loading): half-pixel centres, floor((i + 0.5) * src / dst).
    assert label_maps.nearest_index(5, 16, centred=True).tolist() == [
        0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    # OpenCV's INTER_NEAREST (the reference's output conversion): floor(i * src / dst).
    assert label_maps.nearest_index(16, 5, centred=False).tolist() == [0, 3, 6, 9, 12]
    assert label_maps.nearest_index(320, 854, centred=False)[:4].tolist() == [0, 0, 0, 1]
    ids = np.random.default_rng(2).integers(0, 20, (27, 41)).astype(np.uint8)
    for h, w in ((320, 320), (13, 17), (80, 41)):
        pil = np.asarray(Image.fromarray(ids, mode="L").resize((w, h), Image.NEAREST))
        np.testing.assert_array_equal(label_maps.resize_nearest(ids, h, w, centred=True), pil)


def test_reference_labels_nearest_then_one_hot_then_bilinear():
    """paper: the 5x5 id map is resized to the 16x16 input by nearest neighbour (PIL), one-hot,
    then bilinear to 2x2 cells: cell (i, j) samples 16-px pixels 8i + 3.5 -> source rows and
    columns 1 and 3 (see test_nearest_resizes_as_pil_and_opencv)."""
    config = dataclasses.replace(PAPER, size=16, min_label_pixels=0)
    mask = np.zeros((5, 5), np.uint8)
    mask[1, 1], mask[1, 3], mask[3, 3], mask[0, 0] = 4, 6, 8, 9
    ids, labels = label_maps.mask_labels(mask, config)
    assert ids.tolist() == [0, 4, 6, 8, 9]
    want = np.zeros((2, 2, 5))
    want[0, 0, 1] = want[0, 1, 2] = want[1, 1, 3] = want[1, 0, 0] = 1.0
    np.testing.assert_allclose(labels, want, atol=1e-6)
    # Area averaging from the native 5x5 map (the default's label_resize) is something else.
    area = label_maps.mask_labels(mask, dataclasses.replace(config, label_resize="area"))[1]
    assert not np.allclose(area, want, atol=0.1)


def test_reference_keeps_objects_of_at_least_12_pixels():
    """More than 10 pixels after an object's first one, counted on the map that is one-hot
    encoded (the 16x16 input here: a 5x5 pixel becomes 3x3, 3x4 or 4x4 pixels). A dropped
    object's pixels get no label at all."""
    config = dataclasses.replace(PAPER, size=16)
    mask = np.zeros((5, 5), np.uint8)
    mask[1, 1], mask[2, 1], mask[2, 2] = 4, 6, 8  # 9, 12 and 16 px at 16x16
    ids, labels = label_maps.mask_labels(mask, config)
    assert ids.tolist() == [0, 6, 8]
    np.testing.assert_allclose(labels[0, 0], 0.0)  # samples (1, 1) only: object 4, dropped
    # Counted at the frame size when labels are resized from it: 11 px dropped, 12 kept.
    mask = np.zeros((16, 16), np.uint8)
    mask[0, :11], mask[5, :12] = 1, 2
    ids, _ = label_maps.mask_labels(mask, dataclasses.replace(CRW, min_label_pixels=12))
    assert ids.tolist() == [0, 2]
    with pytest.raises(ValueError, match="no object of at least 13 px at 16x16 .* id 2: 12 px"):
        label_maps.mask_labels(mask, dataclasses.replace(CRW, min_label_pixels=13))


def test_reference_output_argmax_at_input_size_then_nearest():
    """paper: soft labels upsampled bilinearly to the 16x16 input, argmaxed there, then resized
    to the 5x7 frame by OpenCV's nearest neighbour (rows 0, 3, 6, 9, 12; columns 0, 2, 4, 6, 9,
    11, 13)."""
    config = dataclasses.replace(PAPER, size=16)
    soft = np.zeros((2, 2, 2), np.float32)
    soft[..., 0] = 0.5
    soft[0, 0, 1] = 1.0
    # Bilinear 2 -> 16: pixel i samples (i + 0.5) / 8 - 0.5 cells: weight of cell 0 is
    # clip(1.5 - (i + 0.5) / 8, 0, 1); channel 1 wins where the product of two weights > 0.5.
    weight = np.clip(1.5 - (np.arange(16) + 0.5) / 8, 0, 1)
    at_input = (np.outer(weight, weight) > 0.5).astype(np.int32)
    want = at_input[[0, 3, 6, 9, 12]][:, [0, 2, 4, 6, 9, 11, 13]]
    np.testing.assert_array_equal(label_maps.label_map(soft, (5, 7), config), want)
    direct = label_maps.label_map(soft, (5, 7), dataclasses.replace(config,
                                                                    output_resize="bilinear"))
    assert not np.array_equal(direct, want)


@pytest.mark.parametrize("graph", [True, False])
def test_reference_start_predicts_frame_0_from_itself(graph):
    """Per-frame top-1, temperature 1, two positions with orthogonal features: a position takes
    its own label with weight p = e / (e + 1) from each context frame. With predict_first, frame
    0 enters the ring with labels p * given, so frame 1 (= frame 0) gets the mean of p * given
    (first frame) and p * p * given (ring): p (1 + p) / 2 * given; without it, p * given."""
    feats = np.eye(2, dtype=np.float32)[None, None]  # (1, 1, 2, 2): cells e0, e1
    frames = [np.zeros((8, 16, 3), np.uint8)] * 2
    labels0 = np.eye(2, dtype=np.float32)[None]  # (1, 2, 2): cell 0 class 0, cell 1 class 1
    p = np.e / (np.e + 1)
    for first, factor in ((True, p * (1 + p) / 2), (False, p)):
        config = dataclasses.replace(PAPER, size=None, square=False, context=1, topk=1,
                                     temperature=1.0, minmax=False, predict_first=first)
        prop = P.Propagator(lambda x: feats, config, context.KERAS if graph else context.DENSE)
        out = [x for _, x in prop.run(frames, labels0)]
        np.testing.assert_array_equal(out[0], labels0)  # frame 0: the labels given
        np.testing.assert_allclose(out[1], factor * labels0, atol=1e-6)


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


def test_default_preset_is_the_follow_up_protocol_with_its_own_conventions():
    assert DEFAULT == presets.PropagationConfig()
    conventions = dict(native_grid=False, antialias=True, strict_radius=False,
                       label_resize="area")
    assert DEFAULT == dataclasses.replace(CRW, **conventions)


@pytest.mark.parametrize("steps", [context.KERAS, context.DENSE,
                                   context.LabelSteps("tiles", label_step.vote,
                                                      label_step.vote_local)],
                         ids=["windows", "dense", "tiles"])
def test_strict_radius_equals_a_radius_just_below(steps):
    """Cell distances are square roots of integers: keys strictly within 2 cells are those within
    1.99. crw (strict) gives what the default (<=) gives with radius 1.99, and differs from the
    default at 2, where the keys at distance exactly 2 count, on every path (the compiled key
    windows, dense `vote` with the radius mask, `vote_local`'s tiles)."""
    rng = np.random.default_rng(4)
    feats = random_unit(rng, 5, 6, 7, 8).astype(np.float32)  # (T, h, w, C) per frame
    frames = [np.full((6 * CELL, 7 * CELL, 3), t, np.uint8) for t in range(len(feats))]
    labels0 = rng.uniform(size=(6, 7, 3)).astype(np.float32)

    def embed(x):  # (B, H, W, 3) frames whose value is their index -> their features
        return np.stack([feats[int(frame[0, 0, 0])] for frame in np.asarray(x)])

    def run(config):
        prop = P.Propagator(embed, config, steps)
        return np.stack([x for _, x in prop.run(frames, labels0)])

    base = dataclasses.replace(CRW, native_grid=False, context=2, topk=4)
    strict = run(dataclasses.replace(base, radius=2.0))
    np.testing.assert_allclose(strict, run(dataclasses.replace(
        base, radius=1.99, strict_radius=False)), atol=1e-6)
    assert not np.allclose(strict, run(dataclasses.replace(base, radius=2.0,
                                                           strict_radius=False)), atol=1e-3)


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
