"""The budget loss stays finite at zero FLOPs; NaN/Inf losses and weights stop training with
the iteration and the last good checkpoint named."""
from __future__ import annotations

import math
import types

import pytest
import torch
from conftest import register_synthetic_train_split, tiny_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.engine import Trainer
from dyn_seg.engine.guards import (
    NonFiniteLossError,
    NonFiniteTrainingError,
    explain_non_finite_loss,
    first_non_finite_tensor,
)
from dyn_seg.modeling.cost.budget import budget_loss

NUM_CLASSES = 19


@pytest.mark.parametrize("warm_up", [True, False])
@pytest.mark.parametrize("step_rate", [0.4, 0.41, 1.0])
def test_budget_loss_is_finite_with_gradient_at_zero_flops(step_rate, warm_up):
    flops = torch.zeros(3, requires_grad=True)
    loss = budget_loss(flops, flops_all=26300.0, mu=0.1, loss_weight=0.5, step_rate=step_rate,
                       unupdate_rate=0.4, warm_up=warm_up)
    loss.backward()
    loss = loss.detach()
    w = min(1.0, (step_rate - 0.4) / 0.02) if warm_up else 1.0
    assert math.isclose(float(loss), 0.5 * w * 0.1 ** 2, rel_tol=1e-6)
    assert torch.isfinite(flops.grad).all()


def _close_all_gates(model):
    for cell in model.backbone.all_cells():
        if cell.gate is not None:
            torch.nn.init.zeros_(cell.gate.proj.weight)
            torch.nn.init.constant_(cell.gate.proj.bias, -5.0)


def _batch(n=2, h=64, w=64):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
         "sem_seg": torch.randint(0, NUM_CLASSES, (h, w), generator=g)}
        for _ in range(n)
    ]


@pytest.mark.parametrize("small_gate", [False, True])
def test_closed_gates_give_zero_flops_and_finite_budget_loss_and_gradients(small_gate):
    cfg = tiny_cfg(**{"MODEL.BUDGET.CONSTRAIN": True, "MODEL.GATE.SMALL_GATE": small_gate})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    _close_all_gates(model)
    model.step_rate = 1.0
    with EventStorage(0) as storage:
        losses = model(_batch())
        sum(losses.values()).backward()
    assert storage.latest()["flops/expected_gflops"][0] == 0.0
    assert storage.latest()["routing/gate_active_rate"][0] == 0.0
    b = cfg.MODEL.BUDGET
    assert math.isclose(losses["loss_budget"].item(), b.LOSS_WEIGHT * b.LOSS_MU ** 2,
                        rel_tol=1e-6)
    assert all(torch.isfinite(v) for v in losses.values())
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_budget_without_gates_is_finite():
    cfg = tiny_cfg(**{"MODEL.BUDGET.CONSTRAIN": True, "MODEL.GATE.GATE_ON": False})
    model = build_model(cfg).train()
    model.step_rate = 0.9
    with EventStorage(0):
        losses = model(_batch())
    assert torch.isfinite(losses["loss_budget"])


def test_zero_flops_normaliser_is_rejected_at_build_time():
    with pytest.raises(ValueError, match="FLOPS_ALL"):
        build_model(tiny_cfg(**{"MODEL.BUDGET.CONSTRAIN": True, "MODEL.BUDGET.FLOPS_ALL": 0.0}))


def test_first_non_finite_tensor_names_the_parameter():
    model = build_model(tiny_cfg())
    assert first_non_finite_tensor(model) is None
    name, param = list(model.named_parameters())[7]
    with torch.no_grad():
        param.view(-1)[0] = float("inf")
    assert first_non_finite_tensor(model) == name


def test_non_finite_loss_error_names_iteration_and_checkpoint(tmp_path):
    (tmp_path / "run dir").mkdir()
    checkpointer = DynSegCheckpointer(build_model(tiny_cfg()), str(tmp_path / "run dir"))
    trainer = types.SimpleNamespace(iter=12, checkpointer=checkpointer)
    with pytest.raises(NonFiniteTrainingError, match="No checkpoint had been written"):
        with explain_non_finite_loss(trainer):
            raise NonFiniteLossError({"loss_sem_seg": float("nan")})
    checkpointer.save("model_0000009", iteration=9)
    with pytest.raises(NonFiniteTrainingError) as err:
        with explain_non_finite_loss(trainer):
            raise NonFiniteLossError({"loss_sem_seg": float("nan")})
    message = str(err.value)
    assert "iteration 12" in message and "'loss_sem_seg': nan" in message
    assert str(tmp_path / "run dir" / "model_0000009.pth") in message
    assert "--resume" in message


# ------------------------------------------------------------------ through the trainer


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    """Two synthetic 32x64 street scenes, registered under a unique name."""
    name = register_synthetic_train_split(str(tmp_path_factory.mktemp("data")), "numerical_safety")
    yield name
    DatasetCatalog.remove(name)


def _trainer(train_set, output_dir, **overrides):
    cfg = tiny_cfg(**{
        "DATASETS.TRAIN": (train_set,), "DATASETS.TEST": (),
        "INPUT.MIN_SIZE_TRAIN": (32,), "INPUT.MAX_SIZE_TRAIN": 1000,
        "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 2, "SOLVER.BASE_LR": 0.01,
        "SOLVER.MAX_ITER": 20, "SOLVER.CHECKPOINT_PERIOD": 3, "TEST.EVAL_PERIOD": 0,
        "OUTPUT_DIR": str(output_dir), **overrides,
    })
    output_dir.mkdir(exist_ok=True)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def _saved(output_dir):
    return sorted(p.name for p in output_dir.iterdir() if p.name.startswith("model_"))


def _finite_checkpoint(path):
    return all(torch.isfinite(v).all() for v in torch.load(path, weights_only=True)["model"]
               .values() if v.is_floating_point())


def test_nan_loss_stops_before_the_update_naming_iteration_and_last_checkpoint(
        train_set, tmp_path):
    out = tmp_path / "nan loss"
    trainer = _trainer(train_set, out)
    forward = trainer.model.forward

    def poisoned_forward(batched_inputs):
        losses = forward(batched_inputs)
        if trainer.iter == 7:
            losses["loss_sem_seg"] = losses["loss_sem_seg"] * float("nan")
        return losses

    trainer.model.forward = poisoned_forward
    with pytest.raises(NonFiniteTrainingError) as err:
        trainer.train()
    message = str(err.value)
    assert "iteration 7" in message and "'loss_sem_seg': nan" in message
    assert str(out / "model_0000005.pth") in message
    assert _saved(out) == ["model_0000002.pth", "model_0000005.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000005.pth"
    # the optimizer step of the bad iteration did not run: the weights are still finite
    assert first_non_finite_tensor(trainer.model) is None


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_non_finite_weights_are_never_checkpointed(train_set, tmp_path):
    out = tmp_path / "inf weights"
    trainer = _trainer(train_set, out)
    optimizer = trainer.optimizer
    step = optimizer.step
    name, param = list(trainer.model.named_parameters())[3]

    def overflowing_step(*args, **kwargs):
        result = step(*args, **kwargs)
        if trainer.iter == 5:  # a checkpoint iteration (period 3)
            with torch.no_grad():
                param.view(-1)[0] = float("inf")
        return result

    optimizer.step = overflowing_step
    with pytest.raises(NonFiniteTrainingError) as err:
        trainer.train()
    message = str(err.value)
    assert "iteration 5" in message and name in message
    assert str(out / "model_0000002.pth") in message
    assert _saved(out) == ["model_0000002.pth"]
    assert _finite_checkpoint(out / "model_0000002.pth")


def test_divergent_learning_rate_stops_with_only_finite_checkpoints(train_set, tmp_path):
    out = tmp_path / "divergent"
    trainer = _trainer(train_set, out, **{"SOLVER.BASE_LR": 1e12, "SOLVER.WARMUP_ITERS": 0,
                                          "SOLVER.CHECKPOINT_PERIOD": 1})
    with pytest.raises(NonFiniteTrainingError) as err:
        trainer.train()
    saved = _saved(out)
    assert all(_finite_checkpoint(out / name) for name in saved)
    if saved:
        assert str(out / (out / "last_checkpoint").read_text()) in str(err.value)
    else:
        assert "No checkpoint had been written" in str(err.value)
