"""What only a GPU can show: mixed-precision training runs, exact resume with
deterministic kernels, bf16 sampling, inductor compilation, and no host syncs on
ordinary steps. Run with `pytest -m cuda` (bench/gpu_check.sh); skipped without CUDA."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "tests" / "recipes" / "fixture.yaml")
FAST = ["samples.n=2", "samples.steps=2", "data.size=16", "data.crop=random", "data.hflip=true"]

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def train(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    # A fresh process per run: accelerate's state (mixed precision) is process-wide.
    # Keep the caller's PYTHONPATH (packages carried to a GPU machine live there) behind ours.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONPATH": path}
    res = subprocess.run([sys.executable, str(ROOT / "launch.py"), RECIPE, f"train.output_dir={out}", *FAST,
                          *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_run(tmp_path, precision):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / precision
    train(out, f"train.mixed_precision={precision}", "train.steps=30", "log.every_steps=5",
          "train.channels_last=true")
    w = load_file(out / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())
    ea = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    loss = [e.value for e in ea.Scalars("loss/total")]
    assert len(loss) == 6 and all(v == v for v in loss)
    assert loss[-1] < loss[0], loss
    skips = ea.Scalars("train/nonfinite_skips")[-1].value
    assert skips < (15 if precision == "fp16" else 1)  # fp16: the grad scaler skips while it lowers its scale


def test_exact_resume_with_deterministic_kernels(tmp_path):
    common = ["train.mixed_precision=bf16", "train.deterministic=true", "checkpoint.every_steps=4",
              "model.dropout=0.1", "optim.warmup_images=32"]
    train(tmp_path / "ref", *common, "train.steps=8")
    train(tmp_path / "split", *common, "train.steps=4")
    res = train(tmp_path / "split", *common, "train.steps=8")  # resumes from step 4
    assert "resumed from" in res.stderr
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == []


def test_bf16_sampling_matches_fp32(tmp_path):
    from xurdif.diffusion.samplers import sample
    from xurdif.weights import load_denoiser

    train(tmp_path / "run", "train.mixed_precision=bf16", "train.steps=20")
    den, _ = load_denoiser(tmp_path / "run" / "model.safetensors", "ema", "cuda")
    outs = {}
    for precision in ("fp32", "bf16"):
        g = torch.Generator().manual_seed(0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outs[precision] = sample(den, (4, 3, 16, 16), "dpmpp_2m", 10, generator=g, device="cuda")
    assert outs["bf16"].dtype == torch.float32 and torch.isfinite(outs["bf16"]).all()
    assert outs["bf16"].abs().max() <= 1.0  # clipped to the model's range
    # bf16 keeps 8 mantissa bits: the same render, to within a few percent of the range.
    assert (outs["bf16"] - outs["fp32"]).abs().mean() < 0.05


def test_inductor_compiled_matches_eager():
    from xurdif.models.unet import UNet
    from xurdif.recipe import TrainCfg
    from xurdif.train.network import compile_network

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    eager = UNet(base_width=32, mults=[1, 2, 2], head_dim=16).cuda()
    with torch.no_grad():
        for p in eager.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    compiled = UNet(base_width=32, mults=[1, 2, 2], head_dim=16).cuda()
    compiled.load_state_dict(eager.state_dict())
    compile_network(compiled, TrainCfg(compile=True))
    x, t = torch.randn(4, 3, 32, 32, device="cuda"), torch.tensor([1, 10, 500, 999], device="cuda")
    out_a, out_b = eager(x, t), compiled(x, t)
    out_a.square().mean().backward()
    out_b.square().mean().backward()
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-4)
    worst = max((a.grad - b.grad).abs().max().item() for a, b in zip(eager.parameters(), compiled.parameters()))
    assert worst < 1e-4


@pytest.mark.parametrize("losses", [
    (),
    pytest.param(("loss.l1=0.5", "loss.min_snr_gamma=5", "diffusion.prediction=v", "model.dropout=0.1"),
                 id="l1-minsnr-v-dropout"),
    # The Sobel kernel, the grey weights and the SSIM window are built once per device
    # (xurdif/diffusion/losses.py), not copied from the host on every call as kornia and
    # pytorch_msssim did; tests/test_op_count.py checks the same on the CPU.
    pytest.param(("loss.edge_l1=0.5", "loss.ssim=0.2"), id="image-losses"),
])
def test_no_host_sync_on_ordinary_steps(tmp_path, losses):
    """torch.cuda.set_sync_debug_mode("error") turns every host sync into an exception."""
    from accelerate.state import AcceleratorState

    from xurdif.recipe import load_recipe
    from xurdif.train.loop import Trainer, make_accelerator
    from xurdif.train.outputs import RunOutputs

    AcceleratorState._reset_state(True)
    recipe = load_recipe(RECIPE, [f"train.output_dir={tmp_path / 'run'}", "train.mixed_precision=bf16",
                                  "log.every_steps=1000", "train.steps=1000", "train.grad_accum=2", *FAST, *losses])
    acc = make_accelerator(recipe)
    trainer = Trainer(recipe, acc, RunOutputs(recipe, recipe.run_dir, True))
    for _ in range(2):  # first steps: lazy initialisation, optimizer state, cudnn autotuning
        trainer.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert trainer.clock.step == 5


def test_cuda_graphs_replay_the_training_step(tmp_path):
    """train.compile: reduce-overhead: inductor's cudagraph trees replay the network's forward
    and backward (no step skips them: no CPU tensor, no input mutation), and training goes on
    as eagerly (issue 33)."""
    from accelerate.state import AcceleratorState

    from xurdif.recipe import load_recipe
    from xurdif.train.loop import Trainer, make_accelerator
    from xurdif.train.outputs import RunOutputs

    counters = torch._dynamo.utils.counters
    counters.clear()
    torch._dynamo.reset()
    AcceleratorState._reset_state(True)
    recipe = load_recipe(RECIPE, [f"train.output_dir={tmp_path / 'run'}", "train.mixed_precision=bf16",
                                  "train.compile=reduce-overhead", "log.every_steps=1000", "train.steps=1000",
                                  "loss.edge_l1=0.5", "loss.ssim=0.2", *FAST])
    acc = make_accelerator(recipe)
    trainer = Trainer(recipe, acc, RunOutputs(recipe, recipe.run_dir, True))
    assert trainer.model.graphs
    losses = [trainer.step()["total"].item() for _ in range(40)]
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert all(v == v for v in losses) and sum(losses[-10:]) < sum(losses[:10]), losses
