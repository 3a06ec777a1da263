"""Test configuration: float64 everywhere (gradient tests need it), hypothesis profile."""

import os

import jax
from hypothesis import HealthCheck, settings

from jaxnn.cli import import_experiments

# Before any test module imports jaxnn_experiments: installed, or the repository's experiments/
# folder when the repository is only on the path (PYTHONPATH=.).
import_experiments()

jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "jaxnn",
    deadline=None,  # the first call of a shape compiles; timing belongs to benchmarks
    max_examples=int(os.environ.get("JAXNN_HYPOTHESIS_EXAMPLES", "25")),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: CI is reproducible
)
settings.load_profile("jaxnn")
