"""All training flags, and the frozen dataclasses they are made from.

Each setting is a field of `DataConfig`, `ModelConfig` or `TrainConfig`, with its default and its
help text side by side (`_field`); `define_flags()` registers one absl flag per field (called by
tc_keras.train), so a default is written once. `Config.from_flags(FLAGS)` turns parsed flags into
validated, frozen dataclasses, the only place where flags become values; `model_kwargs`,
`clip_kwargs` and `build_model` the only places where a config becomes constructor arguments.
Library code never reads FLAGS. Defaults are the paper's settings (docs/METHOD.md, "Training data and
schedule"), named where they are used (tc_keras.ops, losses, model, data.pipeline).
"""

import dataclasses
import json

from absl import flags

from tc_keras.model import losses as tlosses
from tc_keras.model import timecycle as tmodel
from tc_keras import ops as tops
from tc_keras.data import clip_layout, pipeline, synthetic

ENCODERS = {"resnet18": 18, "resnet50": 50}
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
SYNTHETIC = "synthetic"


def _field(default, help, choices=None):
    """A config field: its default, the help text of its flag, and its choices (an enum flag)."""
    return dataclasses.field(default=default, metadata=dict(help=help, choices=choices))


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
        _check(self.num_past >= 1, f"--num_past must be >= 1, got {self.num_past}")
        _check(self.frame_gap >= 1, f"--frame_gap must be >= 1, got {self.frame_gap}")
        _check(self.target_offset > (self.num_past - 1) * self.frame_gap,
               f"--target_offset ({self.target_offset}) must be after the last past frame "
               f"({(self.num_past - 1) * self.frame_gap})")
        try:
            tmodel.check_crop_size(self.crop_size)
        except ValueError as e:
            raise ValueError(f"--{e}") from None
        _check(self.max_rotation_deg >= 0 and self.rotation_ramp_steps >= 0,
               "--max_rotation_deg and --rotation_ramp_steps must be >= 0")
        _check(self.resize_short >= self.crop_size,
               f"--resize_short ({self.resize_short}) must be >= --crop_size ({self.crop_size})")
        _check(self.synthetic_videos >= 1 and self.synthetic_frames > self.target_offset,
               "--synthetic_videos must be >= 1 and --synthetic_frames > --target_offset")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
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
    freeze_encoder_steps: int = _field(0, "Train only the tracker (encoder frozen) for the first "
                                       "N steps, then end to end (steps).")
    checkpoint_every: int = _field(500, "Checkpoint period (steps); also saved on exit.")
    log_every: int = _field(50, "Log line and TensorBoard scalars period (steps).")
    image_every: int = _field(500, "TensorBoard images of tracked boxes period (steps; 0 = "
                              "never).")
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


SECTIONS = (DataConfig, ModelConfig, TrainConfig)
# What a stored config.json written before a field existed means by its absence, where that is
# not the field's default: runs before --bn_groups trained with the joint batch.
PREDATING = {"model": {"bn_groups": "joint"}}
_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}


def shown(value):
    """A flag value as a user types it on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def define_flags(flag_values=flags.FLAGS):
    """Registers one flag per config field (idempotent); the help ends with the default."""
    for section in SECTIONS:
        for field in dataclasses.fields(section):
            if field.name in flag_values:
                continue
            help_text, choices = field.metadata["help"], field.metadata["choices"]
            default = "" if field.default == "" else f" Default: {shown(field.default)}."
            text = help_text + default
            if choices:
                flags.DEFINE_enum(field.name, field.default, list(choices), text,
                                  flag_values=flag_values)
            else:
                _DEFINE[field.type](field.name, field.default, text, flag_values=flag_values)


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig

    @classmethod
    def from_flags(cls, flag_values):
        """Builds the config from parsed absl flags (ValueError naming the flag when invalid)."""
        def take(dc):
            return dc(**{f.name: flag_values[f.name].value for f in dataclasses.fields(dc)})
        return cls(take(DataConfig), take(ModelConfig), take(TrainConfig))

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        """The config of a `to_dict()` dict; fields it lacks take their `PREDATING` value, if
        any, else their default."""
        def take(dc, name):
            return dc(**{**PREDATING.get(name, {}), **d[name]})
        return cls(take(DataConfig, "data"), take(ModelConfig, "model"),
                   take(TrainConfig, "train"))


def clip_kwargs(config):
    """`tc_keras.data.pipeline.clip_dataset` keyword arguments of the clips a run trains on."""
    d = config.data
    return dict(num_past=d.num_past, frame_gap=d.frame_gap, target_offset=d.target_offset,
                crop_size=d.crop_size, resize_short=d.resize_short,
                max_rotation_deg=d.max_rotation_deg)


def build_model(config):
    """The TimeCycle a config describes."""
    return tmodel.TimeCycle(**model_kwargs(config))


def model_kwargs(config):
    """The one place where config becomes TimeCycle constructor kwargs."""
    m, d, t = config.model, config.data, config.train
    return dict(depth=ENCODERS[m.encoder], num_past=d.num_past, crop_size=d.crop_size,
                similarity=m.similarity, long_weight=m.long_weight, skip_weight=m.skip_weight,
                sim_weight=m.sim_weight, self_weight=m.self_weight,
                sim_theta_grad=m.sim_theta_grad, freeze_encoder=t.freeze_encoder_steps > 0,
                grad_clip_norm=t.grad_clip_norm or None, sync_batchnorm=m.sync_batchnorm,
                bn_groups=m.bn_groups)
