"""Hostile inputs, second round: zip bombs in checkpoints, FIFOs and devices where a file is expected,
rich markup in names, tensors cvlth cannot use, incomplete checkpoints, JSON bombs, absurd costs and
seeds, and names that would become HTML in report.md.

Every CLI case checks exit code 2, one ``error:`` line (plus at most a hint), no traceback, and that
the inputs are byte-for-byte unchanged.
"""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from PIL import Image
from safetensors.torch import save_file

from cvlth.cli import run_cli
from cvlth.errors import ConfigError, CvlthError, MaskError
from cvlth.input_files import MAX_JSON_DEPTH, parse_json
from cvlth.masks import Mask, load_mask
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.models.checkpoints.reading import MAX_ZIP_INFLATION
from cvlth.report.document import Figure, Report, Section, Table
from cvlth.report.to_html import render_html
from cvlth.report.to_markdown import render_markdown
from cvlth.seeds import MAX_SEED
from cvlth.study.config import StudyConfig
from cvlth.study.cost_files import MAX_SECONDS_PER_IMAGE, read_measurements
from cvlth.study.plan import expand
from hostile_fixtures import cli_error, file_hashes
from study_fixtures import TINY


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A FIFO read blocks forever: fail the test after 60 s instead of hanging the suite."""

    def fail(*_: object) -> None:
        raise TimeoutError("blocked: a FIFO or device was read")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return torchvision.models.resnet18().state_dict()


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save(state, path)
    return path


def _rezip(data: bytes, deflate: str) -> bytes:
    """A torch.save zip with the records whose names end in ``deflate`` deflated (torch reads them)."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith(deflate) else zipfile.ZIP_STORED
            target.writestr(info.filename, source.read(info.filename), compress_type=method)
    return out.getvalue()


# --- 5. a zip bomb in a .pt checkpoint -----------------------------------------------------------


def test_zip_bomb_checkpoint_is_refused_before_anything_is_inflated(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(8_000_000)}, buffer)  # 32 MB of zeros
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(_rezip(buffer.getvalue(), "/0"))
    declared = sum(i.file_size for i in zipfile.ZipFile(bomb).infolist())
    assert declared > 32_000_000 and declared > 500 * bomb.stat().st_size  # ~1000:1
    assert torch.load(bomb, weights_only=True)["conv1.weight"].numel() == 8_000_000  # torch inflates it
    loads: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    before = file_hashes(tmp_path)
    for args in (["inspect", str(bomb)], ["prune", str(bomb), "-s", "0.5", "-o", str(tmp_path / "m.st")]):
        line = cli_error(args, capsys)
        assert line.startswith(f"error: {bomb}: refused: its zip records unpack to {declared:,} bytes")
        assert f"more than {MAX_ZIP_INFLATION}x is a decompression bomb" in line
    assert loads == [] and file_hashes(tmp_path) == before


def test_a_checkpoint_rezipped_with_compression_still_reads(tmp_path: Path, resnet18_state, capsys) -> None:
    buffer = io.BytesIO()
    torch.save(resnet18_state, buffer)
    path = tmp_path / "deflated.pth"
    path.write_bytes(_rezip(buffer.getvalue(), ""))  # every record deflated: random floats barely shrink
    assert any(i.compress_type == zipfile.ZIP_DEFLATED for i in zipfile.ZipFile(path).infolist())
    assert run_cli(["inspect", str(path)]) == 0
    assert "resnet18" in capsys.readouterr().out


def test_a_truncated_zip_checkpoint_is_one_line(tmp_path: Path, resnet18_state, capsys) -> None:
    path = _save(tmp_path / "cut.pth", resnet18_state)
    path.write_bytes(path.read_bytes()[:100_000])
    assert "truncated or corrupted" in cli_error(["inspect", str(path)], capsys)


# --- 6. FIFOs and devices where a file is expected ---------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def test_study_config_that_is_a_device_or_a_fifo_is_refused(tmp_path: Path, fifo: Path, capsys) -> None:
    store = tmp_path / "store"
    for path, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a FIFO (named pipe)")):
        line = cli_error(["study", str(path), "--plan", "--store", str(store)], capsys)
        assert line == f"error: {path} is {kind}, not a study config"
    assert not store.exists()


def test_cost_file_that_is_a_device_or_a_fifo_is_refused(tmp_path: Path, fifo: Path, capsys) -> None:
    store = tmp_path / "store"
    for path, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a FIFO (named pipe)")):
        args = ["study", "smoke", "--plan", "--store", str(store), "--cost-file", str(path)]
        assert cli_error(args, capsys) == f"error: {path} is {kind}, not a measurement file"
    assert not store.exists()


def test_checkpoint_and_mask_that_are_fifos_are_refused(tmp_path: Path, fifo: Path, capsys) -> None:
    assert (
        cli_error(["inspect", str(fifo)], capsys)
        == f"error: {fifo} is a FIFO (named pipe), not a checkpoint file"
    )
    assert (
        cli_error(["mask", "show", "/dev/zero"], capsys)
        == "error: /dev/zero is a character device, not a mask file"
    )
    out = tmp_path / "m.st"
    assert "FIFO" in cli_error(["prune", str(fifo), "-s", "0.5", "-o", str(out)], capsys)
    assert not out.exists()


def test_a_growing_config_is_read_only_up_to_the_bound(tmp_path: Path) -> None:
    from cvlth.config_yaml import MAX_CONFIG_BYTES
    from cvlth.input_files import read_bounded

    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match=rf"{MAX_CONFIG_BYTES + 1:,} bytes, more than the"):
        read_bounded(path, "a study config", MAX_CONFIG_BYTES, ConfigError)
    assert len(read_bounded(path, "x", MAX_CONFIG_BYTES + 1)) == MAX_CONFIG_BYTES + 1


def _image_tree(root: Path) -> Path:
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4), (10, 20, 30)).save(root / split / name / "ok.png")
    return root / "train" / "b"


@pytest.mark.parametrize("kind", ["fifo", "loop", "non-utf8"])
def test_image_folder_with_a_fifo_loop_or_undecodable_name(
    tmp_path: Path, capsys, monkeypatch, kind: str
) -> None:
    monkeypatch.setenv("CVLTH_CACHE", str(tmp_path / "cache"))
    folder, root = _image_tree(tmp_path / "tree"), tmp_path / "tree"
    if kind == "fifo":
        os.mkfifo(folder / "x.jpg")
        expected = f"imagefolder: {folder / 'x.jpg'} is a FIFO (named pipe), not an image file"
    elif kind == "loop":
        os.symlink("loop.jpg", folder / "loop.jpg")
        expected = f"imagefolder: {folder / 'loop.jpg'} is a symlink loop, not an image file"
    else:
        Image.new("RGB", (4, 4)).save(os.fsencode(folder) + b"/caf\xe9.png")  # Latin-1, not UTF-8
        expected = f"imagefolder: the file name {folder}/caf\\xe9.png is not valid UTF-8"
    before = file_hashes(root)
    line = cli_error(["datasets", "show", "imagefolder", "--root", str(root)], capsys)
    assert line == f"error: {expected}"
    assert file_hashes(root) == before and not (tmp_path / "cache").exists()


def test_streamed_image_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    from cvlth.data.images import open_image
    from cvlth.errors import DatasetError

    os.mkfifo(tmp_path / "x.jpg")
    with (
        pytest.raises(DatasetError, match=r"x.jpg is a FIFO \(named pipe\), not an image file"),
        open_image(tmp_path / "x.jpg", "imagefolder"),
    ):
        pass


# --- 8. rich markup in names and paths -----------------------------------------------------------


def test_prune_and_mask_show_print_names_as_given(tmp_path: Path, resnet18_state, capsys) -> None:
    checkpoint = _save(tmp_path / "[red]v.pth", resnet18_state)
    out = tmp_path / "mask[bold].x"
    assert run_cli(["prune", str(checkpoint), "-s", "0.5", "-o", str(out)]) == 0
    assert f"wrote {out}:" in capsys.readouterr().out.replace("\n", "")
    mask = Mask({"[/]a": torch.ones(3, dtype=torch.bool), "[bold]b[/bold]": torch.zeros(2, dtype=torch.bool)})
    odd = mask.save(tmp_path / "odd[/].safetensors", note="[/]x")
    assert run_cli(["mask", "show", str(odd)]) == 0
    shown = capsys.readouterr().out
    assert str(odd) in shown and "note: [/]x" in shown and "[/]a" in shown and "[bold]b[/bold]" in shown


def test_inspect_keys_with_markup(tmp_path: Path, resnet18_state, capsys) -> None:
    path = _save(tmp_path / "keys.pth", {**resnet18_state, "[/]x": torch.ones(1), "[bold]y": torch.ones(1)})
    assert run_cli(["inspect", "--keys", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "[/]x" in shown and "[bold]y" in shown


def test_class_names_with_markup_are_shown_as_given(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CVLTH_CACHE", str(tmp_path / "cache"))
    for split in ("train", "val"):
        for name in ("[blue]a", "[red]b"):  # a folder name cannot hold "/"
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "x.png")
    assert run_cli(["datasets", "show", "imagefolder", "--root", str(tmp_path)]) == 0
    assert "2 classes: [blue]a, [red]b" in capsys.readouterr().out


@pytest.mark.slow
def test_study_with_markup_in_its_store_path_runs(tmp_path: Path, capsys) -> None:
    """Task names can no longer hold markup (names are safe path components, refused at --plan:
    tests/cli/test_study_cmd.py); paths still can, and every line that prints one escapes it."""
    study = copy.deepcopy(TINY)
    study["finders"] = [{"name": "omp", "method": "omp"}]
    study["seeds"] = [0]
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    store = tmp_path / "[/]store"
    args = ["study", str(config), "--store", str(store)]
    assert run_cli([*args, "--plan"]) == 0
    capsys.readouterr()
    assert run_cli(args) == 0
    out = "".join(capsys.readouterr().out.split())  # rich wraps long lines: compare without whitespace
    assert "".join(str(store / "studies" / "tiny" / "report.html").split()) in out  # as written, not markup


# --- 9. tensors cvlth cannot use ----------------------------------------------------------------


def _quantized(weight: torch.Tensor) -> torch.Tensor:
    return torch.quantize_per_tensor(weight, 0.01, 0, torch.qint8)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("convert", "why"),
    [
        (lambda w: w.to(torch.complex64), "torch.complex64, not a real floating-point dtype"),
        (lambda w: w > 0, "torch.bool, not a real floating-point dtype"),
        (lambda w: (w * 100).to(torch.int8), "torch.int8, not a real floating-point dtype"),
        (lambda w: w.to(torch.float8_e4m3fn), "torch.float8_e4m3fn, not a real floating-point dtype"),
        (lambda w: w.to_sparse(), "a sparse tensor (torch.sparse_coo)"),
        (_quantized, "a quantized tensor (torch.qint8)"),
        (lambda w: torch.nested.nested_tensor([w[0], w[1, :, :2]]), "a nested tensor"),
    ],
    ids=["complex", "bool", "int8", "fp8", "sparse", "quantized", "nested"],
)
def test_unusable_tensors_are_refused_by_name(
    tmp_path: Path, resnet18_state, capsys, convert, why: str
) -> None:
    state = dict(resnet18_state)
    state["layer2.0.conv1.weight"] = convert(state["layer2.0.conv1.weight"])
    path = _save(tmp_path / "odd.pth", state)
    before = file_hashes(tmp_path)
    for args in (["inspect", str(path)], ["prune", str(path), "-s", "0.5", "-o", str(tmp_path / "m.st")]):
        line = cli_error(args, capsys)
        assert line == f"error: {path}: tensor layer2.0.conv1.weight is {why}" + (
            " (float16, bfloat16, float32, float64)" if "dtype" in why else ""
        )
    assert file_hashes(tmp_path) == before


def test_half_precision_checkpoints_still_read(tmp_path: Path, resnet18_state, capsys) -> None:
    half = {k: v.half() if v.is_floating_point() else v for k, v in resnet18_state.items()}
    out = tmp_path / "m.st"
    assert run_cli(["prune", str(_save(tmp_path / "half.pth", half)), "-s", "0.5", "-o", str(out)]) == 0
    assert Mask.load(out).sparsity == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("damage", ["missing", "mis-shaped"])
def test_prune_refuses_an_incomplete_checkpoint(tmp_path: Path, resnet18_state, capsys, damage: str) -> None:
    state = dict(resnet18_state)
    if damage == "missing":
        del state["layer3.1.conv2.weight"]
    else:
        state["layer3.1.conv2.weight"] = state["layer3.1.conv2.weight"][:, :, :1, :1].clone()
    path = _save(tmp_path / "part.pth", state)
    before = file_hashes(tmp_path)
    line = cli_error(["prune", str(path), "-s", "0.5", "-o", str(tmp_path / "m.st")], capsys)
    assert line.startswith(f"error: {path} is an incomplete resnet18 ")
    assert line.endswith(f": 1 {damage} tensor(s) (e.g. layer3.1.conv2.weight)")
    assert file_hashes(tmp_path) == before  # no mask


@pytest.mark.parametrize("damage", ["missing", "mis-shaped"])
def test_study_plan_refuses_an_incomplete_imported_checkpoint(tmp_path: Path, capsys, damage: str) -> None:
    spec = BackboneSpec(arch="resnet18", width=4, stem="cifar", in_channels=1)
    state = build_backbone(spec, 10).state_dict()
    if damage == "missing":
        del state["layer4.0.downsample.0.weight"]
    else:
        state["layer4.0.downsample.0.weight"] = torch.zeros(32, 16, 3, 3)
    checkpoint = tmp_path / "theta.pt"
    save_checkpoint(checkpoint, state, spec)
    study = copy.deepcopy(TINY)
    study["pretrainings"] = {"imported": {"import_path": str(checkpoint)}}
    study["finders"] = [{"name": "omp", "method": "omp"}]
    with pytest.raises(ConfigError, match=rf"1 {damage} tensor\(s\) \(e.g. layer4.0.downsample.0.weight\)"):
        expand(StudyConfig.model_validate(study))
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    line = cli_error(["study", str(config), "--plan", "--store", str(tmp_path / "store")], capsys)
    assert line.startswith(f"error: {checkpoint}: an incomplete resnet18 ")


# --- 9. JSON bombs, absurd costs and seeds ------------------------------------------------------


def _cost_file_text(seconds: str) -> str:
    """A measurement file whose one training cost is the JSON text ``seconds``, as written."""
    entry = {"measured": "2026-12-01", "threads": 1, "train": {"seconds_per_image": "SECONDS"}}
    entry["eval"] = {"seconds_per_image": 0.001}
    data = {"format": "cvlth-costs/1", "device": {"type": "cpu", "name": "x"}, "kinds": {"k": entry}}
    return json.dumps(data).replace('"SECONDS"', seconds)


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        ("1" * 400, "refused: a number of 400 digits (at most 18 are read)"),
        ("1e400", "refused: the number 1e400 is not finite"),
        ("NaN", "refused: the number NaN is not finite"),
        ("1e308", f"seconds_per_image must be positive and at most {MAX_SECONDS_PER_IMAGE:g} (got 1e+308)"),
    ],
)
def test_cost_file_numbers_are_bounded(tmp_path: Path, capsys, seconds: str, message: str) -> None:
    path = tmp_path / "costs.json"
    path.write_text(_cost_file_text(seconds))
    before = file_hashes(path)
    args = ["study", "smoke", "--plan", "--store", str(tmp_path / "store"), "--cost-file", str(path)]
    line = cli_error(args, capsys)
    assert str(path) in line and message in line
    assert file_hashes(path) == before


def test_deeply_nested_json_is_refused_without_recursion(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    path.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CvlthError, match=f"refused: JSON nested deeper than {MAX_JSON_DEPTH} levels"):
        read_measurements(path)
    # brackets inside strings do not count; nesting at the bound is read
    assert parse_json('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', "x") == {"a": "[" * 46}
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(nested, "x") == json.loads(nested)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ('{"a": [' + "9" * 400 + "]}", "refused: a number of 400 digits"),
        ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "refused: JSON nested deeper than 32 levels"),
    ],
)
def test_mask_shapes_json_is_bounded(tmp_path: Path, capsys, shapes: str, message: str) -> None:
    path = tmp_path / "m.safetensors"
    metadata = {"format": "cvlth-mask/1", "shapes": shapes, "sparsity": "0.0"}
    save_file({"a": torch.full((1,), 255, dtype=torch.uint8)}, str(path), metadata=metadata)
    before = file_hashes(path)
    line = cli_error(["mask", "show", str(path)], capsys)
    assert line.startswith(f"error: {path}: metadata 'shapes': ") and message in line
    with pytest.raises(MaskError):
        load_mask(path)
    assert file_hashes(path) == before


@pytest.mark.parametrize("seed", [10**23, -1, MAX_SEED + 1])
def test_prune_seed_is_bounded(tmp_path: Path, resnet18_state, capsys, seed: int) -> None:
    path = _save(tmp_path / "v.pth", resnet18_state)
    out = tmp_path / "m.st"
    line = cli_error(
        ["prune", str(path), "-s", "0.5", "-m", "random", "--seed", str(seed), "-o", str(out)], capsys
    )
    assert line == f"error: --seed must be in 0..{MAX_SEED} (63 bits), got {seed}" and not out.exists()


def test_prune_seed_at_the_bound_works(tmp_path: Path, resnet18_state) -> None:
    path, out = _save(tmp_path / "v.pth", resnet18_state), tmp_path / "m.st"
    assert (
        run_cli(["prune", str(path), "-s", "0.5", "-m", "random", "--seed", str(MAX_SEED), "-o", str(out)])
        == 0
    )
    assert Mask.load(out).sparsity == pytest.approx(0.5, abs=1e-6)


# --- 9. names in report.md ----------------------------------------------------------------------


def test_report_markdown_escapes_names(tmp_path: Path) -> None:
    figure = tmp_path / "figures" / "a.png"
    hostile = "<script>alert(1)</script>"
    report = Report(
        f"study {hostile}",
        [
            Section(
                "# [x](http://e.example)",
                "s",
                [
                    f"task {hostile} & *bold* _x_ `code`",
                    ["- item", "1. numbered", "retrieval_accuracy"],
                    Table(["source", "a|b"], [[f"{hostile}/imp", "0.5500 ± 0.0000 (n=1)"]], "caption <b>"),
                    Figure(figure, f"figure {hostile}"),
                ],
            )
        ],
    )
    markdown = render_markdown(report, tmp_path)
    assert "<" not in markdown.replace("\\<", "") and ">" not in markdown.replace("\\>", "")
    assert "\\<script\\>alert(1)\\</script\\>" in markdown
    assert "## \\# \\[x\\](http://e.example)" in markdown
    assert "task \\<script\\>alert(1)\\</script\\> \\& \\*bold\\* \\_x\\_ \\`code\\`" in markdown
    assert "- \\- item\n- 1\\. numbered\n- retrieval_accuracy\n" in markdown
    assert "| source | a\\|b |" in markdown
    assert "| \\<script\\>alert(1)\\</script\\>/imp | 0.5500 ± 0.0000 (n=1) |" in markdown
    assert "![figure \\<script\\>alert(1)\\</script\\>](figures/a.png)" in markdown
    assert "<script" not in render_html(Report(hostile, []))  # report.html escaped it already
