"""The model card: README.md beside a run's exported model.safetensors, with the YAML front
matter the Hugging Face Hub reads, the last sample grid, the measured quality, how to render
and the recipe. Written from what the run already has: no network, no extra measurement."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..report.data import Series
from ..report.html import duration
from ..report.svg import fmt
from ..weights import ModelMeta
from . import facts

CARD = "README.md"
TAGS = ["diffusion", "unconditional-image-generation", "xurdif"]


def front_matter(meta: ModelMeta, recipe: dict) -> dict:
    """library_name, tags, license (when the recipe sets model.license), base_model (its parents)."""
    fm: dict = {"library_name": "xurdif", "tags": list(TAGS)}
    licence = (recipe.get("model") or {}).get("license") or ""
    if licence:
        fm["license"] = str(licence)
    parents = facts.parents(meta, recipe)
    if parents:
        fm["base_model"] = parents[0] if len(parents) == 1 else parents
    return fm


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
    head = yaml.safe_dump(front_matter(meta, recipe), sort_keys=False)
    picture = (f"![Sample grid at step {grid[0]}]({grid[1].relative_to(run_dir).as_posix()})"
               if grid is not None else "No sample grid yet.")
    return "\n".join([
        "---", head.rstrip(), "---", "", f"# {name}", "",
        "An unconditional image diffusion model trained with xurdif: load it with xurdif, not diffusers.", "",
        f"Lineage: {facts.lineage(meta, facts.parents(meta, recipe))}.", "", picture, "",
        "## Training", "", *training_lines(meta, recipe), "",
        "## Quality", "", *quality_lines(meta, scalars or {}), "",
        "## Render", "", "```bash", facts.render_command("model.safetensors"),
        "xurdif-sample model.safetensors --prompt sample --n 16 --sampler dpmpp_2m --steps 20 -o out", "```", "",
        "The model file records its own sampler; `--sampler` and `--steps` override it.", "",
        "## Recipe", "", "```yaml", (meta.recipe or "# not recorded").rstrip(), "```", "",
    ])
