"""A run's numbers do not depend on how it was scheduled: serial or on workers, resumed or not."""

from pathlib import Path

import pytest
import torch
import yaml

from cvlth import run_files
from cvlth.errors import TrainingError
from cvlth.masks import Mask
from cvlth.runs.kinds import ImpRun
from cvlth.store import RunFolder, Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from study_fixtures import NEEDS_FASHION_MNIST, TINY
from training_fixtures import run_tiny, tiny_config


@pytest.fixture
def tiny_study(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


class _Stop(Exception):
    pass


def test_a_run_resumes_only_with_the_thread_count_it_was_computed_with(tmp_path) -> None:
    """CPU kernels reduce in a thread-dependent order: resuming with another count is refused."""
    folder = RunFolder(tmp_path / "run")
    cfg = tiny_config(epochs=2, checkpoint_every=1)

    def stop_after_two_steps(info) -> None:
        if info.step == 2:
            raise _Stop

    threads = torch.get_num_threads()
    with pytest.raises(_Stop):
        run_tiny(folder, cfg, callbacks=(stop_after_two_steps,))
    assert torch.load(folder.train_state_path, weights_only=True)["threads"] == threads
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(TrainingError, match=f"computed with {threads} intra-op threads") as error:
            run_tiny(folder, cfg)
        assert f"--threads {threads}" in error.value.hint
    finally:
        torch.set_num_threads(threads)
    result, _ = run_tiny(folder, cfg)  # the same count: it resumes
    assert result["steps"] > 2


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_two_workers_give_the_serial_results(tiny_study, tmp_path):
    """At the default settings: runs seed themselves from their configs and compute with the same
    thread count, so the worker count changes no number (byte-identical matching.json)."""
    from cvlth.study.runner import run_study

    study = load_study(tiny_study)
    parallel = run_study(study, Store(tmp_path / "parallel"), quiet=True, log=lambda _: None, workers=2)
    assert parallel.computed == parallel.runs == len(expand(study))
    serial = run_study(study, Store(tmp_path / "serial"), quiet=True, log=lambda _: None)
    assert (parallel.folder / "matching.json").read_bytes() == (serial.folder / "matching.json").read_bytes()
    threads = {Store(tmp_path / "parallel").result(i.run).get("threads") for i in expand(study)}
    assert threads - {None} == {torch.get_num_threads()}  # recorded by every training run
    for item in expand(study):
        if isinstance(item.run, ImpRun):
            for level in (1, 3):
                masks = [
                    Mask.load(run_files.mask_path(Path(Store(root).run_dir(item.run)), level))
                    for root in (tmp_path / "parallel", tmp_path / "serial")
                ]
                assert all(torch.equal(masks[0][name], masks[1][name]) for name in masks[0])
