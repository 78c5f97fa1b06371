"""train.compile, train.channels_last and train.activation_checkpointing change how
the network runs, never what it computes."""
from pathlib import Path

import pytest
import torch

from xurdif.models.unet import ResBlock, UNet
from xurdif.recipe import TrainCfg, load_recipe
from xurdif.train.network import compile_network, set_activation_checkpointing, speed_layout

ROOT = Path(__file__).resolve().parent.parent
TINY = {"base_width": 8, "mults": [1, 2, 2], "head_dim": 8, "norm_groups": 4, "blocks_per_level": 2}


def tiny_net(**overrides) -> UNet:
    torch.manual_seed(0)
    net = UNet(**{**TINY, **overrides})
    with torch.no_grad():  # zero-initialised convs would hide most of the gradient paths
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return net


def grads(net: UNet, x: torch.Tensor, t: torch.Tensor, seed: int = 5) -> tuple[torch.Tensor, dict]:
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # dropout draws
    out = net(x, t)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def count_block_calls(monkeypatch) -> list[int]:
    # Patch the method, not a forward hook: the checkpoint's recomputation skips hooks.
    calls, forward = [0], ResBlock.forward

    def counted(self, *args):
        calls[0] += 1
        return forward(self, *args)

    monkeypatch.setattr(ResBlock, "forward", counted)
    return calls


@pytest.mark.parametrize("levels,recomputed", [([0], 4), ([2], 6), (True, 14)])
def test_checkpointed_gradients_equal_plain(monkeypatch, levels, recomputed):
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 800])
    plain = tiny_net(dropout=0.2)
    out_a, g_a = grads(plain, x, t)
    ck = tiny_net(dropout=0.2)
    ck.set_checkpointing(levels)
    calls = count_block_calls(monkeypatch)
    out_b, g_b = grads(ck, x, t)
    # 14 residual blocks (2 per level down and up, 2 in the middle, at the last level);
    # the checkpointed ones run a second time in backward.
    assert calls[0] == 14 + recomputed
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-5)
    assert g_a.keys() == g_b.keys()
    worst = max((g_a[n] - g_b[n]).abs().max().item() for n in g_a)
    assert worst < 1e-5


def test_checkpointing_is_off_in_eval_and_no_grad(monkeypatch):
    net = tiny_net()
    net.set_checkpointing(True)
    calls = count_block_calls(monkeypatch)
    with torch.no_grad():
        net(torch.randn(1, 3, 16, 16), torch.tensor([1]))
    assert calls[0] == 14


def test_checkpoint_level_out_of_range_is_a_clear_error():
    net = tiny_net()
    with pytest.raises(ValueError) as e:
        set_activation_checkpointing(net, [0, 3])
    assert str(e.value) == ("train.activation_checkpointing: activation checkpointing levels [3] out of range: "
                            "this U-Net has levels 0..2")


def test_recipe_keys_parse(tmp_path):
    r = load_recipe(ROOT / "tests" / "recipes" / "fixture.yaml",
                    ["train.activation_checkpointing=[0, 1]", "train.compile=true", "train.channels_last=true"])
    assert (r.train.activation_checkpointing, r.train.compile, r.train.channels_last) == ([0, 1], True, True)
    assert load_recipe(ROOT / "tests" / "recipes" / "fixture.yaml").train.activation_checkpointing is False
    with pytest.raises(ValueError, match="train.activation_checkpointing"):
        load_recipe(ROOT / "tests" / "recipes" / "fixture.yaml", ["train.activation_checkpointing=fast"])


def test_compile_modes_reach_torch_compile(monkeypatch):
    """train.compile: false, true ('default') or a torch.compile mode; 'reduce-overhead' marks
    each training iteration for the CUDA graphs it replays (on a CUDA device only)."""
    from xurdif.train.network import compile_mode, uses_cuda_graphs

    fixture = ROOT / "tests" / "recipes" / "fixture.yaml"
    assert load_recipe(fixture, ["train.compile=reduce-overhead"]).train.compile == "reduce-overhead"
    with pytest.raises(ValueError) as e:
        load_recipe(fixture, ["train.compile=fast"])
    assert "train.compile" in str(e.value) and "'reduce-overhead'" in str(e.value) and "true or false" in str(e.value)
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(kw))
    for value, mode, kwargs in ((False, None, None), (True, "default", {}),
                                ("reduce-overhead", "reduce-overhead", {"mode": "reduce-overhead"}),
                                ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs",
                                 {"mode": "max-autotune-no-cudagraphs"})):
        calls.clear()
        cfg = TrainCfg(compile=value)
        compile_network(tiny_net(), cfg)
        assert compile_mode(cfg) == mode and calls == ([] if kwargs is None else [kwargs])
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert uses_cuda_graphs(TrainCfg(compile="reduce-overhead"), cuda)
    assert not uses_cuda_graphs(TrainCfg(compile="reduce-overhead"), cpu)
    assert not uses_cuda_graphs(TrainCfg(compile=True), cuda)


def test_channels_last_keeps_outputs_and_state_dict_keys():
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 800])
    net = tiny_net().eval()
    with torch.no_grad():
        ref = net(x, t)
    keys = list(net.state_dict())
    cl = speed_layout(net, TrainCfg(channels_last=True, activation_checkpointing=[1]))
    assert cl.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(cl.state_dict()) == keys and cl.checkpoint_levels == {1}
    with torch.no_grad():
        torch.testing.assert_close(cl(x, t), ref, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compiled_matches_eager():
    # aot_eager traces the network through dynamo and AOTAutograd (graph breaks, the
    # traced backward, functionalisation) without inductor's C++ build, which took
    # minutes on a shared 2-core CPU; tests/test_cuda.py compiles with inductor on a GPU.
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 800])
    eager = tiny_net(mults=[1, 2], blocks_per_level=1)
    out_a, g_a = grads(eager, x, t)
    compiled = tiny_net(mults=[1, 2], blocks_per_level=1)
    keys = list(compiled.state_dict())
    counts = torch._dynamo.utils.counters
    counts.clear()
    compile_network(compiled, TrainCfg(compile=True), backend="aot_eager", fullgraph=True)
    out_b, g_b = grads(compiled, x, t)
    assert list(compiled.state_dict()) == keys  # model files keep their key names
    assert counts["stats"]["unique_graphs"] == 1  # really traced: one graph, no breaks (fullgraph)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-4)
    worst = max((g_a[n] - g_b[n]).abs().max().item() for n in g_a)
    assert worst < 1e-4


def test_trainer_applies_switches_and_keeps_the_result(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import xurdif.models.unet as unet_module

    from xurdif.train.cli import main as launch_main

    recipe = str(ROOT / "tests" / "recipes" / "fixture.yaml")
    fast = ["train.steps=3", "checkpoint.every_steps=100", "samples.n=1", "samples.steps=1", "data.size=8"]
    runs = {"plain": [], "checkpointed": ["train.activation_checkpointing=true"],
            "channels_last": ["train.channels_last=true"]}
    weights, checkpointed = {}, []
    real = unet_module.checkpoint
    monkeypatch.setattr(unet_module, "checkpoint", lambda *a, **k: checkpointed.append(1) or real(*a, **k))
    for name, extra in runs.items():
        checkpointed.clear()
        assert launch_main([recipe, f"train.output_dir={tmp_path / name}", *extra, *fast]) == 0
        weights[name] = load_file(tmp_path / name / "model.safetensors")
        # fixture net: 2 levels x (1 down + 1 up) + 1 mid call, per step
        assert len(checkpointed) == (5 * 3 if name == "checkpointed" else 0), name
    a, b = weights["plain"], weights["checkpointed"]
    assert a.keys() == b.keys() == weights["channels_last"].keys()
    # Recomputation repeats the same kernels: the same run, bit for bit.
    assert all(torch.equal(a[k], b[k]) for k in a)
    # channels_last picks other convolution kernels (last bits differ, and AdamW's
    # normalised steps amplify that): the same run only approximately. Measured against
    # what training moved (3 AdamW steps move a weight by ~3 lr, so an absolute bound
    # would pass for any run from these weights): the same updates, nearly.
    from xurdif.recipe import load_recipe
    from xurdif.seeds import derive_seed
    from xurdif.train.network import build_for_recipe

    r = load_recipe(recipe, [f"train.output_dir={tmp_path / 'plain'}", *fast])
    torch.manual_seed(derive_seed(r.train.seed, "init"))  # as the Trainer builds its network
    init = {f"model.{k}": v for k, v in build_for_recipe(r)[0].state_dict().items()}
    c = weights["channels_last"]
    keys = [k for k in a if k in init and a[k].is_floating_point()]
    moved = torch.cat([(a[k] - init[k]).flatten() for k in keys])
    apart = torch.cat([(a[k] - c[k]).flatten() for k in keys])
    # Training moved the weights, a few lr at most: the init is the Trainer's.
    assert 1e-3 < moved.abs().max() < 0.05, moved.abs().max()
    assert apart.norm() < 0.1 * moved.norm(), (apart.norm(), moved.norm())


@pytest.mark.slow
def test_trainer_compiles_loss_and_network_as_one_graph(tmp_path, monkeypatch):
    """One process: train.compile traces the step's forward (the batch in, loss terms of
    edge-L1 + SSIM and the augmented network out) as one graph with no break (fullgraph), and
    the batch's noise as another, and trains as eagerly. aot_eager stands in for inductor (whose C++ build takes minutes here)."""
    from accelerate.state import AcceleratorState

    from xurdif.recipe import load_recipe
    from xurdif.train.loop import Trainer, make_accelerator
    from xurdif.train.outputs import RunOutputs

    real, calls = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or real(
        fn, backend="aot_eager", fullgraph=True, dynamic=kw.get("dynamic")))
    weights = {}
    for name, value in (("eager", "false"), ("compiled", "true")):
        AcceleratorState._reset_state(True)
        recipe = load_recipe(ROOT / "tests" / "recipes" / "fixture.yaml", [
            f"train.output_dir={tmp_path / name}", f"train.compile={value}", "data.size=16", "train.steps=100",
            "loss.edge_l1=0.5", "loss.ssim=0.2", "augment.p=0.5", "log.every_steps=100"])
        trainer = Trainer(recipe, make_accelerator(recipe), RunOutputs(recipe, recipe.run_dir, True))
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        for _ in range(3):
            trainer.step()
        net = trainer.model.acc.unwrap_model(trainer.model.net)
        assert getattr(net, "_compiled_call_impl", None) is None  # the network is not compiled on its own
        weights[name] = {k: v.clone() for k, v in net.state_dict().items()}
    assert calls == [{}, {"dynamic": True}]  # true: the default mode; the noise (xurdif.train.draws) too
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # forward and noise: no recompile
    a, b = weights["eager"], weights["compiled"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst
