"""MoCo v2: a query encoder trained by SGD, a key encoder that is its EMA, and a queue of keys.

The query encoder is the run's ``model`` (the loop's optimizer and mask enforcer handle it). The
objective owns, through :meth:`MoCoObjective.modules` (so they are checkpointed and resumed): the
query head, the key encoder (a deep copy of the model made by :meth:`bind`), the key head and the
queue (keys and pointer are buffers). Key encoder and key head are frozen: only the EMA moves them.

After every optimizer step the loop calls :meth:`MoCoObjective.after_step`, which does
``θ_k ← m θ_k + (1 - m) θ_q`` (parameters only, as MoCo does; BN running statistics of the key
encoder come from its own forwards) **and then re-applies the query's mask to the key encoder**, so
the EMA never brings a pruned weight back.

Shuffling BN. Keys must not share batch statistics with their own queries (the model would cheat
through BN). On several processes the key batch is shuffled across ranks as in MoCo (gather,
permute, encode, gather, unshuffle). On one process the key batch is permuted and encoded in
``key_bn_groups`` separate forwards, each with its own BN statistics (the single-GPU "split BN"
equivalent), then put back in order; the query is encoded in one forward.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cvlth.data.augment_pipelines import MOCO_V2_VIEW, contrastive_augment
from cvlth.data.source import BatchSource
from cvlth.masks import Mask
from cvlth.objectives.features import features, freeze_classifier, unwrap
from cvlth.objectives.simclr import eval_generator, retrieval_accuracy
from cvlth.objectives.supervised import Augment
from cvlth.objectives.views import two_views
from cvlth.pruning.enforcer import MaskEnforcer
from cvlth.training.objective import ObjectiveBase


def moco_head(feature_dim: int, dim: int, mlp: bool) -> nn.Module:
    """MoCo v2's MLP head (Linear-ReLU-Linear) or v1's single Linear."""
    if not mlp:
        return nn.Linear(feature_dim, dim)
    return nn.Sequential(
        nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, dim)
    )


class KeyQueue(nn.Module):
    """A ring buffer of ``size`` L2-normalised keys (rows); the oldest are overwritten first."""

    keys: torch.Tensor
    pointer: torch.Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue_size must be >= 1, got {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.loaded = False  # keys loaded from a saved state (θ_p's, the previous IMP round's)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.loaded = True

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def reset(self, seed: int = 0) -> None:
        """Refill with random unit keys drawn from ``seed`` (not the process-dependent global RNG)."""
        self.loaded = False
        generator = torch.Generator(device=self.keys.device).manual_seed(seed)
        keys = torch.randn(self.keys.shape, generator=generator, device=self.keys.device)
        self.keys.copy_(F.normalize(keys, dim=1))
        self.pointer.zero_()

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` at the pointer, wrapping around the end (two pieces when needed)."""
        keys = keys.detach()[-self.size :]  # a batch larger than the queue: only the newest fit
        n, start = keys.shape[0], int(self.pointer)
        first = min(n, self.size - start)
        self.keys[start : start + first] = keys[:first]
        self.keys[: n - first] = keys[first:]
        self.pointer.fill_((start + n) % self.size)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dimension 0 (no gradient)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class MoCoObjective(ObjectiveBase):
    """InfoNCE between queries ``q = head_q(model(view1))`` and keys ``k = head_k(encoder_k(view2))``
    with the queue as negatives (view pairs a streamed loader cropped: see
    :func:`~cvlth.objectives.views.two_views`). Call :meth:`bind` before training (the loop does)."""

    selection: tuple[str, Literal["max", "min"]] = ("retrieval_accuracy", "max")
    figure2_metric = "feature_retrieval_accuracy"
    #: IMP's ``reference`` head policy carries the queue from round to round (the reference code's
    #: queue is a buffer outside the encoders it rewinds).
    carried_across_rounds = frozenset({"queue"})

    def __init__(
        self,
        feature_dim: int,
        dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        mlp: bool = True,
        augment: Augment | None = None,
        key_bn_groups: int = 8,
        eval_seed: int = 0,
    ) -> None:
        self.momentum = momentum
        self.temperature = temperature
        self.augment = augment or contrastive_augment(((0.5,), (0.25,)), MOCO_V2_VIEW)
        self.key_bn_groups = key_bn_groups
        self.eval_seed = eval_seed
        self.query_head = moco_head(feature_dim, dim, mlp)
        self.key_head = copy.deepcopy(self.query_head).requires_grad_(False)
        self.queue = KeyQueue(dim, queue_size)
        self.key_encoder: nn.Module | None = None
        self.mask: Mask | None = None
        self._key_enforcer: MaskEnforcer | None = None

    # --- set-up -------------------------------------------------------------------------
    def bind(self, model: nn.Module, mask: Mask | None = None) -> MoCoObjective:
        """Start a run on ``model``: key encoder and key head become copies of the query side, the
        queue is refilled with random keys unless it was loaded (θ_p's queue, or the previous IMP
        round's, which the reference code carries across rounds), the unused ``fc`` is frozen, and
        ``mask`` (if given) is applied to the key encoder. A resumed run then overwrites all of it
        from the checkpoint."""
        bare = unwrap(model)
        freeze_classifier(bare)
        self.key_encoder = copy.deepcopy(bare).requires_grad_(False)
        self.key_head.load_state_dict(self.query_head.state_dict())
        if not self.queue.loaded:
            self.queue.reset()
        self._key_enforcer = None
        if mask is not None or self.mask is not None:
            self.set_mask(mask if mask is not None else self.mask)
        return self

    def set_mask(self, mask: Mask | None) -> None:
        """The query's mask, enforced on the key encoder now and after every EMA update."""
        self.mask = mask
        self._key_enforcer = None
        if mask is not None and self.key_encoder is not None:
            mask.apply(self.key_encoder)

    def modules(self) -> dict[str, nn.Module]:
        """The heads and the queue; the key encoder only once :meth:`bind` has made it (the loop
        binds before it builds the optimizer, so a run always checkpoints all four)."""
        modules = {"query_head": self.query_head, "key_head": self.key_head, "queue": self.queue}
        if self.key_encoder is not None:
            modules["key_encoder"] = self.key_encoder
        return modules

    def _bound_key_encoder(self) -> nn.Module:
        if self.key_encoder is None:
            raise RuntimeError("MoCoObjective has no key encoder yet: call objective.bind(model) first")
        return self.key_encoder

    # --- the EMA --------------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """After the optimizer step and the query's mask: EMA into the key side, then re-mask it."""
        key_encoder = self._bound_key_encoder()
        self._ema(list(key_encoder.parameters()), list(unwrap(model).parameters()))
        self._ema(list(self.key_head.parameters()), list(self.query_head.parameters()))
        if self.mask is not None:
            if self._key_enforcer is None:  # built lazily: after the loop moved the modules to the device
                self._key_enforcer = MaskEnforcer(key_encoder, self.mask)
            self._key_enforcer.apply()

    def _ema(self, keys: list[torch.Tensor], queries: list[torch.Tensor]) -> None:
        if len(keys) != len(queries):
            raise RuntimeError("the key encoder's parameters no longer match the model's; bind() again")
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, queries, alpha=1.0 - self.momentum)

    # --- forward --------------------------------------------------------------------------
    def query(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.query_head(features(model, images)), dim=1)

    def _encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_head(features(self._bound_key_encoder(), images)), dim=1)

    @torch.no_grad()
    def keys(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's keys in batch order, every rank's keys to enqueue), BN-shuffled."""
        if _world()[1] > 1:
            return self._keys_across_ranks(images, generator)
        n = images.shape[0]
        order = torch.randperm(n, generator=generator, device=images.device)
        groups = max(1, min(self.key_bn_groups, n // 2))  # >= 2 images per group for BN
        shuffled = torch.cat([self._encode_keys(part) for part in torch.tensor_split(images[order], groups)])
        k = torch.empty_like(shuffled)
        k[order] = shuffled
        return k, k

    def _keys_across_ranks(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rank, world = _world()
        n = images.shape[0]
        sizes = _gather(torch.tensor([n], device=images.device))
        if bool((sizes != n).any()):
            raise RuntimeError(
                f"MoCo's cross-rank BN shuffle needs equal per-rank batches, got {sizes.tolist()}; "
                "make the global batch size divisible by the number of processes"
            )
        everything = _gather(images)
        order = torch.randperm(n * world, generator=generator, device=images.device)
        dist.broadcast(order, src=0)  # every rank must use rank 0's permutation
        mine = self._encode_keys(everything[order.view(world, n)[rank]])
        shuffled = _gather(mine)
        all_keys = torch.empty_like(shuffled)
        all_keys[order] = shuffled
        return all_keys[rank * n : (rank + 1) * n], all_keys

    def info_nce(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits): column 0 is the positive, the rest the queue (read before enqueueing)."""
        positive = (q * k).sum(1, keepdim=True)
        negative = q @ self.queue.keys.clone().T  # cloned: the queue changes before backward
        logits = torch.cat([positive, negative], 1) / self.temperature
        targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, targets), logits

    def train_step(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        view1, view2 = two_views(self.augment, batch[0], generator)
        q = self.query(model, view1)
        k, to_enqueue = self.keys(view2, generator)
        loss, logits = self.info_nce(q, k)
        metrics = {
            "top1": (logits.detach().argmax(1) == 0).float().mean(),
            "retrieval_accuracy": retrieval_accuracy(q, k),
        }
        self.queue.dequeue_and_enqueue(to_enqueue)
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: BatchSource) -> dict[str, float]:
        """InfoNCE against the current queue (left unchanged) and top-1 per batch, averaged over
        images; fixed views, key encoder in eval mode (no shuffle needed). The Eq. 2 retrieval
        accuracy is measured on the *query* encoder's projections of the two views: that is the
        encoder being pruned, and q-vs-k retrieval mostly measures how far the EMA key encoder lags
        (early in training every q's nearest neighbour is another q); ``feature_retrieval_accuracy``
        is Eq. 2 on the query encoder's backbone features, what Fig. 2 compares (no head involved)."""
        device = next(model.parameters()).device
        generator = eval_generator(self.eval_seed, device)
        sums = {"loss": 0.0, "top1": 0.0, "retrieval_accuracy": 0.0, "feature_retrieval_accuracy": 0.0}
        count = 0
        for batch in batches.epoch_batches(0):
            images = batch[0].to(device)
            view1, view2 = two_views(self.augment, images, generator)
            f1, f2 = features(model, view1), features(model, view2)
            q = F.normalize(self.query_head(f1), dim=1)  # = self.query(model, view1)
            k = self._encode_keys(view2)
            loss, logits = self.info_nce(q, k)
            n = images.shape[0]
            sums["loss"] += float(loss) * n
            sums["top1"] += float((logits.argmax(1) == 0).float().sum())
            sums["retrieval_accuracy"] += retrieval_accuracy(q, F.normalize(self.query_head(f2), dim=1)) * n
            sums["feature_retrieval_accuracy"] += retrieval_accuracy(f1, f2) * n
            count += n
        return {name: (value / count if count else float("nan")) for name, value in sums.items()}
