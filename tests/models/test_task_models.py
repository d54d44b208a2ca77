"""Task models by objective and their `model:` options, from a study recipe to the built model."""

import pytest
import torch

from cvlth.config import validate_config
from cvlth.data.samples import SampleSplits
from cvlth.errors import ConfigError
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.models.checkpoints.importer import import_checkpoint
from cvlth.models.task_models import build_task_model, check_model_options, model_options
from cvlth.run_identity import config_hash
from cvlth.runs.kinds import Recipe

SPEC = BackboneSpec("resnet18", width=4, stem="cifar", in_channels=1)
DATA = SampleSplits(
    "tiny", [], None, [], ["background", "a", "b"], (0.1,), (0.3,), ("detection",), (1, 32, 32)
)


@pytest.fixture(scope="module")
def theta(tmp_path_factory):
    path = tmp_path_factory.mktemp("theta") / "theta.pt"
    save_checkpoint(path, build_backbone(SPEC, 10).state_dict(), SPEC, source="cvlth")
    return import_checkpoint(path, source="cvlth")


def test_detector_options_reach_torchvision_and_the_dataset_sets_the_defaults(theta):
    options = {"returned_layers": [2, 3, 4], "box_batch_size_per_image": 32, "box_score_thresh": 0.1}
    detector = build_task_model("detection", theta, SPEC, DATA, seed=0, options=options)
    assert detector.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert detector.roi_heads.score_thresh == 0.1
    assert len(detector.rpn.anchor_generator.sizes) == 4
    assert detector.transform.min_size == (32,) and detector.transform.max_size == 32  # the image size
    assert detector.transform.image_mean == [0.1] and detector.transform.image_std == [0.3]
    body = detector.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight, theta.state_dict["layer2.0.conv1.weight"])


def test_segmenter_options(theta):
    segmenter = build_task_model("segmentation", theta, SPEC, DATA, seed=0, options={"head_channels": 8})
    assert segmenter.decoder.classifier.in_channels == 8
    assert segmenter(torch.zeros(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_option_names_come_from_the_builders():
    assert {"returned_layers", "box_batch_size_per_image", "rpn_pre_nms_top_n_train"} <= model_options(
        "detection"
    )
    assert {"head_channels", "output_stride", "atrous_rates"} <= model_options("segmentation")
    assert not {"seed", "source", "num_classes", "backbone"} & (
        model_options("detection") | model_options("segmentation")
    )
    assert model_options("supervised") == frozenset()


@pytest.mark.parametrize(
    "objective, options, message",
    [
        ("detection", {"box_batch_size": 32}, "unknown option box_batch_size for a detection task"),
        ("segmentation", {"seed": 3}, "unknown option seed"),
        ("supervised", {"head_channels": 8}, "detection and segmentation tasks only"),
    ],
)
def test_bad_model_options_are_named(objective, options, message):
    with pytest.raises(ConfigError, match=message):
        check_model_options(objective, options)
    with pytest.raises(ConfigError, match=message):  # already when the study's recipe is validated
        validate_config(
            Recipe, {"data": {"name": "world_scenes"}, "objective": {"name": objective}, "model": options}
        )


def test_a_bad_option_value_is_a_config_error(theta):
    with pytest.raises(ConfigError, match="returned_layers"):
        build_task_model("detection", theta, SPEC, DATA, seed=0, options={"returned_layers": [1, 3]})


def test_model_options_are_part_of_the_run_identity():
    base = {"data": {"name": "world_scenes"}, "objective": {"name": "detection"}}
    plain = validate_config(Recipe, base)
    tuned = validate_config(Recipe, {**base, "model": {"box_batch_size_per_image": 32}})
    assert plain.model == {} and config_hash(plain) != config_hash(tuned)


def test_the_segmenters_paper_defaults_are_new_identities_and_the_former_values_keep_old_hashes():
    from cvlth.run_identity import identity

    base = {"data": {"name": "world_scenes"}, "objective": {"name": "segmentation"}}
    paper = validate_config(Recipe, base)  # backbone lr x0.1, BN momentum 0.01: computes something new
    former = validate_config(
        Recipe, {**base, "model": {"backbone_lr_factor": 1.0, "backbone_bn_momentum": 0.1}}
    )
    assert identity(paper)["model"] == {"backbone_lr_factor": 0.1, "backbone_bn_momentum": 0.01}
    assert identity(former)["model"] == {}  # what a segmentation task named before these options existed
    spelled = validate_config(Recipe, {**base, "model": {"backbone_lr_factor": 0.1}})
    assert config_hash(spelled) == config_hash(paper) != config_hash(former)
    other = validate_config(Recipe, {**base, "model": {"backbone_bn_momentum": 0.1, "head_channels": 8}})
    assert identity(other)["model"] == {"backbone_lr_factor": 0.1, "head_channels": 8}


def test_segmenter_backbone_learns_at_a_tenth_and_its_bn_moves_slowly(theta):
    from torch import nn

    from cvlth.config import PolySchedule, SGDConfig
    from cvlth.training.loop import parameter_groups
    from cvlth.training.optim import build_optimizer, build_scheduler

    segmenter = build_task_model("segmentation", theta, SPEC, DATA, seed=0)
    backbone_bns = [m for m in segmenter.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    head_bns = [m for m in segmenter.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert backbone_bns and all(m.momentum == 0.01 for m in backbone_bns)
    assert head_bns and all(m.momentum == 0.1 for m in head_bns)

    optimizer = build_optimizer(parameter_groups(segmenter, {}, 0.2), SGDConfig(lr=0.2))
    backbone = {id(p) for p in segmenter.backbone.parameters()}
    heads = {id(p) for n, p in segmenter.named_parameters() if not n.startswith("backbone.")}
    by_lr = {round(group["lr"], 9): {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert by_lr == {0.02: backbone, 0.2: heads}
    scheduler = build_scheduler(optimizer, PolySchedule(power=0.9), steps_per_epoch=10, epochs=1)
    optimizer.step()
    scheduler.step()
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == pytest.approx([0.02 * 0.9**0.9, 0.2 * 0.9**0.9])  # the schedule scales both

    # a classifier (no lr factors) keeps one plain parameter list, as before groups existed
    classifier = build_backbone(SPEC, 10)
    assert parameter_groups(classifier, {}, 0.2) == list(classifier.parameters())
    former = build_task_model("segmentation", theta, SPEC, DATA, seed=0, options={"backbone_lr_factor": 1.0})
    assert parameter_groups(former, {}, 0.2) == list(former.parameters())
