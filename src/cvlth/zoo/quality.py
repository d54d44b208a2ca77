"""How good a pre-trained backbone is, measured on its features: k-NN and linear-probe accuracy.

The self-supervised θ_p of the world have no classifier; the usual way to say what they learned is
to classify the test split from their pooled backbone features, without training the backbone:

* :func:`knn_accuracy` — each test image takes the majority label of its ``k`` nearest training
  images by cosine similarity (uniform votes, ties to the smallest label, as scikit-learn's
  ``KNeighborsClassifier(metric="cosine")``);
* :func:`linear_probe_accuracy` — multinomial logistic regression on standardised features, the
  same convex problem as scikit-learn's ``LogisticRegression(C=1)`` (mean cross-entropy plus
  ``|W|² / (2 C n)``, bias not penalised), solved with L-BFGS.

Both are tested against scikit-learn on the same features (``tests/zoo/test_quality.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvlth.objectives.features import features
from cvlth.objectives.supervised import Normalize


@torch.no_grad()
def backbone_features(
    model: nn.Module,
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 500,
) -> torch.Tensor:
    """Pooled backbone features of uint8 ``images`` normalised with ``mean``/``std`` (eval mode)."""
    was_training = model.training
    model.eval()
    normalize = Normalize(mean, std)
    parts = [
        features(model, normalize(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(parts).float()


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    chunk: int = 1000,
) -> float:
    """Share of test images whose ``k`` nearest training images (cosine) vote for their label."""
    if not 1 <= k <= len(train_features):
        raise ValueError(f"k must be in 1..{len(train_features)} (got {k})")
    train = F.normalize(train_features.float(), dim=1)
    classes = int(torch.cat([train_labels, test_labels]).max()) + 1
    correct = 0
    for start in range(0, len(test_features), chunk):
        query = F.normalize(test_features[start : start + chunk].float(), dim=1)
        nearest = (query @ train.T).topk(k, dim=1).indices
        votes = F.one_hot(train_labels[nearest], classes).sum(1)
        correct += int((votes.argmax(1) == test_labels[start : start + chunk]).sum())
    return correct / len(test_features)


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    c: float = 1.0,
    max_iter: int = 500,
) -> float:
    """Test accuracy of an L2-regularised multinomial logistic regression on standardised features."""
    x, y = train_features.double(), train_labels
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    x = (x - mean) / std
    classes = int(torch.cat([train_labels, test_labels]).max()) + 1
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )
    penalty = 1.0 / (2.0 * c * len(x))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + penalty * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        test = (test_features.double() - mean) / std
        predicted = (test @ weight + bias).argmax(1)
    return float((predicted == test_labels).double().mean())
