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

import math
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp

from impala_jax import config as config_lib
from impala_jax import distributions
from impala_jax import types

TORSOS = ("shallow", "deep", "mlp")

# Initialisers. Orthogonal init with gain sqrt(2) for ReLU layers keeps activation scale roughly
# constant through depth (Saxe et al. 2014); it is the usual choice for actor-critic agents.
# The policy head is initialised 100x smaller so that the initial policy is close to uniform
# (categorical) or has mean ~0 (Gaussian): early updates then start from maximal entropy and
# are not dominated by arbitrary initial preferences. The value head uses gain 1.
_RELU_INIT = nn.initializers.orthogonal(math.sqrt(2.0))
# The deep ResNet is the exception: each residual block adds its branch's variance to the skip
# path, and with ReLU-gain init the torso's output grows to RMS ~27 on random frames (measured
# here; ~1.4 with this init). LeCun normal (variance 1/fan_in, Flax's default) is also close to
# the truncated normal of Sonnet's Conv2D that the original IMPALA code used.
_RESNET_INIT = nn.initializers.lecun_normal()
_POLICY_INIT = nn.initializers.orthogonal(0.01)
_VALUE_INIT = nn.initializers.orthogonal(1.0)


class AgentOutput(NamedTuple):
  """What the network returns for `[T, B]` timesteps.

  Attributes:
    policy: π(·|x_t), a `distributions.Categorical` (logits `[T, B, num_actions]`) or a
      `distributions.DiagGaussian` (mean and log_std `[T, B, action_dim]`).
    value: V(x_t), `[T, B]` float32.
  """

  policy: distributions.Distribution
  value: jax.Array


class LSTMState(NamedTuple):
  """Recurrent state of the LSTM core.

  Attributes:
    cell: `[B, lstm_size]` float32, the LSTM memory cell c.
    hidden: `[B, lstm_size]` float32, the LSTM output h.
  """

  cell: jax.Array
  hidden: jax.Array


def _image_to_nhwc_float(observation: jax.Array) -> jax.Array:
  """EnvPool frames `[N, C, H, W]` to float32 `[N, H, W, C]` in [0, 1].

  uint8 pixels are scaled by 1/255; other dtypes are taken as already scaled and only cast.
  The cast happens here, inside the jitted function, so the uint8 observation crosses the
  host-device boundary at a quarter of float32's size.
  """
  if observation.ndim != 4:
    raise ValueError(
        "Image torsos expect observations [T, B, C, H, W] (channel-first, as EnvPool gives "
        f"them); got per-step shape {observation.shape[1:]}.")
  if observation.dtype == jnp.uint8:
    observation = observation.astype(jnp.float32) / 255.0
  else:
    observation = observation.astype(jnp.float32)
  return jnp.transpose(observation, (0, 2, 3, 1))


class SpaceToDepthConv(nn.Module):
  """A 'VALID' convolution whose kernel is a multiple of its stride, computed with one matmul.

  Same parameters as `nn.Conv(features, (k, k), strides=(s, s), padding="VALID")` (a `kernel`
  `[k, k, C, features]` and a `bias`), same outputs (tests check both). Why: on XLA:CPU the
  weight gradient of a strided convolution is several times slower than the matmul it amounts
  to (measured in benchmarks/throughput.py, see docs/performance.md). With r = k / s, the input
  is regrouped into s×s blocks (space-to-depth), one matmul maps every block to its r×r
  contributions, and shifted slices add them up:

    y[n, i, j] = Σ_{a, b < r} blocks[n, i + a, j + b] · W[a, b]

  so forward and backward are dense matmuls plus cheap slicing. The input may be uint8:
  it is regrouped before the float32 cast, and `input_scale` multiplies it during the cast.

  Input `[N, H, W, C]`; output `[N, (H − k) // s + 1, (W − k) // s + 1, features]` float32.
  """

  features: int
  kernel_size: int
  stride: int
  input_scale: float = 1.0
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.stride
    if k % s:
      raise ValueError(f"SpaceToDepthConv needs kernel_size ({k}) to be a multiple of stride "
                       f"({s}).")
    r = k // s
    n, height, width, channels = x.shape
    out_h, out_w = (height - k) // s + 1, (width - k) // s + 1
    blocks_h, blocks_w = out_h + r - 1, out_w + r - 1  # Input rows/cols a VALID conv reads.
    kernel = self.param("kernel", self.kernel_init, (k, k, channels, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)

    x = x[:, :blocks_h * s, :blocks_w * s]
    x = x.reshape(n, blocks_h, s, blocks_w, s, channels).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n * blocks_h * blocks_w, s * s * channels)
    x = x.astype(jnp.float32) * self.input_scale if self.input_scale != 1.0 else (
        x.astype(jnp.float32))
    # kernel[a·s + dh, b·s + dw, c, o] → [(dh, dw, c), (a, b, o)]
    kernel = kernel.reshape(r, s, r, s, channels, self.features).transpose(1, 3, 4, 0, 2, 5)
    kernel = kernel.reshape(s * s * channels, r * r * self.features)
    y = (x @ kernel).reshape(n, blocks_h, blocks_w, r, r, self.features)
    out = sum(y[:, a:a + out_h, b:b + out_w, a, b] for a in range(r) for b in range(r))
    return out + bias


class ShallowTorso(nn.Module):
  """The feed-forward network of Mnih et al. 2016 (A3C), IMPALA's shallow Atari torso.

  conv 16·8×8/4 → ReLU → conv 32·4×4/2 → ReLU → FC 256 → ReLU, 'VALID' padding as in the
  original. On 84×84 inputs the feature maps are 20×20×16 then 9×9×32.

  Attributes:
    space_to_depth: compute both convolutions as `SpaceToDepthConv` (same parameters, same
      outputs, faster gradients on CPU); False uses `nn.Conv`.

  Input `[N, C, H, W]` (uint8 pixels or floats in [0, 1]); output `[N, 256]` float32.
  """

  space_to_depth: bool = True

  @nn.compact
  def __call__(self, observation: jax.Array) -> jax.Array:
    if self.space_to_depth:
      if observation.ndim != 4:
        raise ValueError(
            "Image torsos expect observations [T, B, C, H, W] (channel-first, as EnvPool "
            f"gives them); got per-step shape {observation.shape[1:]}.")
      scale = 1.0 / 255.0 if observation.dtype == jnp.uint8 else 1.0
      # Transposing uint8 frames moves a quarter of the bytes of float32 ones.
      x = jnp.transpose(observation, (0, 2, 3, 1))
      x = SpaceToDepthConv(16, 8, 4, input_scale=scale, kernel_init=_RELU_INIT,
                           name="Conv_0")(x)
      x = nn.relu(x)
      x = SpaceToDepthConv(32, 4, 2, kernel_init=_RELU_INIT, name="Conv_1")(x)
    else:
      x = _image_to_nhwc_float(observation)
      x = nn.Conv(16, (8, 8), strides=(4, 4), padding="VALID", kernel_init=_RELU_INIT)(x)
      x = nn.relu(x)
      x = nn.Conv(32, (4, 4), strides=(2, 2), padding="VALID", kernel_init=_RELU_INIT)(x)
    x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(256, kernel_init=_RELU_INIT, name="Dense_0")(x))


class ResidualBlock(nn.Module):
  """ReLU → conv 3×3 → ReLU → conv 3×3, plus the input (IMPALA paper Fig. 3)."""

  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(x)
    y = nn.Conv(self.channels, (3, 3), kernel_init=_RESNET_INIT)(y)
    y = nn.relu(y)
    y = nn.Conv(self.channels, (3, 3), kernel_init=_RESNET_INIT)(y)
    return x + y


class DeepResNetTorso(nn.Module):
  """The IMPALA deep ResNet torso (paper Fig. 3).

  Three stages with channels (16, 32, 32); each stage is conv 3×3/1 → max-pool 3×3/2 ('SAME')
  → two residual blocks. Then ReLU → flatten → FC 256 → ReLU. On 84×84 inputs the stages
  output 42×42×16, 21×21×32 and 11×11×32. Weights use LeCun-normal init (see _RESNET_INIT).

  Input `[N, C, H, W]` (uint8 pixels or floats in [0, 1]); output `[N, 256]` float32.
  """

  stage_channels: Sequence[int] = (16, 32, 32)
  num_blocks: int = 2

  @nn.compact
  def __call__(self, observation: jax.Array) -> jax.Array:
    x = _image_to_nhwc_float(observation)
    for channels in self.stage_channels:
      x = nn.Conv(channels, (3, 3), kernel_init=_RESNET_INIT)(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
      for _ in range(self.num_blocks):
        x = ResidualBlock(channels)(x)
    x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(256, kernel_init=_RESNET_INIT)(x))


class MLPTorso(nn.Module):
  """Flatten → (Dense → ReLU) per hidden size, for vector observations.

  ReLU rather than tanh to match the convolutional torsos (and the sqrt(2) orthogonal gain).

  Input `[N, *obs_shape]` (cast to float32, not rescaled); output `[N, hidden_sizes[-1]]`.
  """

  hidden_sizes: Sequence[int] = (64, 64)

  @nn.compact
  def __call__(self, observation: jax.Array) -> jax.Array:
    x = observation.astype(jnp.float32).reshape(observation.shape[0], -1)
    for size in self.hidden_sizes:
      x = nn.relu(nn.Dense(size, kernel_init=_RELU_INIT)(x))
    return x


class _ResettingLSTMStep(nn.Module):
  """One LSTM step that first zeroes the state of environments whose episode starts now.

  Args (of `__call__`):
    state: `LSTMState`, leaves `[B, features]`, the state after step t-1.
    inputs: `(x [B, F], first [B] bool)` for step t.

  Returns:
    `(new_state, output [B, features])`.
  """

  features: int

  @nn.compact
  def __call__(self, state: LSTMState,
               inputs: Tuple[jax.Array, jax.Array]) -> Tuple[LSTMState, jax.Array]:
    x, first = inputs
    # An episode's first step must not see the previous episode's memory.
    state = jax.tree.map(lambda s: jnp.where(first[:, None], jnp.zeros_like(s), s), state)
    (cell, hidden), output = nn.LSTMCell(self.features, name="cell")(
        (state.cell, state.hidden), x)
    # nn.LSTMCell returns a plain tuple; the scan carry must keep the LSTMState structure.
    return LSTMState(cell, hidden), output


class LSTMCore(nn.Module):
  """An LSTM over time that resets its state at episode starts.

  Args (of `__call__`):
    x: `[T, B, F]` features.
    first: `[T, B]` bool; True resets the state to zeros before step t.
    state: `LSTMState`, leaves `[B, features]`, the state before step 0.

  Returns:
    `(outputs [T, B, features], state after step T-1)`.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, first: jax.Array,
               state: LSTMState) -> Tuple[jax.Array, LSTMState]:
    # Parameters are shared across time steps (broadcast), not stacked per step.
    scan_step = nn.scan(
        _ResettingLSTMStep,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=0,
        out_axes=0)
    state, outputs = scan_step(self.features, name="step")(state, (x, first))
    return outputs, state


class CategoricalHead(nn.Module):
  """Logits of a categorical policy: `[..., F]` → `Categorical(logits [..., num_actions])`."""

  num_actions: int

  @nn.compact
  def __call__(self, x: jax.Array) -> distributions.Categorical:
    return distributions.Categorical(
        logits=nn.Dense(self.num_actions, kernel_init=_POLICY_INIT, name="logits")(x))


class DiagGaussianHead(nn.Module):
  """A diagonal-Gaussian policy: `[..., F]` → `DiagGaussian(mean, log_std)`, `[..., action_dim]`.

  The mean depends on the state; log σ is a learned, state-independent parameter (initialised
  to 0, i.e. σ = 1) broadcast to the mean's shape, as is common for policy-gradient agents on
  continuous control: exploration noise is the same in every state and is learned from all of
  them, which is simpler and more stable early on than a state-dependent σ.
  """

  action_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> distributions.DiagGaussian:
    mean = nn.Dense(self.action_dim, kernel_init=_POLICY_INIT, name="mean")(x)
    log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,), jnp.float32)
    return distributions.DiagGaussian(mean=mean, log_std=jnp.broadcast_to(log_std, mean.shape))


class ValueHead(nn.Module):
  """The baseline V(x): `[..., F]` → `[...]` float32."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.squeeze(nn.Dense(1, kernel_init=_VALUE_INIT)(x), axis=-1)


def initial_core_state(network: Any, batch_size: int) -> types.CoreState:
  """The core state of `batch_size` environments at the start of their episodes.

  Needs no parameters, so the inference server and actors can call it before any exist.

  Args:
    network: anything with `use_lstm` and `lstm_size` attributes: an `ImpalaNetwork` or a
      `config.NetworkConfig`.
    batch_size: B.

  Returns:
    `LSTMState` with float32 zeros `[B, lstm_size]` in both fields if `network.use_lstm`,
    else `()`.
  """
  if not network.use_lstm:
    return ()
  zeros = jnp.zeros((batch_size, network.lstm_size), jnp.float32)
  return LSTMState(cell=zeros, hidden=zeros)


class ImpalaNetwork(nn.Module):
  """The IMPALA agent: torso → optional LSTM core → policy and value heads.

  Exactly one of `num_actions` (discrete actions, categorical policy) and `action_dim`
  (continuous actions, diagonal-Gaussian policy) must be set.

  Attributes:
    torso: "shallow" (Mnih et al. 2016), "deep" (IMPALA ResNet, paper Fig. 3) or "mlp".
    num_actions: number of discrete actions, or None.
    action_dim: size of a continuous action, or None.
    use_lstm: add an LSTM core between torso and heads.
    lstm_size: LSTM hidden units.
    mlp_hidden_sizes: hidden layers of the MLP torso (ignored by the others).
    space_to_depth: the shallow torso's convolutions as `SpaceToDepthConv` (faster on CPU,
      identical parameters and outputs); False gives plain `nn.Conv`.
  """

  torso: str
  num_actions: Optional[int] = None
  action_dim: Optional[int] = None
  use_lstm: bool = False
  lstm_size: int = 256
  mlp_hidden_sizes: Sequence[int] = (64, 64)
  space_to_depth: bool = True

  def __post_init__(self):
    # Validate at construction so a bad configuration fails where it is written, not at the
    # first `init` deep inside a thread.
    if self.torso not in TORSOS:
      raise ValueError(f"Unknown network torso {self.torso!r}; accepted: {', '.join(TORSOS)}.")
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
    if self.torso == "mlp" and (not self.mlp_hidden_sizes or
                                any(size < 1 for size in self.mlp_hidden_sizes)):
      raise ValueError(
          f"mlp_hidden_sizes must be a non-empty sequence of sizes >= 1, got "
          f"{self.mlp_hidden_sizes!r}.")
    super().__post_init__()

  @nn.nowrap
  def initial_state(self, batch_size: int) -> types.CoreState:
    """Zero core state for `batch_size` environments; callable on an unbound module.

    `net.initial_state(B)` needs no params. Returns `LSTMState` (leaves `[B, lstm_size]`
    float32) with an LSTM, else `()`. Same as `initial_core_state(net, B)`.
    """
    return initial_core_state(self, batch_size)

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
      state after step T-1 (same structure as `core_state`; `()` without an LSTM).
    """
    chex.assert_rank(first, 2)
    chex.assert_equal_shape_prefix([observation, first], prefix_len=2)
    time_steps, batch_size = first.shape
    first = first.astype(bool)

    if self.torso == "shallow":
      torso = ShallowTorso(space_to_depth=self.space_to_depth, name="torso")
    elif self.torso == "deep":
      torso = DeepResNetTorso(name="torso")
    else:
      torso = MLPTorso(tuple(self.mlp_hidden_sizes), name="torso")

    # The torso sees one flat batch of T*B observations: no conv inside a scan (module doc).
    flat_observation = observation.reshape((time_steps * batch_size,) + observation.shape[2:])
    features = torso(flat_observation)  # [T*B, F]
    features = features.reshape(time_steps, batch_size, -1)  # [T, B, F]

    if self.use_lstm:
      if not isinstance(core_state, LSTMState):
        raise ValueError(
            "With use_lstm=True core_state must be an LSTMState (see initial_state), got "
            f"{type(core_state).__name__}.")
      chex.assert_shape([core_state.cell, core_state.hidden], (batch_size, self.lstm_size))
      features, core_state = LSTMCore(self.lstm_size, name="core")(features, first, core_state)
    elif jax.tree.leaves(core_state):
      raise ValueError(f"Without an LSTM core_state must be (), got {type(core_state).__name__}.")

    if self.num_actions is not None:
      policy = CategoricalHead(self.num_actions, name="policy")(features)
    else:
      policy = DiagGaussianHead(self.action_dim, name="policy")(features)
    value = ValueHead(name="value")(features)
    return AgentOutput(policy=policy, value=value), core_state


def make_network(network_config: config_lib.NetworkConfig, *,
                 num_actions: Optional[int] = None,
                 action_dim: Optional[int] = None) -> ImpalaNetwork:
  """Builds the `ImpalaNetwork` that `network_config` describes.

  Args:
    network_config: torso, LSTM and MLP settings.
    num_actions: discrete action count (categorical policy), or None.
    action_dim: continuous action size (diagonal-Gaussian policy), or None. Exactly one of
      `num_actions` and `action_dim` must be given.

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
      mlp_hidden_sizes=tuple(network_config.mlp_hidden_sizes))
