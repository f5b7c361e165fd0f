r"""Which configuration `make train` runs: the accelerator preset or the CPU one.

    python experiments/presets.py          # prints the flagfile for this machine's JAX backend

JAX's default backend decides: on a GPU or TPU, `configs/pong_gpu.flags` (the learner and the
inference server on the accelerator, the host's cores for EnvPool); on the CPU,
`configs/pong_impala.flags` (tuned for a small CPU machine). The choice, and why, is printed to
stderr; the path alone goes to stdout for the Makefile.
"""

import os
import sys

CONFIGS = os.path.join("experiments", "configs")
PRESETS = {"cpu": os.path.join(CONFIGS, "pong_impala.flags"),
           "accelerator": os.path.join(CONFIGS, "pong_gpu.flags")}


def preset_for_backend(backend: str) -> str:
  """The flagfile (relative to the repository root) `make train` runs on `backend`."""
  return PRESETS["cpu" if backend == "cpu" else "accelerator"]


def main() -> None:
  import jax  # pylint: disable=g-import-not-at-top  # Only here: importing JAX is slow.
  backend = jax.default_backend()
  preset = preset_for_backend(backend)
  print(f"JAX's default backend is {backend} ({jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind}); make train runs {preset}.", file=sys.stderr)
  print(preset)


if __name__ == "__main__":
  main()
