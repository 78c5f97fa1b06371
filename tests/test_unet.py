import json

import pytest
import torch

from xurdif.models import build_network
from xurdif.models.unet import PRESETS, UNet, timestep_embedding, unet_config

TINY = {"base_width": 8, "mults": [1, 2, 2], "head_dim": 8, "norm_groups": 4}


def tiny_net(**overrides) -> UNet:
    torch.manual_seed(0)
    net = UNet(**{**TINY, **overrides})
    # The last convs start at zero (identity blocks, zero output); give them weights
    # so that the tests see every path of the network.
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("patch", [1, 2])
@pytest.mark.parametrize("h,w", [(16, 16), (37, 50), (24, 40), (1, 3), (9, 4)])
def test_output_shape_matches_input(h, w, patch):
    net = tiny_net(patch_size=patch).eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        out = net(x, torch.tensor([3, 900]))
    assert out.shape == (2, 3, h, w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("patch", [1, 2])
def test_odd_size_crops_the_padded_result(patch):
    # The crop must keep the top-left region that holds the real image: a replicate-
    # padded 16x16 input cropped back must match the network run on the full 16x16.
    net = tiny_net(patch_size=patch).eval()
    x = torch.randn(1, 3, 13, 15)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 3), mode="replicate")
    t = torch.tensor([42])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), net(padded, t)[:, :, :13, :15])


def test_in_and_out_channels():
    net = tiny_net(in_channels=1, out_channels=2).eval()
    with torch.no_grad():
        assert net(torch.randn(3, 1, 8, 12), torch.zeros(3, dtype=torch.long)).shape == (3, 2, 8, 12)


@pytest.mark.parametrize("patch", [1, 2])
def test_gradients_reach_every_parameter(patch):
    net = tiny_net(attn_levels=[0, 1, 2], blocks_per_level=2, patch_size=patch)
    net(torch.randn(2, 3, 12, 20), torch.tensor([5, 500])).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_fresh_network_outputs_zero():
    # Zero-initialised output conv: an untrained model predicts zero, a stable start.
    net = UNet(**TINY)
    assert net(torch.randn(1, 3, 16, 16), torch.tensor([7])).abs().max().item() == 0.0


def test_timestep_changes_output():
    net = tiny_net().eval()
    x = torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 10, 999]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[1] - out[2]).abs().max() > 1e-4


def test_float_and_long_timesteps_agree():
    net = tiny_net().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.tensor([3, 700])), net(x, torch.tensor([3.0, 700.0])))


def test_eval_mode_is_deterministic_and_batch_independent():
    net = tiny_net(dropout=0.5).eval()
    x = torch.randn(3, 3, 16, 24)
    t = torch.tensor([1, 2, 3])
    with torch.no_grad():
        a, b = net(x, t), net(x, t)
        single = net(x[1:2], t[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:2], single, rtol=1e-4, atol=1e-5)


def test_dropout_is_active_in_training_mode():
    net = tiny_net(dropout=0.5).train()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([9])
    assert not torch.equal(net(x, t), net(x, t))


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    # t = 0: cos terms 1, sin terms 0; lowest frequency is 1, so emb[1, 0] = cos(5).
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb[1, 0].item() == pytest.approx(torch.cos(torch.tensor(5.0)).item())


def test_unet_config_applies_overrides_and_ignores_none():
    cfg = unet_config("small", base_width=56, dropout=None, attn_levels=[3])
    assert cfg["base_width"] == 56
    assert cfg["attn_levels"] == [3]
    assert "dropout" not in cfg  # None means "keep the preset's (default) value"
    # The config is stored as JSON in model files and rebuilt from it.
    assert json.loads(json.dumps(cfg)) == cfg
    # Overriding must not change the preset table itself.
    assert unet_config("small")["base_width"] == PRESETS["small"]["base_width"] != 56


def test_unet_config_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown U-Net preset 'huge'.*tiny, small, base, large"):
        unet_config("huge")


def test_bad_attention_level_is_rejected():
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(**{**TINY, "attn_levels": [3]})


def test_attention_heads_split_channels_evenly():
    # 24 channels with head_dim 10 -> 2 heads; 44 with head_dim 32 -> 1 head; 176 -> 4.
    net = UNet(base_width=24, mults=[1, 2], head_dim=10, norm_groups=4, attn_levels=[0])
    assert net.down_attn[0].heads == 2
    for ch, heads in [(44, 1), (176, 4)]:
        assert UNet(base_width=ch, mults=[1], head_dim=32, norm_groups=4).down_attn[0].heads == heads


def test_patch_size_folds_pixels_into_channels():
    net = UNet(**{**TINY, "patch_size": 2})
    assert net.stem.in_channels == 12 and net.out.out_channels == 12
    assert net.factor == 8  # 2x2 patches, then two halvings


def test_default_attention_at_two_lowest_resolutions():
    net = UNet(base_width=8, mults=[1, 2, 2, 2], norm_groups=4, head_dim=8)
    assert net.attn_levels == [2, 3]


@pytest.mark.parametrize("preset,count", [
    ("tiny", 2_309_676), ("small", 11_653_148), ("base", 33_718_755), ("large", 89_826_947),
])
def test_presets_build_with_exact_size(preset, count):
    # Exact counts: any change to a preset or to the block structure shows here (and
    # changes what existing model files load into). Built on the meta device: no memory.
    with torch.device("meta"):
        net = build_network("xurdif_unet", unet_config(preset))
        with_aug = build_network("xurdif_unet", unet_config(preset, aug_dim=9))
    params = sum(p.numel() for p in net.parameters())
    assert params == count, f"{preset}: {params:,} parameters"
    # aug_dim adds one bias-free projection of the augmentation labels to base_width.
    assert sum(p.numel() for p in with_aug.parameters()) - params == 9 * PRESETS[preset]["base_width"]


def test_rebuilt_from_config_matches():
    cfg = {**TINY, "blocks_per_level": 2}
    a = UNet(**cfg)
    b = UNet(**json.loads(json.dumps(cfg)))
    b.load_state_dict(a.state_dict(), strict=True)


@pytest.mark.parametrize("preset,low,high", [("tiny", 0.3, 0.65), ("small", 2.0, 2.3)])
def test_cpu_presets_cost(preset, low, high):
    # "small" is priced like xurdif's own network (2.15 GFLOP per 64 px image).
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = UNet(**unet_config(preset))
        x, t = torch.empty(1, 3, 64, 64), torch.zeros(1)
    with FlopCounterMode(display=False) as counter:
        net(x, t)
    assert low <= counter.get_total_flops() / 1e9 <= high


def channels_first_attention(att, x: torch.Tensor) -> torch.Tensor:
    """The formulation before fused attention (q, k, v strided by h*w): the reference."""
    n, c, h, w = x.shape
    qkv = att.qkv(att.norm(x)).reshape(n, 3, att.heads, c // att.heads, h * w)
    q, k, v = qkv.transpose(-1, -2).unbind(1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return x + att.proj(out.transpose(-1, -2).reshape(n, c, h, w))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_attention_feeds_sdpa_contiguous_heads_and_matches_reference(monkeypatch, layout):
    from xurdif.models.unet import Attention

    torch.manual_seed(0)
    att = Attention(64, head_dim=16, groups=8)
    with torch.no_grad():
        att.proj.weight.normal_(0, 0.2)
        att.proj.bias.normal_(0, 0.2)
    x = torch.randn(2, 64, 6, 10)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.shape, q.stride(-1), k.stride(-1), v.stride(-1)))
        return real(q, k, v, *args, **kwargs)

    with torch.no_grad():
        expected = channels_first_attention(att, x)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        out = att(x)
    # Only the module's call was spied: [n, heads, tokens, head_dim], unit stride.
    assert seen == [(torch.Size([2, 4, 60, 16]), 1, 1, 1)]
    assert (out - expected).abs().max().item() < 1e-5
    assert (out - x).abs().max().item() > 0.1  # the attention path really contributed


def test_attention_parameter_names_and_shapes_unchanged():
    # Model files store these keys: the fused formulation must keep them.
    from xurdif.models.unet import Attention

    shapes = {k: tuple(v.shape) for k, v in Attention(64, head_dim=16, groups=8).state_dict().items()}
    assert shapes == {"norm.weight": (64,), "norm.bias": (64,), "qkv.weight": (192, 64, 1, 1),
                      "qkv.bias": (192,), "proj.weight": (64, 64, 1, 1), "proj.bias": (64,)}


def test_the_blocks_time_projections_are_one_matmul_equal_to_each_blocks_own():
    """UNet.time_projections: every ResBlock's scale and shift from one matmul over the blocks'
    weights side by side (one GPU launch, not one per block), equal to each block's own Linear;
    the weights stay in the blocks (model files keep their keys)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from op_count import OpCounter  # the project's operation counter (bench/op_count.py)

    torch.manual_seed(0)
    net = UNet(**unet_config("tiny"))
    emb = torch.randn(4, net.time_mlp[0].out_features)
    blocks = [*net.down, net.mid1, net.mid2, *net.up]
    with torch.no_grad():
        merged = net.time_projections(emb)
    assert len(merged) == len(blocks) == 10
    for got, blk in zip(merged, blocks):
        assert torch.allclose(got, blk.emb(emb), atol=1e-6, rtol=0)
    assert all(f"{name}.emb.weight" in net.state_dict() for name in ("down.0", "mid1", "up.3"))

    with OpCounter() as c:
        net.time_projections(emb)
    names = c.names()
    assert names["addmm"] + names["mm"] + names["bmm"] == 1
