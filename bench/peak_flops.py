"""The practical peak the benchmarks divide by: float32 n x n matmul FLOP/s (2 n^3 per product).

TensorFlow's is measured in the calling process; PyTorch's (2 threads) in a child process, so
that the two runtimes' thread pools are not mixed. The bench scripts import this module as a
sibling (`python bench/<script>.py` puts bench/ first on the module path).
"""

import subprocess
import sys
import time

_TORCH_MATMUL = """
import sys, time, torch
torch.set_num_threads(2)
n = int(sys.argv[1])
a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
best = float("inf")
for _ in range(5):
    start = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - start)
print(2 * n ** 3 / best)
"""


def matmul_rates(n=4096, repeats=5):
    """(FLOP/s, FLOP per CPU-second of this process) of TensorFlow's float32 n x n matmul, best of
    `repeats` after one warm-up product (the CPU rate holds steadier on a shared machine)."""
    import tensorflow as tf  # noqa: PLC0415 (imported by the caller, after its quiet start-up)

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    float(mm(a, b))
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, used = time.perf_counter(), time.process_time()
        float(mm(a, b))
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - used)
    return 2 * n ** 3 / wall, 2 * n ** 3 / cpu


def matmul_flops_per_second(n=4096, repeats=5):
    """TensorFlow's float32 n x n matmul FLOP/s (`matmul_rates`' first figure)."""
    return matmul_rates(n, repeats)[0]


def torch_matmul_flops_per_second(n=4096):
    """PyTorch's float32 matmul FLOP/s with 2 threads, in a child process; None without torch."""
    try:
        out = subprocess.run([sys.executable, "-c", _TORCH_MATMUL, str(n)], capture_output=True,
                             text=True, timeout=300, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return float(out.stdout.split()[-1])
