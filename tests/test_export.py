"""tc_keras.export.graphs: SavedModel and TFLite graphs agree with the Keras path; loaders; errors."""

import contextlib
import dataclasses
import io
import os
import re
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from tc_keras.export import encoder_io
from tc_keras.export import graphs as export
from tc_keras.export import runtimes as runtime_lib
from tc_keras.model.encoder import ResNetEncoder
from tc_keras.propagation import context, presets
from tc_keras.propagation.label_step import vote, vote_local
from tc_keras.propagation.propagate import Propagator, propagate_mask
from tc_keras.propagation.tiles import local_tiles, radius_mask

# Float32 features: Keras vs SavedModel vs TFLite differ by kernel summation order only
# (measured ~4e-7 on unit-norm features); quantised variants are compared by cosine similarity.
FP32_ATOL = 1e-5
MIN_COSINE = {"fp16": 0.999, "int8": 0.99}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A seeded random ResNet-18 exported once: (written paths, Keras embed)."""
    encoder = encoder_io.load_encoder_model("random", depth=18, seed=0)
    root = tmp_path_factory.mktemp("export")
    written = export.export(encoder, root / "tc", quantize=export.QUANTIZATIONS)
    return written, encoder_io.make_embed(encoder)


@pytest.fixture(scope="module")
def runtimes(exported):
    written, _ = exported
    return {"saved_model": runtime_lib.SavedModelRuntime(written["saved_model"].parent),
            "tflite": runtime_lib.TFLiteRuntime(written["tflite"]),
            "fp16": runtime_lib.TFLiteRuntime(written["tflite_fp16"]),
            "int8": runtime_lib.TFLiteRuntime(written["tflite_int8"])}


def _frames(batch=2, height=64, width=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), np.uint8)


def test_layout_tf_serving(exported, tmp_path):
    written, _ = exported
    model_dir = written["saved_model"].parent
    assert written["saved_model"] == model_dir / "1"
    assert (model_dir / "1" / "saved_model.pb").is_file()
    assert written["tflite"] == model_dir.parent / "tc.tflite"
    assert written["tflite_int8"] == model_dir.parent / "tc.int8.tflite"
    assert export.next_version(model_dir) == 2
    assert not list(model_dir.glob(".*partial"))
    with pytest.raises(ValueError, match="already exists"):
        export.export_saved_model(None, model_dir, version=1)
    with pytest.raises(ValueError, match="quantize"):
        export.export(None, tmp_path / "x", quantize=("int4",))


def test_signatures_and_serving_default(exported):
    written, _ = exported
    loaded = tf.saved_model.load(str(written["saved_model"]))
    assert set(export.SIGNATURES) <= set(loaded.signatures)
    default = loaded.signatures["serving_default"]
    assert set(default.structured_input_signature[1]) == {"frames"}
    assert set(default.structured_outputs) == {"features"}
    spec = loaded.signatures["propagate"].structured_input_signature[1]
    assert {k: v.dtype for k, v in spec.items()} == {
        "context_feats": tf.float32, "context_labels": tf.float32, "queries": tf.float32,
        "allowed": tf.bool, "short_term": tf.bool, "topk": tf.int32, "temperature": tf.float32}


def test_features_match_keras(exported, runtimes):
    _, embed = exported
    frames = _frames()
    want = np.asarray(embed(frames))  # (2, 8, 12, 512)
    assert want.shape == (2, 8, 12, 512)
    for name, runtime in runtimes.items():
        got = runtime.embed(frames)
        assert got.shape == want.shape, name
        if name in MIN_COSINE:
            cosine = np.sum(got * want, -1) / np.linalg.norm(got, axis=-1)
            assert cosine.min() > MIN_COSINE[name], (name, cosine.min())
        else:
            np.testing.assert_allclose(got, want, atol=FP32_ATOL, err_msg=name)


def test_tflite_resizes_to_other_frame_sizes(runtimes):
    for size in ((32, 32), (48, 80)):
        feats = runtimes["tflite"].embed(_frames(1, *size))
        assert feats.shape == (1, size[0] // 8, size[1] // 8, 512)


def test_any_frame_size_from_8_px(exported, runtimes):
    """Sides need not be multiples of 8 (DAVIS' 854 px: crw feeds frames at native size): the
    features are ceil(side / 8) cells, the same in every runtime."""
    _, embed = exported
    frames = _frames(1, 21, 43)
    want = np.asarray(embed(frames))
    assert want.shape == (1, 3, 6, 512)
    for name in ("saved_model", "tflite"):
        np.testing.assert_allclose(runtimes[name].embed(frames), want, atol=FP32_ATOL, err_msg=name)


def _unit_features_and_labels(rng, frames, positions, channels, classes):
    """(frames, positions, channels) L2-normalised features and (frames, positions, classes) labels."""
    feats = rng.normal(size=(frames, positions, channels)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    return feats, rng.random((frames, positions, classes)).astype(np.float32)


@pytest.mark.parametrize("joint_topk", [True, False])
@pytest.mark.parametrize("radius", [None, 2.0])
def test_propagate_signature_is_vote(runtimes, joint_topk, radius):
    rng = np.random.default_rng(1)
    h, w, c, k, m = 4, 6, 16, 3, 3
    feats, labels = _unit_features_and_labels(rng, m, h * w, c, k)
    queries = feats[1, :10] + 0.1  # (Q, C): a chunk of 10 query positions
    allowed = None if radius is None else radius_mask(h, w, radius)[:10]
    short_term = np.arange(m) > 0
    want = np.asarray(vote(feats, labels, queries, allowed, short_term, topk=5,
                           temperature=0.07, joint_topk=joint_topk))
    for name, runtime in runtimes.items():
        got = runtime.step(feats, labels, queries, allowed, short_term, topk=5, temperature=0.07,
                           joint_topk=joint_topk)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("joint_topk", [True, False])
@pytest.mark.parametrize("radius", [1.5, 3.0])
def test_propagate_local_signature_is_vote_local(runtimes, joint_topk, radius):
    """Every runtime's local step = Keras `vote_local` = dense `vote` with the radius mask."""
    rng = np.random.default_rng(2)
    h, w, c, k, m = 5, 7, 16, 3, 4
    feats, labels = _unit_features_and_labels(rng, m, h * w, c, k)
    query = feats[1] + 0.1  # (N, C)
    tiles = local_tiles(h, w, radius, (2, 4))  # edge tiles padded on both axes
    args = (feats[:1], labels[:1], feats[1:].transpose(1, 0, 2), labels[1:].transpose(1, 0, 2),
            query[tiles.query_index], tiles.key_index, tiles.allowed)
    kwargs = dict(topk=5, temperature=0.07, joint_topk=joint_topk)
    want = np.asarray(vote_local(*args, **kwargs))
    dense = np.asarray(vote(feats, labels, query, radius_mask(h, w, radius), np.arange(m) > 0,
                            **kwargs))
    np.testing.assert_allclose(want.reshape(-1, k)[tiles.slot], dense, atol=1e-6)
    for name, runtime in runtimes.items():
        got = runtime.local_step(*args, **kwargs)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("radius, max_logits", [(1.5, None), (None, None), (1.5, 20000)])
def test_propagator_runs_each_runtime_label_steps(runtimes, radius, max_logits, monkeypatch):
    """`Propagator(steps=runtime.label_steps)`: the SavedModel's signatures traced into the
    compiled step, TFLite's on arrays; both give the Keras path's labels over a few frames. In
    chunks (`max_logits`: 3 tiles, one per call) the compiled step calls an interpreter from
    several threads at once."""
    h, w, c = (4, 6, 16) if max_logits is None else (12, 16, 16)
    if max_logits:
        monkeypatch.setattr(context, "MAX_LOGITS", max_logits)
    rng = np.random.default_rng(3)
    feats, _ = _unit_features_and_labels(rng, 5, h * w, c, 1)  # (T, N, C) per frame
    frames = [np.full((h * 8, w * 8, 3), t, np.uint8) for t in range(len(feats))]
    labels0 = rng.random((h, w, 3)).astype(np.float32)
    config = dataclasses.replace(presets.PRESETS["default"], radius=radius, context=2, topk=5)

    def run(steps):
        prop = Propagator(lambda x: feats[np.asarray(x)[:, 0, 0, 0].astype(int)].reshape(
            -1, h, w, c), config, steps)
        return np.stack([x for _, x in prop.run(frames, labels0)])

    want = run(context.KERAS)
    for name in ("saved_model", "tflite"):
        np.testing.assert_allclose(run(runtimes[name].label_steps), want, atol=1e-5,
                                   err_msg=name)


def test_propagator_runs_an_export_end_to_end(runtimes):
    """A runtime's embed takes the uint8 frames the Propagator batches; masks from each runtime."""
    frames = list(_frames(5, 64, 96))
    mask = np.zeros((64, 96), np.uint8)
    mask[16:40, 24:64] = 1
    config = dataclasses.replace(presets.PRESETS["default"], radius=2.0, context=2)
    for name in ("saved_model", "tflite"):
        runtime = runtimes[name]
        out = [m for _, m in propagate_mask(frames, mask, runtime.embed, config,
                                            runtime.label_steps)]
        assert len(out) == 5 and all(m.shape == (64, 96) for m in out), name


def test_export_without_local_signatures_still_loads(tmp_path):
    """An export from before `propagate_local*`: loads, `local_step` None (dense fallback)."""
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x + 1.0},
                           input_signature=[tf.TensorSpec((None,), tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "old"),
                        signatures={s: module.f for s in export.REQUIRED_SIGNATURES})
    runtime = runtime_lib.SavedModelRuntime(tmp_path / "old")
    assert runtime.local_step is None


def tflite_ops(path):
    """Names of the ops in every subgraph of a .tflite file, from TensorFlow's analyzer."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tf.lite.experimental.Analyzer.analyze(model_path=str(path))
    return set(re.findall(r"^\s*Op#\d+ (\w+)\(", out.getvalue(), flags=re.M))


def test_tflite_builtin_ops_only(exported):
    written, _ = exported
    for key in ("tflite", "tflite_fp16", "tflite_int8"):
        names = tflite_ops(written[key])
        # The analyzer saw every subgraph: encoder, joint and per-frame label steps, dense and
        # local (BATCH_MATMUL, TRANSPOSE: the tiles against their gathered key regions).
        assert {"CONV_2D", "L2_NORMALIZATION", "TOPK_V2", "GATHER", "SELECT_V2", "BATCH_MATMUL",
                "TRANSPOSE"} <= names, names
        assert not [n for n in names if n.startswith("Flex") or n == "CUSTOM"], (key, names)


@pytest.mark.slow
@pytest.mark.parametrize("padding,out_channels,pad_op", [
    ("zeros", 512, "PAD"),  # the TimeCycle release's options
    ("reflect", None, "MIRROR_PAD"),  # the CRW release's
])
def test_tflite_builtin_ops_only_with_release_options(tmp_path, padding, out_channels, pad_op):
    """Symmetric padding and no projection (tc_keras/convert/releases.py) export to builtins, same features."""
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([keras.Input((None, None, 3)), ResNetEncoder(
        depth=18, padding=padding, out_channels=out_channels)])
    written = export.export(encoder, tmp_path / "tc")
    names = tflite_ops(written["tflite"])
    assert pad_op in names, names
    assert not [n for n in names if n.startswith("Flex") or n == "CUSTOM"], names
    frames = _frames(1, 56, 88)
    embed = encoder_io.make_embed(encoder)
    want = np.asarray(embed(frames))
    assert want.shape == (1, 7, 11, out_channels or 256)
    odd = _frames(1, 57, 90)  # not multiples of 8: (8, 12) cells
    want_odd = np.asarray(embed(odd))
    assert want_odd.shape[1:3] == (8, 12)
    # Reflect padding needs 2 cells at stride 8 (9 px); zero padding 1 cell.
    smallest = 9 if padding == "reflect" else 8
    tiny = _frames(1, smallest - 1, 16)
    with pytest.raises(ValueError, match=f"needs at least {smallest} px"):
        embed(tiny)
    for runtime in (runtime_lib.SavedModelRuntime(written["saved_model"].parent),
                    runtime_lib.TFLiteRuntime(written["tflite"])):
        np.testing.assert_allclose(runtime.embed(frames), want, atol=FP32_ATOL)
        np.testing.assert_allclose(runtime.embed(odd), want_odd, atol=FP32_ATOL)
        assert runtime.embed(_frames(1, smallest, 16)).shape[1:3] == (-(-smallest // 8), 2)
        with pytest.raises(ValueError, match=f"{smallest - 1}x16"):
            runtime.embed(tiny)


def test_converter_refuses_flex_ops(tmp_path):
    """The builtin-only setting makes conversion fail instead of adding Flex ops."""
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": tf.strings.length(tf.strings.as_string(x))},
                           input_signature=[tf.TensorSpec((None,), tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "m"),
                        signatures={s: module.f for s in export.SIGNATURES})
    with pytest.raises(Exception, match="(?i)flex|not supported|select tf ops"):
        export.convert_tflite(tmp_path / "m")


def test_wrong_inputs_give_clear_errors(exported, runtimes):
    written, _ = exported
    fn = tf.saved_model.load(str(written["saved_model"])).signatures["embed"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 8 px"):
        fn(frames=tf.zeros((1, 6, 64, 3), tf.uint8))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError),
                       match="expected to be a uint8 tensor but is a float"):
        fn(frames=tf.zeros((1, 64, 64, 3), tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="RGB; got channels"):
        fn(frames=tf.zeros((1, 64, 64, 4), tf.uint8))
    for runtime in runtimes.values():
        with pytest.raises(ValueError, match="at least 8 px, got 6x64"):
            runtime.embed(np.zeros((1, 6, 64, 3), np.uint8))
        with pytest.raises(ValueError, match=r"must be uint8 \(B, H, W, 3\), got float32"):
            runtime.embed(np.zeros((1, 64, 64, 3), np.float32))
    # The raw TFLite signature runner checks the dtype itself.
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    runner = Interpreter(model_path=str(written["tflite"])).get_signature_runner("embed")
    with pytest.raises(ValueError, match="expected type UINT8"):
        runner(frames=np.zeros((1, 64, 64, 3), np.float32))


def test_is_export_and_load_runtime(exported, tmp_path):
    written, _ = exported
    version_dir = written["saved_model"]
    assert runtime_lib.is_export(version_dir) and runtime_lib.is_export(version_dir.parent)
    assert runtime_lib.is_export(written["tflite"])
    assert not runtime_lib.is_export(tmp_path)
    assert runtime_lib.find_saved_model(version_dir.parent) == version_dir
    with pytest.raises(ValueError, match="no such .tflite"):
        runtime_lib.load_runtime(tmp_path / "missing.tflite")
    (tmp_path / "junk.tflite").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.tflite"):
        runtime_lib.load_runtime(tmp_path / "junk.tflite")


def _saved_model_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(["saved_model_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.slow
def test_saved_model_cli_session_loader(exported, tmp_path):
    """saved_model_cli loads with the session-based loader TF Serving uses.

    Its --input_exprs only takes Python literals in TF 2.21 (np.zeros(...) is refused), so arrays
    go in as .npy files with --inputs.
    """
    written, _ = exported
    sm = written["saved_model"]
    shown = _saved_model_cli("show", "--all", "--dir", sm)
    assert shown.returncode == 0, shown.stderr
    for name in (*export.SIGNATURES, "serving_default"):
        assert f"signature_def['{name}']" in shown.stdout

    np.save(tmp_path / "frames.npy", np.zeros((1, 64, 64, 3), np.uint8))
    run = _saved_model_cli("run", "--dir", sm, "--tag_set", "serve", "--signature_def", "embed",
                           "--inputs", f"frames={tmp_path / 'frames.npy'}",
                           "--outdir", tmp_path / "embed_out")
    assert run.returncode == 0, run.stderr
    assert np.load(tmp_path / "embed_out" / "features.npy").shape == (1, 8, 8, 512)

    rng = np.random.default_rng(0)
    arrays = {"context_feats": rng.normal(size=(2, 16, 8)).astype(np.float32),
              "context_labels": rng.random((2, 16, 3)).astype(np.float32),
              "queries": rng.normal(size=(5, 8)).astype(np.float32),
              "allowed": np.ones((5, 16), bool), "short_term": np.array([False, True])}

    def run_step(signature, inputs):
        """Runs a label-step signature through saved_model_cli: its `labels` output."""
        for key, value in inputs.items():
            np.save(tmp_path / f"{key}.npy", value)
        run = _saved_model_cli(
            "run", "--dir", sm, "--tag_set", "serve", "--signature_def", signature,
            "--inputs", ";".join(f"{k}={tmp_path / k}.npy" for k in inputs),
            "--input_exprs", "topk=4;temperature=0.05", "--outdir", tmp_path / signature)
        assert run.returncode == 0, run.stderr
        return np.load(tmp_path / signature / "labels.npy")

    want = np.asarray(vote(*arrays.values(), topk=4, temperature=0.05))
    np.testing.assert_allclose(run_step("propagate", arrays), want, atol=1e-6)

    tiles = local_tiles(4, 4, 1.0, (2, 2))  # 4 tiles of 4 queries, 4x4 map, radius 1
    local = {"long_feats": arrays["context_feats"][:1],
             "long_labels": arrays["context_labels"][:1],
             "short_feats": arrays["context_feats"][1:].transpose(1, 0, 2),
             "short_labels": arrays["context_labels"][1:].transpose(1, 0, 2),
             "queries": arrays["context_feats"][1][tiles.query_index],
             "key_index": tiles.key_index, "allowed": tiles.allowed}
    want = np.asarray(vote_local(*local.values(), topk=4, temperature=0.05))
    np.testing.assert_allclose(run_step("propagate_local", local), want, atol=1e-6)

    bad = tmp_path / "frames6.npy"
    np.save(bad, np.zeros((1, 6, 64, 3), np.uint8))
    run = _saved_model_cli("run", "--dir", sm, "--tag_set", "serve", "--signature_def", "embed",
                           "--inputs", f"frames={bad}")
    assert run.returncode != 0 and "at least 8 px" in run.stderr

    scan = _saved_model_cli("scan", "--dir", sm)
    assert scan.returncode == 0, scan.stderr
    assert "does not contain the default denylisted ops" in scan.stdout + scan.stderr

