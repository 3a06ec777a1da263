"""The experiments: one module per claim of the source text, run by ``jaxnn reproduce``.

This folder is installed as the package ``jaxnn_experiments`` (so that it never shadows an
``experiments`` package of yours), and its modules import each other by that name. One
experiment runs alone as ``python -m jaxnn_experiments.backprop_worked_example [out_dir]`` or
``python experiments/backprop_worked_example.py [out_dir]``; all of them as ``jaxnn
reproduce`` or ``python -m jaxnn_experiments`` (:mod:`jaxnn_experiments.reproduce`, which
also writes ``report.md``). ``cli`` is the ``jaxnn`` console script: the library's commands
(:mod:`jaxnn.cli`) and ``reproduce``. ``common`` holds what every experiment shares:
``publish`` (JSON, figure, report), ``table``.
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
    "depth_residual",
    "norm_batch_size",
    "vanishing_through_time",
    "long_lags",
)
