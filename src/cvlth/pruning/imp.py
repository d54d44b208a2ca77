"""Iterative magnitude pruning (IMP): the lottery-ticket loop as a library function.

:func:`imp` trains ``model`` round after round; after each round it removes ``fraction`` of the
weights that are still kept (one global magnitude threshold over the prunable scope) and rewinds
every surviving weight, BN statistic and objective head to the *rewind point* before the next
round. The rewind point is the model as given (θ_p, or a random θ_0), or, with ``rewind_step``, the
weights after that many steps of round 0 (θ_5%: round 0 trains from the model as given).

Everything lasting goes to ``folder``, so a killed call resumes where it stopped (a finished level
is never recomputed; a round in progress resumes from its checkpoint):

* ``masks/level-XX.safetensors`` — the cvlth-mask/1 file of each level (sparsity 1 - (1-f)^k);
* ``rewind.safetensors`` — the rewind weights, ``model.<key>`` and ``heads.<head>.<key>`` tensors
  with metadata ``format`` = cvlth-rewind/1, ``point`` and ``step``: readable without cvlth;
* ``round-XX/`` — one training folder per round (``metrics.jsonl``, ``result.json``).

>>> result = imp(model, lambda: SupervisedObjective(), batches, training=TrainingConfig(epochs=1),
...              optim=SGDConfig(lr=0.01), schedule=ConstantSchedule(), rounds=3, folder="imp")
>>> [mask.sparsity for mask in result.masks.values()]   # ~[0.2, 0.36, 0.488]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cvlth.atomic import atomic_path
from cvlth.config import OptimConfig, ScheduleConfig, TrainingConfig
from cvlth.data.source import BatchSource
from cvlth.errors import ConfigError
from cvlth.masks import Mask
from cvlth.pruning.imp_record import check_imp_folder, imp_record
from cvlth.pruning.strategies import Strategy, get_strategy
from cvlth.run_files import LATEST_HEADS, REWIND, capture_path, mask_path, round_path
from cvlth.scope import prunable_parameters
from cvlth.seeds import mix
from cvlth.store import RunFolder
from cvlth.training.loop import train
from cvlth.training.objective import Objective, head_state, head_states, load_heads

REWIND_FORMAT = "cvlth-rewind/1"

Heads = dict[str, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ImpResult:
    masks: dict[int, Mask]  # level k -> its mask (sparsity 1 - (1 - fraction)^k)
    rounds: list[dict[str, Any]]  # one training result per round, in order


def round_folder(folder: str | os.PathLike[str], level: int) -> RunFolder:
    """The training folder of the round that trains with the level-``level`` mask."""
    return RunFolder(round_path(folder, level))


def imp(
    model: nn.Module,
    make_objective: Callable[[], Objective],
    train_data: BatchSource,
    *,
    training: TrainingConfig,
    optim: OptimConfig,
    schedule: ScheduleConfig,
    rounds: int,
    folder: str | os.PathLike[str],
    fraction: float = 0.2,
    strategy: str = "magnitude",
    prune_first: bool = False,
    rewind_step: int | None = None,
    heads: Heads | None = None,
    head_policy: HeadPolicy = "reference",
    reshuffle: bool = True,
    val_data: BatchSource | None = None,
    test_data: BatchSource | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    rewind: str = "pretrained",
    before_round: Callable[[int], None] | None = None,
    round_info: Mapping[str, Any] | None = None,
    train_last_level: bool = False,
    augmentation_seed: int | None = None,
) -> ImpResult:
    """Masks at levels 1..``rounds`` of ``model`` (trained in place; it ends rewound and trained
    in the last round), saved and resumable in ``folder`` (see the module docstring).

    ``make_objective()`` builds the objective of one round; its heads are then loaded per
    ``head_policy`` (:data:`HEAD_POLICIES`): by default as the paper's code does, a head the rewind
    point ``heads`` holds is rewound with the backbone, a head it lacks (drawn fresh) keeps its
    training from round to round, and what the objective carries across rounds (MoCo's queue) does.
    ``reshuffle``: round ``k`` reads the epochs that follow round ``k-1``'s (data order) and draws
    its own augmentations, as the reference code's one continuous loader does; otherwise every round
    repeats round 0's batches.
    ``prune_first`` prunes the model once before any training (the paper's upstream IMP: K levels
    take K-1 trainings); otherwise round 0 trains the dense model. ``rewind_step``: rewind to the
    weights after that step of round 0 instead of the model as given. ``rewind`` names the rewind
    point (``pretrained``, ``init``, ``early``: a study finder's ``rewind``), recorded in the files. ``before_round(level)`` runs before
    each round's training (e.g. to seed global RNGs); ``round_info`` is added to each round's result.
    ``strategy`` names the pruning strategy (:data:`~cvlth.pruning.strategies.STRATEGIES`) that
    removes ``fraction`` of the remaining weights each round: ``magnitude`` (global, the paper's) or
    ``layerwise``. ``train_last_level`` also trains the level-``rounds`` mask once more (no pruning
    after it), so that every level has a trained round to evaluate (the paper's Fig. 2 up to its
    last sparsity). ``augmentation_seed`` seeds the augmentation streams (default ``training.seed``;
    with ``reshuffle`` each later round mixes in its level).
    """
    prune = get_strategy(strategy)
    _check_arguments(model, train_data, training, rounds, fraction, rewind_step)
    root = Path(folder)
    base_seed = training.seed if augmentation_seed is None else augmentation_seed
    settings = {
        "fraction": fraction,
        "strategy": strategy,
        "prune_first": prune_first,
        "train_last_level": train_last_level,
        **({"reshuffle": True} if reshuffle else {}),
        "rewind": {
            "label": rewind,  # imp.json's key since the first IMP folder
            "step": rewind_step,
            "heads": head_policy,
        },
        # the training as run (its seed the augmentation seed): the record IMP folders always had
        "training": training.model_copy(update={"seed": base_seed}),
        "optim": optim,
        "schedule": schedule,
    }
    check_imp_folder(root, imp_record(model, make_objective, train_data, settings))
    heads = dict(heads or {})
    if prune_first and not mask_path(root, 1).is_file():
        _prune_step(prune, model, fraction, None).save(
            mask_path(root, 1), method="imp", round=1, rewind=rewind
        )
    rewind_file = root / REWIND
    if rewind_step is None and not rewind_file.is_file():
        save_rewind(rewind_file, {"model": model.state_dict(), "heads": heads}, point=rewind)

    first = 1 if prune_first else 0
    last = rounds if train_last_level else rounds - 1  # the last level a round trains with
    for level in range(first, last + 1):
        finished = (
            round_folder(root, level).is_done() if level == rounds else mask_path(root, level + 1).is_file()
        )
        if finished:
            continue  # a finished level is never recomputed
        previous = None if level == 0 else Mask.load(mask_path(root, level))
        folder_k = round_folder(root, level)
        capture = rewind_step if level == 0 else None
        if capture is None:  # round 0 of an early-rewind IMP trains from the model as given
            state = load_rewind(rewind_file)
            model.load_state_dict(state["model"])
            heads = state["heads"]
        objective = make_objective()
        load_heads(objective, round_heads(head_policy, objective, heads, _latest_heads(root, heads)))
        if before_round is not None:
            before_round(level)
        start = time.perf_counter()
        round_data, round_seed = train_data, base_seed
        if reshuffle and level > first:  # the first round trained reads the loader from its start
            round_data = _LaterEpochs(train_data, (level - first) * training.epochs)
            round_seed = mix(base_seed, level)
        result = train(
            model,
            objective,
            round_data,
            training=training,
            augmentation_seed=round_seed,
            optim=optim,
            schedule=schedule,
            run=folder_k,
            val_data=val_data,
            test_data=test_data,
            mask=previous,
            device=device,
            capture_at_step=capture,
            quiet=quiet,
        )
        result.update(wall_seconds=time.perf_counter() - start, **(round_info or {}))
        if head_policy != "rewind" and objective.modules():
            _save_torch(head_states(objective), root / LATEST_HEADS)
        if capture is not None:  # θ_k: the weights after `rewind_step` steps of round 0
            captured = torch.load(capture_path(folder_k, capture), map_location="cpu", weights_only=True)
            save_rewind(rewind_file, {"model": captured["model"], "heads": {}}, point=rewind, step=capture)
        sparsity = 0.0 if previous is None else previous.sparsity
        folder_k.write_result({"trained_with_level": level, "sparsity": sparsity, **result})
        if level < rounds:
            mask = _prune_step(prune, model, fraction, previous)
            mask.save(mask_path(root, level + 1), method="imp", round=level + 1, rewind=rewind)
        folder_k.train_state_path.unlink(missing_ok=True)  # the level's mask is what lasts
    masks = {k: Mask.load(mask_path(root, k)) for k in range(1, rounds + 1)}
    return ImpResult(masks, [round_folder(root, k).read_result() for k in range(first, last + 1)])


def _check_arguments(
    model: nn.Module,
    train_data: BatchSource,
    training: TrainingConfig,
    rounds: int,
    fraction: float,
    rewind_step: int | None,
) -> None:
    """Refuse arguments that cannot make an IMP before round 0 spends any time training."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"imp(): rounds must be an integer >= 1 (got {rounds!r})")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(
            f"imp(): fraction must be in (0, 1), the share of remaining weights pruned per round (got {fraction!r})"
        )
    if not prunable_parameters(model):
        raise ConfigError(
            f"imp(): {type(model).__name__} has no prunable weights (convolutions or linear layers in the scope)",
            hint="give imp() a model with Conv2d / Linear layers, or widen the pruning scope",
        )
    if rewind_step is not None:
        steps = len(train_data) * training.epochs
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or not 1 <= rewind_step <= steps:
            raise ConfigError(
                f"imp(): rewind_step must be a step of round 0, 1..{steps} "
                f"({len(train_data)} batches x {training.epochs} epochs; got {rewind_step!r})"
            )


def save_rewind(path: Path, state: Mapping[str, Any], *, point: str, step: int = 0) -> None:
    """The rewind weights as a plain safetensors file: ``model.<key>`` and ``heads.<head>.<key>``."""
    tensors = {f"model.{key}": value for key, value in state["model"].items()}
    for head, saved in state.get("heads", {}).items():
        tensors.update({f"heads.{head}.{key}": value for key, value in saved.items()})
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}
    metadata = {"format": REWIND_FORMAT, "point": point, "step": str(step)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_rewind(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"model": state_dict, "heads": {head: state_dict}}`` as :func:`save_rewind` wrote it."""
    state: dict[str, Any] = {"model": {}, "heads": {}}
    for key, value in load_file(str(path)).items():
        if key.startswith("model."):
            state["model"][key.removeprefix("model.")] = value
        else:
            head, _, name = key.removeprefix("heads.").partition(".")
            state["heads"].setdefault(head, {})[name] = value
    return state


def _prune_step(prune: Strategy, model: nn.Module, fraction: float, mask: Mask | None) -> Mask:
    weights = {name: parameter.detach() for name, parameter in prunable_parameters(model).items()}
    return prune(weights, fraction, mask)


class _LaterEpochs:
    """``source`` with its epochs numbered from ``offset``: round k of IMP continues the loader."""

    def __init__(self, source: BatchSource, offset: int) -> None:
        self.source, self.offset = source, offset

    def __len__(self) -> int:
        return len(self.source)

    def epoch_batches(self, epoch: int, start: int = 0) -> Any:
        return self.source.epoch_batches(epoch + self.offset, start)

    def __getattr__(self, name: str) -> Any:  # everything else is the source's (e.g. its dataset)
        return getattr(self.source, name)


#: How an IMP round starts the objective's heads (projection MLPs, MoCo's queue):
#: ``reference`` -- as the paper's code: a head the rewind point holds is rewound with the backbone
#: (SimCLR/MoCo: their checkpoint's keys are reloaded), a head it lacks keeps training across rounds
#: (SimCLR's reference code never reloads a head its checkpoint does not have), and what the
#: objective carries (``carried_across_rounds``: MoCo's queue, a buffer outside the encoders) too;
#: ``rewind`` -- every head and the queue back to the rewind point's (a fresh head: the same draw);
#: ``carry`` -- every head and the queue as the previous round left them.
HeadPolicy = Literal["reference", "rewind", "carry"]
HEAD_POLICIES: tuple[HeadPolicy, ...] = ("reference", "rewind", "carry")


def round_heads(policy: HeadPolicy, objective: Objective, rewind: Heads, latest: Heads) -> Heads:
    """The heads one round starts from: from ``rewind`` (the rewind point's) or ``latest`` (the
    previous round's; the rewind point's before round 1), per ``policy``."""
    if policy == "rewind":
        return rewind
    if policy == "carry":
        return latest
    if policy != "reference":
        raise ValueError(f"unknown head policy {policy!r}; use one of {', '.join(HEAD_POLICIES)}")
    carried = getattr(objective, "carried_across_rounds", frozenset())
    chosen: dict[str, Any] = {}
    for name in objective.modules():
        own = head_state(rewind, name)
        if own is not None and name not in carried:
            chosen[name] = own
        elif head_state(latest, name) is not None:
            chosen[name] = head_state(latest, name)
    return chosen


def _latest_heads(root: Path, rewind_heads: Heads) -> Heads:
    """The heads as the previous round left them (the reference SimCLR code's behaviour)."""
    path = root / LATEST_HEADS
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else rewind_heads


def _save_torch(obj: Any, path: Path) -> None:
    if obj:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
