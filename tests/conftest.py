"""Shared test set-up: CPU only, quiet TF logs, seeded, two logical CPU devices for strategy tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pathlib  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

# Two logical CPU devices so that a 2-replica MirroredStrategy runs on a CPU-only machine. This must
# happen before TF initialises its devices, i.e. here, before any test touches a tensor.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # devices already initialised (e.g. by a plugin); strategy tests then skip
    pass

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture
def shared_data():
    """../shared/data beside the checkout, or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """One 2-replica MirroredStrategy over the two logical CPUs for the whole session: a second
    strategy in the same process reuses the first one's collective keys, and its synchronised
    BatchNorm then meets the other's collectives (shape mismatch)."""
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices (set up in conftest before TF initialises)")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
