"""What the command-line entry points share: a quiet TensorFlow start-up and one-line errors.

Import it before anything that imports TensorFlow (it sets TF_CPP_MIN_LOG_LEVEL, unless the user
set it, so that TensorFlow's C++ start-up lines about oneDNN and CPU features stay out of the
way), then hand the absl main to `run`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

# Errors a user causes (a missing or corrupt file, a bad flag value, a wrong mask): the library
# raises them as ValueError (VideoError and LabelError are ValueErrors) or OSError, with a message
# naming the input.
USER_ERRORS = (ValueError, OSError)


def require(name, hint=""):
    """Raises a user error unless flag --name has a value."""
    if not flags.FLAGS[name].value:
        raise ValueError(f"--{name} is required{hint}")


def exactly_one(first, second, hint=""):
    """Raises a user error unless exactly one of flags --first and --second has a value."""
    if bool(flags.FLAGS[first].value) == bool(flags.FLAGS[second].value):
        raise ValueError(f"give either --{first}{hint} or --{second}")


def fail(message):
    """Prints `error: message` to stderr and exits with status 1."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def run(main):
    """`absl.app.run(main)`; a user error becomes one `error: ...` line and exit status 1."""
    def guarded(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            fail(e)

    app.run(guarded)
