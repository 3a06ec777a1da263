"""Comparing pytrees by their leaves' paths and shapes, for messages that list every difference.

A network's params and state, a :class:`~jaxnn.train.TrainState` and a checkpoint are trees
of arrays. When one should match another (a state built for another network, a checkpoint of
another run), the useful error lists every leaf that is missing, unexpected or of another
shape, by its path, not the first one a computation trips over.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["differences", "part", "shapes"]


def part(key: Any) -> str:
    """One step of a pytree path as a name: a dict key, an attribute, an index."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _path(keys: tuple[Any, ...]) -> str:
    return "/".join(part(k) for k in keys)


def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of every leaf (``"dense_0/w"``; a leaf without a shape is ``()``)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path(keys): tuple(getattr(leaf, "shape", ())) for keys, leaf in leaves}


def differences(expected: Any, got: Any) -> list[str]:
    """One line per leaf where the tree ``got`` differs from the tree ``expected`` (leaves
    are arrays or ``jax.ShapeDtypeStruct``): missing, unexpected, or of another shape."""
    want, have = shapes(expected), shapes(got)
    lines = []
    for path, shape in want.items():
        if path not in have:
            lines.append(f"{path or '(root)'}: missing (expected shape {shape})")
        elif have[path] != shape:
            lines.append(f"{path or '(root)'}: shape {have[path]}, expected {shape}")
    lines += [
        f"{path or '(root)'}: unexpected (shape {shape})"
        for path, shape in have.items()
        if path not in want
    ]
    return lines
