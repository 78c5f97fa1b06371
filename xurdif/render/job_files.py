"""Job lists: a plain prompts file or a YAML job file, parsed into typed `Job`s
(xurdif/render/jobs.py).

Prompts file: one prompt per line, `#` starts a comment, blank lines are
ignored, options follow a `|`:

    a red fox | seed=7 n=4 steps=30 init=fox.png strength=0.6

YAML job file (full control):

    defaults: {steps: 30, sampler: dpmpp_2m}
    presets: {mine: "contrast:1.2,grain:0.02"}   # postprocessing presets
    jobs:
      - a plain prompt
      - {prompt: a red fox, n: 4, post: mine, guidance: {clip_weights: clip.safetensors, scale: 0.05}}

Precedence: Job defaults < YAML `defaults:` < command-line flags < the job's own
options. A job's index (used in output names and derived seeds) is its
position among the file's job lines, malformed lines included, so fixing one
line never renumbers the others.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .. import yamlfile
from ..options import Problem
from ..shown import shown
from ..wording import close_matches, say
from .jobs import JOB, Job, JobError, make_job

JOB_FILE = dataclasses.replace(JOB, unknown="unknown key {key!r}; {hint}valid: {valid}")
JOB_FILE_KEYS = ("defaults", "presets", "jobs")


def split_inline(text: str) -> tuple[str, dict[str, str]]:
    """`a red fox | seed=7 n=4` -> ("a red fox", {"seed": "7", "n": "4"})."""
    prompt, _, rest = text.partition("|")
    opts: dict[str, str] = {}
    for token in rest.split():
        key, eq, value = token.partition("=")
        if not eq or not key:
            raise ValueError(f"expected key=value after '|', got {shown(token)}")
        opts[key.strip()] = value.strip()
    return prompt.strip(), opts


def parse_prompts_text(text: str, source: str, base: Job, presets: dict[str, str] | None = None,
                       base_dir: Path | None = None) -> tuple[list[Job], list[str]]:
    """Jobs from a prompts file's text, plus one error line per malformed line."""
    presets = presets or {}
    jobs: list[Job] = []
    errors: list[str] = []
    index = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        content = raw.split("#", 1)[0].strip()
        if not content:
            continue
        try:
            prompt, opts = split_inline(content)
            job = make_job({"prompt": prompt, **opts}, dataclasses.replace(base, index=index),
                           (source, lineno), presets, base_dir)
            jobs.append(job)
        except JobError as e:
            errors.append(str(e))
        except ValueError as e:
            errors.append(f"{source}:{lineno}: {e}")
        index += 1
    return jobs, errors


class _LineLoader(yamlfile.Loader):
    """The safe loader refusing duplicate keys; we read line numbers from the composed node tree."""


def key_lines(node: yaml.Node) -> dict[str, int]:
    """A job mapping node's keys and its guidance keys (`guidance.KEY`) -> their lines."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            lines[str(k.value)] = k.start_mark.line + 1
            if k.value == "guidance" and isinstance(v, yaml.MappingNode):
                lines.update({f"guidance.{gk.value}": gk.start_mark.line + 1 for gk, _ in v.value})
    return lines


def parse_yaml_text(text: str, source: str, base: Job, cli_defaults: dict[str, Any] | None = None,
                    base_dir: Path | None = None) -> tuple[list[Job], list[str], dict[str, str]]:
    """Jobs, error lines and postprocessing presets from a YAML job file."""
    try:
        loader = _LineLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
            yamlfile.check_size(data)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise JobError(f"{source}:{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise JobError(f"{source}:1: a job file is a mapping with keys defaults, presets, jobs")
    lines = {k.value: k.start_mark.line + 1 for k, _ in root.value}
    for key in data:
        if key not in JOB_FILE_KEYS:
            unknown = Problem(key, "unknown", hint=tuple(close_matches(key, JOB_FILE_KEYS)))
            raise JobError(f"{source}:{lines.get(key, 1)}: {say(unknown, JOB_FILE, JOB_FILE_KEYS)}", key)
    presets = data.get("presets") or {}
    if not isinstance(presets, dict) or not all(isinstance(v, str) for v in presets.values()):
        raise JobError(f"{source}:{lines.get('presets', 1)}: presets must map names to chains like 'contrast:1.1'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise JobError(f"{source}:{lines.get('defaults', 1)}: defaults must be a mapping of job options")
    # Check the defaults once, with a placeholder prompt, for their own line numbers.
    defaults_node = next((v for k, v in root.value if k.value == "defaults"), None)
    base = make_job({"prompt": "defaults", **defaults}, base, (source, lines.get("defaults", 1)),
                    presets, base_dir, key_lines(defaults_node) if defaults_node is not None else None)
    if cli_defaults:
        base = dataclasses.replace(base, **cli_defaults)
    base = dataclasses.replace(base, prompt="")
    items = data.get("jobs")
    jobs_node = next((v for k, v in root.value if k.value == "jobs"), None)
    if not isinstance(items, list) or jobs_node is None:
        raise JobError(f"{source}:{lines.get('jobs', 1)}: 'jobs' must be a list of prompts or mappings")
    jobs: list[Job] = []
    errors: list[str] = []
    for index, (item, node) in enumerate(zip(items, jobs_node.value)):
        line = node.start_mark.line + 1
        opts = {"prompt": item} if isinstance(item, str) else item
        if not isinstance(opts, dict):
            errors.append(f"{source}:{line}: a job is a prompt string or a mapping, got {shown(item)}")
            continue
        try:
            jobs.append(make_job(opts, dataclasses.replace(base, index=index), (source, line), presets, base_dir,
                                 key_lines(node)))
        except JobError as e:
            errors.append(str(e))
    return jobs, errors, presets


def load_jobs(path: str | Path, base: Job, cli_defaults: dict[str, Any] | None = None
              ) -> tuple[list[Job], list[str], dict[str, str]]:
    """Jobs from a .txt prompts file or a .yaml/.yml job file next to its init images."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JobError(f"{path}: cannot read job file: {e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml_text(text, str(path), base, cli_defaults, path.parent)
    base = dataclasses.replace(base, **(cli_defaults or {}))
    jobs, errors = parse_prompts_text(text, str(path), base, None, path.parent)
    return jobs, errors, {}
