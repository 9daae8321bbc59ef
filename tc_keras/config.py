"""All training flags, and the frozen dataclasses built from them.

`define_flags()` registers the absl flags (called by tc_keras.train); `Config.from_flags(FLAGS)`
turns them into validated, frozen dataclasses, the only place where flags become values. Library
code never reads FLAGS: it takes the dataclasses (or plain kwargs built by `build_model`).
Defaults are the paper's settings (PAPER.md, "Training data and schedule").
"""

import dataclasses
import json

from absl import flags

from tc_keras import losses as tlosses
from tc_keras import model as tmodel

ENCODERS = {"resnet18": 18, "resnet50": 50}
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
SYNTHETIC = "synthetic"


def define_flags():
    """Registers every training flag (idempotent)."""
    if "workdir" in flags.FLAGS:
        return
    f = flags
    # Where things go.
    f.DEFINE_string("workdir", None, "Run folder: checkpoints, TensorBoard logs, config.json, "
                    "encoder.keras. Rerunning with the same workdir resumes. Required.")
    f.DEFINE_string("data", SYNTHETIC, "Comma-separated training data: prepared shards (folder, "
                    "manifest.jsonl or glob, see tools/prepare_vlog.py) and/or 'synthetic' "
                    "(generate and prepare a small corpus of synthetic videos in <workdir>/data; "
                    "no download). Default: synthetic.")
    f.DEFINE_integer("synthetic_videos", 16, "Videos in the synthetic corpus (count). Default 16.")
    f.DEFINE_integer("synthetic_frames", 60, "Frames per synthetic video (count). Default 60.")
    f.DEFINE_integer("synthetic_size", 256, "Height and width of synthetic videos (px). Default 256.")
    # Clips.
    f.DEFINE_integer("num_past", 4, "k, past frames per clip (count). Default 4.")
    f.DEFINE_integer("frame_gap", 2, "Gap between past frames at 12 fps (frames). Default 2.")
    f.DEFINE_integer("target_offset", 15, "Target frame after the first past frame (frames). "
                     "Default 15.")
    f.DEFINE_integer("crop_size", 240, "Square training crop (px, multiple of 24). Default 240.")
    f.DEFINE_integer("resize_short", 256, "Short side before cropping (px). Default 256.")
    f.DEFINE_float("max_rotation_deg", 45.0, "Patch rotation range +- (degrees). Default 45.")
    f.DEFINE_integer("rotation_ramp_steps", 0, "Grow the patch rotation range linearly from 0 to "
                     "--max_rotation_deg over the first N steps (steps; 0 = the full range from "
                     "the start, as in the paper). Default 0.")
    f.DEFINE_integer("shuffle_buffer", 512, "Clip shuffle buffer (clips). Default 512.")
    # Model and loss.
    f.DEFINE_enum("encoder", "resnet50", list(ENCODERS), "Encoder trunk. Default resnet50.")
    f.DEFINE_enum("similarity", "inlier", list(tlosses.SIMILARITIES), "Similarity term: 'inlier' "
                  "(reference code) or 'inner_product' (paper). Default inlier.")
    f.DEFINE_float("long_weight", tlosses.LONG_WEIGHT, "Weight of mean_i L_long^i. Default 0.02.")
    f.DEFINE_float("skip_weight", tlosses.SKIP_WEIGHT, "Weight of mean_i L_skip^i. Default 0.1.")
    f.DEFINE_float("sim_weight", tlosses.SIM_WEIGHT, "Weight of the similarity term. Default 1.0.")
    f.DEFINE_float("self_weight", tlosses.SELF_WEIGHT, "Weight of the self-localisation term (the "
                   "patch localised in its own frame against its known theta); not in the paper. "
                   "Default 0.")
    f.DEFINE_bool("sim_theta_grad", True, "The inlier similarity's gradient reaches theta and so "
                  "the localizer, as in the reference code (PAPER.md, 'Gradient paths'); "
                  "--nosim_theta_grad stops it (ablation; inlier only). Default true.")
    f.DEFINE_bool("sync_batchnorm", False, "BatchNorm statistics over all replicas. Default off.")
    f.DEFINE_bool("mixed_precision", False, "mixed_bfloat16 policy for the encoder (GPUs with "
                  "bf16, i.e. Ampere or newer); the tracker stays float32. Default off.")
    # Optimisation.
    f.DEFINE_integer("batch_size", 36, "Global batch size (clips, split over replicas). Default 36.")
    f.DEFINE_integer("train_steps", 0, "Optimizer steps in total; 0 = --epochs passes over the "
                     "videos (one clip per video per epoch). Default 0.")
    f.DEFINE_integer("epochs", 30, "Epochs when --train_steps is 0 (count). Default 30.")
    f.DEFINE_float("learning_rate", tmodel.LEARNING_RATE, "Adam learning rate. Default 2e-4.")
    f.DEFINE_float("beta_1", tmodel.BETA_1, "Adam beta_1. Default 0.5.")
    f.DEFINE_float("beta_2", tmodel.BETA_2, "Adam beta_2. Default 0.999.")
    f.DEFINE_float("grad_clip_norm", tmodel.GRAD_CLIP_NORM, "Global gradient-norm clip (0 = none). "
                   "Default 10.")
    f.DEFINE_integer("freeze_encoder_steps", 0, "Train only the tracker (encoder frozen) for the "
                     "first N steps, then end to end (steps). Default 0.")
    # Bookkeeping.
    f.DEFINE_integer("checkpoint_every", 500, "Checkpoint period (steps); also saved on exit. "
                     "Default 500.")
    f.DEFINE_integer("log_every", 50, "Log line and TensorBoard scalars period (steps). Default 50.")
    f.DEFINE_integer("image_every", 500, "TensorBoard images of tracked boxes period (steps; 0 = "
                     "never). Default 500.")
    f.DEFINE_enum("strategy", "auto", list(STRATEGIES), "Distribution: auto = "
                  "MultiWorkerMirroredStrategy when TF_CONFIG names several workers, else "
                  "MirroredStrategy over the visible GPUs, else the default (one device).")
    f.DEFINE_integer("seed", 0, "Random seed (initialisation and data). Default 0.")
    f.DEFINE_bool("deterministic", False, "Deterministic input pipeline (slower). Default off.")


def _check(condition, message):
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data: str = SYNTHETIC
    synthetic_videos: int = 16
    synthetic_frames: int = 60
    synthetic_size: int = 256
    num_past: int = 4
    frame_gap: int = 2
    target_offset: int = 15
    crop_size: int = 240
    resize_short: int = 256
    max_rotation_deg: float = 45.0
    rotation_ramp_steps: int = 0
    shuffle_buffer: int = 512
    deterministic: bool = False

    def __post_init__(self):
        _check(self.num_past >= 1, f"--num_past must be >= 1, got {self.num_past}")
        _check(self.frame_gap >= 1, f"--frame_gap must be >= 1, got {self.frame_gap}")
        _check(self.target_offset > (self.num_past - 1) * self.frame_gap,
               f"--target_offset ({self.target_offset}) must be after the last past frame "
               f"({(self.num_past - 1) * self.frame_gap})")
        _check(self.crop_size % 24 == 0 and self.crop_size >= 168,
               f"--crop_size must be a multiple of 24 and >= 168 (the localizer needs a 7x7-cell "
               f"patch), got {self.crop_size}")
        _check(self.max_rotation_deg >= 0 and self.rotation_ramp_steps >= 0,
               "--max_rotation_deg and --rotation_ramp_steps must be >= 0")
        _check(self.resize_short >= self.crop_size,
               f"--resize_short ({self.resize_short}) must be >= --crop_size ({self.crop_size})")
        _check(self.synthetic_videos >= 1 and self.synthetic_frames > self.target_offset,
               "--synthetic_videos must be >= 1 and --synthetic_frames > --target_offset")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    encoder: str = "resnet50"
    similarity: str = "inlier"
    long_weight: float = tlosses.LONG_WEIGHT
    skip_weight: float = tlosses.SKIP_WEIGHT
    sim_weight: float = tlosses.SIM_WEIGHT
    self_weight: float = tlosses.SELF_WEIGHT
    sim_theta_grad: bool = True
    sync_batchnorm: bool = False
    mixed_precision: bool = False

    def __post_init__(self):
        _check(self.encoder in ENCODERS, f"--encoder must be one of {sorted(ENCODERS)}, "
               f"got {self.encoder!r}")
        _check(self.similarity in tlosses.SIMILARITIES,
               f"--similarity must be one of {tlosses.SIMILARITIES}, got {self.similarity!r}")
        for name in ("long_weight", "skip_weight", "sim_weight", "self_weight"):
            _check(getattr(self, name) >= 0, f"--{name} must be >= 0")
        _check(self.sim_theta_grad or self.similarity == "inlier",
               "--nosim_theta_grad applies to --similarity=inlier only")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    workdir: str = ""
    batch_size: int = 36
    train_steps: int = 0
    epochs: int = 30
    learning_rate: float = tmodel.LEARNING_RATE
    beta_1: float = tmodel.BETA_1
    beta_2: float = tmodel.BETA_2
    grad_clip_norm: float = tmodel.GRAD_CLIP_NORM
    freeze_encoder_steps: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    image_every: int = 500
    strategy: str = "auto"
    seed: int = 0

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
        return cls(DataConfig(**d["data"]), ModelConfig(**d["model"]), TrainConfig(**d["train"]))


def model_kwargs(config):
    """The one place where config becomes TimeCycle constructor kwargs."""
    m, d, t = config.model, config.data, config.train
    return dict(depth=ENCODERS[m.encoder], num_past=d.num_past, crop_size=d.crop_size,
                similarity=m.similarity, long_weight=m.long_weight, skip_weight=m.skip_weight,
                sim_weight=m.sim_weight, self_weight=m.self_weight,
                sim_theta_grad=m.sim_theta_grad, freeze_encoder=t.freeze_encoder_steps > 0,
                grad_clip_norm=t.grad_clip_norm or None, sync_batchnorm=m.sync_batchnorm)
