"""``cvlth inspect`` and ``cvlth prune`` on every checkpoint format, and their errors (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cvlth.cli import run_cli
from cvlth.masks import load_mask
from cvlth.models.backbones import BackboneSpec, build_backbone

SPEC = BackboneSpec("resnet50", width=8)


def _block_conv_weights(model: nn.Module) -> list[torch.Tensor]:
    """Independent of cvlth's scope: every Conv2d weight except the stem."""
    return [m.weight for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and name != "conv1"]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(SPEC, 1000)


@pytest.fixture(scope="module")
def moco_file(tmp_path_factory, model) -> Path:
    path = tmp_path_factory.mktemp("cli") / "moco_v2.pth.tar"
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    state |= {f"module.encoder_k.{k}": v.clone() for k, v in backbone.items()}
    state |= {
        "module.encoder_q.fc.0.weight": torch.randn(256, 256),
        "module.encoder_q.fc.0.bias": torch.randn(256),
    }
    state |= {"module.queue": torch.randn(16, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}}}, path)
    return path


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory, model) -> Path:
    path = tmp_path_factory.mktemp("cli") / "supervised.pth"
    torch.save(model.state_dict(), path)
    return path


def test_inspect_moco_prints_format_architecture_counts_and_report(moco_file, model, capsys) -> None:
    assert run_cli(["inspect", str(moco_file)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    prunable = _block_conv_weights(model)
    parameters = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("fc."))
    assert "moco" in out
    assert "resnet50 (bottleneck blocks 3-4-6-3), width 8" in out
    assert f"{sum(w.numel() for w in prunable):,} in {len(prunable)} convs" in out
    assert f"{parameters:,} (0 in fc)" in out
    assert "MoCo key encoder" in out and "MoCo queue" in out and "MLP projection head" in out


def test_inspect_full_torchvision_resnet50(tmp_path, capsys) -> None:
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pth")
    assert run_cli(["inspect", str(tmp_path / "resnet50.pth"), "--arch", "resnet50"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "23,445,504 in 52 convs" in out
    assert "25,557,032 (2,049,000 in fc)" in out  # torchvision's documented ResNet-50 size
    assert "fits resnet50" in out


def test_inspect_simclr_hint_reports_unnormalised_input(plain_file, capsys) -> None:
    assert run_cli(["inspect", str(plain_file), "--source", "simclr"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "simclr" in out and "unnormalised" in out


def test_prune_accepts_moco_and_matches_the_plain_checkpoint(moco_file, plain_file, tmp_path, model) -> None:
    assert run_cli(["prune", str(moco_file), "-s", "0.5", "-o", str(tmp_path / "moco.mask")]) == 0
    assert run_cli(["prune", str(plain_file), "-s", "0.5", "-o", str(tmp_path / "plain.mask")]) == 0
    moco_mask, provenance = load_mask(tmp_path / "moco.mask")
    assert moco_mask == load_mask(tmp_path / "plain.mask")[0]  # same weights -> same ticket
    assert provenance["source_format"] == "moco"
    moco_mask.validate(build_backbone(SPEC, 10))
    assert moco_mask.sparsity == pytest.approx(0.5, abs=1e-4)


class _Custom:
    pass


def _bad_inputs(folder: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (CLI args, a fragment of the error message)."""
    (folder / "empty.pth").write_bytes(b"")
    (folder / "readme.txt").write_text("this is not a checkpoint\n")
    small = build_backbone(BackboneSpec("resnet18", width=8)).state_dict()
    torch.save(small, folder / "resnet18.pth")
    data = (folder / "resnet18.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 3])
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)).state_dict(), folder / "mlp.pth")
    torch.save({"x": _Custom()}, folder / "custom.pth")
    return {
        "missing": (["inspect", str(folder / "absent.pth")], "checkpoint not found"),
        "empty": (["inspect", str(folder / "empty.pth")], "is empty (0 bytes)"),
        "truncated": (["inspect", str(folder / "truncated.pth")], "truncated or corrupted"),
        "text": (["inspect", str(folder / "readme.txt")], "is a text file"),
        "non_resnet": (["inspect", str(folder / "mlp.pth")], "is not a ResNet checkpoint"),
        "wrong_depth": (["inspect", str(folder / "resnet18.pth"), "--arch", "resnet50"], "wrong depth"),
        "custom_pickle": (["inspect", str(folder / "custom.pth")], "refuses to unpickle"),
        "bad_source": (
            ["inspect", str(folder / "resnet18.pth"), "--source", "caffe"],
            "unknown checkpoint source",
        ),
        "prune_text": (
            ["prune", str(folder / "readme.txt"), "-s", "0.2", "-o", str(folder / "m")],
            "text file",
        ),
    }


def test_bad_inputs_exit_2_with_one_clear_message(tmp_path, capsys) -> None:
    for name, (args, fragment) in _bad_inputs(tmp_path).items():
        code = run_cli(args)
        captured = capsys.readouterr()
        assert code == 2, (name, captured.out, captured.err)
        assert captured.err.startswith("error: ") and fragment in captured.err, (name, captured.err)
        assert "Traceback" not in captured.err + captured.out, name
