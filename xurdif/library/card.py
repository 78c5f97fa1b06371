"""The model card: README.md beside a run's exported model.safetensors, with the YAML front
matter the Hugging Face Hub reads, the last sample grid, the measured quality, how to render
and the recipe. Written from what the run already has: no network, no extra measurement."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..report.data import Series
from ..report.html import duration
from ..report.svg import fmt
from ..weights import ModelMeta
from . import facts

CARD = "README.md"
TAGS = ["diffusion", "unconditional-image-generation", "xurdif"]
# A Hugging Face Hub model id: "owner/name", nothing more.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_id(value: str, run_dir: Path | None = None) -> bool:
    """Whether a parent is named as a Hub model id ("owner/name"), not a local file: the Hub
    rejects a base_model that is a path. A model file (.safetensors) or a path that exists
    here (or in the run folder) is local, even when it looks like owner/name."""
    if not HUB_ID.fullmatch(value) or value.lower().endswith(".safetensors"):
        return False
    return not any((root / value).exists() for root in ([Path.cwd()] + ([Path(run_dir)] if run_dir else [])))


def front_matter(meta: ModelMeta, recipe: dict, run_dir: Path | None = None) -> dict:
    """library_name, tags, license (when the recipe sets model.license), base_model (its
    parents that are Hub model ids; local parents are listed in the card's body)."""
    fm: dict = {"library_name": "xurdif", "tags": list(TAGS)}
    licence = (recipe.get("model") or {}).get("license") or ""
    if licence:
        fm["license"] = str(licence)
    hub = [p for p in facts.parents(meta, recipe) if is_hub_id(p, run_dir)]
    if hub:
        fm["base_model"] = hub[0] if len(hub) == 1 else hub
    return fm


def parent_lines(meta: ModelMeta, recipe: dict, run_dir: Path | None = None) -> list[str]:
    """The card's Parents section: each parent with its merge weight, local or on the Hub."""
    if facts.is_merge(meta):
        named = [(str(p.get("file", "?")), f", merge weight {p.get('weight', 0):g}") for p in facts.merge_parents(meta)]
    else:
        named = [(p, "") for p in facts.parents(meta, recipe)]
    if not named:
        return []
    lines = [f"- `{p}`{w} ({'Hugging Face Hub' if is_hub_id(p, run_dir) else 'local file'})" for p, w in named]
    return ["## Parents", "", *lines, ""]


def quality_lines(meta: ModelMeta, scalars: Series) -> list[str]:
    q = facts.file_quality(meta) or facts.latest_quality(scalars)
    if not q:
        return ["Not measured in training (set `eval.time_share` or `eval.kid_every_steps`)."]
    lines = [f"- KID {fmt(q['kid'])} at step {q.get('step', '?')} (in training, on EMA samples)"]
    if q.get("memorised") is not None:
        lines.append(f"- memorised share {q['memorised']:.1%} (samples nearer one training image than a third "
                     "of the distance to the next)")
    return lines


def training_lines(meta: ModelMeta, recipe: dict) -> list[str]:
    t = facts.training(meta)
    data = facts.data_source(recipe) or "unknown"
    images = f", {t['images']:,} images" if t.get("images") is not None else ""
    seen = f"{n:,}" if (n := facts.images_seen(meta)) is not None else "unknown"
    took = duration(t["seconds"]) if t.get("seconds") is not None else "unknown"
    return [f"- data: `{data}`{images}", f"- images seen: {seen}, training time {took}",
            f"- prediction: {meta.prediction}, preset {(recipe.get('model') or {}).get('preset', 'unknown')}, "
            f"{meta.image_size[1]}x{meta.image_size[0]} px"]


def model_card(meta: ModelMeta, name: str, run_dir: Path | None = None, scalars: Series | None = None) -> str:
    """The README.md text for the model file `model.safetensors` in `run_dir`."""
    recipe = facts.recipe_dict(meta, run_dir)
    grid = facts.last_grid(run_dir)
    head = yaml.safe_dump(front_matter(meta, recipe, run_dir), sort_keys=False)
    picture = (f"![Sample grid at step {grid[0]}]({grid[1].relative_to(run_dir).as_posix()})"
               if grid is not None else "No sample grid yet.")
    return "\n".join([
        "---", head.rstrip(), "---", "", f"# {name}", "",
        "An unconditional image diffusion model trained with xurdif: load it with xurdif, not diffusers.", "",
        f"Lineage: {facts.lineage(meta, facts.parents(meta, recipe))}.", "", picture, "",
        *parent_lines(meta, recipe, run_dir),
        "## Training", "", *training_lines(meta, recipe), "",
        "## Quality", "", *quality_lines(meta, scalars or {}), "",
        "## Render", "", "```bash", facts.render_command("model.safetensors"),
        "xurdif-sample model.safetensors --prompt sample --n 16 --sampler dpmpp_2m --steps 20 -o out", "```", "",
        "The model file records its own sampler; `--sampler` and `--steps` override it.", "",
        "## Recipe", "", "```yaml", (meta.recipe or "# not recorded").rstrip(), "```", "",
    ])
