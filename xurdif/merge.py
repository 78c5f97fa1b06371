"""xurdif-merge: interpolate the weights of models of one kind into a new model file.

    xurdif-merge A.safetensors B.safetensors --weight 0.3 -o C.safetensors   # 0.7 A + 0.3 B
    xurdif-merge A B C --weight 0.5 0.3 0.2 -o D.safetensors

Every tensor of the result is Σ_i w_i · tensor_i (computed in float64, stored in
the parents' dtype), so weight 0 and 1 give exactly A and B. Only models that
differ in nothing but their weights can be mixed: architecture, network config,
prediction type, schedule and value range must agree, or the merge is refused
with one line naming the difference. The result is a normal model file whose
metadata (`extra.merge`) records its parents, their hashes and weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from .weights import WEIGHTS, ModelMeta, inherited_extra, load_state, read_meta, save_model_file

USES = ("both",) + WEIGHTS  # which weight sets to merge


class MergeError(ValueError):
    """One line naming the models and what differs."""


def check_compatible(metas: list[ModelMeta], names: list[str]) -> None:
    """Refuse, naming the first difference, unless every model is of A's kind."""
    a, an = metas[0], names[0]
    for m, n in zip(metas[1:], names[1:]):
        for key, what in (("architecture", "architecture"), ("prediction", "prediction type"),
                          ("schedule", "schedule"), ("timesteps", "schedule length (timesteps)"),
                          ("value_range", "value range")):
            va, vb = getattr(a, key), getattr(m, key)
            if (list(va) if key == "value_range" else va) != (list(vb) if key == "value_range" else vb):
                raise MergeError(f"{n}: {what} is {_show(vb)}, {an}'s is {_show(va)}: "
                                 f"only models of the same {what} can be merged")
        if a.net_config != m.net_config:
            keys = sorted(set(a.net_config) | set(m.net_config))
            key = next(k for k in keys if a.net_config.get(k) != m.net_config.get(k))
            raise MergeError(f"{n}: network config {key} is {_show(m.net_config.get(key))}, {an}'s is "
                             f"{_show(a.net_config.get(key))}: only models of the same network config can be merged")


def _show(v) -> str:
    return repr(list(v)) if isinstance(v, tuple) else repr(v)


def resolve_weights(weights: list[float], n_models: int) -> list[float]:
    """One weight with two models is B's share; otherwise one weight per model, summing to 1."""
    if n_models < 2:
        raise MergeError(f"give at least two models to merge, got {n_models}")
    if len(weights) == 1 and n_models == 2:
        return [1.0 - weights[0], weights[0]]
    if len(weights) != n_models:
        raise MergeError(f"--weight: {len(weights)} weights for {n_models} models; give one per model "
                         "(or, with two models, one: B's share)")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise MergeError(f"--weight: the weights sum to {sum(weights):g}; they must sum to 1")
    return list(weights)


def interpolate(states: list[dict[str, torch.Tensor]], weights: list[float], names: list[str]
                ) -> dict[str, torch.Tensor]:
    """Σ_i w_i · state_i per tensor; non-float tensors (counters) must be equal and are kept."""
    first = states[0]
    for s, n in zip(states[1:], names[1:]):
        if set(s) != set(first):
            k = sorted(set(s) ^ set(first))[0]
            raise MergeError(f"{n}: tensor {k} is in only one of {names[0]} and {n}")
        for k, v in s.items():
            if v.shape != first[k].shape:
                raise MergeError(f"{n}: tensor {k} has shape {list(v.shape)}, {names[0]}'s {list(first[k].shape)}")
    out = {}
    for k, v in first.items():
        if not v.is_floating_point():
            for s, n in zip(states[1:], names[1:]):
                if not torch.equal(s[k], v):
                    raise MergeError(f"{n}: integer tensor {k} differs from {names[0]}'s and cannot be mixed")
            out[k] = v.clone()
            continue
        acc = torch.zeros(v.shape, dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += w * s[k].double()
        out[k] = acc.to(v.dtype)
    return out


def load_models(paths: list[str | Path]) -> tuple[list[ModelMeta], list[str]]:
    names = [str(p) for p in paths]
    metas = []
    for p in paths:
        if not Path(p).is_file():
            raise MergeError(f"{p}: model file not found")
        metas.append(read_meta(p))
    check_compatible(metas, names)
    return metas, names


def merged_state(paths: list[str | Path], weights: list[float], which: str) -> dict[str, torch.Tensor]:
    """One weight set (`ema` or `model`) of the models, mixed (models already checked)."""
    names = [str(p) for p in paths]
    return interpolate([load_state(p, which) for p in paths], weights, names)


def merge(paths: list[str | Path], weights: list[float], out: str | Path, use: str = "both") -> ModelMeta:
    """Write the merged model file; returns its metadata."""
    from .weights import model_sha256

    if use not in USES:
        raise MergeError(f"--use must be one of {', '.join(USES)}, got {use!r}")
    weights = resolve_weights(weights, len(paths))
    metas, names = load_models(paths)
    if use == "both":
        model = merged_state(paths, weights, "model")
        ema = merged_state(paths, weights, "ema")
    else:  # one set, written as the file's only weights
        model, ema = merged_state(paths, weights, use), None
    parents = [{"file": Path(p).name, "sha256": model_sha256(p), "weight": w} for p, w in zip(paths, weights)]
    meta = dataclasses.replace(
        metas[0], recipe="",
        source="merge of " + " + ".join(f"{w:g} x {Path(p).name}" for p, w in zip(paths, weights)),
        extra={**inherited_extra(metas[0].extra), "merge": {"parents": parents, "weights": use}})
    save_model_file(out, meta, model, ema)
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xurdif-merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="two or more .safetensors model files (or run folders)")
    p.add_argument("--weight", type=float, nargs="+", required=True,
                   help="with two models: B's share (0 = A, 1 = B); otherwise one weight per model, sum 1")
    p.add_argument("-o", "--out", required=True, help="the merged model file to write")
    p.add_argument("--use", choices=USES, default="both",
                   help="merge the EMA and raw weights each (both, default), or only ema / model")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = [Path(m) / "model.safetensors" if Path(m).is_dir() else Path(m) for m in args.models]
    try:
        meta = merge(paths, args.weight, args.out, args.use)
    except (MergeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {meta.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
