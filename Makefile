# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# Both create .venv/ from requirements.txt on first use and install this package into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test test-all venv clean redis-server procgen-libs

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# The tests start private redis-server processes (the trajectory store); install the server
# from the system's packages when it is missing (Debian/Ubuntu; root or sudo).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "Installing redis-server (apt-get)..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# EnvPool's Procgen tasks (CoinrunEasy-v0, ...) link the system's Qt 5 GUI library; install it
# from the system's packages when it is missing (Debian/Ubuntu; root or sudo).
procgen-libs:
	@ldconfig -p 2>/dev/null | grep -q libQt5Gui.so.5 || { \
	  echo "Installing libqt5gui5 for Procgen (apt-get)..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO apt-get install -y -qq --no-install-recommends libqt5gui5 >/dev/null; }

# Pong with the configuration for this machine (experiments/presets.py, which says which it
# chose): on a CPU, the fastest-learning one measured on 2 cores (docs/results/: the real game
# score, mean of the last 20 games, passed +18 after 36 and 55 minutes there with seeds 0 and
# 1; 8M agent steps, under an hour); on a GPU or TPU, configs/pong_gpu.flags.
# Another one: make train TRAIN_FLAGS=experiments/configs/atari_paper.flags
train: $(STAMP)
	@flags="$(TRAIN_FLAGS)"; \
	  if [ -z "$$flags" ]; then flags=$$($(PY) experiments/presets.py) || exit 1; fi; \
	  echo "$(PY) experiments/atari.py --flagfile=$$flags $(ARGS)"; \
	  $(PY) experiments/atari.py --flagfile=$$flags $(ARGS)

# The CI suite: everything except tests marked `slow` (long learning runs).
test: $(STAMP) redis-server procgen-libs
	$(PY) -m pytest tests -m "not slow" $(ARGS)

# Everything, slow learning runs included.
test-all: $(STAMP) redis-server procgen-libs
	$(PY) -m pytest tests $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .jax_cache
