"""The contrastive random walk model: nodes, walks, loss (docs/METHOD.md, "Contrastive random walk").

A batch is a dict (see tc_keras/data/walk_clips.py; T frames, N nodes per frame):
  patches (B, T, N, P, P, 3)  nodes="patches": each node's patch, normalised
  frames  (B, T, S, S, 3)     nodes="cells": whole frames; each feature cell is a node

The encoder is the one the tools use: a ResNet trunk cut after res4 at stride 8, with no 1x1
projection, L2-normalised over channels (as the follow-up work's released encoder and its test
code). Training reads its features before that normalisation and runs them through res5 (at
stride 1), an average pool over each patch, a linear head and L2 normalisation; res5 and the head
serve only the training objective and are not in encoder.keras (the reference drops them at test
time too).
"""

import keras
from keras import layers, ops

from tc_keras import ops as tops
from tc_keras.model import initializers
from tc_keras.model import walk as twalk
from tc_keras.model.encoder import FEATURE_STRIDE, ResNetEncoder, res5_blocks
from tc_keras.model.objective_model import ObjectiveModel

# Optimiser of the follow-up work's training command: Adam at 1e-4 with PyTorch's default betas,
# no gradient clipping (docs/METHOD.md, "Contrastive random walk").
LEARNING_RATE = 1e-4
BETA_1 = 0.9
BETA_2 = 0.999
# Output dimension of the linear head (docs/METHOD.md, "Contrastive random walk").
HEAD_DIM = 128
# The smallest node patch: two cells a side at stride 8 (reflect padding needs more pixels than
# it pads at every layer).
MIN_NODE_PATCH = 2 * FEATURE_STRIDE


def check_walk_geometry(clip_len, crop_size, nodes, node_patch, node_stride):
    """Raises ValueError naming the argument unless clips of `clip_len` frames of `crop_size` px
    make nodes of the `nodes` variant (the rule of the model and of the walk's flags)."""
    if clip_len < 3:
        raise ValueError(f"clip_len must be >= 3 (the shortest walk goes 2 frames out and back), "
                         f"got {clip_len}")
    if nodes not in tops.WALK_NODES:
        raise ValueError(f"nodes must be one of {tops.WALK_NODES}, got {nodes!r}")
    if crop_size % FEATURE_STRIDE or crop_size < MIN_NODE_PATCH:
        raise ValueError(f"crop_size must be a multiple of {FEATURE_STRIDE} and at least "
                         f"{MIN_NODE_PATCH} for the walk, got {crop_size}")
    if nodes == "patches" and (node_patch % FEATURE_STRIDE or not
                               MIN_NODE_PATCH <= node_patch <= crop_size or node_stride < 1):
        raise ValueError(f"node_patch must be a multiple of {FEATURE_STRIDE} between "
                         f"{MIN_NODE_PATCH} and crop_size ({crop_size}), and node_stride >= 1; "
                         f"got {node_patch} and {node_stride}")


@keras.saving.register_keras_serializable(package="tc_keras")
class ContrastiveWalk(ObjectiveModel):
    """Encoder trained by contrastive random walks on a space-time graph of each clip.

    Args:
      depth: encoder depth, 18 (the follow-up work's) or 50.
      clip_len: T, frames per clip (4); walks go 2..T-1 frames out and back.
      crop_size: S, training frame side (256).
      nodes: "patches" (a grid of patches per frame, the reference's default) or "cells" (the
        feature cells of whole frames).
      node_patch, node_stride: patch side and grid step in pixels (64, 32: 7x7 nodes at 256).
      temperature: transition softmax temperature (0.05).
      edge_dropout: fraction of transitions dropped in training (0.1).
      head_dim: output dimension of the linear head (128).
      res5: train through res5 at stride 1 before the head, as the reference (True); False puts
        the head on the encoder's own features.
      freeze_encoder: train only what follows the encoder (res5 and the head).
      grad_clip_norm: clip the all-replica gradient to this global norm (None: no clipping, as
        the reference).
      sync_batchnorm: BatchNorm statistics over all replicas (see ResNetEncoder).
      encoder_padding: the encoder's (and res5's) padding mode: "reflect" as the reference and
        its released weights (tc_keras/convert/releases.py).

    Call arguments:
      inputs: dict with `patches` (B, T, N, P, P, 3) or `frames` (B, T, S, S, 3) (see the
        module docstring).

    Returns:
      dict: `nodes` (B, T, N, head_dim) unit length; `forward`, `backward` (B, T-1, N, N) the
      transition matrices (WalkTransitions). N = node_grid**2 for patches, (S / 8)**2 for cells.
    """

    ADAM = dict(learning_rate=LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2)

    def __init__(self, depth=18, clip_len=tops.WALK_CLIP_LEN, crop_size=tops.WALK_FRAME_SIZE,
                 nodes="patches", node_patch=tops.WALK_NODE_PATCH,
                 node_stride=tops.WALK_NODE_STRIDE, temperature=twalk.TEMPERATURE,
                 edge_dropout=twalk.EDGE_DROPOUT, head_dim=HEAD_DIM, res5=True,
                 freeze_encoder=False, grad_clip_norm=None, sync_batchnorm=False,
                 encoder_padding="reflect", **kwargs):
        super().__init__(**kwargs)
        check_walk_geometry(clip_len, crop_size, nodes, node_patch, node_stride)
        if head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {head_dim}")
        self.depth = depth
        self.clip_len = clip_len
        self.crop_size = crop_size
        self.nodes = nodes
        self.node_patch = node_patch
        self.node_stride = node_stride
        self.temperature = temperature
        self.edge_dropout = edge_dropout
        self.head_dim = head_dim
        self.res5 = res5
        self.freeze_encoder = freeze_encoder
        self.grad_clip_norm = grad_clip_norm
        self.sync_batchnorm = sync_batchnorm
        self.encoder_padding = encoder_padding
        if nodes == "patches":
            self.num_nodes = tops.node_grid(crop_size, node_patch, node_stride) ** 2
        else:
            self.num_nodes = (crop_size // FEATURE_STRIDE) ** 2
        self.encoder = ResNetEncoder(depth=depth, out_channels=None, normalize=True,
                                     sync_batchnorm=sync_batchnorm, padding=encoder_padding,
                                     name="encoder")
        self.res5_blocks = (res5_blocks(depth, sync_batchnorm, encoder_padding) if res5 else [])
        fan_in = self.res5_blocks[-1].convs[-1].filters if res5 else self.encoder.feature_channels
        # The similarities need float32 even under a mixed-precision policy.
        self.head = layers.Dense(head_dim, name="head", dtype="float32",
                                 kernel_initializer=initializers.linear_uniform(fan_in),
                                 bias_initializer=initializers.linear_uniform(fan_in))
        self.transitions = twalk.WalkTransitions(temperature=temperature,
                                                 edge_dropout=edge_dropout, name="transitions",
                                                 dtype="float32")
        self.track_terms(twalk.walk_terms(clip_len) + ["grad_norm"])

    # ----------------------------------------------------------------------------- forward
    def _features(self, images, training):
        """(M, h, w, 3) images -> (M, h/8, w/8, C) float32 features of res4 (res5 if used),
        before any normalisation."""
        x = self.encoder(images, training=training, normalize=False)
        for block in self.res5_blocks:
            x = block(x, training=training)
        return ops.cast(x, "float32")

    def call(self, inputs, training=None):
        t, n = self.clip_len, self.num_nodes
        if self.nodes == "patches":
            x = inputs["patches"]
            p = self.node_patch
            # (B, T, N, P, P, 3) -> (B*T*N, P, P, 3): every patch of the batch in one encoder
            # call (one BatchNorm batch, as the reference).
            maps = self._features(ops.reshape(x, (-1, p, p, 3)), training)
            pooled = ops.mean(maps, axis=(1, 2))  # (B*T*N, C): the patch's mean feature
        else:
            x = inputs["frames"]
            s = self.crop_size
            # (B, T, S, S, 3) -> (B*T, S, S, 3)
            maps = self._features(ops.reshape(x, (-1, s, s, 3)), training)
            # (B*T, h, w, C) -> (B*T*N, C): each cell a node
            pooled = ops.reshape(maps, (-1, maps.shape[-1]))
        # (B*T*N, C) -> (B, T, N, C)
        feats = ops.reshape(pooled, (-1, t, n, pooled.shape[-1]))
        nodes = tops.l2_normalize(self.head(feats), axis=-1)  # (B, T, N, D)
        forward, backward = self.transitions(nodes, training=training)
        return {"nodes": nodes, "forward": forward, "backward": backward}

    def compute_losses(self, batch, outputs):
        """`walk.palindrome_losses` of this model's outputs (the batch holds no labels)."""
        del batch
        return twalk.palindrome_losses(outputs["forward"], outputs["backward"])

    # ----------------------------------------------------------------------------- training
    def build_from_crop(self):
        """Builds all weights with a symbolic batch of the configured size."""
        t, s, p = self.clip_len, self.crop_size, self.node_patch
        if self.nodes == "patches":
            self({"patches": keras.KerasTensor((None, t, self.num_nodes, p, p, 3))})
        else:
            self({"frames": keras.KerasTensor((None, t, s, s, 3))})

    def get_config(self):
        config = super().get_config()
        config.update(depth=self.depth, clip_len=self.clip_len, crop_size=self.crop_size,
                      nodes=self.nodes, node_patch=self.node_patch, node_stride=self.node_stride,
                      temperature=self.temperature, edge_dropout=self.edge_dropout,
                      head_dim=self.head_dim, res5=self.res5, freeze_encoder=self.freeze_encoder,
                      grad_clip_norm=self.grad_clip_norm, sync_batchnorm=self.sync_batchnorm,
                      encoder_padding=self.encoder_padding)
        return config

