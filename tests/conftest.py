"""Test configuration: float64 everywhere (gradient tests need it), hypothesis profile."""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "jaxnn",
    deadline=None,  # the first call of a shape compiles; timing belongs to benchmarks
    max_examples=int(os.environ.get("JAXNN_HYPOTHESIS_EXAMPLES", "25")),
    # maybe_jit is a stateless function-scoped fixture: sharing it across examples is safe.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples on every run: CI is reproducible
)
settings.load_profile("jaxnn")


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request):
    """Run a function as is, or under jax.jit."""
    return jax.jit if request.param else (lambda f, **kwargs: f)
