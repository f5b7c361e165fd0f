"""Runs notebooks/quickstart.ipynb end to end (nbclient, tiny settings) and checks its outputs.

The notebook's "parameters" cell is replaced by tiny settings; everything else runs as a person
would run it: the install cell (skipped: the package is installed), training, the learning
curve, the evaluation with its video, and the final cell's mean return.
"""

import os
import re

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def _outputs_text(cell):
  return "".join(o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream")


def test_quickstart_runs_end_to_end_and_shows_curve_video_and_mean_return(tmp_path):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(parameters) == 1
  logdir = tmp_path / "quickstart"
  parameters[0].source = (f"TOTAL_ENV_STEPS = 3_000\nEVAL_EPISODES = 2\nLOGDIR = {str(logdir)!r}\n"
                          "REPO_URL = ''\n")
  client = nbclient.NotebookClient(
      notebook, timeout=240, kernel_name="python3",
      resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
  client.execute()

  code = [c for c in notebook.cells if c.cell_type == "code"]
  install = next(c for c in code if "find_checkout" in c.source)
  assert "already installed" in _outputs_text(install)

  # The learning curve: a PNG written and shown inline.
  assert (logdir / "learning_curve.png").stat().st_size > 1000
  shown = [o for c in code for o in c.outputs if o["output_type"] == "display_data"]
  assert any("image/png" in o["data"] for o in shown)
  # The evaluation's video: an mp4 written and embedded as an HTML5 video.
  assert (logdir / "cartpole.mp4").stat().st_size > 1000
  assert any("<video" in o["data"].get("text/html", "") and "base64" in o["data"]["text/html"]
             for o in shown)

  # The final cell prints the evaluation's mean return.
  final = _outputs_text(code[-1])
  match = re.search(r"mean return (\d+\.\d)", final)
  assert match, final
  assert "evaluation over 2 episodes" in final
  assert 8.0 <= float(match.group(1)) <= 500.0  # CartPole's possible returns.
  assert (logdir / "evaluation.json").exists()
