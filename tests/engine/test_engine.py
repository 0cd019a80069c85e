"""Training engine: optimizer groups, LR schedule, clipping, hooks, augmentation, TTA,
evaluators and the budget warm-up as the trainer drives it."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import register_synthetic_train_split, tiny_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from torch import nn

from dyn_seg.engine import (
    AutocastTrainer,
    RandomCropWithPad,
    SemanticSegmentorWithTTA,
    StepRateHook,
    Trainer,
    build_lr_scheduler,
    build_optimizer,
    build_train_augmentations,
    is_gate_parameter,
)
from dyn_seg.evaluation import RoutingEvaluator, load_sem_seg_label, summarize_results

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)


def _param_settings(optimizer):
    """{id(param): (lr, weight_decay)} over all groups; fails on a parameter in two groups."""
    settings = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in settings, "a parameter is in two optimizer groups"
            settings[id(p)] = (group["lr"], group["weight_decay"])
    return settings


# ----------------------------------------------------------------------------- optimizer
def test_gate_parameters_get_the_lr_multiplier_and_others_the_base_lr():
    cfg = tiny_cfg(**{"SOLVER.BASE_LR": 0.02, "SOLVER.GATE_LR_MULTI": 2.5})
    model = build_model(cfg)
    settings = _param_settings(build_optimizer(cfg, model))

    names = dict(model.named_parameters())
    gate = [n for n in names if is_gate_parameter(n)]
    assert gate and len(gate) < len(names)
    for name, p in names.items():
        expected = 0.02 * 2.5 if name in gate else 0.02
        assert settings[id(p)][0] == pytest.approx(expected), name


def test_norm_parameters_have_no_weight_decay_and_convolutions_do():
    cfg = tiny_cfg(**{"SOLVER.WEIGHT_DECAY": 1e-4, "SOLVER.WEIGHT_DECAY_NORM": 0.0,
                      "SOLVER.GATE_LR_MULTI": 2.5})
    model = build_model(cfg)
    settings = _param_settings(build_optimizer(cfg, model))

    assert len(settings) == len(list(model.parameters()))
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES)
                   for p in m.parameters(recurse=False)}
    conv_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert norm_params and conv_weights
    for pid in norm_params:  # gate norms included: their LR is scaled, their decay stays 0
        assert settings[pid][1] == 0.0
    for pid in conv_weights:
        assert settings[pid][1] == pytest.approx(1e-4)


def test_optimizer_is_sgd_with_momentum():
    cfg = tiny_cfg(**{"SOLVER.MOMENTUM": 0.9})
    optimizer = build_optimizer(cfg, build_model(cfg))
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_solver_optimizer_adam_builds_adam_with_the_same_groups():
    """SOLVER.OPTIMIZER "ADAM" (Panoptic-DeepLab's recipe) keeps the gate LR and norm decay
    groups; an unknown name is refused with the allowed ones."""
    cfg = tiny_cfg(**{"SOLVER.OPTIMIZER": "ADAM", "SOLVER.BASE_LR": 0.001,
                      "SOLVER.GATE_LR_MULTI": 2.5})
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.Adam)
    assert sorted({round(g["lr"], 9) for g in optimizer.param_groups}) == [0.001, 0.0025]
    cfg = tiny_cfg(**{"SOLVER.OPTIMIZER": "LAMB"})
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER='LAMB'.*'SGD', 'ADAM'"):
        build_optimizer(cfg, model)


def test_non_positive_gate_lr_multiplier_is_rejected():
    cfg = tiny_cfg(**{"SOLVER.GATE_LR_MULTI": 0.0})
    with pytest.raises(ValueError, match="SOLVER.GATE_LR_MULTI"):
        build_optimizer(cfg, build_model(cfg))


# ----------------------------------------------------------------------------- clipping
def _two_layer_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))


def _set_large_grads(model):
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, 10.0 * (i + 1))


def _global_norm(model):
    return torch.norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()


def test_full_model_clipping_bounds_the_global_gradient_norm():
    cfg = tiny_cfg(**{"SOLVER.CLIP_GRADIENTS.ENABLED": True,
                      "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
                      "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 5.0})
    model = _two_layer_model()
    optimizer = build_optimizer(cfg, model)
    _set_large_grads(model)
    before = [p.grad.clone() for p in model.parameters()]
    assert _global_norm(model) > 5.0

    optimizer.step()

    assert _global_norm(model) == pytest.approx(5.0, rel=1e-4)
    # one factor for all parameters (global norm), not one per parameter
    ratios = [(p.grad / b).flatten()[0].item() for p, b in zip(model.parameters(), before)]
    assert max(ratios) == pytest.approx(min(ratios))


def test_full_model_clipping_leaves_small_gradients_alone():
    cfg = tiny_cfg(**{"SOLVER.CLIP_GRADIENTS.ENABLED": True,
                      "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
                      "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 5.0})
    model = _two_layer_model()
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    before = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.grad, b)


def test_unknown_clip_type_is_rejected():
    cfg = tiny_cfg(**{"SOLVER.CLIP_GRADIENTS.ENABLED": True,
                      "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "global"})
    with pytest.raises(ValueError, match="CLIP_TYPE='global'.*full_model"):
        build_optimizer(cfg, _two_layer_model())


# ----------------------------------------------------------------------------- LR schedule
def _lr_curve(cfg, model):
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return np.asarray(lrs)


def _poly_cfg(**overrides):
    values = {"SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR", "SOLVER.BASE_LR": 0.1,
              "SOLVER.MAX_ITER": 100, "SOLVER.WARMUP_ITERS": 10, "SOLVER.WARMUP_FACTOR": 0.001,
              "SOLVER.WARMUP_METHOD": "linear", "SOLVER.POLY_LR_POWER": 0.9}
    values.update(overrides)
    return tiny_cfg(**values)


def test_lr_warms_up_linearly_then_decays_as_poly_0_9():
    lrs = _lr_curve(_poly_cfg(), _two_layer_model())[:, 0]

    it = np.arange(100)
    warm = np.where(it < 10, 0.001 * (1 - it / 10) + it / 10, 1.0)
    np.testing.assert_allclose(lrs, 0.1 * warm * (1 - it / 100) ** 0.9, rtol=1e-9)
    assert lrs[0] == pytest.approx(1e-4)
    assert np.all(np.diff(lrs[:11]) > 0)  # rising during warm-up
    assert np.all(np.diff(lrs[10:]) < 0)  # then decaying
    assert lrs[-1] < 0.02 * 0.1  # (1 - 99/100) ** 0.9 = 0.016


def test_lr_schedule_is_detectron2_deeplab_warmup_poly():
    from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR

    # detectron2 DeepLab's class (subclassed only to keep the config's schedule on resume)
    cfg = _poly_cfg()
    scheduler = build_lr_scheduler(cfg, build_optimizer(cfg, _two_layer_model()))
    assert isinstance(scheduler, WarmupPolyLR)
    assert (scheduler.warmup_factor, scheduler.warmup_iters, scheduler.power) == (0.001, 10, 0.9)


def test_resumed_schedule_follows_the_new_max_iter():
    short = _poly_cfg(**{"SOLVER.MAX_ITER": 4, "SOLVER.WARMUP_ITERS": 1})
    optimizer = build_optimizer(short, _two_layer_model())
    scheduler = build_lr_scheduler(short, optimizer)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    saved = scheduler.state_dict()

    longer = _poly_cfg(**{"SOLVER.MAX_ITER": 6, "SOLVER.WARMUP_ITERS": 1})
    optimizer = build_optimizer(longer, _two_layer_model())
    resumed = build_lr_scheduler(longer, optimizer)
    resumed.load_state_dict(saved)
    assert resumed.last_epoch == 4 and resumed.max_iters == 6
    optimizer.step()
    resumed.step()  # iteration 5 of 6
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 5 / 6) ** 0.9)


def test_gate_lr_stays_a_fixed_multiple_of_the_base_lr_through_the_schedule():
    cfg = _poly_cfg(**{"SOLVER.GATE_LR_MULTI": 2.5})
    model = build_model(cfg)
    lrs = _lr_curve(cfg, model)
    per_step = np.sort(lrs, axis=1)
    np.testing.assert_allclose(per_step[:, -1], 2.5 * per_step[:, 0], rtol=1e-9)


def test_constant_ending_floors_the_poly_factor():
    cfg = _poly_cfg(**{"SOLVER.MAX_ITER": 1000, "SOLVER.WARMUP_ITERS": 100,
                       "SOLVER.POLY_LR_CONSTANT_ENDING": 0.05})
    lrs = _lr_curve(cfg, _two_layer_model())[:, 0] / 0.1
    assert lrs[999] == pytest.approx(0.05)
    assert lrs[500] == pytest.approx(0.5**0.9)


def test_other_scheduler_names_use_detectron2():
    cfg = _poly_cfg(**{"SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR", "SOLVER.WARMUP_ITERS": 0})
    lrs = _lr_curve(cfg, _two_layer_model())[:, 0]
    assert lrs[50] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-6)


# ----------------------------------------------------------------------------- hooks
class _Wrapper(nn.Module):
    """Stands for DistributedDataParallel: the real model is ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


@pytest.mark.parametrize("wrapped", [False, True])
def test_step_rate_hook_sets_training_progress_before_each_step(wrapped):
    model = build_model(tiny_cfg())
    hook = StepRateHook()
    hook.trainer = SimpleNamespace(model=_Wrapper(model) if wrapped else model,
                                   iter=30, max_iter=120)
    hook.before_step()
    assert model.step_rate == pytest.approx(0.25)
    hook.trainer.iter = 119
    hook.before_step()
    assert model.step_rate == pytest.approx(119 / 120)


# ----------------------------------------------------------------------------- augmentation
def test_absolute_crop_pads_small_images_centred_with_zero_and_labels_with_ignore():
    image = np.full((40, 50, 3), 7, dtype=np.uint8)
    label = np.ones((40, 50), dtype=np.uint8)
    aug = RandomCropWithPad("absolute", (64, 80), image_pad_value=0, seg_pad_value=255)
    aug_input = T.AugInput(image, sem_seg=label)
    T.AugmentationList([aug])(aug_input)

    assert aug_input.image.shape == (64, 80, 3)
    assert aug_input.sem_seg.shape == (64, 80)
    # 24 rows and 30 columns missing: 12 above, 12 below, 15 left, 15 right
    np.testing.assert_array_equal(aug_input.image[12:52, 15:65], 7)
    np.testing.assert_array_equal(aug_input.sem_seg[12:52, 15:65], 1)
    inside = np.zeros((64, 80), dtype=bool)
    inside[12:52, 15:65] = True
    assert (aug_input.image[~inside] == 0).all()
    assert (aug_input.sem_seg[~inside] == 255).all()


def test_odd_padding_puts_the_extra_pixel_after_the_image():
    aug_input = T.AugInput(np.full((5, 8, 3), 9, dtype=np.uint8),
                           sem_seg=np.zeros((5, 8), dtype=np.uint8))
    T.AugmentationList([RandomCropWithPad("absolute", (8, 8))])(aug_input)
    rows = np.flatnonzero(aug_input.image[:, 0, 0] == 9)
    assert rows.tolist() == [1, 2, 3, 4, 5]  # 1 row above, 2 below


def _asymmetric_scene(h, w):
    """An image whose left column is bright (to see flips) and its label."""
    image = np.full((h, w, 3), 50, dtype=np.uint8)
    image[:, 0] = 200
    label = np.zeros((h, w), dtype=np.uint8)
    label[:, 0] = 3
    return image, label


def test_training_augmentations_resize_then_flip_then_crop_padded_centred():
    cfg = tiny_cfg(**{"INPUT.MIN_SIZE_TRAIN": (20,), "INPUT.MAX_SIZE_TRAIN": 1000,
                      "INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute",
                      "INPUT.CROP.SIZE": (32, 48), "INPUT.RANDOM_FLIP": "horizontal"})
    augs = build_train_augmentations(cfg)
    assert [type(a) for a in augs] == [T.ResizeShortestEdge, T.RandomFlip, RandomCropWithPad]

    # 10x15 resized to 20x30 (smaller than the 32x48 crop in both sides): padded 6 rows
    # above and below, 9 columns left and right, whether or not it was flipped first.
    seen_flipped = seen_plain = False
    for seed in range(12):
        np.random.seed(seed)
        image, label = _asymmetric_scene(10, 15)
        aug_input = T.AugInput(image, sem_seg=label)
        T.AugmentationList(augs)(aug_input)
        out, seg = aug_input.image, aug_input.sem_seg
        assert out.shape == (32, 48, 3) and seg.shape == (32, 48)
        assert (seg[:6] == 255).all() and (seg[26:] == 255).all()
        assert (seg[:, :9] == 255).all() and (seg[:, 39:] == 255).all()
        assert (seg[6:26, 9:39] != 255).all() and (out[6:26, 9:39] > 0).all()
        assert (out[:6] == 0).all() and (out[:, 39:] == 0).all()
        flipped = bool((seg[6:26, 37:39] == 3).all())
        assert flipped != bool((seg[6:26, 9:11] == 3).all())
        seen_flipped |= flipped
        seen_plain |= not flipped
    assert seen_flipped and seen_plain


def test_absolute_crop_of_a_large_image_is_a_plain_crop():
    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    aug_input = T.AugInput(image, sem_seg=np.zeros((100, 120), dtype=np.uint8))
    T.AugmentationList([RandomCropWithPad("absolute", (64, 80))])(aug_input)
    assert aug_input.image.shape == (64, 80, 3)
    assert (aug_input.sem_seg == 0).all()


# ----------------------------------------------------------------------------- TTA
class _HalfPlaneModel(nn.Module):
    """Class 1 where the view's first channel is bright, class 0 elsewhere, at the size the
    input asks for (like the real model's postprocessing)."""

    def forward(self, inputs):
        outputs = []
        for x in inputs:
            bright = (x["image"][0:1, None].float() > 127).float()
            bright = nn.functional.interpolate(bright, size=(x["height"], x["width"]))[0, 0]
            logits = torch.stack([1 - bright, bright]) * 20.0
            outputs.append({"sem_seg": logits, "flops": {"real": 1.0, "expected": 0.5}})
        return outputs


def test_tta_flips_views_back_and_sums_their_flops():
    image = torch.zeros(3, 32, 48)
    image[:, :, :24] = 255  # left half bright
    tta_cfg = tiny_cfg(**{"TEST.AUG.MIN_SIZES": (32, 64), "TEST.AUG.MAX_SIZE": 1000,
                          "TEST.AUG.FLIP": True})
    tta = SemanticSegmentorWithTTA(tta_cfg, _HalfPlaneModel())

    (out,) = tta([{"image": image, "height": 32, "width": 48}])

    logits = out["sem_seg"]
    assert logits.shape == (2, 32, 48)
    # the views' logits are averaged: every view agrees, so the mean is each view's logits
    assert (logits[1, :, :24] == 20.0).all() and (logits[0, :, 24:] == 20.0).all()
    assert (logits[0, :, :24] == 0.0).all() and (logits[1, :, 24:] == 0.0).all()
    assert out["flops"] == {"real": 4.0, "expected": 2.0}  # 2 scales x (plain + flipped)


class _ViewDependentModel(nn.Module):
    """Logits (6, 0, 5.5) on plain views, (0, 2, -6) on flipped ones (told apart by the
    bright left column, which a flip moves to the right)."""

    def forward(self, inputs):
        outputs = []
        for x in inputs:
            plain = bool(x["image"][0, :, 0].float().mean() > 127)
            values = (6.0, 0.0, 5.5) if plain else (0.0, 2.0, -6.0)
            logits = torch.tensor(values).view(3, 1, 1).expand(3, x["height"], x["width"])
            outputs.append({"sem_seg": logits.clone()})
        return outputs


def test_tta_averages_logits_not_probabilities():
    image = torch.zeros(3, 16, 16)
    image[:, :, 0] = 255
    cfg = tiny_cfg(**{"TEST.AUG.MIN_SIZES": (16,), "TEST.AUG.MAX_SIZE": 100,
                      "TEST.AUG.FLIP": True})
    (out,) = SemanticSegmentorWithTTA(cfg, _ViewDependentModel())(
        [{"image": image, "height": 16, "width": 16}])
    # mean logits (3, 1, -0.25): class 0; mean probabilities (0.37, 0.44, 0.19) would say 1
    expected = torch.tensor([3.0, 1.0, -0.25]).view(3, 1, 1).expand(3, 16, 16)
    torch.testing.assert_close(out["sem_seg"], expected)
    assert "flops" not in out


def test_tta_wraps_the_real_model():
    cfg = tiny_cfg(**{"TEST.AUG.MIN_SIZES": (64,), "TEST.AUG.FLIP": True})
    model = build_model(cfg).eval()
    image = torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8).float()
    with torch.no_grad():
        (plain,) = model([{"image": image, "height": 70, "width": 90}])
        (out,) = SemanticSegmentorWithTTA(cfg, model)([{"image": image, "height": 70,
                                                        "width": 90}])
    assert out["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 70, 90)
    assert out["flops"]["real"] > plain["flops"]["real"]


# ----------------------------------------------------------------------------- evaluation
def _routing_output(real, expected, alphas):
    routing = {(-1, 0): torch.tensor([1.0, 1.0])}  # init cell: not counted
    routing.update({(0, i): torch.tensor(a) for i, a in enumerate(alphas)})
    return {"flops": {"real": real, "expected": expected}, "routing": routing}


def test_routing_evaluator_reports_flops_range_and_open_gates():
    evaluator = RoutingEvaluator(distributed=False)
    evaluator.reset()
    evaluator.process([{}, {}], [_routing_output(10.0, 4.0, [[0.5, 0.0], [0.9]]),
                                 _routing_output(20.0, 8.0, [[0.0, 0.0], [0.2]])])
    evaluator.process([{}], [_routing_output(30.0, 6.0, [[1.0, 1.0], [0.0]])])

    res = evaluator.evaluate()["routing"]
    assert res["GFLOPs_real"] == pytest.approx(20.0)
    assert (res["GFLOPs_real_min"], res["GFLOPs_real_max"]) == (10.0, 30.0)
    assert res["GFLOPs_expected"] == pytest.approx(6.0)
    assert (res["GFLOPs_expected_min"], res["GFLOPs_expected_max"]) == (4.0, 8.0)
    assert res["gates_open_pct"] == pytest.approx(100.0 * 5 / 9)


def test_routing_evaluator_reports_open_gates_per_layer():
    evaluator = RoutingEvaluator(distributed=False)
    evaluator.reset()
    out = _routing_output(1.0, 1.0, [[0.5, 0.0], [0.9, 0.3, 0.0]])  # layer 0: 3 of 5 open
    out["routing"][(1, 0)] = torch.tensor([0.0, 0.0])  # layer 1: shut
    out["routing"][(1, 1)] = torch.tensor([0.0, 0.7, 0.0])  # ... but for one path
    evaluator.process([{}], [out])
    res = evaluator.evaluate()["routing"]
    assert res["layer_0_open_pct"] == pytest.approx(60.0)
    assert res["layer_1_open_pct"] == pytest.approx(20.0)
    assert "layer_-1_open_pct" not in res  # the init cell is not routed


def test_routing_evaluator_without_outputs_reports_nothing():
    evaluator = RoutingEvaluator(distributed=False)
    evaluator.reset()
    evaluator.process([{}], [{"sem_seg": torch.zeros(2, 4, 4)}])
    assert evaluator.evaluate() == {}


def test_label_loader_returns_a_writable_int_array(tmp_path):
    from PIL import Image

    path = tmp_path / "label.png"
    Image.fromarray(np.array([[1, 255], [3, 4]], dtype=np.uint8)).save(path)
    label = load_sem_seg_label(str(path), dtype=int)
    label[label == 255] = 19  # what SemSegEvaluator does with the ignore label
    assert label.dtype == np.int64 and label.tolist() == [[1, 19], [3, 4]]


def test_summary_puts_miou_beside_gflops():
    results = {"sem_seg": {"mIoU": 61.234, "fwIoU": 80.0},
               "routing": {"GFLOPs_real": 58.9, "GFLOPs_real_min": 50.0,
                           "GFLOPs_real_max": 70.0, "gates_open_pct": 64.0},
               "sem_seg_TTA": {"mIoU": 63.0}}
    lines = summarize_results(results, ["cityscapes_fine_sem_seg_val"])
    assert lines[0] == ("cityscapes_fine_sem_seg_val: mIoU 61.23 | real GFLOPs 58.900 "
                        "(min 50.000, max 70.000) | gates open 64.0%")
    assert lines[1] == "cityscapes_fine_sem_seg_val (TTA): mIoU 63.00"


# ----------------------------------------------------------------------------- trainer
@pytest.fixture(scope="module")
def tiny_train_set(tmp_path_factory):
    """A 2-image synthetic Cityscapes train split of 32x64 frames, registered under a
    unique name (detectron2's builtin names read DETECTRON2_DATASETS once, at import)."""
    name = register_synthetic_train_split(str(tmp_path_factory.mktemp("data")), "synthetic_train")
    yield name
    DatasetCatalog.remove(name)


def test_budget_loss_starts_at_unupdate_rate_and_warms_up_over_two_percent(
        tiny_train_set, tmp_path):
    cfg = tiny_cfg(**{
        "MODEL.BUDGET.CONSTRAIN": True, "MODEL.BUDGET.UNUPDATE_RATE": 0.95,
        "MODEL.BUDGET.WARM_UP": True, "MODEL.BUDGET.LOSS_WEIGHT": 0.5,
        "MODEL.BUDGET.LOSS_MU": 0.1, "MODEL.BUDGET.FLOPS_ALL": 1.0,
        "DATASETS.TRAIN": (tiny_train_set,), "DATASETS.TEST": (),
        "INPUT.MIN_SIZE_TRAIN": (32,), "INPUT.MAX_SIZE_TRAIN": 1000,
        "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 1, "SOLVER.BASE_LR": 0.001,
        "SOLVER.MAX_ITER": 100, "SOLVER.CHECKPOINT_PERIOD": 1000, "TEST.EVAL_PERIOD": 0,
        "OUTPUT_DIR": str(tmp_path),
    })
    trainer = Trainer(cfg)
    trainer.start_iter = 92  # only the end of the schedule matters here
    trainer.train()

    storage = trainer.storage
    budget = {it: v for v, it in storage.history("loss_budget").values()}
    expected = {it: v * 1e3 for v, it in storage.history("flops/expected_gflops").values()}
    assert sorted(budget) == [95, 96, 97, 98, 99]  # step_rate >= 0.95
    # weight w = loss_budget / (LOSS_WEIGHT * (E[FLOPs] / FLOPS_ALL - MU)^2): a 2% ramp
    weights = {it: budget[it] / (0.5 * (expected[it] / 1.0 - 0.1) ** 2) for it in budget}
    assert weights[95] == pytest.approx(0.0, abs=1e-9)
    assert weights[96] == pytest.approx(0.5, rel=1e-3)
    for it in (97, 98, 99):
        assert weights[it] == pytest.approx(1.0, rel=1e-3)


def test_trainer_trains_in_bf16_on_cpu_through_amp_and_applies_channels_last(
        tiny_train_set, tmp_path):
    cfg = tiny_cfg(**{
        "SOLVER.AMP.ENABLED": True, "SOLVER.AMP.PRECISION": "bfloat16",
        "MODEL.FAST.TRAIN_CHANNELS_LAST": True,
        "DATASETS.TRAIN": (tiny_train_set,), "DATASETS.TEST": (),
        "INPUT.MIN_SIZE_TRAIN": (32,), "INPUT.MAX_SIZE_TRAIN": 1000,
        "INPUT.CROP.SIZE": [32, 32],
        "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 2, "SOLVER.BASE_LR": 0.001,
        "SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1000, "TEST.EVAL_PERIOD": 0,
        "OUTPUT_DIR": str(tmp_path),
    })
    trainer = Trainer(cfg)
    model = trainer.model
    assert isinstance(trainer._trainer, AutocastTrainer)
    stem = model.backbone.stem.stem_1
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)
    dtypes = []
    stem.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer.train()
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # both training steps ran in bf16
    assert math.isfinite(trainer.storage.history("total_loss").latest())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_float16_amp_on_cpu_is_refused_naming_bfloat16():
    model = _two_layer_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="float16.*CUDA.*PRECISION bfloat16"):
        AutocastTrainer(model, [], optimizer, precision=torch.float16)


def test_training_logs_gate_rates_even_without_flops_counting():
    from detectron2.utils.events import EventStorage

    model = build_model(tiny_cfg(**{"MODEL.CAL_FLOPS": False})).train()
    batch = [{"image": torch.rand(3, 64, 64) * 255, "sem_seg": torch.zeros(64, 64).long()}
             for _ in range(2)]
    with EventStorage(0) as storage:
        model(batch)
        names = set(storage.histories())
    assert "routing/gate_active_rate" in names and "routing/layer_0_active_rate" in names
    assert not any(n.startswith("flops/") for n in names)
