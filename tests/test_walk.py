"""The contrastive random walk: transitions, palindrome loss, model, clips, init from a release,
and its encoder in the tools (propagation, export)."""

import io

import numpy as np
import pytest
import tensorflow as tf
import keras
from PIL import Image

from tc_keras import ops as tops
from tc_keras.data import label_io, records, synthetic, walk_clips
from tc_keras.export import encoder_io, runtimes
from tc_keras.export.encoder_io import save_encoder
from tc_keras.model import walk as twalk
from tc_keras.model.contrastive_walk import ContrastiveWalk
from tc_keras.model.encoder import ResNetEncoder
from tc_keras.train import checkpoints
from tests import broken_files
from tests import release_reference as ref
from tests.pth_writer import write_pth
from tests.test_export import tflite_ops
from tests.test_model import replica_pair, variables_without_gradient
from tests.tool_run import run_tool

# 32 px frames cut into 16 px patches every 8 px: 3x3 = 9 nodes per frame, 2x2 cells per patch.
SMALL = dict(crop_size=32, node_patch=16, node_stride=8, clip_len=3)


def small_model(optimizer=None, **kw):
    model = ContrastiveWalk(**dict(SMALL, **kw))
    model.build_from_crop()
    model.compile(optimizer=optimizer)
    return model


def random_patches(seed, batch=2, clip_len=3, nodes=9, size=16):
    """Smooth random textures as node patches (B, T, N, P, P, 3)."""
    noise = np.random.default_rng(seed).normal(size=(batch * clip_len * nodes, 4, 4, 3))
    patches = np.asarray(tf.image.resize(noise.astype(np.float32), (size, size), "bicubic"))
    return patches.reshape(batch, clip_len, nodes, size, size, 3)


def unit_nodes(seed, shape):
    x = np.random.default_rng(seed).normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- transitions
@pytest.mark.parametrize("training", [False, True])
def test_transitions_are_row_stochastic(training):
    layer = twalk.WalkTransitions(temperature=0.05, edge_dropout=0.3, seed=1)
    nodes = unit_nodes(0, (2, 4, 9, 8))
    forward, backward = (np.asarray(m) for m in layer(nodes, training=training))
    assert forward.shape == backward.shape == (2, 3, 9, 9)
    for m in (forward, backward):
        assert np.all(m >= 0)
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
    if not training:  # softmax(sim / T) over the next frame's nodes, and back
        sim = np.einsum("btnd,btmd->btnm", nodes[:, :-1], nodes[:, 1:]).astype(np.float64) / 0.05
        want = np.exp(sim - sim.max(-1, keepdims=True))
        np.testing.assert_allclose(forward, want / want.sum(-1, keepdims=True), atol=1e-5)
        back = np.exp(np.swapaxes(sim, -1, -2) - np.swapaxes(sim, -1, -2).max(-1, keepdims=True))
        np.testing.assert_allclose(backward, back / back.sum(-1, keepdims=True), atol=1e-5)
    else:  # dropped edges carry nothing; a backward matrix also lost its forward's edges
        dropped = forward < 1e-30
        assert 0.15 < dropped.mean() < 0.45
        dropped_back = backward < 1e-30
        assert np.all(dropped_back[np.swapaxes(dropped, -1, -2)])
        assert 0.4 < dropped_back.mean() < 0.6  # 1 - 0.7**2 = 0.51
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert clone.get_config() == layer.get_config()


def _walk_loss_numpy(forward, backward):
    """Float64 reference: the product chain in the reference's order, mean cross-entropy of
    log(p + 1e-20) as logits, walks turning at frames 2 .. T-1, their mean."""
    forward, backward = np.asarray(forward, np.float64), np.asarray(backward, np.float64)
    steps = forward.shape[1]
    losses = []
    for k in range(2, steps + 1):
        chain = [forward[:, i] for i in range(k)] + [backward[:, i] for i in reversed(range(k))]
        walk = chain[0]
        for m in chain[1:]:
            walk = walk @ m
        logits = np.log(walk + 1e-20)
        logits -= np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-np.mean(np.diagonal(logits, axis1=-2, axis2=-1)))
    return np.mean(losses), losses


def test_palindrome_loss_matches_numpy_and_skips_the_one_step_walk():
    layer = twalk.WalkTransitions(temperature=0.2, edge_dropout=0.0)
    forward, backward = layer(unit_nodes(1, (2, 5, 6, 4)))
    out = twalk.palindrome_losses(forward, backward)
    want, per_walk = _walk_loss_numpy(forward, backward)
    assert sorted(out) == sorted(twalk.walk_terms(5))  # walks turning at frames 2, 3, 4
    assert float(out["loss"]) == pytest.approx(want, rel=1e-5)
    for k, value in zip((2, 3, 4), per_walk):
        assert float(out[f"xent_{k}"]) == pytest.approx(value, rel=1e-5)
    with pytest.raises(ValueError, match="at least 3 frames"):
        twalk.palindrome_losses(forward[:, :1], backward[:, :1])


def test_identical_frames_with_distinct_nodes_walk_home():
    # Orthonormal nodes, the same in every frame: each transition is nearly the identity.
    nodes = np.tile(np.eye(9, 16, dtype=np.float32)[None, None], (2, 4, 1, 1))
    out = twalk.palindrome_losses(*twalk.WalkTransitions(edge_dropout=0.0)(nodes))
    assert float(out["loss"]) < 1e-6 and float(out["acc"]) == 1.0  # the minimum is 0
    shuffled = nodes.copy()
    shuffled[:, 1] = shuffled[:, 1, ::-1]  # frame 1's nodes in another order
    out = twalk.palindrome_losses(*twalk.WalkTransitions(edge_dropout=0.0)(shuffled))
    assert float(out["acc"]) == 1.0  # a permutation is followed back as well
    # The model (BatchNorm on batch statistics, as in training; chance is log 9 = 2.2): a clip
    # whose frames are identical and whose patches are distinct walks home; unrelated frames not.
    model = small_model(temperature=0.01, edge_dropout=0.0)
    patches = np.repeat(random_patches(2, clip_len=1), 3, axis=1)  # (2, 3, 9, 16, 16, 3)
    losses = model.compute_losses(None, model({"patches": patches}, training=True))
    assert float(losses["acc"]) == 1.0 and float(losses["loss"]) < 0.01
    other = model.compute_losses(None, model({"patches": random_patches(3)}, training=True))
    assert float(other["loss"]) > 1.0 and float(other["acc"]) < 0.5


# ----------------------------------------------------------------------------- the model
def test_outputs_config_round_trip_and_bad_arguments(tmp_path):
    model = small_model(head_dim=32, res5=False)
    batch = {"patches": random_patches(4)}
    out = model(batch)
    assert out["nodes"].shape == (2, 3, 9, 32)
    assert out["forward"].shape == out["backward"].shape == (2, 2, 9, 9)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["nodes"]), axis=-1), 1, atol=1e-5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(clone, ContrastiveWalk) and clone.get_config() == model.get_config()
    model.save(tmp_path / "walk.keras")
    loaded = keras.saving.load_model(tmp_path / "walk.keras")
    np.testing.assert_allclose(np.asarray(loaded(batch)["forward"]),
                               np.asarray(out["forward"]), atol=1e-5)
    cells = small_model(nodes="cells", crop_size=24)
    assert cells({"frames": np.zeros((1, 3, 24, 24, 3), np.float32)})["forward"].shape == (
        1, 2, 9, 9)
    for kwargs, name in ((dict(clip_len=2), "clip_len"), (dict(nodes="pixels"), "nodes"),
                         (dict(crop_size=36), "crop_size"), (dict(node_patch=12), "node_patch"),
                         (dict(head_dim=0), "head_dim"), (dict(temperature=0.0), "temperature")):
        with pytest.raises(ValueError, match=name):
            ContrastiveWalk(**dict(SMALL, **kwargs))


def test_encoder_is_the_tools_and_every_variable_gets_a_gradient():
    model = small_model()
    config = model.encoder.get_config()
    assert (config["out_channels"], config["padding"], config["normalize"]) == (
        None, "reflect", True)
    frames = np.random.default_rng(5).normal(size=(1, 32, 32, 3)).astype(np.float32)
    features = np.asarray(model.encoder(frames))
    assert features.shape == (1, 4, 4, 256)  # res4 of ResNet-18: stride 8, 256 channels
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1, atol=1e-5)
    assert not variables_without_gradient(model, {"patches": random_patches(6)})
    assert any("encoder" in v.path for v in model.trainable_variables)


def test_frozen_encoder_trains_only_what_follows_it():
    model = small_model(freeze_encoder=True)
    ds = tf.data.Dataset.from_tensors({"patches": random_patches(7)})
    enc0 = [np.array(w) for w in model.encoder.trainable_weights]
    head0 = np.array(model.head.kernel)
    model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
    assert all(np.array_equal(a, np.array(b))
               for a, b in zip(enc0, model.encoder.trainable_weights))
    assert not np.array_equal(head0, np.array(model.head.kernel))


def test_mini_run_overfits_one_batch():
    model = small_model(keras.optimizers.Adam(1e-3))
    ds = tf.data.Dataset.from_tensors({"patches": random_patches(8)}).repeat()
    history = model.fit(ds, epochs=4, steps_per_epoch=3, verbose=0).history
    first, last = history["loss"][0], history["loss"][-1]
    assert first > 1.5 and last < 0.6 * first, history["loss"]
    assert history["acc"][-1] > history["acc"][0]


def test_two_replica_mirrored_step_equals_single_device_step(two_cpu_strategy):
    # No edge dropout (the replicas' patterns, drawn per replica batch, are not one device's);
    # SGD shows a wrongly scaled gradient.
    kw = dict(sync_batchnorm=True, edge_dropout=0.0, res5=False)
    strategy = two_cpu_strategy
    single, mirrored = replica_pair(small_model, lambda: keras.optimizers.SGD(0.5), strategy, **kw)
    init = single.get_weights()
    batch = {"patches": random_patches(9, batch=4)}
    logs_1 = single.fit(tf.data.Dataset.from_tensors(batch), verbose=0).history
    ds = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).unbatch().batch(4))
    logs_2 = mirrored.fit(ds, verbose=0).history
    for key in ("loss", "grad_norm"):
        assert logs_2[key][-1] == pytest.approx(logs_1[key][-1], rel=1e-3), key
    for a, b, c in zip(single.get_weights(), mirrored.get_weights(), init):
        scale = np.linalg.norm(a - c)
        assert np.linalg.norm((b - c) - (a - c)) <= 1e-2 * scale + 1e-6


# ----------------------------------------------------------------------------- clips
def _jpeg(frame):
    """Nearly lossless JPEG, colour at full resolution (no 4:2:0 chroma subsampling)."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=100, subsampling=0)
    return buf.getvalue()


def _video_shard(path, videos):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for vid, frames in videos:
            jpegs = [_jpeg(f) for f in frames]
            writer.write(records.encode_example(vid, jpegs, 12.0, *frames.shape[1:3]))
    return path


def test_walk_clips_cut_the_patch_grid_and_repeat_with_a_seed(tmp_path, monkeypatch):
    # Frames whose colour encodes the position (x in red, y in green, frame index in blue).
    yy, xx = np.mgrid[0:48, 0:48]
    frames = np.stack([np.stack([xx * 5, yy * 5, np.full_like(xx, 40 * t)], -1)
                       for t in range(6)]).astype(np.uint8)
    shard = _video_shard(tmp_path / "a.tfrecord", [("v", frames), ("short", frames[:2])])
    kw = dict(batch_size=2, clip_len=3, frame_gap=2, crop_size=48, resize_short=48,
              node_patch=16, node_stride=16, shuffle_buffer=4, seed=0, deterministic=True)
    batch = next(iter(walk_clips.walk_clip_dataset(shard, **kw)))
    again = next(iter(walk_clips.walk_clip_dataset(shard, **kw)))
    assert batch["patches"].shape == (2, 3, 9, 16, 16, 3)  # the 2-frame video is left out
    np.testing.assert_array_equal(batch["patches"], again["patches"])
    rgb = np.asarray(batch["patches"]) * tops.IMAGENET_STD + tops.IMAGENET_MEAN
    times = np.round(rgb[..., 2].mean(axis=(2, 3, 4)) * 255 / 40)  # (B, T)
    assert np.all(np.diff(times, axis=1) == 2)  # frames 2 apart, in order
    # Without crop and jitter, node n is the n-th 16 px window, row-major.
    for name in ("FRAME_SCALE", "FRAME_RATIO", "PATCH_SCALE", "PATCH_RATIO"):
        monkeypatch.setattr(walk_clips, name, (1.0, 1.0))
    exact = next(iter(walk_clips.walk_clip_dataset(shard, **kw)))
    rgb = (np.asarray(exact["patches"]) * tops.IMAGENET_STD + tops.IMAGENET_MEAN) * 255
    t = int(round(rgb[0, 0, ..., 2].mean() / 40))  # the clip's first frame, as decoded
    frame = tf.io.decode_jpeg(_jpeg(frames[t])).numpy().astype(np.float64)
    for n in range(9):
        y, x = divmod(n, 3)
        np.testing.assert_allclose(rgb[0, 0, n], frame[y * 16:y * 16 + 16, x * 16:x * 16 + 16],
                                   atol=0.01)
    # A frame crop of a quarter of the area: twice the magnification, half the node spacing
    # (slopes within the JPEG decoder's error of 5 levels per pixel).
    monkeypatch.setattr(walk_clips, "FRAME_SCALE", (0.25, 0.25))
    zoomed = next(iter(walk_clips.walk_clip_dataset(shard, **kw)))
    rgb = (np.asarray(zoomed["patches"]) * tops.IMAGENET_STD + tops.IMAGENET_MEAN) * 255
    red, green = rgb[0, 0, ..., 0], rgb[0, 0, ..., 1]  # (N, P, P): 5 x and 5 y of the frame
    assert np.polyfit(np.arange(16), red.mean(axis=(0, 1)), 1)[0] == pytest.approx(2.5, abs=0.2)
    assert np.polyfit(np.arange(16), green.mean(axis=(0, 2)), 1)[0] == pytest.approx(2.5, abs=0.2)
    assert red[1].mean() - red[0].mean() == pytest.approx(40, abs=1)  # 16 crop px = 8 frame px
    assert green[3].mean() - green[0].mean() == pytest.approx(40, abs=1)
    cells = next(iter(walk_clips.walk_clip_dataset(shard, **dict(kw, nodes="cells"))))
    assert cells["frames"].shape == (2, 3, 48, 48, 3)


# ----------------------------------------------------------------------------- releases, tools
def test_init_from_a_converted_crw_release_and_a_clear_error_otherwise(tmp_path):
    from tc_keras.convert import releases

    path = write_pth(tmp_path / "crw.pth", ref.crw_checkpoint(ref.crw_state(2)))
    releases.convert("crw", path, tmp_path / "crw")
    model = small_model()
    checkpoints.init_encoder(model.encoder, tmp_path / "crw")
    release = keras.saving.load_model(tmp_path / "crw" / "encoder.keras")
    frames = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.encoder(frames)), np.asarray(release(frames)),
                               atol=1e-5)
    cycle = tmp_path / "cycle"
    save_encoder(ResNetEncoder(depth=18), cycle / "encoder.keras")
    with pytest.raises(ValueError, match=f"--init_from {cycle}: its encoder is ResNet-18, "
                       "512-channel projection, 'same' padding; this run's is ResNet-18, no "
                       "projection, 'reflect' padding"):
        checkpoints.init_encoder(model.encoder, cycle)
    with pytest.raises(ValueError, match="--init_from .*empty: folder has no .keras"):
        (tmp_path / "empty").mkdir()
        checkpoints.init_encoder(model.encoder, tmp_path / "empty")


@pytest.mark.slow
def test_saved_encoder_propagates_with_the_crw_preset_and_exports(tmp_path):
    model = small_model()
    model.fit(tf.data.Dataset.from_tensors({"patches": random_patches(10)}), verbose=0)
    workdir = tmp_path / "run"
    save_encoder(model.encoder, workdir / "encoder.keras")  # as the trainer writes it
    frames, masks = synthetic.render_video(5, frames=6, size=(64, 64), num_objects=(2, 2))
    video = broken_files.write_video(tmp_path / "clip.mp4", frames, fps=12)
    label_io.write_mask(tmp_path / "mask.png", masks[0], label_io.DAVIS_MASK)
    result = run_tool("propagate.py", "--video", video, "--labels", tmp_path / "mask.png",
                      "--out", tmp_path / "masks", "--encoder", workdir, "--preset", "crw",
                      "--nooverlay")
    assert result.returncode == 0, result.stderr
    masks_out = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "masks").glob("*.png"))]
    assert len(masks_out) == 6 and masks_out[-1].shape == (64, 64)
    assert set(np.unique(masks_out[-1])) <= set(np.unique(masks[0]))
    exported = run_tool("export.py", "--checkpoint", workdir, "--out", tmp_path / "export" / "w")
    assert exported.returncode == 0, exported.stderr
    tflite = tmp_path / "export" / "w.tflite"
    assert not [op for op in tflite_ops(tflite) if op.startswith("Flex")]
    features = runtimes.load_runtime(tflite).embed(frames[:2])
    np.testing.assert_allclose(features, np.asarray(encoder_io.make_embed(model.encoder)(
        frames[:2])), atol=1e-4)
    assert features.shape == (2, 8, 8, 256)
