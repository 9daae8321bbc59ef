"""Decoding processes for prepare: results in job order, worker crashes contained, no orphans.

`ordered(jobs, workers, fn)` runs `fn(args)` for each `(name, args)` job in spawned worker
processes (spawned, so they never inherit TensorFlow's threads) and yields `(name, result)` in job
order. A worker that dies (a crash inside a decoder, the OOM killer) costs only the job that kills
it. Workers end with the process that started them, also when it is killed with SIGKILL and has
no chance to stop them: on Linux the kernel kills them (PR_SET_PDEATHSIG); everywhere, a thread in
each worker watches its parent and exits when it is gone (within `PARENT_POLL_S`). The
multiprocessing resource tracker then ends too (it exits when its last user does).
"""

import collections
import concurrent.futures
import concurrent.futures.process
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

from absl import logging

# How often a worker checks that its parent is alive (seconds).
PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent_pid):
    """Pool initializer: this worker process ends when process `parent_pid` does.

    PR_SET_PDEATHSIG fires when the *thread* that started the worker ends; the pool starts its
    workers from the thread that iterates `ordered` (in `submit`), which outlives them.
    """
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGKILL when the parent dies (even mid-decode, holding the GIL)
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:  # a dead parent's children are re-parented
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    if os.getppid() != parent_pid:  # died before prctl took effect
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def failed(args, error):
    """The result of a job whose worker failed: dict(id, source, reason)."""
    return dict(id=args[0], source=args[1], reason=f"worker failed: {type(error).__name__}: "
                f"{error}")


def ordered(jobs, workers, fn):
    """Yields (name, fn(args)) for `(name, args)` jobs in order, at most 2 * workers in flight.

    `workers <= 1` runs the jobs in this process. A worker process that dies breaks the pool: the
    jobs that were in flight are then rerun one at a time in a fresh pool, so that only the job
    that kills a worker again is reported as failed (`failed(args, error)`; jobs' args start with
    id and source).
    """
    if workers <= 1 or len(jobs) <= 1:
        for name, args in jobs:
            yield name, fn(args)
        return

    def new_pool():
        return concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent, initargs=(os.getpid(),))

    broken = concurrent.futures.process.BrokenProcessPool
    pool, it = new_pool(), iter(jobs)
    pending, suspects = collections.deque(), collections.deque()
    try:
        while True:
            if suspects:
                name, args = suspects.popleft()
                try:
                    result = pool.submit(fn, args).result()
                except broken as e:
                    logging.warning("a worker died while decoding %s", args[1])
                    pool.shutdown(wait=True)
                    pool, result = new_pool(), failed(args, e)
                except Exception as e:  # noqa: BLE001
                    result = failed(args, e)
                yield name, result
                continue
            try:
                while len(pending) < 2 * workers:
                    job = next(it, None)
                    if job is None:
                        break
                    pending.append((job[0], job[1], None))
                    pending[-1] = (job[0], job[1], pool.submit(fn, job[1]))
                if not pending:
                    return
                name, args, future = pending[0]
                result = future.result()
            except broken:
                logging.warning("a worker process died; rerunning %d videos one at a time",
                                len(pending))
                suspects.extend((n, a) for n, a, _ in pending)
                pending.clear()
                pool.shutdown(wait=True)
                pool = new_pool()
                continue
            except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be pickled
                result = failed(args, e)
            pending.popleft()
            yield name, result
    finally:
        pool.shutdown(cancel_futures=True)
