"""Training: `python -m tc_keras.train` (__main__), the flags and configs, the run, checkpoints,
callbacks.

config (flags made from dataclass fields; the only config -> kwargs mappings), trainer (strategy,
fit, resume), sources (--data into shard files, the clip datasets), checkpoints (a run's training
state), monitor (log lines, TensorBoard).
May import every other folder; no other folder imports it.
"""
