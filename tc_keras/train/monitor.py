"""The training monitor: log lines, TensorBoard, checkpoints on a step period, stop conditions."""

import json
import math
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tc_keras.propagation import visualize

# The terms shown in the log line, of either objective (TensorBoard gets every metric).
LOG_TERMS = ("loss", "long", "skip", "sim", "self", "acc", "grad_norm")


class RotationRamp(keras.callbacks.Callback):
    """Sets `scale` (a scalar tf.Variable the input pipeline reads per clip) to
    min(1, step / ramp_steps) before each step: the patch rotation range grows linearly from 0.
    Keyed on the optimizer's step counter, so a resumed run continues the ramp."""

    def __init__(self, scale, ramp_steps):
        super().__init__()
        self.scale = scale
        self.ramp_steps = ramp_steps

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.scale.assign(min(1.0, step / self.ramp_steps))


class TrainingMonitor(keras.callbacks.Callback):
    """Per-step bookkeeping of a run, keyed on the optimizer's step counter (so it resumes).

    Args:
      save: callable(reason) that writes a checkpoint.
      logdir: TensorBoard folder; the same scalars also go, one JSON line per log step, to
        `metrics.jsonl` beside it (easy to plot without TensorBoard).
      log_every, checkpoint_every, image_every: periods in steps (image_every 0 = never).
      vis_batch: a fixed batch to draw tracked boxes on (or None).
    Attributes:
      stop_at: the step at which `fit` is stopped; last_saved: step of the last checkpoint.
    """

    def __init__(self, save, logdir, log_every, checkpoint_every, image_every, vis_batch=None):
        super().__init__()
        self.save = save
        self.writer = tf.summary.create_file_writer(str(logdir))
        self.metrics_path = pathlib.Path(logdir).parent / "metrics.jsonl"
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.image_every = image_every
        self.vis_batch = vis_batch
        self.stop_at = None
        self.last_saved = None
        self._clock = None

    def on_train_begin(self, logs=None):
        self._clock = (time.perf_counter(), self._step())

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        logs = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in (logs or {}).items()}
        loss = logs.get("loss", 0.0)
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise FloatingPointError(
                f"non-finite loss ({loss}) at step {step}: training stopped; the last checkpoint "
                f"(step {self.last_saved}) is intact. Lower --learning_rate or check the data.")
        if step % self.log_every == 0:
            self._log(step, logs)
        if self.image_every and step % self.image_every == 0 and self.vis_batch is not None:
            self._images(step)
        if step % self.checkpoint_every == 0:
            self.save(f"step {step}")
            self.last_saved = step
        if self.stop_at is not None and step >= self.stop_at:
            self.model.stop_training = True

    def _log(self, step, logs):
        now = time.perf_counter()
        start, start_step = self._clock
        rate = (step - start_step) / max(now - start, 1e-9)
        self._clock = (now, step)
        lr = float(np.asarray(self.model.optimizer.learning_rate))
        with self.writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(f"loss/{name}" if name != "grad_norm" else name, value)
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("steps_per_second", rate)
        self.writer.flush()
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(dict(step=step, steps_per_second=rate, learning_rate=lr, **logs)) + "\n")
        terms = " ".join(f"{k}={logs[k]:.4f}" for k in LOG_TERMS if k in logs)
        logging.info("step %d: %s (%.2f steps/s)", step, terms, rate)
        # Each log line and scalar covers the steps since the previous one.
        for metric in self.model.metrics:
            metric.reset_state()

    def _images(self, step):
        out = self.model(self.vis_batch, training=False)
        past = np.asarray(self.vis_batch["past"])
        rows = [visualize.clip_strip(past[i], np.asarray(self.vis_batch["target"][i]),
                                     np.asarray(self.vis_batch["theta"][i]),
                                     np.asarray(out["theta_first"][i]),
                                     np.asarray(out["theta_long"][i, -1]))
                for i in range(past.shape[0])]
        with self.writer.as_default(step=step):
            tf.summary.image("tracked_patches", np.stack(rows), max_outputs=len(rows))
        self.writer.flush()

    def close(self):
        self.writer.close()
