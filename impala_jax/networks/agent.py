"""The IMPALA agent network: torso, optional LSTM core, policy and value heads.

Espeholt et al. 2018 (arXiv 1802.01561), §5 and Fig. 3. One network serves both callers:

  * the central inference server steps it with T=1 (`observation` `[1, B, ...]`), keeping the
    returned core state per environment;
  * the learner unrolls it over T+1 timesteps (`observation` `[T+1, B, ...]`) starting from the
    core state the actor recorded before timestep 0 (`Unroll.core_state`).

Both give the same numbers: the core resets its state to zeros wherever `first[t]` is True,
*before* processing step t, so an unroll that crosses an episode boundary matches stepping.

Layout of one call, time-major throughout:

    observation [T, B, *obs]  --reshape-->  [T*B, *obs]  --torso-->  [T*B, F]
      --reshape--> [T, B, F]  --LSTM scan over T (optional)-->  [T, B, H]
      --heads-->  policy leaves [T, B, A], value [T, B]

The torso always runs on the flattened `[T*B]` batch and never inside a scan: on XLA:CPU a
convolution inside a while loop runs about 17x slower than the same work outside one
(jax-ml/jax#12868). Only the LSTM, which is cheap matrix work, is scanned over time.

Usage:

    net = make_network(NetworkConfig(torso="deep"), num_actions=6)
    core_state = net.initial_state(batch_size)          # no params needed
    params = net.init(key, observation, first, core_state)
    (agent_output, new_core_state) = net.apply(params, observation, first, core_state)
"""

from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import chex
from flax import linen as nn
import jax
import numpy as np

from impala_jax import config as config_lib
from impala_jax import types
from impala_jax.networks import cores
from impala_jax.networks import heads
from impala_jax.networks import torsos
from impala_jax.rl import distributions


class AgentOutput(NamedTuple):
  """What the network returns for `[T, B]` timesteps.

  Attributes:
    policy: π(·|x_t), a `distributions.Categorical` (logits `[T, B, num_actions]`) or a
      `distributions.DiagGaussian` (mean and log_std `[T, B, action_dim]`).
    value: V(x_t), `[T, B]` float32; with `num_tasks`, one normalised value n(x_t) per task,
      `[T, B, num_tasks]`, which only the learner reads (`rl.popart`): acting and evaluation
      use the policy alone.
  """

  policy: distributions.Distribution
  value: jax.Array


class ImpalaNetwork(nn.Module):
  """The IMPALA agent: torso → optional LSTM core → policy and value heads.

  Exactly one of `num_actions` (discrete actions, categorical policy) and `action_dim`
  (continuous actions, diagonal-Gaussian policy) must be set.

  Attributes:
    torso: "shallow" (Mnih et al. 2016), "nature" (Mnih et al. 2015), "deep" (IMPALA ResNet,
      paper Fig. 3) or "mlp".
    num_actions: number of discrete actions, or None.
    action_dim: size of a continuous action, or None.
    use_lstm: add an LSTM core between torso and heads.
    lstm_size: LSTM hidden units.
    mlp_hidden_sizes: hidden layers of the MLP torso (ignored by the others).
    space_to_depth: the shallow and nature torsos' convolutions as `SpaceToDepthConv`
      (faster on CPU, identical parameters and outputs); False gives plain `nn.Conv`.
    num_tasks: None for one value V(x) (the paper's agent); K for PopArt's K normalised values,
      one per task (`heads.ValueHead`).
  """

  torso: str
  num_actions: Optional[int] = None
  action_dim: Optional[int] = None
  use_lstm: bool = False
  lstm_size: int = 256
  mlp_hidden_sizes: Sequence[int] = (64, 64)
  space_to_depth: bool = True
  num_tasks: Optional[int] = None

  def __post_init__(self):
    # Validate at construction so a bad configuration fails where it is written, not at the
    # first `init` deep inside a thread.
    config_lib.check_torso(self.torso)
    if (self.num_actions is None) == (self.action_dim is None):
      raise ValueError(
          "Set exactly one of num_actions (discrete actions) and action_dim (continuous "
          f"actions); got num_actions={self.num_actions}, action_dim={self.action_dim}.")
    if self.num_actions is not None and self.num_actions < 1:
      raise ValueError(f"num_actions must be >= 1, got {self.num_actions}.")
    if self.action_dim is not None and self.action_dim < 1:
      raise ValueError(f"action_dim must be >= 1, got {self.action_dim}.")
    if self.lstm_size < 1:
      raise ValueError(f"lstm_size must be >= 1, got {self.lstm_size}.")
    if self.num_tasks is not None and self.num_tasks < 1:
      raise ValueError(f"num_tasks must be >= 1 or None, got {self.num_tasks}.")
    if self.torso == "mlp" and (not self.mlp_hidden_sizes or
                                any(size < 1 for size in self.mlp_hidden_sizes)):
      raise ValueError(
          f"mlp_hidden_sizes must be a non-empty sequence of sizes >= 1, got "
          f"{self.mlp_hidden_sizes!r}.")
    super().__post_init__()

  @property
  def convolutional(self) -> bool:
    """Whether the torso convolves images ("shallow", "nature", "deep"): the learner then runs
    its optimizer steps as an unrolled loop, not a scan (`learning.update`)."""
    return self.torso in config_lib.IMAGE_TORSOS

  @nn.nowrap
  def initial_state(self, batch_size: int) -> types.CoreState:
    """Zero core state for `batch_size` environments; callable on an unbound module.

    `net.initial_state(B)` needs no params. Returns `LSTMState` (leaves `[B, lstm_size]`
    float32) with an LSTM, else `()`. Same as `cores.initial_core_state(net, B)`.
    """
    return cores.initial_core_state(self, batch_size)

  @nn.compact
  def __call__(self, observation: jax.Array, first: jax.Array,
               core_state: types.CoreState) -> Tuple[AgentOutput, types.CoreState]:
    """Runs the agent over `[T, B]` timesteps.

    Args:
      observation: `[T, B, *obs_shape]`; uint8 `[T, B, C, H, W]` frames for the image torsos
        (scaled and transposed inside), any numeric dtype for the MLP.
      first: `[T, B]` bool, x_t starts an episode: the core state is zeroed before step t.
      core_state: the state before step 0, from `initial_state` or a previous call:
        `LSTMState` with leaves `[B, lstm_size]` with an LSTM, `()` without.

    Returns:
      `(AgentOutput(policy leaves [T, B, A], value [T, B] float32), new_core_state)`, the
      state after step T-1 (same structure as `core_state`; `()` without an LSTM); with
      `num_tasks`, value is `[T, B, num_tasks]`.
    """
    chex.assert_rank(first, 2)
    chex.assert_equal_shape_prefix([observation, first], prefix_len=2)
    time_steps, batch_size = first.shape
    first = first.astype(bool)

    torso = torsos.make_torso(self.torso, mlp_hidden_sizes=self.mlp_hidden_sizes,
                              space_to_depth=self.space_to_depth)

    # The torso sees one flat batch of T*B observations: no conv inside a scan (module doc).
    flat_observation = observation.reshape((time_steps * batch_size,) + observation.shape[2:])
    features = torso(flat_observation)  # [T*B, F]
    features = features.reshape(time_steps, batch_size, -1)  # [T, B, F]

    if self.use_lstm:
      if not isinstance(core_state, cores.LSTMState):
        raise ValueError(
            "With use_lstm=True core_state must be an LSTMState (see initial_state), got "
            f"{type(core_state).__name__}.")
      chex.assert_shape([core_state.cell, core_state.hidden], (batch_size, self.lstm_size))
      core = cores.LSTMCore(self.lstm_size, name="core")
      features, core_state = core(features, first, core_state)
    elif jax.tree.leaves(core_state):
      raise ValueError(f"Without an LSTM core_state must be (), got {type(core_state).__name__}.")

    if self.num_actions is not None:
      policy = heads.CategoricalHead(self.num_actions, name="policy")(features)
    else:
      policy = heads.DiagGaussianHead(self.action_dim, name="policy")(features)
    value = heads.ValueHead(self.num_tasks, name="value")(features)
    return AgentOutput(policy=policy, value=value), core_state


def make_network(network_config: config_lib.NetworkConfig, *,
                 num_actions: Optional[int] = None,
                 action_dim: Optional[int] = None,
                 num_tasks: Optional[int] = None) -> ImpalaNetwork:
  """Builds the `ImpalaNetwork` that `network_config` describes.

  Args:
    network_config: torso, LSTM and MLP settings.
    num_actions: discrete action count (categorical policy), or None.
    action_dim: continuous action size (diagonal-Gaussian policy), or None. Exactly one of
      `num_actions` and `action_dim` must be given.
    num_tasks: PopArt's value outputs, one per task (`config.PopArtConfig.network_tasks`), or
      None for one plain value.

  Returns:
    An unbound `ImpalaNetwork`; `.init`/`.apply` it, `.initial_state(B)` needs no params.

  Raises:
    ValueError: both or neither of `num_actions` and `action_dim`, or an invalid setting.
  """
  return ImpalaNetwork(
      torso=network_config.torso,
      num_actions=num_actions,
      action_dim=action_dim,
      use_lstm=network_config.use_lstm,
      lstm_size=network_config.lstm_size,
      mlp_hidden_sizes=tuple(network_config.mlp_hidden_sizes),
      num_tasks=num_tasks)


def network_for_spec(network_config: config_lib.NetworkConfig, spec, *,
                     num_tasks: Optional[int] = None) -> ImpalaNetwork:
  """The network for an environment's `envs.EnvSpec`: a categorical head for discrete actions,
  a diagonal-Gaussian one for continuous actions; `num_tasks` as `make_network`'s.

  Raises:
    ValueError: an image torso ("shallow", "nature", "deep") for observations that are not
      images `[C, H, W]`, or images too small for the torso's 'VALID' convolutions.
  """
  check_observations(network_config.torso, spec.observation_shape)
  if spec.discrete:
    return make_network(network_config, num_actions=spec.num_actions, num_tasks=num_tasks)
  return make_network(network_config, action_dim=spec.action_dim, num_tasks=num_tasks)


# Where the value head's linear layer lives in the network's variables: "value" is the head's
# name in `ImpalaNetwork`, "Dense_0" its layer's (`heads.ValueHead`).
_VALUE_LINEAR = ("params", "value", "Dense_0")


def value_linear(variables: Mapping[str, Any]) -> Mapping[str, Any]:
  """The value head's linear layer in `ImpalaNetwork`'s variables: `kernel` `[F, K]`, `bias`
  `[K]` (what PopArt rescales, `rl.popart.pop`)."""
  for name in _VALUE_LINEAR:
    variables = variables[name]
  return variables


def with_value_linear(variables: Mapping[str, Any],
                      linear: Mapping[str, Any]) -> Dict[str, Any]:
  """`variables` with the value head's linear layer replaced by `linear`; the rest shared."""

  def replace(tree, path):
    if not path:
      return dict(linear)
    return {**tree, path[0]: replace(tree[path[0]], path[1:])}

  return replace(variables, _VALUE_LINEAR)


# The smallest images the 'VALID' convolutions of each torso can take: shallow (8×8/4, 4×4/2)
# needs 20 pixels a side; nature (8×8/4, 4×4/2, 3×3/1) 36. The deep torso pads.
_MIN_IMAGE_SIZES = {"shallow": 20, "nature": 36}


def check_observations(torso: str, observation_shape) -> None:
  """Fails early, naming the shape and what fits, when `torso` cannot take the observations."""
  shape = tuple(observation_shape)
  if torso in config_lib.IMAGE_TORSOS:
    if len(shape) != 3:
      raise ValueError(
          f"The {torso!r} torso takes image observations [C, H, W]; this environment observes "
          f"shape {shape}. Use --network=mlp for vector observations.")
    min_size = _MIN_IMAGE_SIZES.get(torso, 1)
    if min(shape[1:]) < min_size:
      raise ValueError(
          f"The {torso!r} torso needs images of at least {min_size}×{min_size} pixels; this "
          f"environment observes [C, H, W] = {shape}. Use --network=deep for small images.")


def init_params(network: ImpalaNetwork, spec, seed: int):
  """Initial parameters of `network` for observations of `spec`, from `PRNGKey(seed)`."""
  # numpy, not jnp: float64 observations (MuJoCo) are cast by jit without a warning.
  observation = np.zeros((1, 1) + tuple(spec.observation_shape), spec.observation_dtype)
  first = np.ones((1, 1), bool)
  return network.init(jax.random.PRNGKey(seed), observation, first, network.initial_state(1))
