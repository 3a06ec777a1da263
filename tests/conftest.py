"""Test configuration: float64 everywhere (gradient tests need it), hypothesis profile, and the
repository's folders that are no installed package of jaxnn: ``benchmarks`` (the repository
root on the path) and, when only the repository is on the path (``PYTHONPATH=.``, not
installed), ``experiments`` under its installed name ``jaxnn_experiments``."""

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

# pytest-xdist runs one JAX process per core: on a GPU each would otherwise take most of its
# memory at start. Set before jax is imported; a value of the caller's is kept.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = "jaxnn_experiments"


def import_experiments() -> ModuleType:
    """The experiments package ``jaxnn_experiments``, installed or from the repository.

    Installed (``pip install -e '.[experiments]'``), it is imported as it is. Otherwise the
    repository's ``experiments/`` folder is loaded under the name ``jaxnn_experiments`` and
    registered in ``sys.modules``, so that ``import jaxnn_experiments.<name>`` works after this
    call (the experiments import each other by that name).
    """
    try:
        return importlib.import_module(EXPERIMENTS)
    except ModuleNotFoundError as e:
        if e.name != EXPERIMENTS:
            raise
    folder = ROOT / "experiments"
    spec = importlib.util.spec_from_file_location(
        EXPERIMENTS, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None  # a file location always has both
    module = importlib.util.module_from_spec(spec)
    sys.modules[EXPERIMENTS] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[EXPERIMENTS]
        raise
    return module


# Before any test module imports them. Appended: an installed package of the same name wins.
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
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
