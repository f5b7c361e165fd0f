"""Session-wide test set-up: a persistent XLA compilation cache shared by every test process.

Most of the suite's time outside learning is XLA compiling the same few functions (the
learner's update, the inference step) again in every test and every subprocess a test starts.
JAX's persistent cache keys an executable by its HLO, compile options and JAX version, so a hit
is the same executable; tracing still happens, so the tests that count traces are unaffected.
Set here, before anything imports JAX, and inherited by subprocesses through the environment.
`JAX_COMPILATION_CACHE_DIR` set by the caller wins (an empty value turns the cache off).
"""

import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_REPO, ".jax_cache"))
# Cache every executable: the default skips those compiled in under a second, which are most
# of the tests' (small networks), and those under a minimum size.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
