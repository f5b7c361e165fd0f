"""impala_jax: IMPALA with V-trace and SEED-style central inference, in JAX."""

import setuptools

setuptools.setup(
    name="impala_jax",
    version="0.1.0",
    description="IMPALA (Espeholt et al. 2018) in JAX: V-trace, EnvPool actors, "
    "SEED-style central inference, pmapped learner.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["impala_jax", "impala_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "chex>=0.1.92",
        "envpool>=1.2.5,<2",
        "envpool-assets>=0.3",
        "absl-py>=2.0",
        "numpy>=2.0",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorboardX>=2.6",
        "tqdm>=4.60",
        "psutil>=5.9",
        # Remote environment hosts stream to the inference server over gRPC.
        "grpcio>=1.60",
        # The trajectory store between actor hosts and the learner (a redis-server to talk to).
        "redis>=5.0",
        # impala_jax.evaluation.video: gif and PNG frames (mp4 also needs imageio-ffmpeg).
        "imageio>=2.30",
        # impala_jax.envs.custom: your own gymnasium or dm_env environments (--env=module:fn).
        "dm-env>=1.6",
        "gymnasium>=1.0",
    ],
    extras_require={
        # JAX's CUDA wheels (bundled CUDA/cuDNN; only the NVIDIA driver comes from the host):
        # CUDA 12 (driver >= 525) or CUDA 13 (driver >= 580); see BUILD.md. "cuda" is 12.
        "cuda": ["jax[cuda12]>=0.10,<0.11"],
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "cuda13": ["jax[cuda13]>=0.10,<0.11"],
        # Cloud TPU VMs.
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        # experiments/plot_metrics.py and the learning benchmark's curves; the ffmpeg binary
        # (H.264) behind experiments/evaluate.py --video=*.mp4.
        "experiments": ["matplotlib>=3.8", "imageio-ffmpeg>=0.4.9"],
        # The tests: rlax and distrax are the independent cross-checks of the math; nbclient,
        # nbformat and ipykernel run notebooks/quickstart.ipynb.
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "matplotlib>=3.8", "imageio-ffmpeg>=0.4.9",
                "rlax>=0.1.9", "distrax>=0.1.5", "scipy>=1.10", "nbclient>=0.10",
                "nbformat>=5.9", "ipykernel>=6.29"],
    },
)
