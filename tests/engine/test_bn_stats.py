"""Batch-norm statistics passes run with scheduled drop path off and leave step_rate as it
was: precise BN at the end of a drop-path run is the same for every seed."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import register_synthetic_train_split, tiny_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import hooks
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from fvcore.nn.precise_bn import update_bn_stats
from torch import nn

from dyn_seg.engine import PreciseBNWithoutDropPath, Trainer, recompute_bn_stats


def _drop_path_model(drop_prob: float) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.BACKBONE.DROP_PROB": drop_prob,
                                    "MODEL.CAL_FLOPS": False}))
    return model.train()


def _batches(n=3):
    g = torch.Generator().manual_seed(0)
    return [[{"image": torch.rand(3, 64, 64, generator=g) * 255,
              "sem_seg": torch.zeros(64, 64, dtype=torch.long)} for _ in range(2)]
            for _ in range(n)]


def _bn_stats(model):
    return {name: torch.cat([m.running_mean, m.running_var])
            for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _pass(model, seed, stats_pass):
    model = copy.deepcopy(model)
    model.step_rate = 0.999
    torch.manual_seed(seed)
    with EventStorage():
        stats_pass(model, iter(_batches()), 3)
    return model


def _assert_same_stats(a, b):
    sa, sb = _bn_stats(a), _bn_stats(b)
    assert sa.keys() == sb.keys() and sa
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-5, atol=1e-6, msg=name)


def test_stats_pass_at_the_end_of_a_drop_path_run_does_not_depend_on_the_seed():
    model = _drop_path_model(0.3)
    no_drop = _drop_path_model(0.0)
    no_drop.load_state_dict(model.state_dict())

    # plain fvcore pass at step_rate ~ 1: drop path is active, the stats depend on the seed
    plain = [_bn_stats(_pass(model, seed, update_bn_stats)) for seed in (1, 2)]
    assert any(not torch.allclose(plain[0][k], plain[1][k]) for k in plain[0])

    first, second = (_pass(model, seed, recompute_bn_stats) for seed in (1, 2))
    _assert_same_stats(first, second)
    _assert_same_stats(first, _pass(no_drop, 1, recompute_bn_stats))
    # step_rate is restored for the next training step
    assert first.step_rate == 0.999


def test_step_rate_is_restored_when_the_pass_fails():
    model = _drop_path_model(0.3)
    model.step_rate = 0.7
    model.backbone.step_rate = 0.7
    with pytest.raises(ValueError, match="sem_seg"):
        recompute_bn_stats(model, iter([[{"image": torch.rand(3, 64, 64)}]]), 1)
    assert model.step_rate == 0.7 and model.backbone.step_rate == 0.7


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    name = register_synthetic_train_split(str(tmp_path_factory.mktemp("data")), "bn_stats")
    yield name
    DatasetCatalog.remove(name)


def test_trainer_precise_bn_hook_runs_without_drop_path(train_set, tmp_path):
    cfg = tiny_cfg(**{
        "MODEL.BACKBONE.DROP_PROB": 0.3, "MODEL.CAL_FLOPS": False,
        "DATASETS.TRAIN": (train_set,), "DATASETS.TEST": (),
        "INPUT.MIN_SIZE_TRAIN": (32,), "INPUT.MAX_SIZE_TRAIN": 1000,
        "INPUT.CROP.SIZE": [32, 32], "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.MAX_ITER": 10, "TEST.EVAL_PERIOD": 0, "TEST.PRECISE_BN.ENABLED": True,
        "TEST.PRECISE_BN.NUM_ITER": 2, "OUTPUT_DIR": str(tmp_path),
    })
    trainer = Trainer(cfg)
    precise = [h for h in trainer._hooks if isinstance(h, hooks.PreciseBN)]
    assert len(precise) == 1 and isinstance(precise[0], PreciseBNWithoutDropPath)

    seen = []  # the backbone's step_rate (copied from the model's) when its stem runs
    backbone = trainer.model.backbone
    backbone.stem.stem_1.register_forward_pre_hook(lambda m, a: seen.append(backbone.step_rate))
    trainer.model.step_rate = 0.9
    precise[0].update_stats()
    assert seen == [0.0, 0.0]  # both precise-BN batches ran with drop path off
    assert trainer.model.step_rate == 0.9
