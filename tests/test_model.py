"""TimeCycle model: outputs, serialisation, the custom train_step, strategies, learning sanity."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tc_keras import ops as tops
from tc_keras.model.timecycle import TimeCycle

CROP = 168  # smallest crop whose 7x7-cell patch fits the localizer's two 4x4 valid convs
PATCH = CROP // 3


def make_batch(seed, batch=2, k=2, crop=CROP, speed=6.0):
    """Clips cut from a smooth random texture moving at constant velocity; patch = known crop."""
    rng = np.random.default_rng(seed)
    big = crop + int(speed * (k + 2)) + 16
    noise = rng.normal(size=(batch, big // 8, big // 8, 3)).astype(np.float32)
    tex = np.asarray(tf.image.resize(noise, (big, big), method="bicubic"))
    out = {"past": [], "target": [], "theta": []}
    for b in range(batch):
        d = rng.uniform(-1, 1, 2) * speed
        starts = [np.round(8 + d * i + speed * 1.5).astype(int) for i in range(k + 1)]
        frames = [tex[b, y:y + crop, x:x + crop] for x, y in starts]
        out["past"].append(np.stack(frames[:k]))
        out["target"].append(frames[k])
        out["theta"].append([[np.cos(a := rng.uniform(-0.5, 0.5)) / 3, -np.sin(a) / 3, rng.uniform(-.5, .5)],
                             [np.sin(a) / 3, np.cos(a) / 3, rng.uniform(-.5, .5)]])
    batch_d = {key: np.asarray(v, np.float32) for key, v in out.items()}
    batch_d["patch"] = np.asarray(tops.affine_sample(batch_d["target"], batch_d["theta"], PATCH, PATCH))
    return batch_d


def small_model(optimizer=None, **kw):
    kw = dict(dict(depth=18, num_past=2, crop_size=CROP), **kw)
    model = TimeCycle(**kw)
    model.build_from_crop()
    model.compile(optimizer=optimizer)
    return model


def test_outputs_and_json_round_trip(tmp_path):
    model = small_model(similarity="inner_product", sim_weight=0.5)
    batch = make_batch(0)
    out = model(batch)
    assert out["theta_long"].shape == (2, 2, 2, 3)
    assert out["theta_skip"].shape == (2, 2, 2, 3)
    assert out["affinity_first"].shape == (2, 2, 7, 7, 21 * 21)
    assert out["tracked_first"].shape == (2, 2, 7, 7, 512)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert clone.get_config() == model.get_config()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, TimeCycle) and loaded.similarity == "inner_product"
    np.testing.assert_allclose(np.asarray(loaded(batch)["theta_long"]),
                               np.asarray(out["theta_long"]), atol=1e-5)


def test_compile_rejects_per_replica_clipnorm():
    model = TimeCycle(depth=18, num_past=1, crop_size=CROP)
    with pytest.raises(ValueError, match="clip"):
        model.compile(optimizer=keras.optimizers.Adam(clipnorm=1.0))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="similarity"):
        TimeCycle(similarity="l2")
    with pytest.raises(ValueError, match="crop_size"):
        TimeCycle(crop_size=100)


def _one_step(model, batch, strategy=None):
    ds = tf.data.Dataset.from_tensors(batch)
    if strategy is not None:
        ds = strategy.experimental_distribute_dataset(ds.unbatch().batch(2))
    logs = model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0).history
    return {k: v[-1] for k, v in logs.items()}


def replica_pair(make, optimizer, strategy, **kwargs):
    """(model, the same under `strategy` with the same initial weights): `make(optimizer(),
    **kwargs)` built twice."""
    single = make(optimizer(), **kwargs)
    with strategy.scope():
        mirrored = make(optimizer(), **kwargs)
    mirrored.set_weights(single.get_weights())
    return single, mirrored


def test_two_replica_mirrored_step_equals_single_device_step(two_cpu_strategy):
    batch = make_batch(1, k=1)
    # SGD, so that a wrongly scaled gradient shows (Adam's first step is scale-free), and a small
    # clip norm so that clipping of the all-replica gradient is in effect.
    kw = dict(sync_batchnorm=True, grad_clip_norm=0.05, num_past=1)
    strategy = two_cpu_strategy
    single, mirrored = replica_pair(small_model, lambda: keras.optimizers.SGD(1.0), strategy, **kw)
    init = single.get_weights()
    logs_1 = _one_step(single, batch)
    logs_2 = _one_step(mirrored, batch, strategy)
    assert logs_1["grad_norm"] > 0.05  # clipping was in effect
    for key in ("loss", "long", "skip", "sim", "grad_norm"):
        assert logs_2[key] == pytest.approx(logs_1[key], rel=1e-3, abs=1e-6), key
    moved = 0
    for a, b, c in zip(single.get_weights(), mirrored.get_weights(), init):
        delta_1, delta_2 = a - c, b - c
        scale = np.linalg.norm(delta_1)
        # Float32 reductions run in another order on two replicas: compare whole updates.
        assert np.linalg.norm(delta_2 - delta_1) <= 1e-2 * scale + 1e-9
        moved += scale > 0
    assert moved > 10


def test_frozen_encoder_trains_only_the_tracker_then_unfreezes():
    model = small_model(freeze_encoder=True, num_past=1)
    batch = make_batch(2, k=1)
    enc0 = [np.array(w) for w in model.encoder.trainable_weights]
    stats0 = [np.array(w) for w in model.encoder.non_trainable_weights]
    trk0 = [np.array(w) for w in model.tracker.weights]
    _one_step(model, batch)
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(enc0, model.encoder.trainable_weights))
    # BatchNorm still normalises with batch statistics (and tracks them) while frozen.
    assert not all(np.array_equal(a, np.array(b))
                   for a, b in zip(stats0, model.encoder.non_trainable_weights))
    assert not all(np.array_equal(a, np.array(b)) for a, b in zip(trk0, model.tracker.weights))
    model.set_encoder_frozen(False)
    _one_step(model, batch)
    assert not all(np.array_equal(a, np.array(b))
                   for a, b in zip(enc0, model.encoder.trainable_weights))


def variables_without_gradient(model, batch):
    """Paths of the trainable variables whose gradient of the training loss is None or zero."""
    with tf.GradientTape() as tape:
        loss = model.compute_losses(batch, model(batch, training=True))["loss"]
    grads = tape.gradient(loss, model.trainable_variables)
    return [v.path for v, g in zip(model.trainable_variables, grads)
            if g is None or not np.any(np.asarray(g))]


def test_every_trainable_variable_gets_a_gradient():
    assert not variables_without_gradient(small_model(), make_batch(3))


@pytest.mark.slow
def test_learning_sanity_cycle_loss_falls_on_known_crops():
    """A couple of dozen steps on a clip whose target patch is a known crop drive the cycle
    losses clearly down, with both the encoder and the localizer being updated. The similarity
    term is left out here: at initialisation the inlier score is noisy from step to step, which
    would hide the trend of the cycle terms in so few steps."""
    model = TimeCycle(depth=18, num_past=2, crop_size=CROP, sim_weight=0.0)
    model.build_from_crop()
    model.compile(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5))
    ds = tf.data.Dataset.from_tensors(make_batch(10)).repeat()
    enc0 = np.array(model.encoder.stem_conv.kernel)
    loc0 = np.array(model.tracker.localizer.convs[0].kernel)
    hist = model.fit(ds, steps_per_epoch=1, epochs=24, verbose=0).history
    first, last = np.mean(hist["loss"][:3]), np.mean(hist["loss"][-4:])
    assert last < 0.2 * first, hist["loss"]
    for term in ("long", "skip"):
        assert np.mean(hist[term][-4:]) < 0.2 * np.mean(hist[term][:3]), (term, hist[term])
    assert not np.allclose(enc0, np.array(model.encoder.stem_conv.kernel))
    assert not np.allclose(loc0, np.array(model.tracker.localizer.convs[0].kernel))


@pytest.mark.parametrize("sim_theta_grad", [True, False])
def test_similarity_term_alone_reaches_the_localizer_unless_stopped(sim_theta_grad):
    """The inlier term sends gradient through theta into the localizer (reference code); the
    ablation flag stops exactly that path."""
    model = small_model(long_weight=0.0, skip_weight=0.0, sim_theta_grad=sim_theta_grad)
    batch = make_batch(3)
    variables = model.tracker.localizer.trainable_variables
    with tf.GradientTape() as tape:
        loss = model.compute_losses(batch, model(batch, training=True))["loss"]
    grads = tape.gradient(loss, variables)
    norm = float(tf.linalg.global_norm([g for g in grads if g is not None])) if any(
        g is not None for g in grads) else 0.0
    if sim_theta_grad:
        assert norm > 1e-4
    else:
        assert norm == 0.0


def _reference_unroll(model, batch, features=None):
    """The cycles (docs/METHOD.md, "Long and skip cycles") one tracker call at a time (21 calls
    for k = 4), as written before the calls were batched: the model's outputs must equal these.
    `features`: (past (B, k, h, w, C), target (B, h, w, C), query (B, p, p, C)) to track in;
    None for the encoder's in inference mode."""
    k = model.num_past
    if features is None:
        past, target, patch = (np.asarray(batch[key]) for key in ("past", "target", "patch"))
        b = past.shape[0]
        # (B, k, H, W, 3) -> (B*k, H, W, 3), then the B targets
        feats = model.encoder(np.concatenate([past.reshape((-1,) + past.shape[2:]), target]),
                              training=False)
        # (B*k, h, w, C) -> (B, k, h, w, C)
        features = (np.asarray(feats[:b * k]).reshape((b, k) + tuple(feats.shape[1:])),
                    feats[b * k:], model.encoder(patch, training=False))
    past_feats, target_feats, query = features
    frame = lambda back: past_feats[:, k - back]  # noqa: E731
    first = [model.tracker(frame(i), query) for i in range(1, k + 1)]
    theta_skip = [model.tracker(target_feats, s["features"])["theta"] for s in first]
    backward = [first[0]["features"]]
    for i in range(2, k + 1):
        backward.append(model.tracker(frame(i), backward[-1])["features"])
    theta_long = [theta_skip[0]]
    for i in range(2, k + 1):
        q = backward[i - 1]
        for j in range(i - 1, 0, -1):
            q = model.tracker(frame(j), q)["features"]
        theta_long.append(model.tracker(target_feats, q)["theta"])
    return {"theta_long": np.stack(theta_long, 1), "theta_skip": np.stack(theta_skip, 1),
            "theta_first": np.stack([s["theta"] for s in first], 1),
            "theta_self": model.tracker(target_feats, query)["theta"],
            "affinity_first": np.stack([s["affinity"] for s in first], 1),
            "tracked_first": np.stack([s["features"] for s in first], 1), "query": query}


@pytest.mark.parametrize("num_past", [1, 3])
def test_batched_tracker_calls_equal_one_call_at_a_time(num_past):
    """The unroll batches independent tracker calls (9 calls instead of 21 for k = 4): same
    outputs and losses as one call at a time, to float tolerance."""
    model = small_model(num_past=num_past)
    batch = make_batch(5, k=num_past)
    out = model(batch, training=False)
    ref = _reference_unroll(model, batch)
    for key, value in ref.items():
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(value), rtol=1e-4,
                                   atol=1e-5, err_msg=key)
    got, want = model.compute_losses(batch, out), model.compute_losses(batch, ref)
    for key in want:
        np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-4, atol=1e-6,
                                   err_msg=key)


def test_train_step_losses_and_gradients_equal_with_keras_batchnorm(monkeypatch):
    """The fused BatchNorm (tc_keras.model.batchnorm) changes nothing but speed: the same losses and
    gradients, to float tolerance, as Keras' own BatchNormalization on a fixed batch."""
    from tc_keras.model import batchnorm

    model = small_model(num_past=2)
    batch = make_batch(7, k=2)

    def losses_and_grads():
        with tf.GradientTape() as tape:
            losses = model.compute_losses(batch, model(batch, training=True))
        grads = tape.gradient(losses["loss"], model.trainable_variables)
        return {k: float(v) for k, v in losses.items()}, [np.asarray(g) for g in grads]

    state = [np.asarray(v) for v in model.variables]  # training mode moves BN statistics
    calls = []
    kernel = tf.raw_ops.FusedBatchNormV3
    monkeypatch.setattr(tf.raw_ops, "FusedBatchNormV3",
                        lambda **kw: calls.append(1) or kernel(**kw))
    fused = losses_and_grads()
    assert calls  # the fused kernel did run
    monkeypatch.setattr(tf.raw_ops, "FusedBatchNormV3", kernel)
    for v, value in zip(model.variables, state):
        v.assign(value)
    monkeypatch.setattr(batchnorm.BatchNormalization, "_fusable", lambda *args: False)
    plain = losses_and_grads()
    for key in plain[0]:
        assert fused[0][key] == pytest.approx(plain[0][key], rel=1e-4, abs=1e-6), key
    for a, b, v in zip(fused[1], plain[1], model.trainable_variables):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * max(1.0, np.abs(b).max()),
                                   err_msg=v.path)


def test_mixed_bfloat16_policy_keeps_the_tracker_in_float32():
    """--mixed_precision: a bfloat16 encoder, the whole tracker (its sub-layers included) float32."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = small_model(num_past=1)
        for layer in (model.tracker, model.tracker.localizer, *model.tracker.localizer.convs,
                      model.tracker.localizer.dense, model.tracker.affinity):
            assert layer.compute_dtype == "float32", layer.name
        assert model.encoder.compute_dtype == "bfloat16"
        batch = make_batch(2, batch=1, k=1)  # one clip: bfloat16 is emulated on most CPUs
        out = model(batch, training=True)
        assert out["theta_long"].dtype == "float32"
        logs = _one_step(model, batch)
        assert np.isfinite(logs["loss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ------------------------------------------------------------------- BatchNorm batches (bn_groups)
# docs/METHOD.md, "BatchNorm batches". The reference computations run on the model's own variables
# reset to their values before (a fresh copy of weights and moving statistics, without building a
# second model). Tolerances: features 1e-5 absolute (unit-norm vectors; the joint batch's differ by
# > 1e-3), moving statistics rel 1e-5 (the other update order differs by > 1e-4 absolute), losses
# rel 1e-5 (the joint batch's differ by 4e-4..2e-3 relative): float32 rounding of the same
# kernels, eager against the traced step. "joint" is held bit for bit.


def _state(model):
    return [np.array(v) for v in model.variables]


def _reset(model, state):
    for v, value in zip(model.variables, state):
        v.assign(value)


def _groups(batch):
    """The reference code's three encoder batches, in its order: past (B*k, H, W, 3), patch,
    target."""
    past = batch["past"]
    # (B, k, H, W, 3) -> (B*k, H, W, 3)
    return past.reshape((-1,) + past.shape[2:]), batch["patch"], batch["target"]


def _by_clip(feats, b):
    """(B*k, h, w, C) -> (B, k, h, w, C)."""
    feats = np.asarray(feats)
    return feats.reshape((b, -1) + feats.shape[1:])


def _stats(model):
    return [np.array(v) for v in model.encoder.non_trainable_weights]


def test_separate_bn_groups_encode_each_group_as_a_batch_of_its_own():
    model = small_model(num_past=2)
    assert model.bn_groups == "separate" and model.get_config()["bn_groups"] == "separate"
    joint = small_model(num_past=2, bn_groups="joint")
    joint.set_weights(model.get_weights())
    state = _state(model)
    batch = make_batch(6, k=2)
    # Inference mode normalises with the moving statistics: the grouping changes nothing.
    for a, b in zip(model.encode(batch), joint.encode(batch)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    past, target, query = model.encode(batch, training=True)
    _reset(model, state)
    want_past, want_query, want_target = (np.asarray(model.encoder(g, training=True))
                                          for g in _groups(batch))
    np.testing.assert_allclose(np.stack(past, 1), _by_clip(want_past, 2), atol=1e-5)
    np.testing.assert_allclose(np.asarray(query), want_query, atol=1e-5)
    np.testing.assert_allclose(np.asarray(target), want_target, atol=1e-5)
    # The joint batch normalises the past frames with the targets' statistics: other features.
    joint_past, joint_target, _ = joint.encode(batch, training=True)
    assert np.abs(np.stack(joint_past, 1) - _by_clip(want_past, 2)).max() > 1e-3
    assert np.abs(np.asarray(joint_target) - want_target).max() > 1e-3


def test_separate_bn_groups_step_moves_statistics_past_then_patch_then_target():
    model = small_model(num_past=1)
    state = _state(model)
    batch = make_batch(7, k=1)
    logs = _one_step(model, batch)
    got = _stats(model)
    past, patch, target = _groups(batch)
    _reset(model, state)
    for group in (past, target, patch):
        model.encoder(group, training=True)
    wrong = _stats(model)
    _reset(model, state)
    features = [model.encoder(g, training=True) for g in (past, patch, target)]
    for a, b, v in zip(got, _stats(model), model.encoder.non_trainable_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=v.path)
    assert max(np.abs(a - c).max() for a, c in zip(got, wrong)) > 1e-4  # the order shows

    # The step's losses are those of features from the three separate calls.
    expected = model.compute_losses(batch, _reference_unroll(
        model, batch, (_by_clip(features[0], 2), features[2], features[1])))
    for key in ("loss", "long", "skip", "sim", "self"):  # the joint batch's are 4e-4..2e-3 off
        assert logs[key] == pytest.approx(float(expected[key]), rel=1e-5, abs=1e-9), key


def test_joint_bn_groups_encode_past_and_target_as_one_batch_then_the_patch():
    """The grouping every run before --bn_groups trained with, bit for bit."""
    model = small_model(num_past=2, bn_groups="joint")
    state = _state(model)
    batch = make_batch(8, k=2)
    past, target, query = model.encode(batch, training=True)
    stats = _stats(model)
    _reset(model, state)
    # (B, k, H, W, 3) + (B, 1, H, W, 3) -> (B, k+1, H, W, 3) -> (B*(k+1), H, W, 3)
    frames = np.concatenate([batch["past"], batch["target"][:, None]], 1)
    frames = frames.reshape((-1,) + frames.shape[2:])
    want = _by_clip(model.encoder(frames, training=True), 2)
    want_query = np.asarray(model.encoder(batch["patch"], training=True))
    np.testing.assert_array_equal(np.stack(past, 1), want[:, :2])
    np.testing.assert_array_equal(np.asarray(target), want[:, 2])
    np.testing.assert_array_equal(np.asarray(query), want_query)
    for a, b in zip(stats, _stats(model)):
        np.testing.assert_array_equal(a, b)
    out = model(batch, training=True)
    ref = _reference_unroll(model, batch, (want[:, :2], want[:, 2], want_query))
    for key in ("theta_long", "theta_skip", "theta_self", "query"):
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(ref[key]), rtol=1e-4,
                                   atol=1e-5, err_msg=key)


def test_bn_groups_is_checked():
    with pytest.raises(ValueError, match="bn_groups must be one of"):
        TimeCycle(bn_groups="together")
