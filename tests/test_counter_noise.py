"""Training noise from integer counters (draws "counter-1", issue 33): the whole batch in a
fixed number of operations, bit for bit the SplitMix64 stream it documents, normal, and a run
that started with the per-sample draws before it resumes with them."""
import sys
from pathlib import Path

import pytest
import torch

from xurdif.recipe import load_recipe
from xurdif.seeds import derive_seed
from xurdif.train import draws
from xurdif.train.state import RunState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from op_count import OpCounter  # noqa: E402  (bench/op_count.py: the step's operation counter)

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_normals(seed: int, p: int, size: int) -> list[float]:
    """draws.keyed_noise's numbers for position p, computed with Python integers and floats."""
    import math

    key = splitmix((derive_seed(seed, "noise", bits=64) + p * GOLDEN) & MASK)
    half = (size + 1) // 2
    cos, sin = [], []
    for j in range(half):
        h = splitmix((key + (j + 1) * GOLDEN) & MASK)
        u1 = ((h >> 40) + 0.5) * 2.0 ** -24
        u2 = ((h >> 16) & 0xFFFFFF) * 2.0 ** -24
        r = math.sqrt(-2 * math.log(u1))
        cos.append(r * math.cos(2 * math.pi * u2))
        sin.append(r * math.sin(2 * math.pi * u2))
    return (cos + sin)[:size]


def test_counter_noise_is_the_documented_stream():
    eps = draws.noise(11, range(1_000_000, 1_000_003), (3, 3, 3))  # 27 elements: odd, the last sine unused
    assert eps.shape == (3, 3, 3, 3) and eps.dtype == torch.float32
    for i in range(3):
        want = torch.tensor(reference_normals(11, 1_000_000 + i, 27))
        torch.testing.assert_close(eps[i].flatten(), want, rtol=0, atol=2e-5)  # float32 against float64


def test_counter_noise_is_standard_normal_and_independent():
    x = draws.noise(0, range(256), (3, 32, 32))
    f = x.flatten(1)
    assert abs(f.mean().item()) < 0.01 and abs(f.std().item() - 1) < 0.01
    assert abs((f ** 4).mean().item() - 3) < 0.05  # kurtosis of a normal
    assert abs((f.abs() > 2).float().mean().item() - 0.0455) < 0.003  # its two-sided tail
    # Neighbouring positions' samples (3,072 numbers each): correlations as of independent ones,
    # spread 1/sqrt(3,072) and none beyond 5 of that.
    corr = (torch.corrcoef(f[:64]) - torch.eye(64))[torch.triu_indices(64, 64, 1).unbind()]
    assert 0.9 < corr.square().mean().item() * f.shape[1] < 1.1 and corr.abs().max() < 5 / f.shape[1] ** 0.5
    half = f.shape[1] // 2
    for a, b in ((f[:, :-1], f[:, 1:]), (f[:, :half], f[:, half:])):  # neighbours; each cosine and its sine
        assert abs(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) < 0.01


def test_counter_noise_dispatches_as_many_operations_for_any_batch():
    counts = []
    for n in (4, 64):
        with OpCounter() as c:
            draws.noise(3, range(100, 100 + n), (3, 16, 16))
        counts.append(c.total())
    assert counts[0] == counts[1] <= 55
    with OpCounter() as c:
        draws.noise(3, range(100, 164), (3, 16, 16), version="device-noise-1")
    assert c.names()["normal_"] == 64  # what it replaced: one kernel per sample


def test_a_run_resumes_with_the_noise_draws_it_started_with(caplog):
    r = load_recipe("tests/recipes/fixture.yaml")
    assert RunState.fresh(r, 8, 1).noise_draws == draws.VERSION == "counter-1"
    for saved, kept, warned in (("device-noise-1", "device-noise-1", False), ("counter-1", "counter-1", False),
                                (None, "counter-1", True), ("counter-9", "counter-1", True)):
        now = RunState.fresh(r, 8, 1)
        caplog.clear()
        now.resume(RunState.from_dict({"global_batch": 8, "noise_draws": saved}), "ckpt")
        assert now.noise_draws == kept
        assert ("drew its noise differently" in caplog.text) == warned


@pytest.mark.slow
def test_compiled_noise_is_one_kernel_and_equals_eager():
    """With train.compile the batch's noise is one fused kernel (inductor's C++ here, a Triton
    kernel on a GPU), compiled once for every start position, and the same numbers."""
    import torch._inductor.metrics as metrics

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    metrics.reset()
    keyed = draws.compiled_keyed_noise()
    got = torch.cat([draws.noise(5, range(p, p + 4), (3, 8, 8), keyed=keyed) for p in (100, 104, 2**40)])
    want = torch.cat([draws.noise(5, range(p, p + 4), (3, 8, 8)) for p in (100, 104, 2**40)])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no recompile per step
    assert metrics.generated_kernel_count == 1
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)  # libm against inductor's vector maths


def test_the_trainer_draws_with_its_runs_version(tmp_path):
    """Trainer.micro_batch draws the noise its state records: counter-1 for a new run, the
    per-sample draws for a run resumed from a checkpoint that started with them."""
    from accelerate.state import AcceleratorState

    from xurdif.train.loop import Trainer, make_accelerator
    from xurdif.train.outputs import RunOutputs

    AcceleratorState._reset_state(True)
    recipe = load_recipe("tests/recipes/fixture.yaml", [f"train.output_dir={tmp_path}", "data.size=8"])
    trainer = Trainer(recipe, make_accelerator(recipe), RunOutputs(recipe, recipe.run_dir, True))
    n = recipe.train.batch_size
    for version in ("counter-1", "device-noise-1"):
        trainer.state.noise_draws = version
        eps = trainer.micro_batch(0).eps
        want = draws.noise(recipe.train.seed, range(n), tuple(eps.shape[1:]), "cpu", version)
        assert torch.equal(eps, want), version
