"""How jaxnn.checkpoint.save wrote checkpoints before it stopped using orbax's
CheckpointManager (format 1): tests/test_checkpoint.py checks that the new code reads such a
folder, appends to it and prunes it."""

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jaxnn.checkpoint import _stored


def save_v1(directory: Path, train_state: Any, *, step: int, config: dict[str, Any]) -> None:
    arrays, manifest = _stored(train_state)  # the arrays and manifest are as they were
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, max_to_keep=3)
    with ocp.CheckpointManager(directory, options=options) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                train_state=ocp.args.StandardSave(arrays),
                config=ocp.args.JsonSave(config),
                extra=ocp.args.JsonSave({}),
                jaxnn=ocp.args.JsonSave(manifest),
            ),
        )
        mngr.wait_until_finished()
