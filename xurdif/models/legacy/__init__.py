"""Networks of xurdif (2025) and urdiffusion (2023), re-implemented so their
checkpoints load strictly: module and attribute names reproduce the originals'
state-dict keys and shapes exactly, and the forward passes do the same math.

All take (x, t) with x in [-0.5, 0.5] (their training range) and t the integer
timestep 0..T-1, unscaled, exactly as the originals receive it.
"""
from .tinyunet import TinyUNetWithAttention3
from .unet0 import Unet0
from .unet1 import Unet1
from .unet2 import Unet2
from .unetcn0 import UnetCN0

__all__ = ["TinyUNetWithAttention3", "Unet0", "Unet1", "Unet2", "UnetCN0"]
