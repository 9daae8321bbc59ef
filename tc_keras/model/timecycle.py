"""The TimeCycle model: cycle unroll over a clip and the custom training step.

A batch is a dict (see tc_keras/data/pipeline.py):
  past   (B, k, H, W, 3)  k past frames, oldest first, most recent last, normalised
  target (B, H, W, 3)     the target frame
  patch  (B, P, P, 3)     the query patch cut from the target (P = H / 3)
  theta  (B, 2, 3)        where the patch is in the target (ground truth)
"""

import keras

from tc_keras.model import losses as tlosses
from tc_keras import ops as tops
from tc_keras.model.encoder import FEATURE_STRIDE, ResNetEncoder
from tc_keras.model.objective_model import ObjectiveModel
from tc_keras.model.tracker import AFFINITY_TEMPERATURE, LOCALIZER_FILTERS, LOCALIZER_KERNEL, Tracker

# Optimiser defaults (docs/METHOD.md, "Training data and schedule").
LEARNING_RATE = 2e-4
BETA_1 = 0.5
BETA_2 = 0.999
GRAD_CLIP_NORM = 10.0
# Which frames BatchNorm sees as one batch (docs/METHOD.md, "BatchNorm batches"): the reference
# code's three encoder calls first, the single past + target batch second.
BN_GROUPS = ("separate", "joint")
# The localizer's valid convolutions each take kernel - 1 cells off the patch grid: the patch
# needs at least 1 + 2 * 3 = 7 cells a side (a 168 px crop).
MIN_PATCH_CELLS = 1 + len(LOCALIZER_FILTERS) * (LOCALIZER_KERNEL - 1)


def patch_cells(crop_size):
    """Side of the patch's feature grid for a crop: crop / 3 / 8 (10 for 240)."""
    return tops.patch_size(crop_size) // FEATURE_STRIDE


def check_crop_size(crop_size):
    """Raises ValueError unless the patch of a `crop_size` crop is a whole number of feature
    cells, at least `MIN_PATCH_CELLS` a side (the crop rule of the model and of --crop_size)."""
    step = round(1 / tops.PATCH_SCALE) * FEATURE_STRIDE
    if crop_size % step or patch_cells(crop_size) < MIN_PATCH_CELLS:
        raise ValueError(f"crop_size must be a multiple of {step} (the patch is crop/3 at stride "
                         f"{FEATURE_STRIDE}) and at least {step * MIN_PATCH_CELLS} (the "
                         f"localizer needs a {MIN_PATCH_CELLS}x{MIN_PATCH_CELLS}-cell patch), "
                         f"got {crop_size}")


@keras.saving.register_keras_serializable(package="tc_keras")
class TimeCycle(ObjectiveModel):
    """Encoder + tracker trained by cycle consistency over time (the training step, clipping
    and metrics are ObjectiveModel's).

    Args:
      depth: encoder depth, 18 or 50.
      num_past: k, the number of past frames per clip (4).
      crop_size: training frame size H = W (240).
      similarity: "inlier" (reference, default) or "inner_product" (paper).
      long_weight, skip_weight, sim_weight: loss weights (reference defaults 0.02, 0.1, 1.0).
      self_weight: weight of the self-localisation term (the patch found in its own frame against
        its known theta); not in the paper, 0 by default (see losses.cycle_losses).
      sim_theta_grad: the inlier term's gradient reaches theta and the localizer, as in the
        reference code (default); False stops it (ablation; see losses.inlier_score).
      temperature: affinity temperature (512**-0.5).
      freeze_encoder: train only the tracker (a warm-up known to help from-scratch training). The
        encoder's weights stay fixed but its BatchNorm keeps normalising with batch statistics
        (as a PyTorch module in train mode with requires_grad off): a freshly initialised encoder
        run on its initial moving statistics gives nearly parallel features (mean cosine 0.85).
      grad_clip_norm: clip the all-replica gradient to this global norm (None: no clipping).
      sync_batchnorm: encoder BatchNorm statistics over all replicas (see ResNetEncoder).
      encoder_padding: the encoder's padding mode (ResNetEncoder `padding`): "same" for models
        trained here, "zeros" for the converted TimeCycle release (tc_keras/convert/releases.py).
      bn_groups: which frames the encoder's BatchNorm sees as one batch in training
        (docs/METHOD.md, "BatchNorm batches"): "separate" (default, the reference code's): three
        encoder calls, the past frames (B*k), then the patches (B), then the targets (B), each
        normalised with its own batch statistics and moving the running statistics in that
        order; "joint" (ablation, what tc_keras trained with before the flag): the past frames
        and targets as one batch (B*(k+1)), then the patches. Same weights; eval mode is the same.

    Call arguments:
      inputs: dict with `past` (B, k, H, W, 3), `target` (B, H, W, 3), `patch` (B, P, P, 3).

    Returns:
      dict: `theta_long`, `theta_skip`, `theta_first` (B, k, 2, 3); `theta_self` (B, 2, 3) the
      patch localised in the target frame itself; `affinity_first`
      (B, k, p, p, N); `query` (B, p, p, C); `tracked_first` (B, k, p, p, C); index i along k
      means i + 1 frames back. p = P / 8, N = (H / 8)**2.
    """

    ADAM = dict(learning_rate=LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2)

    def __init__(self, depth=50, num_past=tops.NUM_PAST, crop_size=tops.CROP_SIZE,
                 similarity="inlier",
                 long_weight=tlosses.LONG_WEIGHT, skip_weight=tlosses.SKIP_WEIGHT,
                 sim_weight=tlosses.SIM_WEIGHT, self_weight=tlosses.SELF_WEIGHT,
                 sim_theta_grad=True, temperature=AFFINITY_TEMPERATURE,
                 freeze_encoder=False, grad_clip_norm=GRAD_CLIP_NORM, sync_batchnorm=False,
                 encoder_padding="same", bn_groups="separate", **kwargs):
        super().__init__(**kwargs)
        tlosses.check_similarity(similarity, sim_theta_grad)
        if bn_groups not in BN_GROUPS:
            raise ValueError(f"bn_groups must be one of {BN_GROUPS}, got {bn_groups!r}")
        check_crop_size(crop_size)
        if num_past < 1:
            raise ValueError(f"num_past must be >= 1, got {num_past}")
        self.depth = depth
        self.num_past = num_past
        self.crop_size = crop_size
        self.similarity = similarity
        self.long_weight = long_weight
        self.skip_weight = skip_weight
        self.sim_weight = sim_weight
        self.self_weight = self_weight
        self.sim_theta_grad = sim_theta_grad
        self.temperature = temperature
        self.freeze_encoder = freeze_encoder
        self.grad_clip_norm = grad_clip_norm
        self.sync_batchnorm = sync_batchnorm
        self.encoder_padding = encoder_padding
        self.bn_groups = bn_groups
        self.feature_size = crop_size // FEATURE_STRIDE
        self.patch_cells = patch_cells(crop_size)
        self.encoder = ResNetEncoder(depth=depth, sync_batchnorm=sync_batchnorm,
                                     padding=encoder_padding, name="encoder")
        # The tracker's coordinates need float32 even under a mixed-precision policy.
        self.tracker = Tracker(patch_size=(self.patch_cells, self.patch_cells),
                               temperature=temperature, name="tracker", dtype="float32")
        names = ["loss", "long", "skip", "sim", "self", "grad_norm"]
        for i in range(1, num_past + 1):
            names += [f"long_{i}", f"skip_{i}", f"sim_{i}"]
        self.track_terms(names)

    # ----------------------------------------------------------------------------- forward
    def encode(self, inputs, training=None):
        """Encoder features of a batch, in float32, grouped for BatchNorm as `bn_groups` says.

        Returns:
          (past, target, query): `past` a list of k (B, h, w, C) tensors, oldest first;
          `target` (B, h, w, C); `query` (B, p, p, C), the patch's.
        """
        past, target, patch = inputs["past"], inputs["target"], inputs["patch"]
        k = self.num_past
        shape = keras.ops.shape(past)

        def features(frames):
            return keras.ops.cast(self.encoder(frames, training=training), "float32")

        def unstack_past(feats, frames):
            # (B*frames, h, w, C) -> (B, frames, h, w, C) -> frames x (B, h, w, C). Unstacked,
            # not sliced: the gradient of a slice pads a zero tensor of the whole.
            fshape = keras.ops.shape(feats)
            return keras.ops.unstack(
                keras.ops.reshape(feats, (-1, frames, fshape[1], fshape[2], fshape[3])), axis=1)

        if self.bn_groups == "joint":
            # (B, k, H, W, 3) + (B, H, W, 3) -> (B, k+1, H, W, 3) -> (B*(k+1), H, W, 3): one
            # encoder pass for the past frames and the target, then one for the patch.
            frames = keras.ops.concatenate([past, keras.ops.expand_dims(target, 1)], axis=1)
            frames = keras.ops.reshape(frames, (-1, shape[2], shape[3], shape[4]))
            *past_feats, target_feats = unstack_past(features(frames), k + 1)
            return past_feats, target_feats, features(patch)
        # The reference order: past frames, patch, target, each a batch of its own.
        # (B, k, H, W, 3) -> (B*k, H, W, 3)
        frames = keras.ops.reshape(past, (-1, shape[2], shape[3], shape[4]))
        past_feats = unstack_past(features(frames), k)
        query = features(patch)
        return past_feats, features(target), query

    def call(self, inputs, training=None):
        k = self.num_past
        past_frames, target_feats, query = self.encode(inputs, training=training)

        def frame(back):  # features of the frame `back` steps before the target (1..k)
            return past_frames[k - back]

        def track(images, queries):
            """One tracker call for n independent (image, query) pairs of (B, ...) tensors each:
            stacked into a batch of n*B, results split back into n tensors."""
            n = len(images)
            out = self.tracker(keras.ops.concatenate(images, 0), keras.ops.concatenate(queries, 0))
            # (n*B, ...) -> n x (B, ...)
            return {key: keras.ops.split(value, n, axis=0) for key, value in out.items()}

        # First step into each past frame, straight from the target patch (skip cycles, L_sim,
        # and the first backward step of every long cycle): one call for the k frames.
        first = track([frame(i) for i in range(1, k + 1)], [query] * k)
        # Skip cycles (each first step back into the target) and the patch in its own frame.
        back = track([target_feats] * (k + 1), first["features"] + [query])
        theta_skip, theta_self = back["theta"][:k], back["theta"][k]
        # Backward chain t-1, t-2, ..., t-k: backward[i-1] is the query after i steps back.
        backward = [first["features"][0]]
        for i in range(2, k + 1):
            backward.append(track([frame(i)], [backward[-1]])["features"][0])
        # Long cycle i: i steps back, then forward through t-i+1 .. t-1, then into the target.
        # Round r steps every cycle that is still on its way (i > r) into frame t-(i-r): one call
        # per round, then one call for all cycles into the target.
        theta_long = [theta_skip[0]]  # i = 1 is the same computation as skip 1
        queries = {i: backward[i - 1] for i in range(2, k + 1)}
        for r in range(1, k):
            cycles = [i for i in queries if i > r]
            out = track([frame(i - r) for i in cycles], [queries[i] for i in cycles])
            queries.update(zip(cycles, out["features"]))
        if queries:
            theta_long += track([target_feats] * len(queries), list(queries.values()))["theta"]
        return {
            "theta_long": keras.ops.stack(theta_long, axis=1),
            "theta_skip": keras.ops.stack(theta_skip, axis=1),
            "theta_first": keras.ops.stack(first["theta"], axis=1),
            "theta_self": theta_self,
            "affinity_first": keras.ops.stack(first["affinity"], axis=1),
            "tracked_first": keras.ops.stack(first["features"], axis=1),
            "query": query,
        }

    def compute_losses(self, batch, outputs):
        """`losses.cycle_losses` of a batch and this model's outputs, with its weights."""
        return tlosses.cycle_losses(
            outputs, batch["theta"], (self.feature_size, self.feature_size),
            similarity=self.similarity, long_weight=self.long_weight,
            skip_weight=self.skip_weight, sim_weight=self.sim_weight,
            self_weight=self.self_weight, sim_theta_grad=self.sim_theta_grad)

    # ----------------------------------------------------------------------------- training
    def build_from_crop(self):
        """Builds all weights with a symbolic batch of the configured size."""
        s, p = self.crop_size, tops.patch_size(self.crop_size)
        self({"past": keras.KerasTensor((None, self.num_past, s, s, 3)),
              "target": keras.KerasTensor((None, s, s, 3)),
              "patch": keras.KerasTensor((None, p, p, 3))})

    def get_config(self):
        config = super().get_config()
        config.update(depth=self.depth, num_past=self.num_past, crop_size=self.crop_size,
                      similarity=self.similarity, long_weight=self.long_weight,
                      skip_weight=self.skip_weight, sim_weight=self.sim_weight,
                      self_weight=self.self_weight, sim_theta_grad=self.sim_theta_grad,
                      temperature=self.temperature, freeze_encoder=self.freeze_encoder,
                      grad_clip_norm=self.grad_clip_norm, sync_batchnorm=self.sync_batchnorm,
                      encoder_padding=self.encoder_padding, bn_groups=self.bn_groups)
        return config

