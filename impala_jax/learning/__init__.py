"""Learning: the pure, pmapped update (IMPALA or APPO objective), its optimizer, the learner."""

from impala_jax.learning.learner import Learner
from impala_jax.learning.optimizers import learning_rate_schedule
from impala_jax.learning.optimizers import make_optimizer
from impala_jax.learning.update import checkpoint_fields
from impala_jax.learning.update import initial_train_state
from impala_jax.learning.update import learner_inputs
from impala_jax.learning.update import make_loss_fn
from impala_jax.learning.update import make_update_fn
from impala_jax.learning.update import TrainState
