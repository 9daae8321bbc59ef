"""The one shared layer check (STYLE.md): JSON round trip, symbolic call, eager call, one fit step."""

import numpy as np
import keras


def run_layer_check(layer_cls, init_kwargs, inputs, expected_output_shape, fit=True):
    """Checks a layer's serialisation and that it works symbolically, eagerly and in `fit`.

    Args:
      layer_cls: the layer class.
      init_kwargs: constructor kwargs.
      inputs: a numpy array, or a tuple of arrays passed as positional arguments.
      expected_output_shape: shape of the eager output (single-tensor outputs).
      fit: also train one step of a Model wrapping the layer (needs trainable weights).
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    layer = layer_cls(**init_kwargs)
    # JSON round trip of the config, and the restored layer computes the same thing.
    config = layer.get_config()
    for key, value in init_kwargs.items():
        got = config[key]
        assert (list(got) if isinstance(got, tuple) else got) == (
            list(value) if isinstance(value, tuple) else value), (key, got, value)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer))
    assert type(restored) is layer_cls
    assert restored.get_config() == config

    # Eager call.
    out = layer(*inputs)
    assert tuple(out.shape) == tuple(expected_output_shape), out.shape
    restored(*inputs)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(restored(*inputs)), np.asarray(out), atol=1e-5)

    # Symbolic call with an unknown batch size.
    sym_in = [keras.Input(shape=x.shape[1:], batch_size=None) for x in inputs]
    sym_out = layer_cls(**init_kwargs)(*sym_in)
    assert tuple(sym_out.shape[1:]) == tuple(expected_output_shape[1:]), sym_out.shape

    if fit:
        model = keras.Model(sym_in, sym_out)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [np.array(w) for w in model.trainable_weights]
        target = np.random.default_rng(0).normal(size=expected_output_shape).astype("float32")
        model.fit(list(inputs), target, epochs=1, batch_size=len(inputs[0]), verbose=0)
        after = [np.array(w) for w in model.trainable_weights]
        assert any(not np.allclose(a, b) for a, b in zip(before, after)), "fit changed nothing"
    return layer
