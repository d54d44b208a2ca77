"""imagefolder and visda2017 stream by default; ``streaming: false`` keeps decoded images in memory.

The default changed (it was in memory): run hashes and cost work kinds read the option as before the
change, so every config keeps naming the run it named. The expected hashes below were computed by
cvlth before the change (main at 7128eec) for the same configs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from cvlth.data.classification import ImageSet
from cvlth.data.registry import load_dataset
from cvlth.data.streaming import StreamingImageSet
from cvlth.errors import ConfigError
from cvlth.runs.kinds import PretrainRun
from cvlth.study.costs import work_kind
from cvlth.study.validation import check_contrastive_streaming


def _visda(root: Path) -> Path:
    for split in ("train", "validation"):
        lines = []
        for i in range(4):
            (root / split / "a").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), (40 * i, 0, 0)).save(root / split / "a" / f"{i}.png")
            lines.append(f"a/{i}.png {i % 2}")
        (root / split / "image_list.txt").write_text("\n".join(lines) + "\n")
    return root


def _tree(root: Path) -> Path:
    for split in ("train", "val"):
        for name in ("ant", "bee"):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 10), (0, 30 * i, 0)).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("name, write", [("imagefolder", _tree), ("visda2017", _visda)])
def test_image_folders_stream_unless_told_to_keep_images_in_memory(tmp_path: Path, name, write) -> None:
    root = write(tmp_path / name)
    default = load_dataset(name, root, image_size=8, val_size=1)
    assert all(isinstance(s, StreamingImageSet) for s in (default.train, default.val, default.test))
    assert default.train.paths.dtype.kind == "S"  # only paths and labels are held
    in_memory = load_dataset(name, root, image_size=8, val_size=1, streaming=False, cache=False)
    assert all(isinstance(s, ImageSet) for s in (in_memory.train, in_memory.val, in_memory.test))
    assert in_memory.train.images.shape == (len(default.train), 3, 8, 8)
    assert in_memory.test.images.dtype == torch.uint8
    # Both read the same files with the same labels, in the same order (the val split alike).
    assert torch.equal(default.test.labels, in_memory.test.labels)
    assert torch.equal(default.train.labels, in_memory.train.labels)


def _pretrain(name: str, options: dict) -> PretrainRun:
    data = {"name": name, "root": "/data/x", "options": options}
    return PretrainRun.model_validate({"backbone": {"arch": "resnet18"}, "recipe": {"data": data}})


#: (dataset, options) -> (run hash, cost work kind key), as cvlth computed them before the change.
BEFORE = {
    ("imagefolder", "omitted"): ("ab80d2fa771a85fd", "5ce35692d81af3b3"),
    ("imagefolder", "streaming: true"): ("6022c29f1bfe0f22", "c1865d8d6be2c834"),
    ("visda2017", "omitted"): ("7a22ae77552a3c8f", "5e5d32d2b0cdf02f"),
    ("visda2017", "streaming: true"): ("8498282376ec915d", "e8ab54d477d1c1cf"),
}


@pytest.mark.parametrize("name", ["imagefolder", "visda2017"])
def test_configs_name_the_runs_they_named_before_the_default_changed(name: str) -> None:
    def identity(options: dict) -> tuple[str, str]:
        run = _pretrain(name, options)
        return run.hash(), work_kind(run, run.backbone).key

    # `streaming: true` (what the packaged ImageNet recipes say) is unchanged, and is the new default.
    assert identity({"streaming": True}) == BEFORE[(name, "streaming: true")]
    assert identity({}) == BEFORE[(name, "streaming: true")]
    # `streaming: false` is the in-memory run an omitted option named before.
    assert identity({"streaming": False}) == BEFORE[(name, "omitted")]


def test_contrastive_views_are_checked_on_a_set_streamed_by_default() -> None:
    objective = _pretrain("imagefolder", {}).recipe.objective.model_copy(update={"name": "simclr"})
    centred = _pretrain("imagefolder", {"train_crop": "center"}).recipe.data
    with pytest.raises(ConfigError, match="on streamed imagefolder draws its two views from the full image"):
        check_contrastive_streaming(centred, objective, "here")
    in_memory = _pretrain("imagefolder", {"train_crop": "center", "streaming": False}).recipe.data
    check_contrastive_streaming(in_memory, objective, "here")  # in memory: the objective crops
