"""The experiments: one module per claim of the source text, run by ``jaxnn reproduce``.

This folder is installed as the package ``jaxnn_experiments`` (so that it never shadows an
``experiments`` package of yours): ``python -m jaxnn_experiments.backprop_worked_example``
runs one experiment; the CLI, the tests and the benchmarks import them by that name.
``common`` holds what every experiment shares: ``publish`` (JSON, figure, report), ``table``.
"""

# The experiments `jaxnn reproduce` runs, in order. Each module has NAME and
# main(out_dir, *, quick=False), which returns its JSON result with "claims" (common.claim).
EXPERIMENTS = (
    "backprop_worked_example",
    "nonlinearity",
    "vanishing_gradients",
    "batchnorm_saturation",
    "batchnorm_ioffe_digits",
    "regularization",
)
