"""xurdif-studio: render interactively in the browser (gradio, on 127.0.0.1).

A render here is a job like a prompts-file line: checked by render.jobs.make_job,
rendered by render.run.render into OUT/<index>-<slug>/<seed>.png with the same
metadata and manifest line, then OUT/index.html is rebuilt. No second code path.
This module is the page; xurdif/studio_render.py does each render and keeps the history."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .cli_args import int_in
from .diffusion.samplers import SAMPLERS
from .diffusion.spacing import SPACINGS
from .wording import span
from .postprocess import PRESETS, RANGES
from .render.gallery import COMMAND_CSS, write_gallery
from .render.jobs import Job
from .sampling.defaults import AUTO
from .studio_render import Renders, guidance_options
from .weights import read_meta, resolve_model_path

EPILOG = """\
examples:
  xurdif-studio                              # models under runs/, http://127.0.0.1:7860
  xurdif-studio --models ~/models --port 7861 --out out/studio"""
MESSAGE_ID = "studio-message"


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


def field_info(name: str, more: str = "") -> str:
    """A Job option's meaning and range, from its field (the job file checks the same)."""
    m = next(f for f in dataclasses.fields(Job) if f.name == name).metadata
    lo, hi = m.get("min"), m.get("max")
    parts = [m.get("doc", ""), span(lo, hi, m.get("min_open", False)) if lo is not None or hi is not None else "", more]
    return "; ".join(p for p in parts if p)


def post_info() -> str:
    """The presets and each op's range, from xurdif/postprocess.py."""
    presets = "; ".join(f"{k} = {v}" for k, v in PRESETS.items())
    ranges = ", ".join(f"{op} {lo:g}..{hi:g}" for op, (lo, hi) in RANGES.items())
    return f"a preset, or ops as op:value,op:value (a preset may start the chain). Presets: {presets}. Ranges: {ranges}"


def model_info(model: str | None) -> str:
    """The model's native size and default sampler, shown beside the size box."""
    try:
        meta = read_meta(resolve_model_path(model or ""))
    except Exception:  # no model picked yet, or not a model file: the render says why
        return "native size: pick a model"
    h, w = meta.image_size
    return f"native size **{w}x{h}** · default sampler (auto): {meta.default_sampling().describe()}"


CSS = f"""#studio-result img, .studio-image img {{image-rendering: pixelated; object-fit: contain}}
.studio-image img {{width: 192px; height: 192px; background: #8884}}
.studio-image {{margin: 4px 0; display: flex; gap: 8px; align-items: flex-start}}
.studio-image figcaption {{flex: 1; min-width: 0; font-size: 12px}}
.studio-entry {{border-top: 1px solid #8886; padding-top: 4px}} .studio-entry.error p {{color: #c00}}
.studio-entry.stopped p {{color: #a60}}
{COMMAND_CSS}"""
GALLERY_ROUTE = "/gallery"
LIBRARY_ROUTE = "/library"  # xurdif-library's page of the models folder, built afresh on each visit


def canvas_controls(gr, d: Job) -> tuple:
    """sampler, spacing, steps, size, tile, overlap, wrap, sigma_min (in that order)."""
    with gr.Row():
        sampler = gr.Dropdown([AUTO, *SAMPLERS], value=d.sampler, label="sampler (auto: the model's)")
        spacing = gr.Dropdown([AUTO, *SPACINGS], value=d.spacing, label="spacing")
        steps = gr.Number(0, precision=0, label="steps (0: the model's)", minimum=0)
        size = gr.Textbox("", label="size WxH (empty: the model's)", elem_id="studio-size", info=field_info("size"))
    with gr.Row():
        tile = gr.Textbox(str(d.tile), label="tile", elem_id="studio-tile", info=field_info("tile"))
        overlap = gr.Textbox("", label="overlap", elem_id="studio-overlap",
                             info=field_info("overlap", "empty: a quarter of the tile"))
        wrap = gr.Checkbox(d.wrap, label="wrap (seamless texture)", elem_id="studio-wrap")
        sigma_min = gr.Textbox("", label="sigma_min (logsnr/karras)", elem_id="studio-sigma-min",
                               info=field_info("sigma_min", "where the ramp ends; empty: the model's"))
    return sampler, spacing, steps, size, tile, overlap, wrap, sigma_min


def init_controls(gr, d: Job) -> tuple:
    """init image, strength, noise multiplier, eta (in that order)."""
    with gr.Accordion("init image", open=False):
        init = gr.File(label="init image", file_types=["image"], type="filepath")
        strength = gr.Slider(0.01, 1.0, d.strength, label="strength", info=field_info("strength"))
        noise_mult = gr.Number(d.noise_mult, label="noise multiplier")
        eta = gr.Number(None, label="eta (ddim, dpmpp_2m_sde, edm; empty: the model's)", info=field_info("eta"))
    return init, strength, noise_mult, eta


def guidance_controls(gr) -> list:
    """In guidance_options' order: text, CLIP model, weights, image, target, style, style weight, scale."""
    with gr.Accordion("guidance (CLIP weights must be on disk)", open=False):
        return [gr.Textbox("", label="text prompts, e.g. 'a red fox:1, blurry:-0.5'"),
                gr.Textbox("ViT-B-32", label="CLIP model"),
                gr.Textbox("", label="CLIP weights (file or cached tag)"),
                gr.File(label="image prompt", file_types=["image"], type="filepath"),
                gr.File(label="target image", file_types=["image"], type="filepath"),
                gr.File(label="style image", file_types=["image"], type="filepath"),
                gr.Number(1.0, label="style weight"),
                gr.Number(0.02, label="guidance scale")]


def build_app(models_dir: Path, out_dir: Path, device: str):
    import gradio as gr

    d = Job()
    choices = lambda: [(m.label, str(m.path)) for m in list_models(models_dir)]
    renders = Renders(out_dir, device)
    with gr.Blocks(title="xurdif studio", analytics_enabled=False) as app:
        gr.Markdown(f"## xurdif studio\nModels under `{models_dir}`; images saved to `{out_dir}/` "
                    f"([open its gallery]({GALLERY_ROUTE}/index.html), every render in the folder; "
                    f"[the model library]({LIBRARY_ROUTE}): every model with its grid, quality and lineage).",
                    elem_id="studio-header")
        with gr.Row():
            with gr.Column():
                first = choices()
                model = gr.Dropdown(first, value=first[0][1] if first else None, label="model",
                                    allow_custom_value=True, elem_id="studio-model")
                info = gr.Markdown(model_info(first[0][1] if first else None), elem_id="studio-model-info")
                refresh = gr.Button("Rescan models", size="sm")
                prompt = gr.Textbox("a sample", label="prompt", elem_id="studio-prompt")
                with gr.Row():
                    n = gr.Number(d.n, precision=0, label="images", minimum=1)
                    seed = gr.Textbox("", label="first seed (empty: derived)", elem_id="studio-seed")
                sampler, spacing, steps, size, tile, overlap, wrap, sigma_min = canvas_controls(gr, d)
                post = gr.Dropdown(["", *PRESETS], value=d.post, label="postprocessing", allow_custom_value=True,
                                   info=post_info(), elem_id="studio-post")
                init, strength, noise_mult, eta = init_controls(gr, d)
                guides = guidance_controls(gr)
                with gr.Row():
                    go = gr.Button("Render", variant="primary", elem_id="studio-render")
                    stop = gr.Button("Stop", variant="stop", elem_id="studio-stop")
            with gr.Column():
                message = gr.Markdown("", elem_id=MESSAGE_ID)
                gallery = gr.Gallery(label="latest render", elem_id="studio-result", columns=4, object_fit="contain")
                gr.Markdown("### History (newest first)")
                shown = gr.HTML("", elem_id="studio-history")

        async def run(model_v, prompt_v, n_v, seed_v, sampler_v, spacing_v, steps_v, size_v, init_v, strength_v,
                      noise_v, eta_v, gt, gm, gw, gi, gtg, gs, gsw, gsc, post_v, tile_v="auto", overlap_v=None,
                      wrap_v=False, sigma_v="", progress=gr.Progress(track_tqdm=True)):
            job_args = dict(prompt=prompt_v, n=n_v or 1, seed=seed_v, sampler=sampler_v, spacing=spacing_v,
                            steps=steps_v, size=size_v, init=init_v, strength=strength_v, eta=eta_v,
                            noise_mult=noise_v, post=post_v or "", tile=tile_v, overlap=overlap_v, wrap=wrap_v,
                            sigma_min=sigma_v)
            guidance = guidance_options(gt, gm, gw, gi, gtg, gs, gsw, gsc)
            return await renders.render(model_v, prompt_v, job_args, guidance)

        refresh.click(lambda: gr.Dropdown(choices=choices()), None, model, api_name=False)
        model.change(model_info, model, info, api_name=False)
        app.load(renders.history_html, None, shown, api_name=False)
        rendering = go.click(run, [model, prompt, n, seed, sampler, spacing, steps, size, init, strength, noise_mult,
                                   eta, *guides, post, tile, overlap, wrap, sigma_min],
                             [gallery, message, shown], api_name="render")
        stop.click(renders.stop, None, None, cancels=[rendering], api_name=False, queue=False)
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
    write_gallery(out, [])  # the page links to it before the first render
    server, _, _ = app.launch(server_name="127.0.0.1", server_port=args.port, ssr_mode=False, quiet=True, css=CSS,
                              allowed_paths=[str(out.resolve())], footer_links=["api"], prevent_thread_lock=True)
    from starlette.staticfiles import StaticFiles

    # Gradio serves .html files as downloads: the gallery gets a route of its own.
    server.mount(GALLERY_ROUTE, StaticFiles(directory=out, html=True), name="gallery")
    from starlette.responses import HTMLResponse

    from .library import library_html

    server.add_api_route(LIBRARY_ROUTE, lambda: HTMLResponse(library_html(models)), methods=["GET"])
    print(f"xurdif studio on http://127.0.0.1:{args.port}/", flush=True)
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
