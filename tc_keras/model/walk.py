"""The contrastive random walk's objective (docs/METHOD.md, "Contrastive random walk"): transition
matrices between neighbouring frames' nodes, and the cross-entropy of palindrome walks.

`WalkTransitions` is a layer (it draws the edge dropout); `palindrome_losses` a function of its
outputs returning a dict of scalars. `keras.ops` only.
"""

import keras
from keras import layers, ops

# Temperature of the transition softmax and edge dropout rate: the follow-up work's training
# command (docs/METHOD.md, "Contrastive random walk").
TEMPERATURE = 0.05
EDGE_DROPOUT = 0.1
# What the reference writes into a dropped edge's similarity before the softmax (a large
# negative number rather than -inf: a row with every edge dropped stays finite, uniform).
DROPPED_SIMILARITY = -1e20
# Added to a round trip's probabilities before the log, as the reference does.
LOG_EPSILON = 1e-20


@keras.saving.register_keras_serializable(package="tc_keras")
class WalkTransitions(layers.Layer):
    """Row-stochastic transitions between the nodes of neighbouring frames, with edge dropout.

    forward[:, t] = softmax over the nodes of frame t+1 of sim(t, t+1) / temperature;
    backward[:, t] = softmax over the nodes of frame t of sim(t, t+1)^T / temperature. In
    training, edge dropout sets a random `edge_dropout` fraction of the similarities to
    `DROPPED_SIMILARITY` before each softmax. As in the reference, where the forward softmax
    drops edges in place in the affinity that the backward one then transposes, a backward
    matrix also loses the edges its forward matrix lost, then a fraction of its own.

    Args:
      temperature: softmax temperature (0.05).
      edge_dropout: fraction of edges dropped in training (0.1); 0 for none.
      seed: seed of the dropout's generator (None: drawn from Keras' global seed).

    Call arguments:
      nodes: (B, T, N, D) node embeddings, unit length over D.
      training: draw the edge dropout.

    Returns:
      (forward, backward), each (B, T-1, N, N), rows summing to 1.
    """

    def __init__(self, temperature=TEMPERATURE, edge_dropout=EDGE_DROPOUT, seed=None, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"WalkTransitions temperature must be > 0, got {temperature}")
        if not 0 <= edge_dropout < 1:
            raise ValueError(f"WalkTransitions edge_dropout must be in [0, 1), got {edge_dropout}")
        self.temperature = temperature
        self.edge_dropout = edge_dropout
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, nodes, training=None):
        nodes = ops.cast(nodes, "float32")
        # (B, T-1, N, D) x (B, T-1, M, D) -> (B, T-1, N, M): frame t's nodes against t+1's.
        sim = ops.einsum("btnd,btmd->btnm", nodes[:, :-1], nodes[:, 1:])
        sim_back = ops.swapaxes(sim, -1, -2)  # (B, T-1, M, N): from frame t+1 back to t
        if training and self.edge_dropout > 0:
            # An edge is dropped where its uniform draw is under the rate; a backward edge where
            # its forward edge's draw or a draw of its own is (the minimum of the two).
            draw = keras.random.uniform(ops.shape(sim), seed=self.seed_generator)
            draw_back = ops.minimum(
                ops.swapaxes(draw, -1, -2),
                keras.random.uniform(ops.shape(sim_back), seed=self.seed_generator))
            sim = ops.where(draw < self.edge_dropout, DROPPED_SIMILARITY, sim)
            sim_back = ops.where(draw_back < self.edge_dropout, DROPPED_SIMILARITY, sim_back)
        return (ops.softmax(sim / self.temperature, axis=-1),
                ops.softmax(sim_back / self.temperature, axis=-1))

    def compute_output_shape(self, nodes_shape):
        b, t, n, _ = nodes_shape
        shape = (b, None if t is None else t - 1, n, n)
        return shape, shape

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, edge_dropout=self.edge_dropout, seed=self.seed)
        return config


def palindrome_losses(forward, backward):
    """Cross-entropy of the palindrome walks of a clip against returning to their start node.

    For k = 2 .. T-1, the walk from frame 0 to frame k and back, forward[0] @ ... @ forward[k-1]
    @ backward[k-1] @ ... @ backward[0], is a (B, N, N) matrix whose row n is where node n of
    frame 0 ends. Its loss is the cross-entropy of each row against n, averaged over the batch
    and the nodes; the total is the mean over the walks. As in the reference, the one-step walk
    (frame 0 -> 1 -> 0) is not among them, and the cross-entropy reads log(p + 1e-20) as logits.

    Args:
      forward, backward: (B, T-1, N, N) from `WalkTransitions`, T >= 3 known statically.
    Returns:
      dict of scalars: `loss`; `acc` the mean over walks of the fraction of nodes whose most
      likely end is their start; `xent_k`, `acc_k` of the walk turning at frame k.
    """
    steps = forward.shape[1]
    if steps is None or steps < 2:
        raise ValueError(f"palindrome_losses needs clips of at least 3 frames (transitions "
                         f"(B, T-1, N, N) with T-1 >= 2), got {forward.shape}")
    fw = ops.unstack(forward, axis=1)  # T-1 x (B, N, N)
    bw = ops.unstack(backward, axis=1)
    n = forward.shape[-1]
    start = ops.arange(n)  # (N,): node n should come back to n
    # Picks the diagonal by a product with the identity: ops.diagonal's gradient loses its
    # shape inside a replica of a tf.distribute step (TensorFlow's MatrixDiagV3).
    home = ops.eye(n, dtype="float32")  # (N, N)
    there, back = fw[0], bw[0]
    out = {}
    for k in range(2, steps + 1):
        there = ops.matmul(there, fw[k - 1])  # (B, N, N): frame 0 -> frame k
        back = ops.matmul(bw[k - 1], back)  # (B, N, N): frame k -> frame 0
        walk = ops.matmul(there, back)  # (B, N, N): frame 0 -> k -> 0
        logits = ops.log(walk + LOG_EPSILON)
        log_prob = ops.log_softmax(logits, axis=-1)
        out[f"xent_{k}"] = -ops.mean(ops.sum(log_prob * home, axis=-1))  # mean of the diagonal
        hits = ops.equal(ops.argmax(logits, axis=-1), start)  # (B, N)
        out[f"acc_{k}"] = ops.mean(ops.cast(hits, "float32"))
    walks = range(2, steps + 1)
    out["loss"] = ops.mean(ops.stack([out[f"xent_{k}"] for k in walks]))
    out["acc"] = ops.mean(ops.stack([out[f"acc_{k}"] for k in walks]))
    return out


def walk_terms(clip_len):
    """Names of the scalars `palindrome_losses` returns for clips of `clip_len` frames."""
    names = ["loss", "acc"]
    for k in range(2, clip_len):
        names += [f"xent_{k}", f"acc_{k}"]
    return names
