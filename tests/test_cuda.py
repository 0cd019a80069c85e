"""The CUDA path: inference plans, mixed precision, the predictor, NCCL training, syncs.

Every test here needs a CUDA device and is skipped (with the reason) without one;
``bash scripts/gpu_check.sh OUTDIR`` runs them on a GPU machine. Setting
``DYN_SEG_TEST_DEVICE=cpu`` runs the device-independent ones on the CPU, which checks the
tests themselves on a machine without a GPU.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from reference_helpers import LOGIT_RTOL, reference_cfg

from dyn_seg.checkpoint import convert_reference_state_dict
from dyn_seg.modeling.network.transforms import InferenceCopy, InferenceOptions

DEVICE = os.environ.get("DYN_SEG_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE == "cuda"
pytestmark = pytest.mark.skipif(
    ON_CUDA and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (run `bash scripts/gpu_check.sh OUTDIR` on a GPU machine)",
)
needs_cuda = pytest.mark.skipif(not ON_CUDA, reason="counts CUDA synchronisations")

# Every inference plan / transform that must reproduce the faithful path in float32.
FP32_OPTIONS = {
    "fast-base": InferenceOptions(fold_bn=False, channels_last=False, skip_closed_paths=False,
                                  per_image_routing=False),
    "fast-fold": InferenceOptions(channels_last=False, skip_closed_paths=False,
                                  per_image_routing=False),
    "fast-fold-cl-skip": InferenceOptions(per_image_routing=False),
    "fast": InferenceOptions(),
    "graph-dense": InferenceOptions(plan_name="graph-dense"),
    "graph-conditional": InferenceOptions(plan_name="graph-conditional"),
}
BF16_ARGMAX_AGREEMENT = 0.995


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 would round float32 matmuls and convolutions to 10 mantissa bits: the parity
    tolerances are for true float32."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def fixture_model(reference_fixture):
    """The reference fixture's network on the device, in eval mode, faithful plan."""
    model = build_model(reference_cfg(reference_fixture["official_config"]))
    state, report = convert_reference_state_dict(
        reference_fixture["state_dict"], model.state_dict())
    assert report.ok, report.summary()
    model.load_state_dict(state)
    return model.to(DEVICE).eval()


def _inputs(images):
    return [{"image": im.to(DEVICE), "height": im.shape[1], "width": im.shape[2]}
            for im in images]


def _max_rel(ours, ref):
    return float((ours.float().cpu() - ref).abs().max() / ref.abs().max())


def test_faithful_plan_matches_reference_fixture_on_device(fixture_model, reference_fixture):
    with torch.no_grad():
        batched = fixture_model(_inputs(reference_fixture["images"]))
    record = reference_fixture["eval_batched"]
    for i, out in enumerate(batched):
        assert out["sem_seg"].device.type == torch.device(DEVICE).type
        assert _max_rel(out["sem_seg"], record["sem_seg"][i]) < LOGIT_RTOL
    mean_real = sum(o["flops"]["real"] for o in batched) / len(batched) * 1e3
    assert mean_real == pytest.approx(record["real_flops_mflops"], rel=1e-5)


@pytest.mark.parametrize("mode", list(FP32_OPTIONS))
def test_every_fp32_inference_plan_matches_reference_fixture(mode, fixture_model,
                                                            reference_fixture):
    images = torch.stack(reference_fixture["images"]).to(DEVICE)
    normalised = (images - fixture_model.pixel_mean) / fixture_model.pixel_std
    copy_ = InferenceCopy(fixture_model, FP32_OPTIONS[mode])
    logits, _, routing = copy_(normalised)
    faithful_features, faithful_routing = fixture_model.backbone.forward_with_routing(
        normalised)
    record = reference_fixture["eval_batched"]
    for i in range(images.shape[0]):
        assert _max_rel(logits[i], record["sem_seg"][i]) < LOGIT_RTOL, mode
    assert torch.allclose(routing.real_flops.cpu(), faithful_routing.real_flops.cpu())
    # single image, too (the plans decide per image)
    single, _, _ = copy_(normalised[:1])
    assert _max_rel(single[0], reference_fixture["eval_single"][0]["sem_seg"]) < LOGIT_RTOL


@needs_cuda
def test_cuda_graph_plan_keeps_every_output_and_matches_reference_fixture(fixture_model,
                                                                         reference_fixture):
    # torch.compile "reduce-overhead": each static module replays a CUDA graph; a routed
    # forward calls the same module for several layers and sub-batches and keeps the outputs
    images = torch.stack(reference_fixture["images"]).to(DEVICE)
    normalised = (images - fixture_model.pixel_mean) / fixture_model.pixel_std
    copy_ = InferenceCopy(fixture_model, InferenceOptions(compile="inductor",
                                                          compile_mode="reduce-overhead"))
    record = reference_fixture["eval_batched"]
    for _ in range(3):  # the first calls record the graphs, later ones replay them
        logits, _, _ = copy_(normalised)
        single, _, _ = copy_(normalised[:1])
        for i in range(images.shape[0]):
            assert _max_rel(logits[i], record["sem_seg"][i]) < LOGIT_RTOL
        assert _max_rel(single[0], reference_fixture["eval_single"][0]["sem_seg"]) < LOGIT_RTOL


@needs_cuda
def test_captured_dense_graph_replays_with_every_output_and_matches_the_fixture(
        fixture_model, reference_fixture):
    """MODEL.FAST.CUDA_GRAPH: one CUDA graph per input shape, replayed; the outputs of one
    replay survive the next; the routing record equals the faithful one."""
    images = torch.stack(reference_fixture["images"]).to(DEVICE)
    normalised = (images - fixture_model.pixel_mean) / fixture_model.pixel_std
    copy_ = InferenceCopy(fixture_model, InferenceOptions(plan_name="graph-dense",
                                                          cuda_graph=True))
    record = reference_fixture["eval_batched"]
    _, faithful = fixture_model.backbone.forward_with_routing(normalised)
    kept = []
    for _ in range(3):
        logits, _, routing = copy_(normalised)
        single, _, _ = copy_(normalised[:1])
        kept.append(logits)
        for i in range(images.shape[0]):
            assert _max_rel(logits[i], record["sem_seg"][i]) < LOGIT_RTOL
        assert _max_rel(single[0], reference_fixture["eval_single"][0]["sem_seg"]) < LOGIT_RTOL
        assert torch.allclose(routing.real_flops, faithful.real_flops)
        assert {k: c.dropped for k, c in routing.cells.items()} == {
            k: c.dropped for k, c in faithful.cells.items()}
    assert copy_.program.num_graphs == 2  # batch 2 and batch 1
    assert all(torch.equal(kept[0], k) for k in kept[1:])


@needs_cuda
def test_captured_dense_graph_does_not_synchronise(fixture_model, reference_fixture):
    images = torch.stack(reference_fixture["images"]).to(DEVICE)
    normalised = (images - fixture_model.pixel_mean) / fixture_model.pixel_std
    copy_ = InferenceCopy(fixture_model, InferenceOptions(plan_name="graph-dense",
                                                          cuda_graph=True))
    copy_(normalised)  # capture
    syncs = _synchronisations(copy_, normalised)
    assert not syncs, syncs


def _synchronisations(fn, *args):
    """Messages of the synchronising CUDA calls of ``fn(*args)`` (torch's sync debug mode;
    its own notice that it is a prototype is not one)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]


def _trained_tiny():
    """The shipped trained Tiny network (what the main job trains) and generated scenes."""
    from dyn_seg import model_zoo

    model = model_zoo.get("Synthetic/Dynamic-Tiny.yaml", trained=True, device=DEVICE)
    return model.eval()


def _scenes(n=4, height=128, width=256, seed=3):
    from dyn_seg.synthetic import render_scene

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        image = render_scene(rng, height, width)[0]
        # rendered RGB -> the model's BGR input
        images.append(torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))
                      .float())
    return images


def test_bf16_inference_agrees_with_faithful_argmax_on_trained_network():
    model = _trained_tiny()
    images = torch.stack(_scenes()).to(DEVICE)
    normalised = (images - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        features, record = model.backbone.forward_with_routing(normalised)
        reference, _ = model.sem_seg_head(features, present=record.feature_present)
    logits, _, _ = InferenceCopy(model, InferenceOptions(bf16=True))(normalised)
    assert logits.dtype == torch.float32
    agreement = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    assert agreement >= BF16_ARGMAX_AGREEMENT, agreement


def _train_losses(model, steps, bf16, channels_last):
    from dyn_seg.modeling.meta_arch.training import prepare_for_training
    from dyn_seg.modeling.network.transforms import TrainingOptions

    model = prepare_for_training(copy.deepcopy(model).train(),
                                 TrainingOptions(channels_last=channels_last))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    batch = [{"image": (torch.rand(3, 64, 128, generator=g) * 255).to(DEVICE),
              "sem_seg": torch.randint(0, 4, (64, 128), generator=g).to(DEVICE)}
             for _ in range(4)]
    losses = []
    with EventStorage(0):
        for _ in range(steps):
            with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16,
                                enabled=bf16):
                loss_dict = model(batch)
            total = sum(loss_dict.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            losses.append(float(total.detach()))
    return losses


def test_bf16_channels_last_training_tracks_fp32():
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 4, "MODEL.DEVICE": DEVICE,
                      "MODEL.FAST.ENABLED": False})
    model = build_model(cfg)
    fp32 = _train_losses(model, 20, bf16=False, channels_last=False)
    mixed = _train_losses(model, 20, bf16=True, channels_last=True)
    assert fp32[-1] < fp32[0]  # it learns
    assert mixed[-1] < mixed[0]
    for a, b in zip(fp32, mixed):
        assert abs(a - b) <= 0.05 * abs(a) + 0.02, (fp32, mixed)


def test_default_predictor_on_device_matches_cpu_labels(tmp_path):
    from dyn_seg import model_zoo
    from dyn_seg.engine.predictor import DynSegPredictor

    cfg = model_zoo.get_config("Synthetic/Dynamic-Tiny.yaml", trained=True)
    image = _scenes(1)[0].permute(1, 2, 0).numpy().astype(np.uint8)  # HWC BGR
    labels = {}
    for device in ("cpu", DEVICE):
        c = cfg.clone()
        c.MODEL.DEVICE = device
        out = DynSegPredictor(c)(image)
        assert out["sem_seg"].device.type == torch.device(device).type
        labels[device] = out["sem_seg"].argmax(0).cpu()
    agreement = float((labels["cpu"] == labels[DEVICE]).float().mean())
    assert agreement >= 0.999, agreement


_NCCL_TRAIN = textwrap.dedent("""
    import sys, datetime, importlib
    import torch.multiprocessing as mp
    # detectron2.engine re-exports the function launch under the module's name
    launch_module = importlib.import_module("detectron2.engine.launch")
    from dyn_seg.tools import train_net

    def main(args):
        return train_net.main(args)

    if __name__ == "__main__":
        args = train_net.argument_parser().parse_args(sys.argv[1:])
        # detectron2's launch starts a process group only for several processes; its worker
        # is what launch runs in each process, here with a world of one (NCCL, one GPU).
        mp.start_processes(launch_module._distributed_worker, nprocs=1, args=(
            main, 1, 1, 0, "tcp://127.0.0.1:{port}", (args,),
            datetime.timedelta(minutes=5)), daemon=False)
""")


@needs_cuda
@pytest.mark.parametrize("norm", ["SyncBN", "nnSyncBN"])
def test_one_process_nccl_training_with_sync_bn_trains_and_checkpoints(tmp_path, norm,
                                                                      synthetic_root):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "nccl_train.py"
    script.write_text(_NCCL_TRAIN.format(port=port))
    out = tmp_path / "out"
    env = dict(os.environ, DETECTRON2_DATASETS=str(synthetic_root),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, str(script), "--config-file",
         str(REPO / "configs" / "Synthetic" / "Dynamic-Tiny.yaml"),
         "MODEL.DEVICE", "cuda", "MODEL.BACKBONE.NORM", norm, "MODEL.SEM_SEG_HEAD.NORM", norm,
         "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "2",
         "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (out / "model_final.pth").is_file()
    assert "nccl" in (result.stdout + result.stderr).lower() or torch.cuda.is_available()


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from dyn_seg.synthetic import generate_synthetic_cityscapes

    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_cityscapes(str(root), num_train=4, num_val=2, height=64,
                                         width=128, progress=False)


@needs_cuda
def test_fast_plan_synchronises_at_most_once_per_routed_layer(fixture_model,
                                                              reference_fixture):
    images = torch.stack(reference_fixture["images"]).to(DEVICE)
    normalised = (images - fixture_model.pixel_mean) / fixture_model.pixel_std
    copy_ = InferenceCopy(fixture_model, InferenceOptions())
    copy_(normalised)  # warm-up: lazy initialisation is not what is counted
    layers = 1 + len(fixture_model.backbone.cell_specs)  # the init layer and every layer
    syncs = _synchronisations(copy_, normalised)
    assert len(syncs) <= layers, syncs


def test_inference_creates_no_tensor_on_another_device(fixture_model, reference_fixture):
    """Every tensor an inference forward makes lives on the input's device, except the
    planned host copies of gate activations."""
    from torch.utils._python_dispatch import TorchDispatchMode

    device = torch.device(DEVICE)
    stray = []

    class DeviceAudit(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else [out]
            for t in outs:
                if (isinstance(t, torch.Tensor) and t.device.type != device.type
                        and func is not torch.ops.aten._to_copy.default):
                    stray.append(str(func))
            return out

    images = torch.stack(reference_fixture["images"]).to(device)
    normalised = (images - fixture_model.pixel_mean) / fixture_model.pixel_std
    fast = InferenceCopy(fixture_model, InferenceOptions())  # built outside the audit
    with torch.no_grad(), DeviceAudit():
        features, record = fixture_model.backbone.forward_with_routing(normalised)
        fixture_model.sem_seg_head(features, present=record.feature_present)
        fast(normalised)
    assert not stray, sorted(set(stray))
