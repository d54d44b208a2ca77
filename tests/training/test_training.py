import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvlth.config import (
    AdamWConfig,
    ConstantSchedule,
    CosineSchedule,
    LarsConfig,
    MultiStepSchedule,
    PolySchedule,
    SGDConfig,
    TrainingConfig,
)
from cvlth.errors import TrainingError
from cvlth.objectives.supervised import Normalize, SupervisedObjective
from cvlth.run_files import capture_path
from cvlth.store import RunFolder, Store
from cvlth.training.loop import StepInfo, train
from cvlth.training.optim import build_optimizer, build_scheduler, lr_factor
from training_fixtures import TinyNet, half_mask, make_sources, run_tiny, tiny_config


def pruned_weights(model: nn.Module, mask) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[name][~keep].reshape(-1) for name, keep in mask.items()])


def test_loop_matches_a_hand_written_loop_bit_for_bit() -> None:
    training = TrainingConfig(epochs=2, batch_size=16, seed=0)
    optim = SGDConfig(lr=0.05, momentum=0.9, weight_decay=1e-3)
    train_source, _, _ = make_sources()

    torch.manual_seed(7)
    reference = TinyNet()
    mask = half_mask(reference)
    mask.apply(reference)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for epoch in range(2):
        for images, labels in train_source.epoch_batches(epoch):
            sgd.zero_grad()
            F.cross_entropy(reference(Normalize()(images)), labels).backward()
            sgd.step()
            mask.apply(reference)

    torch.manual_seed(7)
    model = TinyNet()
    train(
        model,
        SupervisedObjective(),
        train_source,
        training=training,
        optim=optim,
        schedule=ConstantSchedule(),
        mask=mask,
        quiet=True,
    )
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_mask_invariant_holds_in_model_and_checkpoint(tmp_path) -> None:
    cfg = tiny_config(epochs=2)
    torch.manual_seed(cfg.train.seed)
    initial = TinyNet().state_dict()
    result, model = run_tiny(RunFolder(tmp_path), cfg)
    mask = half_mask(model)
    assert pruned_weights(model, mask).abs().max() == 0
    saved = torch.load(tmp_path / "train-state.pt", weights_only=True)
    assert set(saved) >= {
        "model",
        "optimizer",
        "scheduler",
        "mask",
        "rng",
        "epoch",
        "batch",
        "step",
        "history",
    }
    for name, keep in mask.items():
        assert torch.all(saved["model"][name][~keep] == 0), name
        assert torch.equal(saved["mask"][name], keep)
        assert not torch.equal(saved["model"][name][keep], initial[name][keep])  # kept weights trained
    assert (saved["epoch"], saved["batch"], saved["step"]) == (2, 0, 8)
    assert result["steps"] == 8 and len(result["history"]) == 2


def test_result_reports_test_metric_at_best_validation_epoch(tmp_path) -> None:
    result, _ = run_tiny(RunFolder(tmp_path), tiny_config(epochs=3))
    history = result["history"]
    best = max(history, key=lambda r: r["val"]["accuracy"])  # first maximum, like the loop
    assert result["best_epoch"] == best["epoch"]
    assert result["test_at_best_val"] == best["test"]
    assert result["final"] == history[-1]
    lines = RunFolder(tmp_path).read_metrics()
    assert [line["step"] for line in lines if "step" in line] == list(range(1, 13))
    assert [line["epoch"] for line in lines if "val" in line] == [1, 2, 3]


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path) -> None:
    class NanAtStep6(SupervisedObjective):
        calls = 0

        def train_step(self, model, batch, generator):
            loss, metrics = super().train_step(model, batch, generator)
            self.calls += 1
            return (loss * math.nan if self.calls == 6 else loss), metrics

    model = TinyNet()
    train_source, _, _ = make_sources()
    with pytest.raises(TrainingError) as info:
        train(
            model,
            NanAtStep6(),
            train_source,
            training=TrainingConfig(epochs=3, batch_size=16, checkpoint_every_steps=2),
            optim=SGDConfig(),
            schedule=ConstantSchedule(),
            run=tmp_path,
            quiet=True,
        )
    message = str(info.value)
    assert "the loss is nan at step 6 (epoch 1, batch 1)" in message
    assert f"last good checkpoint is kept ({tmp_path / 'train-state.pt'} at step 4)" in message
    assert torch.load(tmp_path / "train-state.pt", weights_only=True)["step"] == 4


def test_capture_at_step_saves_the_weights_after_that_step(tmp_path) -> None:
    seen = {}

    def remember(info: StepInfo) -> None:
        if info.step == 3:
            seen.update({k: v.clone() for k, v in model_holder[0].state_dict().items()})

    model_holder = []
    cfg = tiny_config(epochs=1)
    torch.manual_seed(0)
    model_holder.append(TinyNet())
    train_source, _, _ = make_sources()
    train(
        model_holder[0],
        SupervisedObjective(),
        train_source,
        training=cfg.train,
        optim=cfg.optim,
        schedule=cfg.schedule,
        run=tmp_path,
        callbacks=[remember],
        capture_at_step=3,
        quiet=True,
    )
    captured = torch.load(capture_path(tmp_path, 3), weights_only=True)
    assert captured["step"] == 3
    assert all(torch.equal(captured["model"][k], v) for k, v in seen.items())


def test_objective_heads_are_trained_and_checkpointed(tmp_path) -> None:
    class WithHead(SupervisedObjective):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 4)

        def modules(self):
            return {"head": self.head}

        def train_step(self, model, batch, generator):
            logits = self.head(model(self.augment(batch[0], generator)))
            return F.cross_entropy(logits, batch[1]), {}

    objective = WithHead()
    before = objective.head.weight.detach().clone()
    train_source, _, _ = make_sources()
    train(
        TinyNet(),
        objective,
        train_source,
        training=TrainingConfig(epochs=1, batch_size=16),
        optim=AdamWConfig(lr=1e-2),
        schedule=CosineSchedule(),
        run=tmp_path,
        quiet=True,
    )
    assert not torch.equal(objective.head.weight, before)
    saved = torch.load(tmp_path / "train-state.pt", weights_only=True)
    assert torch.equal(saved["modules"]["head"]["weight"], objective.head.weight.detach())


def test_channels_last_trains_to_nearly_the_same_weights(tmp_path) -> None:
    train_source, _, _ = make_sources()
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = TinyNet()
        train(
            model,
            SupervisedObjective(),
            train_source,
            training=TrainingConfig(epochs=1, batch_size=16, channels_last=channels_last),
            optim=SGDConfig(lr=0.01),
            schedule=ConstantSchedule(),
            quiet=True,
        )
        results.append(model.layer1[0].conv1.weight.detach())
    assert results[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(results[0], results[1].contiguous(), rtol=1e-4, atol=1e-5)


def test_quiet_when_not_a_tty(tmp_path, capsys) -> None:
    run_tiny(RunFolder(tmp_path), tiny_config(epochs=1), masked=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_finished_run_is_not_trained_again(tmp_path) -> None:
    store, cfg = Store(tmp_path), tiny_config(epochs=1)
    calls = []

    def work(folder):
        calls.append(1)
        return run_tiny(folder, cfg)[0]

    first = store.execute(cfg, work)
    metrics = store.run_dir(cfg).metrics_path.read_bytes()
    assert store.execute(cfg, work) == first
    assert calls == [1] and store.run_dir(cfg).metrics_path.read_bytes() == metrics


# --- optimizers and schedules against hand-computed values ------------------------------------


def test_multistep_with_warmup_per_iteration() -> None:
    cfg = MultiStepSchedule(milestones=(2, 3), gamma=0.1, warmup_epochs=1)
    factors = [lr_factor(cfg, step, steps_per_epoch=4, total_steps=16) for step in range(16)]
    expected = [0.25, 0.5, 0.75, 1.0] + [1.0] * 4 + [0.1] * 4 + [0.1**2] * 4
    assert factors == pytest.approx(expected)


def test_cosine_and_poly_endpoints() -> None:
    cosine = CosineSchedule(final_factor=0.1)
    assert lr_factor(cosine, 0, 10, 100) == pytest.approx(1.0)
    assert lr_factor(cosine, 50, 10, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    poly = PolySchedule(power=2.0)
    assert lr_factor(poly, 50, 10, 100) == pytest.approx(0.25)
    assert lr_factor(PolySchedule(), 99, 10, 100) == pytest.approx(0.01**0.9)


def test_scheduler_sets_the_optimizer_lr_each_step() -> None:
    param = nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([param], SGDConfig(lr=0.4, nesterov=True))
    scheduler = build_scheduler(optimizer, MultiStepSchedule(milestones=(1,), warmup_epochs=0.5), 4, 2)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.2, 0.4, 0.4, 0.4, 0.04, 0.04, 0.04, 0.04])
    assert optimizer.param_groups[0]["nesterov"] is True


def test_lars_scales_the_update_by_the_trust_ratio() -> None:
    weight = nn.Parameter(torch.full((2, 2), 3.0))
    optimizer = build_optimizer(
        [weight], LarsConfig(lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.5)
    )
    weight.grad = torch.full((2, 2), 4.0)
    optimizer.step()
    # trust = 0.5 * |w| / |g| = 0.5 * 6 / 8; update = trust * g = 1.5 per entry
    assert torch.allclose(weight.detach(), torch.full((2, 2), 1.5))


class _ScriptedValidation(SupervisedObjective):
    """Validation accuracies from a script; test evaluations counted (the n-th returns n)."""

    def __init__(self, scores, val_source) -> None:
        super().__init__()
        self.scores, self.val_source, self.test_calls = iter(scores), val_source, 0

    def evaluate(self, model, batches):
        if batches is self.val_source:
            return {"accuracy": next(self.scores)}
        self.test_calls += 1
        return {"accuracy": float(self.test_calls)}


@pytest.mark.parametrize(
    "scores, tested_epochs, best_epoch",
    [
        ([0.5, 0.7, 0.7, 0.9, 0.6], [1, 2, 4], 4),  # a tie is no improvement: the first epoch wins
        ([math.nan, 0.4, math.nan, 0.3], [1, 2], 2),
        ([math.nan, math.nan], [1, 2], 2),  # nothing scored: the last epoch is reported
    ],
)
def test_test_split_is_evaluated_only_when_validation_improves(scores, tested_epochs, best_epoch) -> None:
    train_source, val_source, test_source = make_sources(3, 16)
    objective = _ScriptedValidation(scores, val_source)
    model = TinyNet()
    result = train(
        model,
        objective,
        train_source,
        training=TrainingConfig(epochs=len(scores), batch_size=16),
        optim=SGDConfig(lr=0.01),
        schedule=ConstantSchedule(),
        val_data=val_source,
        test_data=test_source,
        quiet=True,
    )
    assert [r["epoch"] for r in result["history"] if "test" in r] == tested_epochs
    assert result["best_epoch"] == best_epoch
    assert result["test_at_best_val"] == {"accuracy": float(len(tested_epochs))}  # the last test pass


def test_without_validation_the_last_test_is_reported_or_the_best_one_when_the_objective_asks() -> None:
    from cvlth.training.evaluation import AT_BEST_VALIDATION, BEST_TEST, LAST_TEST, summarize

    history = [
        {"epoch": 1, "test": {"miou": 0.3}},
        {"epoch": 2, "test": {"miou": 0.5}},
        {"epoch": 3, "test": {"miou": 0.4}},
    ]
    last = summarize(history, ("miou", "max"), steps=3, epochs=3)
    assert last["reported"] == {"rule": LAST_TEST, "epoch": 3, "test": {"miou": 0.4}}
    best = summarize(history, ("miou", "max"), steps=3, epochs=3, best_without_validation=True)
    assert best["reported"] == {"rule": BEST_TEST, "epoch": 2, "test": {"miou": 0.5}}
    assert best["test_final"] == {"miou": 0.4}
    # with a validation split the paper's model selection stands, whatever the objective asks
    validated = [
        {"epoch": 1, "val": {"miou": 0.6}, "test": {"miou": 0.3}},
        {"epoch": 2, "val": {"miou": 0.5}},
    ]
    chosen = summarize(validated, ("miou", "max"), steps=2, epochs=2, best_without_validation=True)
    assert chosen["reported"] == {"rule": AT_BEST_VALIDATION, "epoch": 1, "test": {"miou": 0.3}}
    assert "test_final" not in chosen  # the last epoch did not improve: its test split was not evaluated


def test_an_objective_that_reports_its_last_test_evaluation_gets_one() -> None:
    train_source, val_source, test_source = make_sources(3, 16)
    objective = _ScriptedValidation([0.5, 0.7, 0.6], val_source)
    objective.best_without_validation = True  # segmentation's: the last evaluation beside the best
    result = train(
        TinyNet(),
        objective,
        train_source,
        training=TrainingConfig(epochs=3, batch_size=16),
        optim=SGDConfig(lr=0.01),
        schedule=ConstantSchedule(),
        val_data=val_source,
        test_data=test_source,
        quiet=True,
    )
    assert [r["epoch"] for r in result["history"] if "test" in r] == [1, 2, 3]
    assert result["test_at_best_val"] == {"accuracy": 2.0} and result["test_final"] == {"accuracy": 3.0}
