"""k-NN and linear-probe accuracy against scikit-learn on the same features."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from cvlth.zoo.quality import knn_accuracy, linear_probe_accuracy


def _features(seed: int, n: int, classes: int = 4, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 0.3
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + torch.randn(n, dim, generator=generator), labels


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_equals_scikit_learn_cosine_knn(k: int) -> None:
    train_x, train_y = _features(0, 600)
    test_x, test_y = _features(1, 300)
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(
        train_x.numpy(), train_y.numpy()
    )
    expected = float((knn.predict(test_x.numpy()) == test_y.numpy()).mean())
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=k, chunk=64) == pytest.approx(expected, abs=1e-12)
    assert 0.3 < expected < 1.0  # neither trivial nor perfect: the comparison means something


def test_linear_probe_matches_scikit_learn_logistic_regression() -> None:
    train_x, train_y = _features(2, 800)
    test_x, test_y = _features(3, 400)
    scaler = StandardScaler().fit(train_x.numpy())
    model = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(
        scaler.transform(train_x.numpy()), train_y.numpy()
    )
    expected = float((model.predict(scaler.transform(test_x.numpy())) == test_y.numpy()).mean())
    ours = linear_probe_accuracy(train_x, train_y, test_x, test_y, c=1.0)
    assert abs(ours - expected) <= 1 / 400 + 1e-12  # the same convex optimum: at most one image apart
    assert 0.5 < expected < 1.0


def test_knn_refuses_a_k_larger_than_the_training_set() -> None:
    x, y = _features(0, 10)
    with pytest.raises(ValueError, match="k must be in 1..10"):
        knn_accuracy(x, y, x, y, k=11)


def test_backbone_features_are_pooled_and_deterministic() -> None:
    from cvlth.models.backbones import BackboneSpec, build_backbone, feature_dim
    from cvlth.zoo.quality import backbone_features

    spec = BackboneSpec(arch="resnet18", width=4, stem="cifar", in_channels=1)
    torch.manual_seed(0)
    model = build_backbone(spec, 3)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (7, 1, 16, 16), dtype=np.uint8))
    first = backbone_features(model, images, (0.5,), (0.25,), batch_size=3)
    again = backbone_features(model, images, (0.5,), (0.25,))  # other batch size: same up to rounding
    assert first.shape == (7, feature_dim(spec)) and torch.allclose(first, again, atol=1e-5)
