"""Save and restore the whole training state with Orbax.

A checkpoint is one numbered directory (the learner update count) holding the `TrainState`
pytree (parameters, optimizer state, update counter, and PopArt's statistics when it is on; see
`learning.update.checkpoint_fields`) and a JSON record of the rest (environment steps consumed,
the RNG seed stream position, the run's configuration). Orbax writes into a
temporary directory and renames it when complete, so a run killed mid-save never leaves a
half-written checkpoint behind; older checkpoints are pruned to `max_to_keep`.
"""

import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp

from impala_jax.learning import update as update_lib


class Checkpointer:
  """Numbered, atomic checkpoints of (TrainState, metadata) under `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self._directory = os.path.abspath(directory)
    # Created here: Orbax refuses `create=True` with `active_processes` (below).
    os.makedirs(self._directory, exist_ok=True)
    # Synchronous saves: no background thread outlives a save, and the file is complete when
    # `save` returns (checkpoints are small next to the time between them).
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=False, enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            # The state is a host copy: this process alone writes it, with no barrier that
            # the other processes of a multi-process run would have to join.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=jax.process_index(), active_processes={jax.process_index()})))

  @property
  def directory(self) -> str:
    return self._directory

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: update_lib.TrainState, metadata: Dict[str, Any]) -> None:
    """Writes `state` (host or device arrays; its fields that are not None) and JSON-able
    `metadata`."""
    if step in self._manager.all_steps():
      return  # Nothing new since the last save (e.g. an interval save just before exit).
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(update_lib.checkpoint_fields(state)),
            metadata=ocp.args.JsonSave(metadata)),
        force=True)
    self._manager.wait_until_finished()

  def restore(self, template: update_lib.TrainState,
              step: Optional[int] = None) -> Tuple[update_lib.TrainState, Dict[str, Any]]:
    """Restores the checkpoint `step` (default: latest) into the structure of `template`.

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: a checkpoint that does not fit `template` (another network, or PopArt's
        statistics in one and not the other), naming both.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint to resume from in {self._directory}.")
    fields = update_lib.checkpoint_fields(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fields)
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                  metadata=ocp.args.JsonRestore()))
    except ValueError as e:
      raise ValueError(
          f"Checkpoint {step} in {self._directory} does not fit this run's state, which holds "
          f"{', '.join(fields)} (`popart` only with --popart; resume with the run's own "
          f"network and PopArt settings): {e}") from e
    return template._replace(**restored["state"]), dict(restored["metadata"])

  def close(self) -> None:
    self._manager.close()


class CheckpointSchedule:
  """When to save: every `interval_minutes`, and once more at the end of a run.

  Args:
    checkpointer: where checkpoints go.
    learner: anything with `update_step` and `state()` (the un-replicated `TrainState`).
    interval_minutes: minutes between saves.
    metadata: JSON-able run description saved with every checkpoint (seed, config).
    elapsed_seconds: the run's training time so far, saved as `wall_seconds` so that a resumed
      run's clock continues from it.
  """

  def __init__(self, checkpointer: Checkpointer, learner: Any, interval_minutes: float,
               metadata: Dict[str, Any], elapsed_seconds: Callable[[], float] = lambda: 0.0):
    self._elapsed_seconds = elapsed_seconds
    self._checkpointer = checkpointer
    self._learner = learner
    self._interval_seconds = 60.0 * interval_minutes
    self._metadata = dict(metadata)
    self._last_save = time.monotonic()

  def maybe_save(self, env_steps: int) -> None:
    if time.monotonic() - self._last_save >= self._interval_seconds:
      self.save(env_steps)

  def save(self, env_steps: int) -> None:
    """Saves now (nothing before the first update: there is nothing new to keep)."""
    self._last_save = time.monotonic()
    step = self._learner.update_step
    if step == 0:
      return
    self._checkpointer.save(step, self._learner.state(),
                            {**self._metadata, "env_steps": env_steps, "update_step": step,
                             "wall_seconds": self._elapsed_seconds()})
    logging.info("Checkpoint at update %d (%d env steps) in %s.", step, env_steps,
                 self._checkpointer.directory)


class NoCheckpoints:
  """The schedule of a process that does not save (not process 0 of a multi-process run)."""

  def maybe_save(self, env_steps: int) -> None:
    del env_steps

  def save(self, env_steps: int) -> None:
    del env_steps
