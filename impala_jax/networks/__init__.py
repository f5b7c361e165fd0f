"""The agent's networks: torsos, cores, heads, and the agent network that assembles them.

    from impala_jax import networks
    net = networks.make_network(NetworkConfig(torso="deep"), num_actions=6)
"""

from impala_jax.networks.agent import AgentOutput
from impala_jax.networks.agent import ImpalaNetwork
from impala_jax.networks.agent import init_params
from impala_jax.networks.agent import make_network
from impala_jax.networks.agent import network_for_spec
from impala_jax.networks.agent import value_linear
from impala_jax.networks.agent import with_value_linear
from impala_jax.networks.cores import initial_core_state
from impala_jax.networks.cores import LSTMCore
from impala_jax.networks.cores import LSTMState
from impala_jax.networks.heads import CategoricalHead
from impala_jax.networks.heads import DiagGaussianHead
from impala_jax.networks.heads import ValueHead
from impala_jax.networks.torsos import DeepResNetTorso
from impala_jax.networks.torsos import make_torso
from impala_jax.networks.torsos import MLPTorso
from impala_jax.networks.torsos import NatureTorso
from impala_jax.networks.torsos import ShallowTorso
from impala_jax.networks.torsos import SpaceToDepthConv
