"""What the claims are checked on, gathered from a study config and its masks (cvlth.study.claim_inputs)."""

import torch

from cvlth.analysis.kernels import kernel_report
from cvlth.masks import Mask
from cvlth.results.outputs import TicketEntry, TicketLevel
from cvlth.study.claim_inputs import claim_inputs, halves, mask_facts, pretraining_kind, source_infos
from cvlth.study.config import PretrainEntry, StudyConfig

RECIPE = {"data": {"name": "world_upstream"}, "optim": {"name": "sgd", "lr": 0.1}}
SIMCLR = {**RECIPE, "objective": {"name": "simclr", "options": {"temperature": 0.2}}}
STUDY = {
    "name": "s",
    "backbone": {"arch": "resnet18", "width": 4, "stem": "cifar", "in_channels": 1},
    "pretrainings": {"sup": {"recipe": RECIPE}, "sim": {"recipe": SIMCLR}},
    "tasks": {"digits": RECIPE, "voc": {**RECIPE, "objective": {"name": "detection"}}},
    "finders": [
        {"name": "up", "method": "imp"},
        {"name": "init", "method": "imp", "stage": "downstream", "rewind": "init"},
    ],
    "rounds": 2,
    "domain_shift_tasks": ["digits"],
    "task_groups": {"both": ["digits", "voc"]},
}


def test_kinds_and_sources_from_the_study():
    assert pretraining_kind(PretrainEntry(import_path="x.pth", import_source="moco")) == "moco"
    assert pretraining_kind(PretrainEntry(import_path="x.pth", import_source="torchvision")) == "supervised"
    assert pretraining_kind(PretrainEntry(import_path="x.pth")) is None  # auto: not known
    study = StudyConfig.model_validate(STUDY)
    infos = source_infos(study)
    assert infos["sim/init"].kind == "simclr" and infos["sim/init"].task_specific("init")
    assert infos["sup/up"].upstream_imp and not infos["sup/up"].task_specific("pretrained")
    inputs = claim_inputs(study, [], None, None)
    assert inputs.dense_prediction == {"voc"} and inputs.domain_shift == ("digits",)
    assert inputs.task_groups == {"both": ("digits", "voc")}
    assert inputs.simclr_temperatures == {"sim": 0.2} and inputs.task_data["voc"] == "world_upstream"


def _mask(early_zero: int, late_zero: int) -> Mask:
    """Two 3x3 layers of 2x2 kernels: ``early_zero`` / ``late_zero`` kernels fully pruned."""
    layers = {}
    for name, zero in (("layer1.0.conv1.weight", early_zero), ("layer2.0.conv1.weight", late_zero)):
        keep = torch.ones(2, 2, 3, 3, dtype=torch.bool)
        keep.view(4, 3, 3)[:zero] = False
        layers[name] = keep
    return Mask(layers)


def test_halves_of_the_kernel_layers():
    assert halves(kernel_report(_mask(3, 1))) == (0.5, 0.75, 0.25)  # 4 of 8; 3 of 4; 1 of 4


def test_mask_facts_pairs_pretrainings_and_picks_the_level_nearest_79_percent():
    study = StudyConfig.model_validate(STUDY)
    masks = {
        ("sup", 1): _mask(0, 0),
        ("sup", 2): _mask(3, 1),
        ("sim", 1): _mask(0, 0),
        ("sim", 2): _mask(1, 3),
    }
    levels = {k: TicketLevel(1 - 0.8**k, f"{k}") for k in (1, 2)}
    tickets = [
        TicketEntry(f"{p}/up", p, "up", None, "imp-upstream", f"runs/{p}", levels) for p in ("sup", "sim")
    ]
    loaded = []

    def load(ticket, level):
        loaded.append((ticket.pretraining, level))
        return masks[(ticket.pretraining, level)]

    facts = mask_facts(study, tickets, load, release=lambda: None)
    first, last, ((iou_first, iou_last, _),) = facts.iou[("sup", "sim", "up")]
    assert (first, last) == (levels[1].sparsity, levels[2].sparsity)
    assert iou_first == 1.0  # nothing pruned in either
    # kept: sup keeps kernel 3 of layer1 and kernels 1-3 of layer2; sim kernels 1-3 and 3: 2x9 shared of 6x9
    assert iou_last == masks[("sup", 2)].iou(masks[("sim", 2)]) == 18 / 54
    assert facts.kernels["sup"] == (levels[2].sparsity, [(0.5, 0.75, 0.25)])  # level 2 (36%) is nearest
    assert facts.kernels["sim"] == (levels[2].sparsity, [(0.5, 0.25, 0.75)])


def test_task_groups_are_checked():
    import pytest
    from pydantic import ValidationError

    for groups, message in [
        ({"all": ["digits", "voc"]}, "reserved"),
        ({"g": ["digits", "nope"]}, "unknown task 'nope'"),
        ({"g": ["digits", "digits"]}, "two or more different tasks"),
    ]:
        with pytest.raises(ValidationError, match=message):
            StudyConfig.model_validate({**STUDY, "task_groups": groups})
