"""xurdif.seeds: the one derivation of every seed."""
import pytest

from xurdif.seeds import derive_seed


def test_training_draws_keep_their_values():
    # The values of the 63-bit blake2b derivation training used before it moved to
    # xurdif/seeds.py: a change here changes every training run's draws.
    assert derive_seed(3, "noise", 5) == 774262932235107619
    assert derive_seed(0, "order", 2) == 944342164560434470


def test_bits_and_independent_purposes():
    seeds = [derive_seed(s, "render", k, bits=31) for s in range(50) for k in range(4)]
    assert all(0 <= s < 2**31 for s in seeds) and len(set(seeds)) == len(seeds)
    assert derive_seed(7, "render", 0, bits=31) == derive_seed(7, "render", 0) & (2**31 - 1)
    # Purposes of one seed do not overlap with neighbouring seeds (the trouble with seed + 1).
    assert len({derive_seed(1, "samples"), derive_seed(0, "kid"), derive_seed(0, "samples")}) == 3
    assert derive_seed(2**63 - 1) < 2**63 and derive_seed(1, bits=64) < 2**64


@pytest.mark.parametrize("bits", [0, 65])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=f"bits must be in 1..64, got {bits}"):
        derive_seed(1, bits=bits)
