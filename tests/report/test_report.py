"""The study report: figures, report.md and a self-contained report.html from a study folder."""

import json
import re
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import yaml

from cvlth.cli import run_cli
from cvlth.masks import Mask
from cvlth.report import read_study_files, scan_levels, write_report
from cvlth.results.matching import PRETRAINING_TASK, matching
from cvlth.study.config import StudyConfig, study_to_yaml
from study_fixtures import NEEDS_FASHION_MNIST
from study_fixtures import TINY as TINY_STUDY

RECIPE = {
    "data": {"name": "world_upstream", "options": {"image_size": 16, "max_train": 256}},
    "optim": {"name": "sgd", "lr": 0.1},
    "train": {"epochs": 1, "batch_size": 64},
}
STUDY = {
    "name": "fab",
    "backbone": {"arch": "resnet18", "width": 4, "stem": "cifar", "in_channels": 1},
    "pretrainings": {"supervised": {"recipe": RECIPE}, "moco": {"recipe": RECIPE}},
    "tasks": {"digits": RECIPE, "shapes": RECIPE},
    "finders": [
        {"name": "imp-up", "method": "imp", "stage": "upstream"},
        {"name": "imp-task", "method": "imp", "stage": "downstream"},
        {"name": "random", "method": "random", "seeds": [0, 1]},
    ],
    "rounds": 4,
    "seeds": [0, 1],
    "perturbation": {"finders": ["imp-task"]},
}
TINY = {  # the shared tiny study, with a perturbation analysis
    **TINY_STUDY,
    "finders": [
        {"name": "imp-up", "method": "imp", "stage": "upstream"},
        {"name": "imp-task", "method": "imp", "stage": "downstream"},
        {"name": "random", "method": "random"},
    ],
    "perturbation": {"finders": ["imp-task"], "variants": ["ticket", "complement"]},
}
SHAPES = {
    "conv1.weight": (8, 1, 3, 3),
    "layer1.0.conv1.weight": (8, 8, 3, 3),
    "layer2.0.conv1.weight": (16, 8, 3, 3),
    "layer2.0.downsample.0.weight": (16, 8, 1, 1),
}


def _sparsity(level: int) -> float:
    return 1.0 - 0.8**level


def _random_mask(sparsity: float, seed: int) -> Mask:
    generator = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(s, generator=generator) >= sparsity for n, s in SHAPES.items()})


def _fabricate(root: Path, perturbation: bool = True, **study_fields: Any) -> Path:
    """A study folder as `cvlth study` leaves it, with made-up numbers and random masks."""
    study = StudyConfig.model_validate({**STUDY, **study_fields})
    folder = root / "studies" / "fab"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(study_to_yaml(study))
    tickets = []
    seed = 0
    for pretraining in study.pretrainings:
        for finder, method, task in [
            ("imp-up", "imp-upstream", None),
            ("imp-task", "imp-downstream", "digits"),
            ("random", "random", None),
        ]:
            run = f"{'baseline' if method == 'random' else 'imp'}/{pretraining}-{finder}-{task}"
            levels = {}
            for level in range(1, study.rounds + 1):
                seed += 1
                path = root / run / "masks" / f"level-{level:02d}.safetensors"
                path.parent.mkdir(parents=True, exist_ok=True)
                _random_mask(_sparsity(level), seed).save(path)
                levels[str(level)] = {"sparsity": _sparsity(level), "mask": str(path.relative_to(root))}
            source = f"{pretraining}/{finder}"
            tickets.append(
                {
                    "source": source,
                    "pretraining": pretraining,
                    "finder": finder,
                    "task": task,
                    "method": method,
                    "run": run,
                    "levels": levels,
                }
            )
    (folder / "tickets.json").write_text(json.dumps(tickets))
    results = []
    for p, pretraining in enumerate(study.pretrainings):
        for t, task in enumerate(study.tasks):
            dense = [0.90 + 0.01 * p, 0.92 + 0.01 * p]
            for f, finder in enumerate(["imp-up", "imp-task", "random"]):
                values = {
                    _sparsity(level): [
                        0.93 - 0.02 * level * (f + 1) - 0.01 * t,
                        0.925 - 0.02 * level * (f + 1),
                    ]
                    for level in range(1, study.rounds + 1)
                }
                results.append(matching(f"{pretraining}/{finder}", task, dense, values).to_dict())
    for p, pretraining in enumerate(study.pretrainings):  # Fig. 2: θ_p evaluated once (std 0)
        values = {_sparsity(level): [0.65 - 0.03 * level] for level in range(1, 4)}
        metric = "accuracy" if pretraining == "supervised" else "retrieval_accuracy"
        fig2 = matching(f"{pretraining}/imp-up", PRETRAINING_TASK, [0.60 - 0.05 * p], values, metric)
        results.append(fig2.to_dict())
    (folder / "matching.json").write_text(json.dumps(results))
    if perturbation:
        curves = []
        for variant, drop in [("ticket", 0.0), ("complement", 0.3), ("random", 0.1), ("perturbed", 0.05)]:
            points = [
                {"sparsity": _sparsity(level), "mean": 0.9 - drop - 0.01 * level, "std": 0.01, "n": 2}
                for level in range(1, study.rounds + 1)
            ]
            curves.append(
                {"source": "supervised/imp-task", "task": "digits", "variant": variant, "points": points}
            )
        (folder / "perturbation.json").write_text(json.dumps(curves))
    return folder


def _check_report(folder: Path) -> tuple[str, str]:
    html_path, md_path = folder / "report.html", folder / "report.md"
    assert html_path.is_file() and md_path.is_file()
    markdown = md_path.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert images
    for relative in images:
        image_path = folder / relative
        assert image_path.suffix == ".png" and image_path.stat().st_size > 1000, relative
        image = mpimg.imread(image_path)
        assert image.ndim == 3 and min(image.shape[:2]) > 100
    text = html_path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)
    assert "url(" not in text and "<script" not in text and "<link" not in text
    sources = re.findall(r"""src\s*=\s*["']?([^"'\s>]*)""", text)
    assert len(sources) == len(images)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(h.startswith("#") for h in re.findall(r"""href\s*=\s*["']?([^"'\s>]*)""", text))
    return markdown, text


def test_report_from_fabricated_study(tmp_path):
    folder = _fabricate(tmp_path)
    html_path = write_report(folder)
    assert html_path == folder / "report.html"
    markdown, text = _check_report(folder)
    names = {p.name for p in (folder / "figures").glob("*.png")}
    assert {"accuracy-digits.png", "accuracy-shapes.png", "layer-sparsity.png", "zero-kernels.png"} <= names
    assert {"kernel-heatmap.png", "perturbation-supervised_imp-task-digits.png"} <= names
    # IoU curves: the same finder across pre-trainings, and tickets of one pre-training
    assert sorted(n for n in names if n.startswith("iou-")) == [
        "iou-across_pre-trainings.png",
        "iou-within_a_pre-training.png",
    ]
    assert "zero-kernel-ratio.png" in names
    # The matching numbers of matching.json are in both documents.
    for result in json.loads((folder / "matching.json").read_text()):
        extreme = result["extreme_matching_sparsity"]
        shown = "none" if extreme is None else f"{extreme:.2%}"
        row = f"| {result['source']} |"
        assert row in markdown
        assert shown in markdown.split(row, 1)[1].splitlines()[0]
        assert f"{result['dense']['mean']:.4f} ± {result['dense']['std']:.4f}" in markdown
        for item in result["rows"]:
            assert f"{item['mean']:.4f} ± {item['std']:.4f}" in text
    assert "supervised/imp-up" in text and "What this shows" in text
    assert "resnet18" in markdown and "imp-task (imp, downstream" in markdown
    assert "random (random, finder seeds 0, 1)" in markdown


def test_report_universal_column_per_task_group(tmp_path):
    folder = _fabricate(tmp_path, perturbation=False, task_groups={"both": ["digits", "shapes"]})
    write_report(folder)
    markdown = (folder / "report.md").read_text()
    assert "universal (both: digits, shapes)" in markdown
    # the group holds every task here, so its column repeats the all-tasks one
    assert (
        "| supervised/imp-up | 20.00% / 20.00% | 20.00% / 20.00% | 20.00% / 20.00% | 20.00% / 20.00% "
        "| 20.00% / 20.00% |" in markdown
    )


def test_report_summary_table_values(tmp_path):
    folder = _fabricate(tmp_path, perturbation=False)
    write_report(folder)
    markdown = (folder / "report.md").read_text()
    table = json.loads((folder / "matching.json").read_text())
    extreme = {(r["source"], r["task"]): r["extreme_matching_sparsity"] for r in table}
    assert extreme[("supervised/imp-up", "digits")] == pytest.approx(_sparsity(1))
    # columns: pre-training task (Fig. 2), digits, shapes, universal. Hand-made numbers: dense
    # 0.91 + 0.01 p ± 0.0141; imp-up at 20% is 0.9075 on digits, 0.9025 on shapes. So for
    # supervised (threshold 0.8959) both match at 20%; for moco (0.9059) only digits does.
    # Fig. 2: 0.62, 0.59, 0.56 against θ_p's 0.60 (supervised) and 0.55 (moco).
    # each cell: the paper's reading / the monotone one
    assert (
        "| supervised/imp-up | 20.00% / 20.00% | 20.00% / 20.00% | 20.00% / 20.00% | 20.00% / 20.00% |"
        in markdown
    )
    assert "| moco/imp-up | 48.80% / 48.80% | 20.00% / 20.00% | none / none | none / none |" in markdown
    assert "| supervised/random | – | none / none | none / none | none / none |" in markdown
    assert f"{PRETRAINING_TASK} (retrieval_accuracy)" in markdown
    # report.md escapes every Markdown syntax character (a rendered "[" shows as "[")
    assert "0.5500 ± 0.0000 \\[–\\] (n=1)" in markdown  # one run: no interval
    # supervised dense on digits: 0.90, 0.92 -> 0.91 ± 0.0141, 95% CI 0.91 ± 12.7062 * 0.01 = [0.7829, 1.0371]
    assert "0.9100 ± 0.0141 \\[0.7829, 1.0371\\] (n=2)" in markdown
    # 0.9075 on digits: + 0.0116 above the threshold, but two runs a side (Welch, df ~ 1): undecided
    assert "(n=2) ✓ matching; mean − threshold +0.0116 \\[-0.0896, +0.1129\\] · undecided" in markdown
    # 54 verdicts (6 on the pre-training task, 48 downstream), counted; test sizes were not recorded
    undecided = sum(r["undecided"] for r in table)
    assert markdown.count("· undecided") == undecided == 40
    assert f"{undecided} of 54 matching verdicts are undecided by their runs." in markdown
    assert "| test size |  | ? | ? | ? |" in markdown
    html = (folder / "report.html").read_text()
    cells = re.findall(r"<td( class=\"[a-z]+\")?>([^<]*)</td>", html)
    assert [css for css, text in cells if "· undecided" in text] == [' class="undecided"'] * undecided
    # the claims open the report; this study tests some of them and lists the others with what to add
    assert markdown.index("## The paper's claims, checked") < markdown.index("## What this shows")
    assert (
        "| C5 | ✗ refuted | digits: supervised/imp-task − supervised/imp-up: decided below at 4 of 4 levels"
        in markdown
    )
    assert "| C1 | undecided |" in markdown and "| C3 | Rewinding to θ_p" in markdown
    assert "C9" in markdown.split("Claims not tested in this study", 1)[1]
    names = {p.name for p in (folder / "figures").glob("accuracy-*.png")}
    assert {"accuracy-pretraining-supervised.png", "accuracy-pretraining-moco.png"} <= names
    assert "Perturbation" not in markdown
    assert not list((folder / "figures").glob("perturbation-*"))


def test_rewriting_removes_stale_figures(tmp_path):
    folder = _fabricate(tmp_path)
    write_report(folder)
    (folder / "perturbation.json").unlink()
    write_report(folder)
    assert not list((folder / "figures").glob("perturbation-*"))
    _check_report(folder)


def test_perturbation_variants_at_measured_sparsity(tmp_path):
    folder = _fabricate(tmp_path)
    curves = []
    for variant, measured in [
        ("ticket", _sparsity),
        ("complement", lambda level: 1 - _sparsity(level)),  # the exact 1 - m
        ("complement_matched", _sparsity),
        ("shuffled", _sparsity),  # a variant this report does not know
    ]:
        points = [
            {"level": level, "sparsity": measured(level), "mean": 0.5 + 0.1 * level, "std": 0.01, "n": 2}
            for level in (1, 3)
        ]
        curves.append(
            {"source": "supervised/imp-task", "task": "digits", "variant": variant, "points": points}
        )
    (folder / "perturbation.json").write_text(json.dumps(curves))
    write_report(folder)
    markdown = (folder / "report.md").read_text()
    header = "| level | imp ticket | complement 1 − m | complement, count-matched | shuffled |"
    assert header in markdown
    row = markdown.split(header, 1)[1].splitlines()[2]
    assert row.startswith("| 1 | 0.6000 ± 0.0100 (n=2) at 20.00% | 0.6000 ± 0.0100 (n=2) at 80.00% |")
    assert "at 51.20%" in markdown  # level 3's complement: 1 - 48.80%
    assert (folder / "figures" / "perturbation-supervised_imp-task-digits.png").is_file()


def _iou_by_hand(a: Mask, b: Mask) -> float:
    inter = sum(int(np.logical_and(a[n].numpy(), b[n].numpy()).sum()) for n in a)
    union = sum(int(np.logical_or(a[n].numpy(), b[n].numpy()).sum()) for n in a)
    return inter / union


def test_structure_at_every_level_against_the_mask_files(tmp_path):
    folder = _fabricate(tmp_path, perturbation=False)
    files = read_study_files(folder)
    tickets = files.tickets[:3]
    scan = scan_levels(files, tickets, tickets[:2])
    assert list(scan.levels) == [1, 2, 3, 4]
    masks = {
        (t.label, level): Mask.load(tmp_path / t.levels[level].mask) for t in tickets for level in range(1, 5)
    }
    labels = [t.label for t in tickets]
    assert set(scan.pairs) == {(labels[0], labels[1]), (labels[0], labels[2]), (labels[1], labels[2])}
    for (a, b), by_level in scan.pairs.items():
        assert list(by_level) == [1, 2, 3, 4]
        for level, (iou, _) in by_level.items():
            assert iou == pytest.approx(_iou_by_hand(masks[(a, level)], masks[(b, level)]))
    for label in labels[:2]:
        for level, report in scan.kernels[label].items():
            mask = masks[(label, level)]
            spatial = [n for n in mask if mask[n].shape[2] * mask[n].shape[3] > 1]
            zero = sum(int((~mask[n].numpy().any(axis=(2, 3))).sum()) for n in spatial)
            total = sum(mask[n].shape[0] * mask[n].shape[1] for n in spatial)
            assert report.zero_kernel_ratio == pytest.approx(zero / total)
    assert not files._masks  # one level of masks in memory at a time
    write_report(folder)
    markdown = (folder / "report.md").read_text()
    for level in range(1, 5):  # every level, with the random baseline p / (2 - p)
        p = 1 - _sparsity(level)
        assert f"| {level} ({_sparsity(level):.2%}) | {p / (2 - p):.3f} |" in markdown


def test_cli_report(tmp_path, capsys):
    folder = _fabricate(tmp_path, perturbation=False)
    assert run_cli(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert str(folder / "report.html") in out and str(folder / "report.md") in out


def test_cli_missing_matching_json(tmp_path, capsys):
    folder = _fabricate(tmp_path)
    (folder / "matching.json").unlink()
    assert run_cli(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "matching.json" in err and "cvlth study" in err


def test_cli_malformed_matching_json(tmp_path, capsys):
    folder = _fabricate(tmp_path)
    (folder / "matching.json").write_text(json.dumps([{"source": "x"}]))
    assert run_cli(["report", str(folder)]) == 2
    assert "matching.json is malformed" in capsys.readouterr().err


def test_cli_source_not_in_the_study_config(tmp_path, capsys):
    folder = _fabricate(tmp_path, perturbation=False)
    matching = json.loads((folder / "matching.json").read_text())
    matching[0]["source"] = "elsewhere/imp-up"  # a pre-training the study.yaml does not have
    (folder / "matching.json").write_text(json.dumps(matching))
    assert run_cli(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "'elsewhere/imp-up'" in err and "study.yaml" in err and "cvlth study" in err


def test_report_shows_the_studys_claims_json(tmp_path, capsys):
    folder = _fabricate(tmp_path, perturbation=False)
    claim = {
        "claim": "C8",
        "statement": "A universal subnetwork exists.",
        "verdict": "holds",
        "evidence": ["made-up: decided on every task up to 36.00%"],
        "paper": "natural images 86.58%",
        "missing": "",
        "extensions": [],
    }
    (folder / "claims.json").write_text(json.dumps([claim]))
    write_report(folder)
    markdown = (folder / "report.md").read_text()
    assert (
        "| C8 | ✓ holds | made-up: decided on every task up to 36.00% | natural images 86.58% |" in markdown
    )
    assert "| C1 |" not in markdown  # taken from the file, not checked again
    (folder / "claims.json").write_text(json.dumps([{**claim, "verdict": "perhaps"}]))
    assert run_cli(["report", str(folder)]) == 2
    assert "claims.json is malformed: entry 0: ValueError" in capsys.readouterr().err


def test_cli_missing_mask_and_not_a_study(tmp_path, capsys):
    folder = _fabricate(tmp_path)
    ticket = json.loads((folder / "tickets.json").read_text())[0]
    (tmp_path / ticket["levels"]["4"]["mask"]).unlink()  # the level nearest 79%: always needed
    assert run_cli(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "level-04.safetensors" in err and "--store" in err
    assert run_cli(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # --store points the mask paths elsewhere: here to a store without the masks.
    assert run_cli(["report", str(folder), "--store", str(tmp_path / "other")]) == 2
    assert str(tmp_path / "other") in capsys.readouterr().err


@pytest.mark.slow
@NEEDS_FASHION_MNIST
def test_report_of_a_real_tiny_study(tmp_path, capsys):
    config = TINY
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    store = tmp_path / "store"
    assert run_cli(["study", str(path), "--store", str(store), "--quiet"]) == 0
    folder = store / "studies" / "tiny"
    assert f"report: {folder / 'report.html'}" in capsys.readouterr().out.replace("\n", "")
    markdown, _ = _check_report(folder)
    for result in json.loads((folder / "matching.json").read_text()):
        assert f"{result['dense']['mean']:.4f} ± {result['dense']['std']:.4f}" in markdown
    assert (folder / "figures" / "perturbation-supervised_imp-task-digits.png").is_file()
    # the study checked the paper's claims: C4 on its perturbation analysis; no θ_0 finder: C3 not tested
    claims = {c["claim"]: c for c in json.loads((folder / "claims.json").read_text())}
    assert list(claims) == [f"C{k}" for k in range(1, 11)]
    assert claims["C4"]["verdict"] in ("holds", "refuted", "undecided")
    assert claims["C4"]["evidence"][0].startswith(
        "supervised/imp-task → digits: ticket − complement: level 3"
    )
    assert claims["C3"]["verdict"] == "not tested" and "rewind: init" in claims["C3"]["missing"]
    assert "## The paper's claims, checked" in markdown


# --- the report never deletes through a symbolic link ------------------------------------------


def test_figures_symlink_is_refused_and_its_target_untouched(tmp_path, capsys):
    from hostile_fixtures import cli_error, file_hashes

    folder = _fabricate(tmp_path / "study")
    elsewhere = tmp_path / "holiday-photos"
    elsewhere.mkdir()
    (elsewhere / "beach.png").write_bytes(b"\x89PNG not ours")
    (folder / "figures").symlink_to(elsewhere, target_is_directory=True)
    before = file_hashes(elsewhere)
    line = cli_error(["report", str(folder)], capsys)
    assert "figures" in line and "symbolic link" in line
    assert file_hashes(elsewhere) == before


def test_stale_figure_symlinks_are_not_followed(tmp_path):
    folder = _fabricate(tmp_path / "study")
    write_report(folder)
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"\x89PNG keep me")
    (folder / "figures" / "old-figure.png").symlink_to(precious)
    write_report(folder)
    assert precious.read_bytes() == b"\x89PNG keep me"
