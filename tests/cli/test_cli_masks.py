import torch
import torchvision

from cvlth.cli import run_cli
from cvlth.masks import Mask
from cvlth.pruning import global_magnitude, prunable_parameters


def test_prune_then_show(tmp_path, capsys):
    model = torchvision.models.resnet18()
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "mask.safetensors"
    assert run_cli(["prune", str(checkpoint), "--sparsity", "0.5", "--out", str(out)]) == 0
    mask = Mask.load(out)
    expected = global_magnitude({n: p.detach() for n, p in prunable_parameters(model).items()}, 0.5)
    assert mask == expected
    capsys.readouterr()
    assert run_cli(["mask", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "50.0000%" in shown and "layer4.1.conv2.weight" in shown and "source_sha256" in shown


def test_bad_inputs_give_one_clear_message(tmp_path, capsys):
    out = str(tmp_path / "m.safetensors")
    assert run_cli(["prune", str(tmp_path / "nope.pth"), "--sparsity", "0.5", "--out", out]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    checkpoint = tmp_path / "r.pth"
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    assert run_cli(["prune", str(checkpoint), "--sparsity", "1.5", "--out", out]) == 2
    assert "--sparsity must be in [0, 1)" in capsys.readouterr().err
    assert run_cli(["prune", str(checkpoint), "--sparsity", "0.5", "--method", "nope", "--out", out]) == 2
    assert "unknown pruning method 'nope'" in capsys.readouterr().err
    assert run_cli(["mask", "show", str(checkpoint)]) == 2
    assert "not a readable cvlth-mask/1 file" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for args in (["--help"], ["prune", "--help"], ["mask", "--help"], ["mask", "show", "--help"]):
        assert run_cli(args) == 0
    assert "Usage" in capsys.readouterr().out
