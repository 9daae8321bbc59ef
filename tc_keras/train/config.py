"""All training flags, and the frozen dataclasses they are made from.

Each setting is a field of `DataConfig`, `ModelConfig`, `TrainConfig` or `WalkConfig`, with its
default and its help text side by side (`_field`); `define_flags()` registers one absl flag per
field (called by tc_keras.train), so a default is written once. `Config.from_flags(FLAGS)` turns
parsed flags into validated, frozen dataclasses, the only place where flags become values;
`model_kwargs`, `walk_kwargs`, `clip_kwargs`, `walk_clip_kwargs`, `learning_rate` and
`build_model` the only places where a config becomes constructor arguments. Library code never
reads FLAGS. Defaults are the paper's settings (docs/METHOD.md, "Training data and schedule"),
named where they are used (tc_keras.ops, losses, model, data.pipeline); under `--objective=walk`
the flags named in `WALK_DEFAULTS` default to the follow-up work's values instead, and
`WalkConfig` holds the settings of the walk alone.
"""

import dataclasses
import json

import keras
from absl import flags

from tc_keras.model import contrastive_walk as twalk_model
from tc_keras.model import losses as tlosses
from tc_keras.model import timecycle as tmodel
from tc_keras.model import walk as twalk
from tc_keras import flag_fields
from tc_keras import ops as tops
from tc_keras.flag_fields import field as _field
from tc_keras.data import clip_layout, pipeline, synthetic, walk_clips

ENCODERS = {"resnet18": 18, "resnet50": 50}
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
SYNTHETIC = "synthetic"
OBJECTIVES = ("cycle", "walk")
# The defaults of shared flags that differ under --objective=walk: the follow-up work's training
# command (docs/METHOD.md, "Contrastive random walk"). The fields below hold the cycle's; a flag
# given on the command line or in a flagfile keeps its value under either objective.
WALK_DEFAULTS = dict(encoder="resnet18", crop_size=tops.WALK_FRAME_SIZE, batch_size=20,
                     learning_rate=twalk_model.LEARNING_RATE, beta_1=twalk_model.BETA_1,
                     grad_clip_norm=0.0)


def _check(condition, message):
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data: str = _field(SYNTHETIC, "Comma-separated training data: prepared shards (folder, "
                       "manifest.jsonl or glob, see tools/prepare_vlog.py), a list file (.txt) or "
                       "folder of raw videos (prepared into <workdir>/prepared/<name>), and/or "
                       "'synthetic' (a small generated corpus in <workdir>/data; no download).")
    synthetic_videos: int = _field(synthetic.NUM_VIDEOS, "Videos in the synthetic corpus (count).")
    synthetic_frames: int = _field(synthetic.FRAMES, "Frames per synthetic video (count).")
    synthetic_size: int = _field(synthetic.SIZE, "Height and width of synthetic videos (px).")
    num_past: int = _field(tops.NUM_PAST, "k, past frames per clip (count).")
    frame_gap: int = _field(clip_layout.FRAME_GAP, "Gap between past frames at 12 fps (frames).")
    target_offset: int = _field(clip_layout.TARGET_OFFSET, "Target frame after the first past "
                                "frame (frames).")
    crop_size: int = _field(tops.CROP_SIZE, "Square training crop (px, a multiple of 24, at "
                            "least 168).")
    resize_short: int = _field(pipeline.RESIZE_SHORT, "Short side before cropping (px).")
    max_rotation_deg: float = _field(pipeline.MAX_ROTATION_DEG, "Patch rotation range +- "
                                     "(degrees).")
    rotation_ramp_steps: int = _field(0, "Grow the patch rotation range linearly from 0 to "
                                      "--max_rotation_deg over the first N steps (steps; 0 = the "
                                      "full range from the start, as in the paper).")
    shuffle_buffer: int = _field(pipeline.SHUFFLE_BUFFER, "Clip shuffle buffer (clips).")
    deterministic: bool = _field(False, "Deterministic input pipeline (slower).")

    def __post_init__(self):
        # The rules of the cycle's clips (crop, target offset) are checked by Config, which
        # knows the objective.
        _check(self.num_past >= 1, f"--num_past must be >= 1, got {self.num_past}")
        _check(self.frame_gap >= 1, f"--frame_gap must be >= 1, got {self.frame_gap}")
        _check(self.max_rotation_deg >= 0 and self.rotation_ramp_steps >= 0,
               "--max_rotation_deg and --rotation_ramp_steps must be >= 0")
        _check(self.resize_short >= self.crop_size,
               f"--resize_short ({self.resize_short}) must be >= --crop_size ({self.crop_size})")
        _check(self.synthetic_videos >= 1, "--synthetic_videos must be >= 1")

    def check_cycle(self):
        """Raises ValueError naming the flag unless the cycle's clips can be cut."""
        _check(self.target_offset > (self.num_past - 1) * self.frame_gap,
               f"--target_offset ({self.target_offset}) must be after the last past frame "
               f"({(self.num_past - 1) * self.frame_gap})")
        try:
            tmodel.check_crop_size(self.crop_size)
        except ValueError as e:
            raise ValueError(f"--{e}") from None
        _check(self.synthetic_frames > self.target_offset,
               "--synthetic_frames must be > --target_offset")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    objective: str = _field("cycle", "Training objective: 'cycle' (TimeCycle, the paper) or "
                            "'walk' (the contrastive random walk of the follow-up work, "
                            "docs/METHOD.md 'Contrastive random walk'; flags --clip_len .. "
                            "--walk_res5, and other defaults where a help says so).",
                            choices=OBJECTIVES)
    encoder: str = _field("resnet50", "Encoder trunk.", choices=tuple(ENCODERS))
    similarity: str = _field("inlier", "Similarity term: 'inlier' (reference code) or "
                             "'inner_product' (paper).", choices=tlosses.SIMILARITIES)
    long_weight: float = _field(tlosses.LONG_WEIGHT, "Weight of mean_i L_long^i.")
    skip_weight: float = _field(tlosses.SKIP_WEIGHT, "Weight of mean_i L_skip^i.")
    sim_weight: float = _field(tlosses.SIM_WEIGHT, "Weight of the similarity term.")
    self_weight: float = _field(tlosses.SELF_WEIGHT, "Weight of the self-localisation term (the "
                                "patch localised in its own frame against its known theta); not "
                                "in the paper.")
    sim_theta_grad: bool = _field(True, "The inlier similarity's gradient reaches theta and so "
                                  "the localizer, as in the reference code (docs/METHOD.md, 'Gradient "
                                  "paths'); --nosim_theta_grad stops it (ablation; inlier only).")
    sync_batchnorm: bool = _field(False, "BatchNorm statistics over all replicas.")
    bn_groups: str = _field("separate", "Frames the encoder's BatchNorm normalises as one batch "
                            "in training: 'separate' (reference code: past frames, then "
                            "patches, then targets, three batches) or 'joint' (past frames and "
                            "targets as one batch, then patches; ablation, and what runs "
                            "before this flag trained with).", choices=tmodel.BN_GROUPS)
    mixed_precision: bool = _field(False, "mixed_bfloat16 policy for the encoder (GPUs with "
                                   "bf16, i.e. Ampere or newer, and CPUs with AVX-512 BF16 or AMX; "
                                   "about 3x slower on CPUs without them); the tracker stays "
                                   "float32.")

    def __post_init__(self):
        _check(self.objective in OBJECTIVES, f"--objective must be one of {OBJECTIVES}, "
               f"got {self.objective!r}")
        _check(self.encoder in ENCODERS, f"--encoder must be one of {sorted(ENCODERS)}, "
               f"got {self.encoder!r}")
        try:
            tlosses.check_similarity(self.similarity, self.sim_theta_grad)
        except ValueError as e:
            raise ValueError(f"--{e}") from None
        for name in ("long_weight", "skip_weight", "sim_weight", "self_weight"):
            _check(getattr(self, name) >= 0, f"--{name} must be >= 0")
        _check(self.bn_groups in tmodel.BN_GROUPS,
               f"--bn_groups must be one of {tmodel.BN_GROUPS}, got {self.bn_groups!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    workdir: str = _field("", "Run folder: checkpoints, TensorBoard logs, config.json, "
                          "encoder.keras. Rerunning with the same workdir resumes. Required.")
    batch_size: int = _field(36, "Global batch size (clips, split over replicas).")
    train_steps: int = _field(0, "Optimizer steps in total; 0 = --epochs passes over the videos "
                              "(one clip per video per epoch).")
    epochs: int = _field(30, "Epochs when --train_steps is 0 (count).")
    learning_rate: float = _field(tmodel.LEARNING_RATE, "Adam learning rate.")
    beta_1: float = _field(tmodel.BETA_1, "Adam beta_1.")
    beta_2: float = _field(tmodel.BETA_2, "Adam beta_2.")
    grad_clip_norm: float = _field(tmodel.GRAD_CLIP_NORM, "Global gradient-norm clip (0 = none).")
    freeze_encoder_steps: int = _field(0, "Train only the tracker (walk: res5 and the head) "
                                       "with the encoder frozen for the first N steps, then end "
                                       "to end (steps).")
    checkpoint_every: int = _field(500, "Checkpoint period (steps); also saved on exit.")
    log_every: int = _field(50, "Log line and TensorBoard scalars period (steps).")
    image_every: int = _field(500, "TensorBoard images of tracked boxes period (steps; 0 = "
                              "never; --objective=cycle only).")
    lr_milestones: str = _field("", "Comma-separated steps at which the learning rate is "
                                "multiplied by --lr_gamma (steps; empty = constant, as the "
                                "paper's run).")
    lr_gamma: float = _field(0.3, "Learning-rate factor at each of --lr_milestones (the "
                             "follow-up work's reference code's).")
    init_from: str = _field("", "Start a new run's encoder from this folder's encoder.keras (a "
                            "training workdir, or tools/convert_weights.py output such as "
                            "--from crw for --objective=walk); the same architecture is "
                            "required. Ignored when the workdir resumes.")
    strategy: str = _field("auto", "Distribution: auto = MultiWorkerMirroredStrategy when "
                           "TF_CONFIG names several workers, else MirroredStrategy over the "
                           "visible GPUs, else the default (one device).", choices=STRATEGIES)
    seed: int = _field(0, "Random seed (initialisation and data).")

    def __post_init__(self):
        _check(bool(self.workdir), "--workdir is required")
        _check(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        _check(self.train_steps >= 0 and self.epochs >= 1, "--train_steps must be >= 0 and "
               "--epochs >= 1")
        _check(self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}")
        _check(self.grad_clip_norm >= 0, "--grad_clip_norm must be >= 0")
        _check(self.freeze_encoder_steps >= 0, "--freeze_encoder_steps must be >= 0")
        _check(self.checkpoint_every >= 1 and self.log_every >= 1 and self.image_every >= 0,
               "--checkpoint_every and --log_every must be >= 1, --image_every >= 0")
        _check(self.strategy in STRATEGIES, f"--strategy must be one of {STRATEGIES}")
        try:
            steps = self.milestones()
        except ValueError:
            steps = None
        _check(steps is not None and all(a < b for a, b in zip([0, *steps], steps)),
               f"--lr_milestones must be increasing positive steps, e.g. 1000,2000; got "
               f"{self.lr_milestones!r}")
        _check(self.lr_gamma > 0, f"--lr_gamma must be > 0, got {self.lr_gamma}")

    def milestones(self):
        """--lr_milestones as a list of ints."""
        return [int(v) for v in self.lr_milestones.split(",") if v.strip()]


@dataclasses.dataclass(frozen=True)
class WalkConfig:
    """The contrastive random walk's own settings (--objective=walk; docs/METHOD.md,
    "Contrastive random walk"). --crop_size is the side of its frames."""
    clip_len: int = _field(tops.WALK_CLIP_LEN, "Walk: frames per clip; the walks go 2 .. "
                           "clip_len - 1 frames out and back (count).")
    nodes: str = _field("patches", "Walk: graph nodes, a grid of patches per frame ('patches', "
                        "the reference's) or the feature cells of whole frames ('cells').",
                        choices=tops.WALK_NODES)
    node_patch: int = _field(tops.WALK_NODE_PATCH, "Walk: side of a node's patch (px of the "
                             "--crop_size frame; a multiple of 8).")
    node_stride: int = _field(tops.WALK_NODE_STRIDE, "Walk: step of the patch grid (px).")
    walk_temperature: float = _field(twalk.TEMPERATURE, "Walk: temperature of the transition "
                                     "softmax.")
    edge_dropout: float = _field(twalk.EDGE_DROPOUT, "Walk: fraction of transitions dropped in "
                                 "training (0 = none).")
    head_dim: int = _field(twalk_model.HEAD_DIM, "Walk: output dimension of the linear head "
                           "(count).")
    walk_res5: bool = _field(True, "Walk: train through res5 (at stride 1) before the head, as "
                             "the reference; encoder.keras ends at res4 either way.")

    def __post_init__(self):
        _check(self.walk_temperature > 0, f"--walk_temperature must be > 0, got "
               f"{self.walk_temperature}")
        _check(0 <= self.edge_dropout < 1, f"--edge_dropout must be in [0, 1), got "
               f"{self.edge_dropout}")
        _check(self.head_dim >= 1, f"--head_dim must be >= 1, got {self.head_dim}")


SECTIONS = (DataConfig, ModelConfig, TrainConfig, WalkConfig)
# What a stored config.json written before a field existed means by its absence, where that is
# not the field's default: runs before --bn_groups trained with the joint batch.
PREDATING = {"model": {"bn_groups": "joint"}}
def define_flags(flag_values=flags.FLAGS):
    """Registers one flag per config field (idempotent); the help ends with the default."""
    for section in SECTIONS:
        for field in dataclasses.fields(section):
            if field.name in flag_values:
                continue
            help_text, choices = field.metadata["help"], field.metadata["choices"]
            default = "" if field.default == "" else f" Default: {flag_fields.shown(field.default)}."
            if field.name in WALK_DEFAULTS:
                default = (f" Default: {flag_fields.shown(field.default)}; "
                           f"{flag_fields.shown(WALK_DEFAULTS[field.name])} with --objective=walk.")
            text = help_text + default
            if choices:
                flags.DEFINE_enum(field.name, field.default, list(choices), text,
                                  flag_values=flag_values)
            else:
                flag_fields.DEFINE[field.type](field.name, field.default, text, flag_values=flag_values)


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    walk: WalkConfig = dataclasses.field(default_factory=WalkConfig)

    def __post_init__(self):
        if self.model.objective == "cycle":
            self.data.check_cycle()
            return
        w = self.walk
        try:
            twalk_model.check_walk_geometry(w.clip_len, self.data.crop_size, w.nodes,
                                            w.node_patch, w.node_stride)
        except ValueError as e:
            raise ValueError(f"--{e}") from None
        _check(self.data.rotation_ramp_steps == 0,
               "--rotation_ramp_steps applies to --objective=cycle only")
        _check(self.data.synthetic_frames >= w.clip_len,
               "--synthetic_frames must be >= --clip_len")

    @classmethod
    def from_flags(cls, flag_values):
        """Builds the config from parsed absl flags (ValueError naming the flag when invalid).
        Under --objective=walk, a flag left at its default takes `WALK_DEFAULTS`' value."""
        walk = flag_values["objective"].value == "walk"

        def value(name):
            flag = flag_values[name]
            if walk and name in WALK_DEFAULTS and flag.using_default_value:
                return WALK_DEFAULTS[name]
            return flag.value

        def take(dc):
            return dc(**{f.name: value(f.name) for f in dataclasses.fields(dc)})
        return cls(take(DataConfig), take(ModelConfig), take(TrainConfig), take(WalkConfig))

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        """The config of a `to_dict()` dict; fields it lacks take their `PREDATING` value, if
        any, else their default (a config.json written before the walk existed has no "walk")."""
        def take(dc, name):
            return dc(**{**PREDATING.get(name, {}), **d.get(name, {})})
        return cls(take(DataConfig, "data"), take(ModelConfig, "model"),
                   take(TrainConfig, "train"), take(WalkConfig, "walk"))


def clip_kwargs(config):
    """`tc_keras.data.pipeline.clip_dataset` keyword arguments of the clips a run trains on."""
    d = config.data
    return dict(num_past=d.num_past, frame_gap=d.frame_gap, target_offset=d.target_offset,
                crop_size=d.crop_size, resize_short=d.resize_short,
                max_rotation_deg=d.max_rotation_deg)


def walk_clip_kwargs(config):
    """`tc_keras.data.walk_clips.walk_clip_dataset` keyword arguments of a walk run's clips."""
    d, w = config.data, config.walk
    return dict(clip_len=w.clip_len, frame_gap=d.frame_gap, crop_size=d.crop_size,
                resize_short=d.resize_short, nodes=w.nodes, node_patch=w.node_patch,
                node_stride=w.node_stride)


def clip_source(config):
    """(dataset function, its clip keyword arguments) of the objective: `pipeline.clip_dataset`
    with `clip_kwargs` or `walk_clips.walk_clip_dataset` with `walk_clip_kwargs`."""
    if config.model.objective == "walk":
        return walk_clips.walk_clip_dataset, walk_clip_kwargs(config)
    return pipeline.clip_dataset, clip_kwargs(config)


def build_model(config):
    """The model a config describes: a TimeCycle or a ContrastiveWalk."""
    if config.model.objective == "walk":
        return twalk_model.ContrastiveWalk(**walk_kwargs(config))
    return tmodel.TimeCycle(**model_kwargs(config))


def learning_rate(config):
    """The optimizer's learning rate: a float, or a schedule dropping it by --lr_gamma at each
    of --lr_milestones."""
    t = config.train
    steps = t.milestones()
    if not steps:
        return t.learning_rate
    values = [t.learning_rate * t.lr_gamma ** i for i in range(len(steps) + 1)]
    # The schedule reads the count of steps done; it takes the next value after a boundary, so
    # the step that follows the first s steps (the optimizer's iteration s) runs at the new rate.
    return keras.optimizers.schedules.PiecewiseConstantDecay([s - 1 for s in steps], values)


def walk_kwargs(config):
    """The one place where config becomes ContrastiveWalk constructor kwargs."""
    m, d, t, w = config.model, config.data, config.train, config.walk
    return dict(depth=ENCODERS[m.encoder], clip_len=w.clip_len, crop_size=d.crop_size,
                nodes=w.nodes, node_patch=w.node_patch, node_stride=w.node_stride,
                temperature=w.walk_temperature, edge_dropout=w.edge_dropout,
                head_dim=w.head_dim, res5=w.walk_res5,
                freeze_encoder=t.freeze_encoder_steps > 0,
                grad_clip_norm=t.grad_clip_norm or None, sync_batchnorm=m.sync_batchnorm)


def model_kwargs(config):
    """The one place where config becomes TimeCycle constructor kwargs."""
    m, d, t = config.model, config.data, config.train
    return dict(depth=ENCODERS[m.encoder], num_past=d.num_past, crop_size=d.crop_size,
                similarity=m.similarity, long_weight=m.long_weight, skip_weight=m.skip_weight,
                sim_weight=m.sim_weight, self_weight=m.self_weight,
                sim_theta_grad=m.sim_theta_grad, freeze_encoder=t.freeze_encoder_steps > 0,
                grad_clip_norm=t.grad_clip_norm or None, sync_batchnorm=m.sync_batchnorm,
                bn_groups=m.bn_groups)
