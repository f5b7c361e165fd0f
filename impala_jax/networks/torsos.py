"""Torsos: observations `[N, ...]` to features `[N, F]`, always on one flat batch.

The agent network flattens `[T, B]` into `N = T·B` before calling a torso, so a convolution never
runs inside a scan (on XLA:CPU that is about 17× slower, jax-ml/jax#12868).

  shallow  the A3C network of Mnih et al. 2016, IMPALA's shallow Atari torso
  nature   the DQN network of Mnih et al. 2015, the usual PPO Atari torso
  deep     the IMPALA ResNet (paper Fig. 3)
  mlp      dense layers for vector observations

`make_torso(name, ...)` builds one by the names listed in `config.TORSOS`.
"""

from typing import Any, Sequence, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from impala_jax import config as config_lib
from impala_jax.networks import initializers


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


def _conv_stack(observation: jax.Array, layers: Sequence[Tuple[int, int, int]],
                space_to_depth: bool) -> jax.Array:
  """ReLU(conv) for each (features, kernel, stride) of `layers`, 'VALID' padding, flattened.

  Input `[N, C, H, W]` (uint8 pixels or floats in [0, 1]); output `[N, features]` float32.
  The layers are named Conv_0, Conv_1, ... either way, so both variants share parameters.
  """
  if space_to_depth:
    if observation.ndim != 4:
      raise ValueError(
          "Image torsos expect observations [T, B, C, H, W] (channel-first, as EnvPool "
          f"gives them); got per-step shape {observation.shape[1:]}.")
    scale = 1.0 / 255.0 if observation.dtype == jnp.uint8 else 1.0
    # Transposing uint8 frames moves a quarter of the bytes of float32 ones.
    x = jnp.transpose(observation, (0, 2, 3, 1))
  else:
    x = _image_to_nhwc_float(observation)
  for i, (features, kernel, stride) in enumerate(layers):
    if space_to_depth:
      x = SpaceToDepthConv(features, kernel, stride, input_scale=scale if i == 0 else 1.0,
                           kernel_init=initializers.RELU_INIT, name=f"Conv_{i}")(x)
    else:
      x = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="VALID",
                  kernel_init=initializers.RELU_INIT, name=f"Conv_{i}")(x)
    x = nn.relu(x)
  return x.reshape(x.shape[0], -1)


class ShallowTorso(nn.Module):
  """The feed-forward network of Mnih et al. 2016 (A3C), IMPALA's shallow Atari torso.

  conv 16·8×8/4 → ReLU → conv 32·4×4/2 → ReLU → FC 256 → ReLU, 'VALID' padding as in the
  original. On 84×84 inputs the feature maps are 20×20×16 then 9×9×32.

  Attributes:
    space_to_depth: compute the convolutions as `SpaceToDepthConv` (same parameters, same
      outputs, faster gradients on CPU); False uses `nn.Conv`.

  Input `[N, C, H, W]` (uint8 pixels or floats in [0, 1]); output `[N, 256]` float32.
  """

  space_to_depth: bool = True

  @nn.compact
  def __call__(self, observation: jax.Array) -> jax.Array:
    x = _conv_stack(observation, ((16, 8, 4), (32, 4, 2)), self.space_to_depth)
    return nn.relu(nn.Dense(256, kernel_init=initializers.RELU_INIT, name="Dense_0")(x))


class NatureTorso(nn.Module):
  """The DQN network of Mnih et al. 2015 (Nature), the usual PPO/APPO Atari torso.

  conv 32·8×8/4 → ReLU → conv 64·4×4/2 → ReLU → conv 64·3×3/1 → ReLU → FC 512 → ReLU,
  'VALID' padding: the network of CleanRL's, OpenAI Baselines' and RLlib's Atari PPO. On
  84×84 inputs the feature maps are 20×20×32, 9×9×64 then 7×7×64; about 3× the shallow
  torso's multiply-adds per frame, and twice its features.

  Attributes:
    space_to_depth: as `ShallowTorso`'s.

  Input `[N, C, H, W]` (uint8 pixels or floats in [0, 1]); output `[N, 512]` float32.
  """

  space_to_depth: bool = True

  @nn.compact
  def __call__(self, observation: jax.Array) -> jax.Array:
    x = _conv_stack(observation, ((32, 8, 4), (64, 4, 2), (64, 3, 1)), self.space_to_depth)
    return nn.relu(nn.Dense(512, kernel_init=initializers.RELU_INIT, name="Dense_0")(x))


class ResidualBlock(nn.Module):
  """ReLU → conv 3×3 → ReLU → conv 3×3, plus the input (IMPALA paper Fig. 3)."""

  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(x)
    y = nn.Conv(self.channels, (3, 3), kernel_init=initializers.RESNET_INIT)(y)
    y = nn.relu(y)
    y = nn.Conv(self.channels, (3, 3), kernel_init=initializers.RESNET_INIT)(y)
    return x + y


class DeepResNetTorso(nn.Module):
  """The IMPALA deep ResNet torso (paper Fig. 3).

  Three stages with channels (16, 32, 32); each stage is conv 3×3/1 → max-pool 3×3/2 ('SAME')
  → two residual blocks. Then ReLU → flatten → FC 256 → ReLU. On 84×84 inputs the stages
  output 42×42×16, 21×21×32 and 11×11×32. Weights use LeCun-normal init (see
  initializers.RESNET_INIT).

  Input `[N, C, H, W]` (uint8 pixels or floats in [0, 1]); output `[N, 256]` float32.
  """

  stage_channels: Sequence[int] = (16, 32, 32)
  num_blocks: int = 2

  @nn.compact
  def __call__(self, observation: jax.Array) -> jax.Array:
    x = _image_to_nhwc_float(observation)
    for channels in self.stage_channels:
      x = nn.Conv(channels, (3, 3), kernel_init=initializers.RESNET_INIT)(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
      for _ in range(self.num_blocks):
        x = ResidualBlock(channels)(x)
    x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(256, kernel_init=initializers.RESNET_INIT)(x))


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
      x = nn.relu(nn.Dense(size, kernel_init=initializers.RELU_INIT)(x))
    return x


def make_torso(name: str, *, mlp_hidden_sizes: Sequence[int] = (64, 64),
               space_to_depth: bool = True) -> nn.Module:
  """The torso called `name` (one of `config.TORSOS`), as the submodule "torso".

  Raises:
    ValueError: `name` is not one of `config.TORSOS`.
  """
  if name == "shallow":
    return ShallowTorso(space_to_depth=space_to_depth, name="torso")
  if name == "nature":
    return NatureTorso(space_to_depth=space_to_depth, name="torso")
  if name == "deep":
    return DeepResNetTorso(name="torso")
  if name == "mlp":
    return MLPTorso(tuple(mlp_hidden_sizes), name="torso")
  config_lib.check_torso(name)
  raise AssertionError(f"config.TORSOS lists {name!r}, but make_torso cannot build it.")
