r"""Plots a run's learning curve from its metrics.csv: env steps vs real episode score.

    python experiments/plot_metrics.py --logdir=runs/pong_2m --output=docs/results/pong.png
"""

import csv
import os

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")  # Headless: writes files, never opens a window.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string("logdir", None, "Run directory holding metrics.csv.", required=True)
flags.DEFINE_string("output", None, "PNG to write; default <logdir>/learning_curve.png.")
flags.DEFINE_string("title", None, "Plot title; default the logdir's name.")
flags.DEFINE_integer("frames_per_step", 4, "Frames per agent step for the top axis (Atari: 4).")


def main(argv):
  del argv
  f = flags.FLAGS
  with open(os.path.join(f.logdir, "metrics.csv"), newline="") as csv_file:
    rows = [r for r in csv.DictReader(csv_file) if r["episode_return"]]
  if not rows:
    raise app.UsageError(f"No finished episodes in {f.logdir}/metrics.csv yet.")
  steps = [int(r["env_steps"]) for r in rows]
  returns = [float(r["episode_return"]) for r in rows]
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(steps, returns, lw=1.2)
  ax.set_xlabel("environment steps (agent steps)")
  ax.set_ylabel("episode return (real game score)")
  ax.set_title(f.title or os.path.basename(os.path.normpath(f.logdir)))
  ax.grid(alpha=0.3)
  top = ax.secondary_xaxis("top", functions=(lambda s: s * f.frames_per_step,
                                             lambda x: x / f.frames_per_step))
  top.set_xlabel(f"frames (× {f.frames_per_step})")
  fig.tight_layout()
  output = f.output or os.path.join(f.logdir, "learning_curve.png")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  fig.savefig(output, dpi=120)
  print(f"wrote {output}: {len(rows)} points, last return {returns[-1]:.2f}, "
        f"best {max(returns):.2f}")


if __name__ == "__main__":
  app.run(main)
