"""Writing files and folders so that a path that exists is complete.

Everything the project writes for others to read (shards, encoder files, exports, propagation
results, videos, reports) is written under a hidden temporary name beside its target,
`.<name>.partial[<suffix>]`, and renamed into place only when complete: a killed run never leaves
a complete-looking output, and a reader (TF Serving watching a model folder, a resumed prepare)
never sees a half-written one.

    with atomic.Staged(path) as tmp:          # a file: write to tmp
        tmp.write_bytes(data)
    with atomic.Staged(folder, directory=True) as tmp:   # a folder: tmp exists, fill it
        ...
    atomic.write_text(path, text)

`Staged` can also be committed or discarded by hand (a writer open over several calls).
"""

import os
import pathlib
import shutil

PARTIAL = ".partial"


def partial_path(target, suffix=""):
    """The hidden temporary path of `target`: `<parent>/.<name>.partial<suffix>`."""
    target = pathlib.Path(target)
    return target.parent / f".{target.name}{PARTIAL}{suffix}"


class Staged:
    """A temporary path beside `target` that becomes `target` on `commit()`.

    Args:
      target: the final path.
      directory: stage a folder (created empty) instead of a file.
      suffix: extra suffix for the temporary name (e.g. ".keras", which Keras' saver requires).

    As a context manager it yields the temporary path, commits on success and discards on an
    exception. Committing replaces an existing target.
    """

    def __init__(self, target, directory=False, suffix=""):
        self.target = pathlib.Path(target)
        self.directory = directory
        self.path = partial_path(self.target, suffix)
        self._remove()  # a killed run's leftovers
        # The parent folders this creates, removed again by discard() when left empty.
        self._created = [d for d in self.target.parents if not d.exists()]
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            self.path.mkdir()

    def _remove(self):
        if self.path.is_dir():
            shutil.rmtree(self.path)
        else:
            self.path.unlink(missing_ok=True)

    def commit(self):
        """Renames the temporary path to the target (replacing it)."""
        if self.directory:
            if self.target.exists():
                shutil.rmtree(self.target)
            self.path.rename(self.target)
        else:
            os.replace(self.path, self.target)

    def discard(self):
        """Removes the temporary path and the parent folders it created that are left empty; the
        target is left as it was."""
        self._remove()
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (something else was written there) or gone
                break

    def __enter__(self):
        return self.path

    def __exit__(self, exc_type, exc, tb):
        (self.commit if exc_type is None else self.discard)()
        return False


def write_bytes(path, data):
    """Writes `data` to `path` atomically."""
    with Staged(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with Staged(path) as tmp:
        tmp.write_text(text)
