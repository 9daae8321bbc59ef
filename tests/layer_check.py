"""The one shared layer check (STYLE.md): JSON round trip, symbolic call, eager call, one fit step."""

import numpy as np
import keras


def run_layer_check(layer_cls, init_kwargs, input_data, expected_output_shape, fit=True):
    """Checks a layer's serialisation and that it works symbolically, eagerly and in `fit`.

    Args:
      layer_cls: the layer class.
      init_kwargs: constructor kwargs.
      input_data: one numpy array (the layer's single positional input).
      expected_output_shape: shape of the eager output.
      fit: also train one step of a Model wrapping the layer (needs trainable weights).
    """
    layer = layer_cls(**init_kwargs)
    # JSON round trip of the config, and the restored layer computes the same thing.
    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert config[key] == value, (key, config[key], value)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer))
    assert type(restored) is layer_cls
    assert restored.get_config() == config

    # Eager call.
    out = layer(input_data)
    assert tuple(out.shape) == tuple(expected_output_shape), out.shape
    restored(input_data)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(restored(input_data)), np.asarray(out), atol=1e-5)

    # Symbolic call with an unknown batch size.
    sym_in = keras.Input(shape=input_data.shape[1:], batch_size=None)
    sym_out = layer_cls(**init_kwargs)(sym_in)
    assert tuple(sym_out.shape[1:]) == tuple(expected_output_shape[1:]), sym_out.shape

    if fit:
        model = keras.Model(sym_in, sym_out)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [np.array(w) for w in model.trainable_weights]
        target = np.random.default_rng(0).normal(size=expected_output_shape).astype("float32")
        model.fit(input_data, target, epochs=1, batch_size=len(input_data), verbose=0)
        after = [np.array(w) for w in model.trainable_weights]
        assert any(not np.allclose(a, b) for a, b in zip(before, after)), "fit changed nothing"
    return layer
