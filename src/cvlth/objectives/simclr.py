"""SimCLR: two augmented views per image, a projection MLP, and the NT-Xent loss.

``nt_xent`` is the standard loss of Chen et al. (2020): the mean over all 2N anchors of the
cross-entropy of the positive against the other 2N-1 representations (cosine similarity / τ).
The reference code of the lottery-ticket paper computes ``-log`` of the *mean* positive
probability instead; it is available as ``variant="log_mean_reference"`` (by Jensen it is never
larger than the standard loss).

``retrieval_accuracy`` is the paper's Eq. 2: the fraction of the 2N representations whose
cosine-nearest *other* representation is their partner view. Evaluation reports it on the
projections (what the loss trains) and, as ``feature_retrieval_accuracy``, on the backbone's
features, where the reference code measures it (``val_cacc(..., mlp=False)``): Fig. 2 compares θ_p
with its tickets there, so that a θ_p imported without its projection head is not judged through
an untrained head.

Negatives come from this process's batch only: on several processes each rank contrasts its own
slice of the global batch (no cross-rank gather).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cvlth.data.augment_pipelines import SIMCLR_VIEW, contrastive_augment
from cvlth.data.source import BatchSource
from cvlth.masks import Mask
from cvlth.objectives.features import features, freeze_classifier
from cvlth.objectives.supervised import Augment
from cvlth.objectives.views import two_views
from cvlth.training.objective import ObjectiveBase

Variant = Literal["standard", "log_mean_reference"]


def _pair_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity logits of the 2N stacked views (self-pairs at -inf) and each row's partner."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"z1 and z2 must be (N, D) of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    partner = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return logits, partner


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, variant: Variant = "standard"
) -> torch.Tensor:
    """NT-Xent of two ``(N, D)`` batches of projections whose rows ``i`` are positive pairs.

    With p_i = exp(s(i, i⁺)/τ) / Σ_{k≠i} exp(s(i, k)/τ) over the 2N anchors (s = cosine):

    * ``"standard"``: mean_i(-log p_i);
    * ``"log_mean_reference"``: -log(mean_i p_i), what the paper's reference code computes.
    """
    logits, partner = _pair_logits(z1, z2, temperature)
    log_p = logits.log_softmax(1).gather(1, partner[:, None]).squeeze(1)
    if variant == "standard":
        return -log_p.mean()
    if variant == "log_mean_reference":
        return math.log(log_p.numel()) - torch.logsumexp(log_p, 0)
    raise ValueError(f"unknown NT-Xent variant {variant!r}; use 'standard' or 'log_mean_reference'")


@torch.no_grad()
def retrieval_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """Eq. 2: the fraction of the 2N rows whose cosine-nearest other row is their partner."""
    logits, partner = _pair_logits(z1.detach().float(), z2.detach().float(), 1.0)
    return int((logits.argmax(1) == partner).sum()) / partner.numel()


class ProjectionHead(nn.Sequential):
    """SimCLR v1's projection: Linear(d, hidden) -> ReLU -> Linear(hidden, out)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def eval_generator(seed: int, device: torch.device) -> torch.Generator:
    """A freshly seeded generator: evaluation sees the same views at every epoch."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class SimCLRObjective(ObjectiveBase):
    """NT-Xent on ``head(features(model, view))`` for two views of each image of ``batch[0]`` (or of
    each pair of views a streamed loader cropped, see :func:`~cvlth.objectives.views.two_views`).

    Both views go through the backbone in one forward (BN statistics over all 2N, as in SimCLR).
    The objective owns the projection head; the model's ``fc`` is frozen by :meth:`bind`.
    """

    selection: tuple[str, Literal["max", "min"]] = ("retrieval_accuracy", "max")
    figure2_metric = "feature_retrieval_accuracy"

    def __init__(
        self,
        feature_dim: int,
        projection_dim: int = 128,
        temperature: float = 0.5,
        augment: Augment | None = None,
        variant: Variant = "standard",
        eval_seed: int = 0,
    ) -> None:
        self.head = ProjectionHead(feature_dim, feature_dim, projection_dim)
        self.temperature = temperature
        self.augment = augment or contrastive_augment(((0.5,), (0.25,)), SIMCLR_VIEW)
        self.variant: Variant = variant
        self.eval_seed = eval_seed

    def bind(self, model: nn.Module, mask: Mask | None = None) -> None:
        """Called by the loop before it builds the optimizer: freeze the unused classifier."""
        freeze_classifier(model)

    def modules(self) -> dict[str, nn.Module]:
        return {"projection": self.head}

    def project(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return self.head(features(model, images))

    def _two_views(self, model: nn.Module, images: torch.Tensor, generator: torch.Generator | None):
        views = torch.cat(two_views(self.augment, images, generator))
        return self.project(model, views).chunk(2)

    def train_step(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        z1, z2 = self._two_views(model, batch[0], generator)
        loss = nt_xent(z1, z2, self.temperature, self.variant)
        return loss, {"retrieval_accuracy": retrieval_accuracy(z1, z2)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: BatchSource) -> dict[str, float]:
        """Loss and retrieval accuracy per batch (N = batch size), averaged over images."""
        device = next(model.parameters()).device
        generator = eval_generator(self.eval_seed, device)
        sums = {"loss": 0.0, "retrieval_accuracy": 0.0, "feature_retrieval_accuracy": 0.0}
        count = 0
        for batch in batches.epoch_batches(0):
            views = torch.cat(two_views(self.augment, batch[0].to(device), generator))
            feature = features(model, views)
            f1, f2 = feature.chunk(2)
            z1, z2 = self.head(feature).chunk(2)
            n = z1.shape[0]  # images, not views
            sums["loss"] += float(nt_xent(z1, z2, self.temperature, self.variant)) * n
            sums["retrieval_accuracy"] += retrieval_accuracy(z1, z2) * n
            sums["feature_retrieval_accuracy"] += retrieval_accuracy(f1, f2) * n
            count += n
        return {name: (value / count if count else float("nan")) for name, value in sums.items()}
