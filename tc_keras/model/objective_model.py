"""The training step the self-supervised models share: TimeCycle and the contrastive random walk.

`ObjectiveModel` is a keras.Model whose `train_step` takes the gradient of the subclass's loss
over the whole batch of all replicas, clips it to a global norm, applies the optimizer and keeps
one running mean per logged term. A subclass supplies the forward pass and the loss:

  - in `__init__`: `self.encoder` (the ResNetEncoder that is saved as encoder.keras),
    `self.grad_clip_norm` (None: no clipping), `self.freeze_encoder` (bool) and a call to
    `self.track_terms(names)` with the names of the scalars `compute_losses` returns;
  - `compute_losses(batch, outputs)` -> dict of scalars, the optimised one under "loss";
  - `build_from_crop()`: builds every weight with a symbolic batch of the configured size;
  - the class attribute `ADAM`: its default optimizer's settings (`compile()` with none given).
"""

import keras
import tensorflow as tf


class ObjectiveModel(keras.Model):
    """Base class of the trained models: all-replica gradient, global-norm clip, metrics.

    Not used alone (see the module docstring for what a subclass defines).
    """

    # learning_rate, beta_1, beta_2 of the default Adam; each subclass names its own.
    ADAM = dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999)

    def track_terms(self, names):
        """One running mean per logged scalar (`compute_losses`' keys and "grad_norm")."""
        self._loss_metrics = {n: keras.metrics.Mean(name=n) for n in names}

    def compute_losses(self, batch, outputs):
        raise NotImplementedError

    def build_from_crop(self):
        raise NotImplementedError

    # ----------------------------------------------------------------------------- training
    def step_variables(self):
        """The variables a training step updates: all but the encoder's while it is frozen."""
        if not self.freeze_encoder:
            return list(self.trainable_variables)
        frozen = {id(v) for v in self.encoder.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in frozen]

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the subclass's default Adam (`ADAM`) unless given an optimizer, and
        builds its slots for all variables.

        Clipping is done by `train_step` on the all-replica gradient; do not pass an optimizer
        with `clipnorm` (Keras clips per replica, before the all-reduce).
        """
        if optimizer is None:
            optimizer = keras.optimizers.Adam(**self.ADAM)
        if getattr(optimizer, "clipnorm", None) or getattr(optimizer, "global_clipnorm", None):
            raise ValueError(f"{type(self).__name__} clips gradients itself (grad_clip_norm); "
                             "pass an optimizer without clipnorm/global_clipnorm")
        super().compile(optimizer=optimizer, **kwargs)
        if self.built:
            self.optimizer.build(self.trainable_variables)  # frozen encoder included

    def set_encoder_frozen(self, frozen):
        """Freezes/unfreezes the encoder's weights; the next `fit` retraces its step."""
        self.freeze_encoder = bool(frozen)
        self.train_function = None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # A private Keras method, overridden because no public hook exists: under a strategy,
        # Keras' fit always builds the model symbolically from a batch it first reduces across
        # replicas, and MultiWorkerMirroredStrategy cannot reduce a dict of per-replica batches.
        # A model built by `build_from_crop()` and compiled (optimizer built) needs no build.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def metrics(self):
        return list(self._loss_metrics.values())

    def _update_metrics(self, values):
        for name, value in values.items():
            self._loss_metrics[name].update_state(value)
        results = {name: t.result() for name, t in self._loss_metrics.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces step outputs across workers with reduce(MEAN, axis=0), which needs
            # an axis: give each scalar one of length 1.
            results = {name: tf.reshape(v, (1,)) for name, v in results.items()}
        return results

    def train_step(self, data):
        strategy = tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        variables = self.step_variables()
        with tf.GradientTape() as tape:
            outputs = self(data, training=True)
            losses = self.compute_losses(data, outputs)
            # Each replica sees 1/replicas of the global batch; gradients are summed across them.
            scaled = losses["loss"] / replicas
        grads = tape.gradient(scaled, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        context = tf.distribute.get_replica_context()
        if replicas > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm(grads)
        if self.grad_clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.grad_clip_norm, use_norm=norm)
        if replicas > 1:
            # The optimizer all-reduces (sums) once more; hand it each replica's share.
            grads = [g / replicas for g in grads]
        self.optimizer.apply(grads, variables)
        return self._update_metrics({**losses, "grad_norm": norm})

    def test_step(self, data):
        outputs = self(data, training=False)
        return self._update_metrics(self.compute_losses(data, outputs))
