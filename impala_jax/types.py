"""The data that flows through the system: env → actor → inference → queue → learner.

Everything is time-major. An unroll holds T+1 timesteps: the last timestep of one unroll is the
first of the next (it supplies the bootstrap value V(x_T)).

Timestep alignment (index t = 0..T, following EnvPool's "next-step autoreset"):
  observation[t]   x_t, the observation the agent acted on at t.
  reward[t]        the reward that arrived *with* x_t (the reward of the previous step).
  terminated[t]    x_t is a terminal state: no value beyond it (discount 0).
  truncated[t]     x_t was cut off by a time limit: the episode continues in principle, so V(x_t)
                   is still bootstrapped from.
  first[t]         x_t is the first observation of an episode (resets the recurrent core).
  action[t]        a_t, the action taken at x_t.
  behaviour_log_prob[t]  log μ(a_t|x_t) under the acting parameters.
  policy_version[t]      version of the parameters that chose a_t.
  task[t]          the task (game) of the environment: its index in `EnvConfig.tasks`, 0 in a
                   run of one task. Fixed for an environment's life, so constant along t; kept
                   per timestep so that every field but the core state is `[T+1, B]` and
                   every copy, split and minibatch over B handles it with the others.

When x_t ends an episode (terminated or truncated), EnvPool ignores a_t and resets: step t is
not a real transition and the learner masks it out (`learning.update.learner_inputs`, which
aligns an unroll's records into the per-step `Transitions` the objectives score).
"""

from typing import Any, Callable, NamedTuple, Optional

import numpy as np

# The source of the episodes this process's own actors play (`EpisodeStats.source`).
LOCAL_SOURCE = "local"

# Recurrent state of the network core: a pytree of arrays with a leading batch dimension, or ()
# for a feed-forward network.
CoreState = Any


class Unroll(NamedTuple):
  """T+1 timesteps of B environments, time-major. Shapes as in the module docstring.

  Attributes:
    observation: `[T+1, B, *obs_shape]`, EnvPool's dtype (uint8 for Atari).
    reward: `[T+1, B]` float32.
    terminated: `[T+1, B]` bool.
    truncated: `[T+1, B]` bool.
    first: `[T+1, B]` bool.
    action: `[T+1, B]` int32 (discrete) or `[T+1, B, action_dim]` float32 (continuous).
    behaviour_log_prob: `[T+1, B]` float32.
    policy_version: `[T+1, B]` int32.
    task: `[T+1, B]` int32, each column's task id (constant along T).
    core_state: the core state before timestep 0, leaves `[B, ...]`; () without a core. Last:
      the fields before it are the time-major ones (`unroll[:-1]`).
  """

  observation: np.ndarray
  reward: np.ndarray
  terminated: np.ndarray
  truncated: np.ndarray
  first: np.ndarray
  action: np.ndarray
  behaviour_log_prob: np.ndarray
  policy_version: np.ndarray
  task: np.ndarray
  core_state: CoreState


class Transitions(NamedTuple):
  """Steps t = 0..T-1 of B unrolls, time-major: what the objectives score (`rl.objectives`).

  Step t leads from x_t to x_{t+1}; `learning.update.learner_inputs` builds these from an
  `Unroll`'s timestep records (module docstring).

  Attributes:
    actions: `[T, B]` int (discrete) or `[T, B, action_dim]` float (continuous) a_t.
    behaviour_log_probs: `[T, B]` float log μ(a_t|x_t), recorded by the actor.
    rewards: `[T, B]` float r_t, the reward that arrives with x_{t+1}.
    discounts: `[T, B]` float γ_t: 0 where x_{t+1} is terminal, γ where it was only
      truncated (the step still bootstraps from V(x_{t+1})).
    mask: `[T, B]` float, 1 for a real transition, 0 where x_t ended an episode and EnvPool
      ignored a_t (its autoreset step). Must be 0 or 1.
    task: `[T, B]` int32, the task id of each step (`Unroll.task`): all 0 in a run of one
      task; None where no task is known (the objectives, which do not read it, scored alone).
  """

  actions: np.ndarray
  behaviour_log_probs: np.ndarray
  rewards: np.ndarray
  discounts: np.ndarray
  mask: np.ndarray
  task: Optional[np.ndarray] = None


class HostBatch(NamedTuple):
  """One learner batch on the host, and the hand-back of the buffer it lives in.

  Attributes:
    unroll: B unrolls, leaves `[T+1, B, ...]` as `Unroll` (core state `[B, ...]`): the
      layout of the learner's update, so the learner moves it to the devices as it is.
    release: hands the buffer back for reuse; call once, when nothing reads `unroll` any
      more (the learner: after the update that read it has finished).
  """

  unroll: Unroll
  release: Callable[[], None]


class EpisodeStats(NamedTuple):
  """One finished episode, scored as the game scores it (unclipped, all lives).

  Attributes:
    episode_return: the real score.
    episode_length: agent steps.
    source: who played it: "local" (this process's actors), or a remote host's name
      ("env host 1a2b3c4d", "actor host 1a2b3c4d"), so that scores are counted per host.
    task: the game it was played in, its task id (`EnvConfig.tasks`); 0 in a run of one task
      (and from remote hosts, which play the run's one task).
  """

  episode_return: float
  episode_length: int
  source: str = LOCAL_SOURCE
  task: int = 0
