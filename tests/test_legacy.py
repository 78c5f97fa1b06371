"""Importing urdiffusion / xurdif checkpoints: legacy checkpoints are built the
way the original trainers save them, imported through the CLI entry point, and
the imported networks must compute exactly what the originals' weights compute."""
from __future__ import annotations

import argparse
import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xurdif.diffusion.denoiser import Denoiser
from xurdif.diffusion.schedule import make_schedule
from xurdif.legacy_import import SCHEDULE_BUFFERS, main
from xurdif.models.legacy import TinyUNetWithAttention3, Unet0, Unet1, Unet2, UnetCN0
from xurdif.weights import load_network

ROOT = Path(__file__).resolve().parents[1]
# Genuine checkpoints written by urdiffusion's own trainer (see its README).
GENUINE = ROOT.parent / "shared" / "legacy"
SUPPORTED_LIST = "tinyunet_with_attention3, unet0, unet1, unet2, unetcn0"


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def original_schedule_buffers(T: int) -> dict[str, torch.Tensor]:
    """The 12 buffers of urdiffusion's GaussianDiffusion, computed as it does (float32)."""
    s, steps = 0.008, T + 1
    x = torch.linspace(0, T, steps)
    ac = torch.cos(((x / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = torch.clip(1 - ac[1:] / ac[:-1], 0, 0.999)
    alphas = 1 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = F.pad(ac[:-1], (1, 0), value=1.0)
    post_var = betas * (1 - ac_prev) / (1 - ac)
    bufs = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - ac).log(), "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(), "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * alphas.sqrt() / (1 - ac),
    }
    assert set(bufs) == set(SCHEDULE_BUFFERS)
    return bufs


def wrapper_state(net: torch.nn.Module, T: int) -> dict[str, torch.Tensor]:
    """A diffusion wrapper's state dict: network under `denoise_fn.` plus schedule buffers."""
    state = {f"denoise_fn.{k}": v.clone() for k, v in net.state_dict().items()}
    state.update(original_schedule_buffers(T))
    return state


def perturbed_copy(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    other = type(net)(**net.cfg)
    other.cfg = net.cfg
    other.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return other.eval()


def make_net(cls, seed: int, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = cls(**cfg).eval()
    net.cfg = cfg
    return net


def legacy_checkpoint(net, ema, mtype: str, T: int = 1000, pred: str | None = None, **extra) -> dict:
    ckpt = {
        "step": 1200,
        "model": wrapper_state(net, T),
        "ema": wrapper_state(ema, T),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                   "growth_interval": 2000, "_growth_tracker": 0},
        "mults": list(net.cfg["dim_mults"]),
        "mtype": mtype,
    }
    if pred is not None:  # urdiffusion checkpoints have no 'pred' at all
        ckpt["pred"] = pred
    ckpt.update(extra)
    return ckpt


@pytest.fixture(scope="module")
def tiny():
    net = make_net(TinyUNetWithAttention3, 0, dim=16, dim_mults=[1, 2])
    return net, perturbed_copy(net, 1)


@pytest.fixture(scope="module")
def unet2():
    net = make_net(Unet2, 2, dim=16, dim_mults=[1, 2])
    return net, perturbed_copy(net, 3)


def run_import(tmp_path: Path, ckpt: dict, *args: str) -> Path:
    src, out = tmp_path / "model-12.pt", tmp_path / "legacy.safetensors"
    torch.save(ckpt, src)
    assert main([str(src), "--out", str(out), *args]) == 0
    return out


def import_error(tmp_path: Path, ckpt: dict, *args: str) -> str:
    src, out = tmp_path / "model-12.pt", tmp_path / "legacy.safetensors"
    torch.save(ckpt, src)
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", str(out), *args])
    assert not out.exists()
    return str(e.value.code)


# --- the networks match the originals' sizes ---------------------------------

def test_parameter_counts_match_the_originals():
    tiny = TinyUNetWithAttention3(dim=64, dim_mults=[1, 2, 2, 2])
    assert n_params(tiny) == 3_759_043  # "3.76 M parameters with 1 2 2 2"
    assert len(tiny.state_dict()) == 72
    big = Unet2(dim=64, dim_mults=[1, 1, 2, 2, 4, 4, 8, 8])
    assert n_params(big) == 75_668_099  # urdiffusion's default, 75.7 M
    keys = big.state_dict()
    assert len(keys) == 527
    # a few of the originals' key paths: Residual(PreNorm(LinearAttention)), time_mlp with the
    # embedding at index 0, Identity instead of the last Downsample
    assert keys["downs.0.2.fn.fn.to_out.1.g"].shape == (1, 64, 1, 1)
    assert keys["mid_attn.fn.fn.to_qkv.weight"].shape == (384, 512, 1, 1)
    assert keys["time_mlp.1.weight"].shape == (256, 64)
    assert "downs.7.3.weight" not in keys and keys["downs.6.3.weight"].shape == (512, 512, 4, 4)


def test_networks_take_integer_timesteps_and_keep_shape(tiny, unet2):
    x = torch.rand(2, 3, 16, 16) - 0.5
    for net in (tiny[0], unet2[0]):
        with torch.no_grad():
            out_long = net(x, torch.tensor([0, 999]))
            out_float = net(x, torch.tensor([0.0, 999.0]))
        assert out_long.shape == x.shape
        assert torch.equal(out_long, out_float)


# --- import round trip ---------------------------------------------------------

@pytest.mark.parametrize("case", [
    # (fixture, mtype, T, stored pred, expected prediction, --size)
    ("tiny", "tinyunet_with_attention3", 1000, "x0", "x0", None),
    ("unet2", "unet2", 250, None, "eps", "256"),
])
def test_import_reproduces_model_and_ema_outputs(case, tmp_path, request):
    fixture, mtype, T, pred, expected_pred, size = case
    net, ema = request.getfixturevalue(fixture)
    args = ("--size", size) if size else ()
    out = run_import(tmp_path, legacy_checkpoint(net, ema, mtype, T=T, pred=pred), *args)

    x = torch.rand(2, 3, 16, 16) - 0.5
    t = torch.tensor([17, T - 1])
    outputs = {}
    for weights, original in (("model", net), ("ema", ema)):
        imported, meta = load_network(out, weights=weights)
        with torch.no_grad():
            got, want = imported(x, t), original(x, t)
        assert torch.equal(got, want), weights
        outputs[weights] = got
    assert not torch.allclose(outputs["model"], outputs["ema"])  # the two sets were kept apart

    assert meta.architecture == mtype
    assert meta.net_config == {"dim": 16, "dim_mults": [1, 2]}
    assert meta.schedule == "cosine_urdiffusion" and meta.timesteps == T
    assert meta.prediction == expected_pred
    assert meta.value_range == (-0.5, 0.5)
    assert meta.image_size == ((int(size), int(size)) if size else (512, 512))
    assert meta.source == "imported from model-12.pt"
    assert meta.extra["legacy_step"] == 1200


def test_imported_schedule_is_the_one_the_checkpoint_was_trained_with(tiny, tmp_path):
    for T in (1000, 250):
        out = run_import(tmp_path, legacy_checkpoint(*tiny, "tinyunet_with_attention3", T=T))
        _, meta = load_network(out)
        ours = make_schedule(meta.schedule, meta.timesteps).alphas_cumprod.float()
        theirs = original_schedule_buffers(T)["alphas_cumprod"]
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)


def test_denoiser_reads_imported_models_in_their_own_range(unet2, tmp_path):
    out = run_import(tmp_path, legacy_checkpoint(*unet2, "unet2", pred="eps"))
    net, meta = load_network(out)
    den = Denoiser(net, make_schedule(meta.schedule, meta.timesteps), meta.prediction, meta.value_range)
    img = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1)
    assert torch.equal(den.to_model(img).flatten(), torch.tensor([-0.5, -0.25, 0.5]))
    assert torch.equal(den.to_image(torch.tensor([-0.5, 0.0, 0.5])), torch.tensor([0.0, 0.5, 1.0]))

    # x0 is the eps prediction converted with the file's own schedule, in model range
    x0 = den.to_model(torch.rand(1, 3, 16, 16))
    t = torch.tensor([300])
    ab = make_schedule("cosine_urdiffusion", 1000).ab(t)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn_like(x0)
    with torch.no_grad():
        eps = unet2[1](x_t, t)  # the original EMA network
        got = den(x_t, t)
    # ... clipped to the model's own range [-0.5, 0.5], not ours.
    torch.testing.assert_close(got, ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-0.5, 0.5))
    assert got.min() >= -0.5 and got.max() <= 0.5


def test_fp16_checkpoint_weights_import_as_float32(tiny, tmp_path):
    ckpt = legacy_checkpoint(*tiny, "tinyunet_with_attention3")
    ckpt["model"] = {k: v.half() if k.startswith("denoise_fn.") else v for k, v in ckpt["model"].items()}
    out = run_import(tmp_path, ckpt)
    net, _ = load_network(out, weights="model")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(net.init_conv.weight, tiny[0].init_conv.weight.half().float())


# --- errors ------------------------------------------------------------------

def test_unknown_architecture_lists_supported_ones(tiny, tmp_path):
    msg = import_error(tmp_path, legacy_checkpoint(*tiny, "unet3"))
    assert msg == (f"import_urdiffusion: {tmp_path / 'model-12.pt'}: unsupported architecture (mtype) 'unet3'; "
                   f"supported: {SUPPORTED_LIST}")


@pytest.mark.parametrize("mtype", ["unet0k5", "tinyunet", "tinyunet_with_attention", "unet2d"])
def test_never_published_architectures_say_so(mtype, tiny, tmp_path):
    msg = import_error(tmp_path, legacy_checkpoint(*tiny, mtype))
    assert msg == (f"import_urdiffusion: {tmp_path / 'model-12.pt'}: architecture (mtype) {mtype!r} was never "
                   f"published, so it cannot be imported; supported: {SUPPORTED_LIST}")


def test_missing_key_is_named(tiny, tmp_path):
    ckpt = legacy_checkpoint(*tiny, "tinyunet_with_attention3")
    del ckpt["ema"]["denoise_fn.mid_attn.proj.bias"]
    msg = import_error(tmp_path, ckpt)
    assert "missing key 'denoise_fn.mid_attn.proj.bias' in 'ema'" in msg


def test_unexpected_keys_are_named(unet2, tmp_path):
    ckpt = legacy_checkpoint(*unet2, "unet2")
    ckpt["model"]["denoise_fn.downs.0.2.fn.fn.extra.weight"] = torch.zeros(3)
    msg = import_error(tmp_path, ckpt)
    assert "unexpected key 'denoise_fn.downs.0.2.fn.fn.extra.weight' in 'model'" in msg

    ckpt = legacy_checkpoint(*unet2, "unet2")
    ckpt["ema"]["step_counter"] = torch.zeros(1)  # neither prefixed nor a schedule buffer
    assert "unexpected key 'step_counter' in 'ema'" in import_error(tmp_path, ckpt)


def test_wrong_mults_name_the_mismatched_key(tiny, tmp_path):
    ckpt = legacy_checkpoint(*tiny, "tinyunet_with_attention3", mults=[1, 4])
    msg = import_error(tmp_path, ckpt)
    assert "'denoise_fn.downs.1.0.conv.weight'" in msg and "(32, 16, 3, 3)" in msg and "(64, 16, 3, 3)" in msg


def test_unknown_prediction_is_rejected(tiny, tmp_path):
    msg = import_error(tmp_path, legacy_checkpoint(*tiny, "tinyunet_with_attention3", pred="v"))
    assert "unknown prediction 'pred' 'v'; valid: eps, x0" in msg


def test_missing_mults_can_be_given_on_the_command_line(tiny, tmp_path):
    ckpt = legacy_checkpoint(*tiny, "tinyunet_with_attention3")
    del ckpt["mults"]
    assert "no 'mults' stored" in import_error(tmp_path, ckpt)
    _, meta = load_network(run_import(tmp_path, ckpt, "--mults", "1", "2"))
    assert meta.net_config["dim_mults"] == [1, 2]


def test_pickled_objects_need_trust_pickle(tiny, tmp_path):
    # A trainer that saved its argparse options: weights_only loading refuses the class.
    ckpt = legacy_checkpoint(*tiny, "tinyunet_with_attention3",
                             opts=argparse.Namespace(mults=[1, 2], lr=4e-5))
    msg = import_error(tmp_path, ckpt)
    assert "\n" not in msg
    assert "need full unpickling" in msg
    assert "--trust-pickle" in msg

    out = run_import(tmp_path, ckpt, "--trust-pickle")
    net, _ = load_network(out)
    x, t = torch.rand(1, 3, 16, 16) - 0.5, torch.tensor([5])
    with torch.no_grad():
        assert torch.equal(net(x, t), tiny[1](x, t))


def test_not_a_checkpoint(tmp_path):
    assert "not an urdiffusion/xurdif checkpoint" in import_error(tmp_path, {"weights": torch.zeros(1)})
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit, match="cut.pt: not a readable torch checkpoint"):
        main([str(tmp_path / "cut.pt"), "--out", str(tmp_path / "x.safetensors")])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        main([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.safetensors")])


def test_command_line_tool_help(monkeypatch, capsys):
    # In-process run of the real script: checks the thin wrapper without a torch start-up.
    monkeypatch.setattr(sys, "argv", ["import_urdiffusion.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "tools" / "import_urdiffusion.py"), run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--trust-pickle" in out
    text = " ".join(out.split())  # argparse wraps the description
    assert f"Supported architectures (mtype): {SUPPORTED_LIST};" in text
    assert "unet0k5, tinyunet, tinyunet_with_attention, unet2d were never published" in text


def test_recipe_fine_tunes_an_imported_model(tiny, tmp_path):
    from xurdif.train.cli import main as launch_main
    from xurdif.weights import load_state, read_meta

    net, ema = tiny
    legacy = run_import(tmp_path, legacy_checkpoint(net, ema, "tinyunet_with_attention3", pred="x0"))
    out = tmp_path / "run"
    recipe = str(ROOT / "tests" / "recipes" / "fixture.yaml")
    common = [recipe, f"train.output_dir={out}", f"model.init_from={legacy}", "samples.n=1", "samples.steps=1",
              "log.tensorboard=false", "train.steps=2"]
    # lr 0: the run must start from (and keep) the imported EMA weights, in the legacy range.
    assert launch_main([*common, "optim.lr=0"]) == 0
    meta = read_meta(out / "model.safetensors")
    assert meta.architecture == "tinyunet_with_attention3" and meta.prediction == "x0"
    assert meta.value_range == (-0.5, 0.5) and meta.schedule == read_meta(legacy).schedule
    assert meta.source == f"fine-tuned from {legacy}"
    trained, imported = load_state(out / "model.safetensors", "model"), load_state(legacy, "ema")
    assert all(torch.equal(trained[k], imported[k]) for k in imported)
    # A real fine-tune moves the weights.
    assert launch_main([*common, "optim.lr=1e-3", f"train.output_dir={tmp_path / 'ft'}"]) == 0
    moved = load_state(tmp_path / "ft" / "model.safetensors", "model")
    assert any(not torch.equal(moved[k], imported[k]) for k in imported)


# --- urdiffusion's other architectures: genuine checkpoints -------------------

NEW_NETS = {"unet0": Unet0, "unet1": Unet1, "unetcn0": UnetCN0}


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict[str, Path]:
    """Each genuine checkpoint imported once through the command line, at its trained size 64."""
    if not GENUINE.is_dir():
        pytest.skip(f"{GENUINE} not found: the genuine urdiffusion checkpoints live in ../shared/legacy")
    out_dir = tmp_path_factory.mktemp("genuine")
    files = {}
    for mtype in NEW_NETS:
        files[mtype] = out_dir / f"{mtype}.safetensors"
        assert main([str(GENUINE / f"urdiffusion-{mtype}-small.pt"), "--out", str(files[mtype]), "--size", "64"]) == 0
    return files


@pytest.mark.parametrize("mtype", list(NEW_NETS))
def test_genuine_checkpoints_reproduce_the_original_networks(mtype, genuine):
    ref = torch.load(GENUINE / f"urdiffusion-{mtype}-small.ref.pt", weights_only=True)
    info = json.loads((GENUINE / f"urdiffusion-{mtype}-small.ref.json").read_text())
    for weights in ("model", "ema"):
        net, meta = load_network(genuine[mtype], weights=weights)
        with torch.no_grad():
            got = net.eval()(ref["x"], ref["t"])
        torch.testing.assert_close(got, ref[f"out_{weights}"], atol=1e-4, rtol=1e-4, msg=weights)
        # the other set is far off: model and EMA were not swapped or merged
        other = ref["out_ema" if weights == "model" else "out_model"]
        assert (got - other).abs().max() > 0.5
    assert n_params(net) == info["n_params"]
    assert len(net.state_dict()) + len(SCHEDULE_BUFFERS) == info["n_state_dict_entries"]
    assert meta.architecture == mtype and type(net) is NEW_NETS[mtype]
    assert meta.net_config == {"dim": 64, "dim_mults": [1, 2]}
    assert (meta.schedule, meta.timesteps, meta.prediction) == ("cosine_urdiffusion", 1000, "eps")
    assert meta.value_range == (-0.5, 0.5) and meta.image_size == (64, 64)
    assert meta.source == f"imported from urdiffusion-{mtype}-small.pt"


@pytest.mark.parametrize("mtype", list(NEW_NETS))
def test_other_mults_import_strictly(mtype, tmp_path):
    # Three levels and a non-doubling multiplier: nothing may assume the fixtures' [1, 2].
    net = make_net(NEW_NETS[mtype], 4, dim=32, dim_mults=[1, 1, 3])
    ema = perturbed_copy(net, 5)
    out = run_import(tmp_path, legacy_checkpoint(net, ema, mtype), "--size", "32")
    x, t = torch.rand(2, 3, 16, 16) - 0.5, torch.tensor([3, 999])
    for weights, original in (("model", net), ("ema", ema)):
        imported, meta = load_network(out, weights=weights)
        with torch.no_grad():
            assert torch.equal(imported(x, t), original(x, t)), weights
    assert meta.net_config == {"dim": 32, "dim_mults": [1, 1, 3]}
    # Read with the wrong mults, the first mismatched key (missing or misshapen) is named.
    (tmp_path / "wrong").mkdir()
    msg = import_error(tmp_path / "wrong", legacy_checkpoint(net, ema, mtype, mults=[1, 2, 3]))
    assert "'denoise_fn.downs.1." in msg and msg.endswith(("for " + mtype, "(32, 32, 3, 3)")), msg
    assert "\n" not in msg


@pytest.mark.parametrize("mtype", list(NEW_NETS))
def test_mults_the_original_could_not_run_are_one_line(mtype, tmp_path):
    net = make_net(NEW_NETS[mtype], 4, dim=32, dim_mults=[1, 2])
    msg = import_error(tmp_path, legacy_checkpoint(net, net, mtype, mults=[2, 2]))
    assert msg == (f"import_urdiffusion: {tmp_path / 'model-12.pt'}: {mtype}: dim_mults must start with 1 "
                   "(its final conv takes dim channels), got [2, 2]")


def test_imported_urdiffusion_models_render_with_sample_tool(genuine, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pictures = {}
    for mtype, model in genuine.items():
        for weights in ("ema", "model"):
            out = tmp_path / mtype / weights
            monkeypatch.setattr(sys, "argv", ["sample.py", str(model), "--prompt", "old friend", "--n", "2",
                                              "--seed", "7", "--steps", "3", "--size", "16x16", "--weights",
                                              weights, "-o", str(out), "--no-progress"])
            with pytest.raises(SystemExit) as e:
                runpy.run_path(str(ROOT / "tools" / "sample.py"), run_name="__main__")
            assert e.value.code in (0, None)
            files = sorted(out.glob("*/[0-9]*.png"))
            assert [f.name for f in files] == ["7.png", "8.png"]
            pictures[mtype, weights] = [np.asarray(Image.open(f).convert("RGB")) for f in files]
            assert all(p.shape == (16, 16, 3) and p.std() > 0 for p in pictures[mtype, weights])
        assert not np.array_equal(pictures[mtype, "ema"][0], pictures[mtype, "model"][0])
    assert not np.array_equal(pictures["unet0", "ema"][0], pictures["unetcn0", "ema"][0])


@pytest.mark.parametrize("mtype", list(NEW_NETS))
def test_recipe_fine_tunes_an_imported_urdiffusion_model(mtype, genuine, tmp_path):
    from xurdif.train.cli import main as launch_main
    from xurdif.weights import load_state, read_meta

    legacy = genuine[mtype]
    recipe = str(ROOT / "tests" / "recipes" / "fixture.yaml")
    common = [recipe, f"model.init_from={legacy}", "samples.n=1", "samples.steps=1", "log.tensorboard=false",
              "train.steps=2", "train.batch_size=2"]
    # lr 0: the run starts from (and keeps) the imported EMA weights, network and schedule.
    assert launch_main([*common, "optim.lr=0", f"train.output_dir={tmp_path / 'keep'}"]) == 0
    meta = read_meta(tmp_path / "keep" / "model.safetensors")
    assert meta.architecture == mtype and meta.prediction == "eps" and meta.value_range == (-0.5, 0.5)
    assert meta.schedule == "cosine_urdiffusion" and meta.net_config == read_meta(legacy).net_config
    kept, imported = load_state(tmp_path / "keep" / "model.safetensors", "model"), load_state(legacy, "ema")
    assert kept.keys() == imported.keys() and all(torch.equal(kept[k], imported[k]) for k in imported)
    assert launch_main([*common, "optim.lr=1e-3", f"train.output_dir={tmp_path / 'ft'}"]) == 0
    moved = load_state(tmp_path / "ft" / "model.safetensors", "model")
    assert any(not torch.equal(moved[k], imported[k]) for k in imported)
