"""Where the built-in world's pre-trained checkpoints live, and the ``world:NAME`` paths that name them.

cvlth ships its own θ_p for the built-in world (``world-<name>.safetensors``, cvlth-checkpoint/1,
with the objective's heads beside it in ``world-<name>.heads.safetensors``), the way the paper
imports public checkpoints. A study imports one with ``import_path: world:simclr``. A leaf module.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cvlth.errors import CheckpointError

SCHEME = "world:"
#: The checkpoints the packaged recipe (``zoo/recipe.yaml``) builds.
ZOO_NAMES = ("supervised", "simclr", "moco")


def zoo_dir() -> Path:
    """The package's folder of world checkpoints (``cvlth/zoo``)."""
    return Path(str(resources.files("cvlth") / "zoo"))


def zoo_checkpoint(name: str, folder: Path | None = None) -> Path:
    return (folder or zoo_dir()) / f"world-{name}.safetensors"


def zoo_heads(name: str, folder: Path | None = None) -> Path:
    return (folder or zoo_dir()) / f"world-{name}.heads.safetensors"


def is_zoo_path(path: str | os.PathLike[str]) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The file a checkpoint path names: ``world:NAME`` is the packaged world checkpoint NAME
    (refused when cvlth has no such checkpoint); other paths with ``$VARS`` expanded."""
    if not is_zoo_path(path):
        return Path(os.path.expandvars(os.fspath(path)))
    name = str(path).removeprefix(SCHEME)
    if name not in ZOO_NAMES:
        raise CheckpointError(
            f"{path!r} names no world checkpoint",
            hint=f"the world's checkpoints: {', '.join(SCHEME + n for n in ZOO_NAMES)}",
        )
    file = zoo_checkpoint(name)
    if not file.is_file():
        raise CheckpointError(
            f"{path!r}: this cvlth has no {file.name} (it was not built or not packaged)",
            hint="build it once with `cvlth zoo build " + name + "`",
        )
    return file


def zoo_head_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """The tensor shapes (``head.key``) of world checkpoint ``path``'s heads file, read from its
    header only; empty when it has none (a supervised θ_p) or cvlth lacks the checkpoint."""
    name = str(path).removeprefix(SCHEME)
    file = zoo_heads(name)
    if not is_zoo_path(path) or name not in ZOO_NAMES or not file.is_file():
        return {}
    with safe_open(str(file), framework="pt") as heads:
        return {key: tuple(heads.get_slice(key).get_shape()) for key in heads.keys()}  # noqa: SIM118


def load_zoo_heads(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A world checkpoint's heads file (``head.key`` tensors) as ``{head: state_dict}``."""
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        head, _, name = key.partition(".")
        heads.setdefault(head, {})[name] = value
    return heads
