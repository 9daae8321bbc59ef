"""`python -m tc_keras.train --flagfile=configs/vlog.flags`: the training entry point."""

from tc_keras import cli

cli.quiet_tensorflow()  # before the imports below load TensorFlow (see tc_keras/cli.py)

from tc_keras.train import config as tconfig
from tc_keras.train import trainer

if __name__ == "__main__":
    tconfig.define_flags()
    cli.run(trainer.main)
