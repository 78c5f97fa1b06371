"""xurdif-studio: render interactively in the browser (gradio, on 127.0.0.1).

A render here is a job like a prompts-file line: checked by render.jobs.make_job,
rendered by render.run.render into OUT/<index>-<slug>/<seed>.png with the same
metadata and manifest line, then OUT/index.html is rebuilt. No second code path."""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .cli_args import int_in
from .diffusion.samplers import SAMPLERS
from .diffusion.spacing import SPACINGS
from .sampling.defaults import AUTO
from .render.gallery import write_gallery
from .render.jobs import Job, JobError, make_job
from .render.run import render
from .weights import read_meta, resolve_model_path

EPILOG = """\
examples:
  xurdif-studio                              # models under runs/, http://127.0.0.1:7860
  xurdif-studio --models ~/models --port 7861 --out out/studio"""
MESSAGE_ID = "studio-message"
WHERE = ("studio", 0)  # a job's origin: stripped from messages, the page is the context


def message(text: str) -> str:
    # make_job names the origin as "studio: " (no line) or "studio:N: "
    return re.sub(rf"\b{WHERE[0]}(:\d+)?: ", "", text)


@dataclass
class ModelEntry:
    path: Path
    label: str  # shown in the picker: path, size, prediction type, images seen


def list_models(models_dir: str | Path) -> list[ModelEntry]:
    """Every model file under the folder; files without xurdif metadata (a checkpoint's
    tensors, foreign safetensors) are not models and are left out."""
    root = Path(models_dir)
    out = []
    for p in sorted(root.rglob("*.safetensors")) if root.is_dir() else []:
        try:
            meta = read_meta(p)
        except Exception:
            continue
        seen = f"{meta.images_seen:,} images seen" if meta.images_seen is not None else "images seen unknown"
        size = p.stat().st_size / 2**20
        out.append(ModelEntry(p, f"{p.relative_to(root).as_posix()} · {size:.1f} MB · {meta.prediction} · {seen}"))
    return out


def next_index(out_dir: Path) -> int:
    """Each studio render gets its own <index>-<slug> folder after those already there."""
    used = [int(m.group(1)) for p in out_dir.glob("*") if (m := re.fullmatch(r"(\d+)-.*", p.name)) and p.is_dir()]
    return max(used, default=-1) + 1


def guidance_options(text: str, clip_model: str, clip_weights: str, image_prompt: str | None,
                     target: str | None, style: str | None, style_weight: float, scale: float) -> dict:
    """The job's `guidance:` mapping; empty (unguided) unless a guide is given."""
    g = {k: v for k, v in (("text", text.strip()), ("image_prompts", image_prompt or ""), ("target", target or ""),
                           ("style", style or "")) if v}
    if not g:
        return {}
    g.update(clip_model=clip_model.strip() or "ViT-B-32", scale=scale)
    if clip_weights.strip():
        g["clip_weights"] = clip_weights.strip()
    if style:
        g["style_weight"] = style_weight
    return g


def make_studio_job(prompt: str, n, seed: str, sampler: str, steps, size: str, init: str | None, strength,
                    eta, noise_mult, post: str, guidance: dict, index: int, spacing: str = AUTO) -> Job:
    # Empty steps (or 0) and eta: the model's own, like a job line that does not name them.
    opts = {"prompt": prompt, "n": str(int(n)), "seed": seed or "", "sampler": sampler or AUTO,
            "spacing": spacing or AUTO, "size": size.strip(), "init": init or "", "strength": str(strength),
            "noise_mult": str(noise_mult), "post": post.strip(), "guidance": guidance}
    if steps:
        opts["steps"] = str(int(steps))
    if eta is not None:
        opts["eta"] = str(eta)
    return make_job(opts, Job(index=index), WHERE, {})


def render_once(model: str, out_dir: Path, device: str, job_args: dict, guidance: dict,
                progress: bool = True) -> tuple[list[tuple[str, str]], str]:
    """(images as (path, caption), message). Bad input is the message, never a traceback."""
    try:
        model_path = resolve_model_path(model or "")
        job = make_studio_job(**job_args, guidance=guidance, index=next_index(out_dir))
        result = render(model_path, [job], out_dir, device=device, progress=progress)
    except (FileNotFoundError, JobError, ValueError, OSError, RuntimeError) as e:
        return [], message(f"Error: {e}")
    write_gallery(out_dir, result.failures)
    if result.failures:
        return [], message("Error: " + "; ".join(result.failures))
    from .render.outputs import job_dir_name
    from .render.plan import outputs_of

    folder = out_dir / job_dir_name(job.index, job.prompt)
    images = [(str(out_dir / o.rel), f"seed {o.seed}") for o in outputs_of(job)]
    return images, f"Saved {len(images)} image(s) to {folder} (gallery: {out_dir / 'index.html'})"


def build_app(models_dir: Path, out_dir: Path, device: str):
    import gradio as gr

    d = Job()
    choices = lambda: [(m.label, str(m.path)) for m in list_models(models_dir)]
    with gr.Blocks(title="xurdif studio", analytics_enabled=False) as app:
        gr.Markdown(f"## xurdif studio\nModels under `{models_dir}`; images saved to `{out_dir}/`.")
        with gr.Row():
            with gr.Column():
                first = choices()
                model = gr.Dropdown(first, value=first[0][1] if first else None, label="model",
                                    allow_custom_value=True, elem_id="studio-model")
                refresh = gr.Button("Rescan models", size="sm")
                prompt = gr.Textbox("a sample", label="prompt", elem_id="studio-prompt")
                with gr.Row():
                    n = gr.Number(d.n, precision=0, label="images", minimum=1)
                    seed = gr.Textbox("", label="first seed (empty: derived)", elem_id="studio-seed")
                with gr.Row():
                    sampler = gr.Dropdown([AUTO, *SAMPLERS], value=d.sampler, label="sampler (auto: the model's)")
                    spacing = gr.Dropdown([AUTO, *SPACINGS], value=d.spacing, label="spacing")
                    steps = gr.Number(0, precision=0, label="steps (0: the model's)", minimum=0)
                    size = gr.Textbox("", label="size WxH (empty: the model's)", elem_id="studio-size")
                with gr.Accordion("init image", open=False):
                    init = gr.File(label="init image", file_types=["image"], type="filepath")
                    strength = gr.Slider(0.01, 1.0, d.strength, label="strength")
                    noise_mult = gr.Number(d.noise_mult, label="noise multiplier")
                    eta = gr.Number(None, label="eta (ddim, edm; empty: the model's)")
                with gr.Accordion("guidance (CLIP weights must be on disk)", open=False):
                    g_text = gr.Textbox("", label="text prompts, e.g. 'a red fox:1, blurry:-0.5'")
                    g_model = gr.Textbox("ViT-B-32", label="CLIP model")
                    g_weights = gr.Textbox("", label="CLIP weights (file or cached tag)")
                    g_image = gr.File(label="image prompt", file_types=["image"], type="filepath")
                    g_target = gr.File(label="target image", file_types=["image"], type="filepath")
                    g_style = gr.File(label="style image", file_types=["image"], type="filepath")
                    g_style_w = gr.Number(1.0, label="style weight")
                    g_scale = gr.Number(0.02, label="guidance scale")
                post = gr.Textbox("", label="postprocessing, e.g. contrast:1.1,gamma:0.9")
                go = gr.Button("Render", variant="primary", elem_id="studio-render")
            with gr.Column():
                message = gr.Markdown("", elem_id=MESSAGE_ID)
                gallery = gr.Gallery(label="result", elem_id="studio-result", columns=4)

        def run(model_v, prompt_v, n_v, seed_v, sampler_v, spacing_v, steps_v, size_v, init_v, strength_v, noise_v,
                eta_v, gt, gm, gw, gi, gtg, gs, gsw, gsc, post_v, progress=gr.Progress(track_tqdm=True)):
            job_args = dict(prompt=prompt_v, n=n_v or 1, seed=seed_v, sampler=sampler_v, spacing=spacing_v,
                            steps=steps_v,
                            size=size_v, init=init_v, strength=strength_v, eta=eta_v, noise_mult=noise_v, post=post_v)
            guidance = guidance_options(gt, gm, gw, gi, gtg, gs, gsw, gsc)
            return render_once(model_v, out_dir, device, job_args, guidance)

        refresh.click(lambda: gr.Dropdown(choices=choices()), None, model, api_name=False)
        go.click(run, [model, prompt, n, seed, sampler, spacing, steps, size, init, strength, noise_mult, eta, g_text,
                       g_model, g_weights, g_image, g_target, g_style, g_style_w, g_scale, post],
                 [gallery, message], api_name="render")
    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xurdif-studio", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="runs", help="folder scanned for model files (default: runs)")
    p.add_argument("--port", type=int_in(1, 65535), default=7860, help="port on 127.0.0.1 (default 7860)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the studio needs gradio: pip install -e '.[studio]'", file=sys.stderr)
        return 2
    import torch

    models, out = Path(args.models), Path(args.out)
    if not models.is_dir():
        print(f"error: {models}: models folder not found (give --models DIR)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    app = build_app(models, out, device)
    print(f"xurdif studio on http://127.0.0.1:{args.port}/", flush=True)
    app.launch(server_name="127.0.0.1", server_port=args.port, ssr_mode=False, quiet=True,
               allowed_paths=[str(out.resolve())], footer_links=["api"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
