"""`python -m tc_keras.train --flagfile=configs/vlog.flags`: the training entry point."""

from tc_keras import cli  # noqa: F401 (first: quiets TensorFlow's start-up)

from absl import app  # noqa: E402

from tc_keras.train import config as tconfig  # noqa: E402
from tc_keras.train import trainer  # noqa: E402

if __name__ == "__main__":
    tconfig.define_flags()
    app.run(trainer.main)
