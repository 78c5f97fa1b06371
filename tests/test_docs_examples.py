"""Every fenced code block in README.md and docs/*.md works as written.

Readers copy examples before they read the prose, so each block is checked by
what it contains:
- ```yaml: a recipe (recipe sections) must pass `launch.py --check` as a file in
  recipes/; a job file (defaults/presets/jobs, or a bare list of jobs) must load
  with the renderer's loader, each job's guidance included; a guidance block
  (guidance keys, or one `guidance:` mapping) must parse into GuidanceCfg.
- ```bash / sh / shell: each command that runs one of ours (launch.py, a .py
  file of this repository, `python -m xurdif...`, a console script of
  setup.cfg, scripts/*.sh) must exist, and its flags must parse with the
  command's own argparse parser; a command with a `--check` option (a
  training run) then runs with `--check` instead of `--dry-run` or training,
  every other one runs with `--help`. Commands of other programs are skipped.
- ```prompts: a prompts file, parsed by the renderer's loader.
- ```json, ```python: must parse.
- ```text: deliberately not runnable (diagrams, output); not checked.
An untagged block is classified by content (shell commands or YAML) or else
must be tagged. Everything runs in this process: the parsers are captured
from each command's main() without running it.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import importlib
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable
from unittest import mock

import pytest
import yaml

from xurdif import yamlfile
from xurdif.guidance.config import KEYS as GUIDANCE_KEYS
from xurdif.guidance.config import GuidanceError, parse_guidance
from xurdif.recipe.schema import Recipe
from xurdif.render.job_files import parse_prompts_text, parse_yaml_text
from xurdif.render.jobs import Job, JobError

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

NOT_RUNNABLE = {"text"}
SHELL = {"bash", "sh", "shell", "console"}
TAGS = ("yaml", "bash", "prompts", "json", "python", "text")
RECIPE_KEYS = {f.name for f in dataclasses.fields(Recipe)} | {"base"}
JOB_FILE_KEYS = {"defaults", "presets", "jobs"}


# ---------------------------------------------------------------- collecting


@dataclasses.dataclass(frozen=True)
class Block:
    source: str  # path relative to the repository
    line: int    # line of the opening fence
    lang: str    # the info string's first word, lower case ("" when untagged)
    text: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([^\s`]*)")


def fenced_blocks(text: str, source: str) -> list[Block]:
    """The fenced code blocks of a Markdown text (CommonMark fences, indented ones included)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body, j = [], i + 1
        while j < len(lines) and not close.match(lines[j]):
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
            j += 1
        blocks.append(Block(source, i + 1, lang, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def doc_blocks() -> list[Block]:
    return [b for path in DOCS
            for b in fenced_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())]


# ---------------------------------------------------------------- classifying


_OUR_COMMAND = re.compile(r"^(\$ )?(\S*python[\d.]*|accelerate|torchrun|\S+\.py|\S*scripts/\S+\.sh|xurdif-\S+)(\s|$)")


def kind_of(block: Block) -> str:
    """recipe | jobs | guidance | shell | prompts | json | python | skip | an 'untagged...' / 'yaml...' problem."""
    lang = block.lang
    if lang in NOT_RUNNABLE:
        return "skip"
    if lang in SHELL:
        return "shell"
    if lang in ("prompts", "json", "python"):
        return lang
    if lang in ("yaml", "yml"):
        return yaml_kind(block.text)
    if lang == "":
        if any(_OUR_COMMAND.match(line.strip()) for line in block.text.splitlines()):
            return "shell"
        try:
            data = yamlfile.load(block.text)
        except yaml.YAMLError:
            data = None
        if isinstance(data, (dict, list)):
            return yaml_kind(block.text)
    return (f"untagged: tag the block ```{' / ```'.join(TAGS)} (text: deliberately not runnable)"
            if lang == "" else f"unknown tag {lang!r}: use one of {', '.join(TAGS)}")


def yaml_kind(text: str) -> str:
    try:
        data = yamlfile.load(text)
    except yaml.YAMLError as e:
        return f"yaml: invalid YAML: {e}".replace("\n", " ")
    if isinstance(data, list):
        return "jobs"  # what a job file's jobs: holds; the loader says whether it is one
    if isinstance(data, dict):
        keys = set(data)
        if keys & JOB_FILE_KEYS:
            return "jobs"
        if keys & RECIPE_KEYS:
            return "recipe"
        if keys & set(GUIDANCE_KEYS) or keys == {"guidance"}:
            return "guidance"
    return ("yaml: neither a recipe, a job file nor a guidance block; "
            "fix it or tag it ```text if it is not meant to run")


# ---------------------------------------------------------------- checks


def check_recipe(block: Block, tmp: Path) -> list[str]:
    """The block saved as recipes/<name>.yaml beside the shipped recipes passes launch.py --check."""
    recipes = tmp / "recipes"
    shutil.copytree(ROOT / "recipes", recipes, dirs_exist_ok=True)
    path = recipes / "doc-example.yaml"
    path.write_text(block.text, encoding="utf-8")
    from xurdif.train.cli import main
    code, out, err = call_main(main, "launch.py", [str(path), "--check"])
    return [] if code == 0 else [f"launch.py --check: {(err or out).strip()}"]


def padded(block: Block) -> str:
    """The block's text at its own lines, so that the loaders' line numbers are the document's."""
    return "\n" * block.line + block.text


def check_jobs(block: Block) -> list[str]:
    try:
        jobs, errors, _ = parse_yaml_text(padded(block), block.source, Job(), base_dir=ROOT)
    except JobError as e:
        return [str(e)]
    problems = list(errors)
    for job in jobs:
        try:
            parse_guidance(job.guidance)
        except GuidanceError as e:
            problems.append(f"{job.where}: {e}")
    return problems or ([] if jobs else ["a job file with no jobs"])


def check_guidance(block: Block) -> list[str]:
    data = yamlfile.load(block.text)
    try:
        parse_guidance(data["guidance"] if set(data) == {"guidance"} else data)
    except GuidanceError as e:
        return [str(e)]
    return []


def check_prompts(block: Block) -> list[str]:
    jobs, errors = parse_prompts_text(padded(block), block.source, Job())
    return errors or ([] if jobs else ["a prompts file with no prompts"])


def check_json(block: Block) -> list[str]:
    try:
        json.loads(block.text)
        return []
    except json.JSONDecodeError:
        pass
    problems = []
    for n, line in enumerate(block.text.splitlines(), 1):  # JSON lines, e.g. a manifest.jsonl
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: invalid JSON: {e}")
    return problems


def check_python(block: Block) -> list[str]:
    try:
        compile(block.text, block.where, "exec")
    except SyntaxError as e:
        return [f"line {e.lineno}: {e.msg}"]
    return []


# ---------------------------------------------------------------- shell commands


def shell_commands(text: str, prompted: bool = False) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped,
    split at ; && || |, redirections removed. `prompted` (a console session): only
    lines starting with `$ ` are commands, the rest is their output."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if prompted and not line.startswith("$ "):
            continue
        if line.startswith("$ "):
            line = line[2:]
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        current: list[str] = []
        try:
            tokens = iter(list(lex))
        except ValueError as e:  # an unclosed quote
            commands.append([f"!{line}: {e}"])
            continue
        for tok in tokens:
            if tok in (";", "&&", "||", "|", "&"):
                commands.append(current)
                current = []
            elif tok in (">", ">>", "<", ">&", "2>"):
                next(tokens, None)  # the redirection's file
            else:
                current.append(tok)
        commands.append(current)
    return [c for c in commands if c]


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    entries = cfg.get("options.entry_points", "console_scripts", fallback="")
    out = {}
    for line in entries.strip().splitlines():
        name, _, target = line.partition("=")
        out[name.strip()] = target.strip()
    return out


@dataclasses.dataclass(frozen=True)
class Target:
    prog: str          # as the reader typed it
    load: Callable[[], Callable]  # returns the command's main
    argv: list[str]


def resolve(tokens: list[str]) -> Target | str | None:
    """Which of our commands a shell command runs: a Target, a problem, or None (not ours)."""
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]  # VAR=value prefixes
    if not tokens:
        return None
    head, rest = tokens[0], tokens[1:]
    if head in ("accelerate", "torchrun"):
        if head == "accelerate" and rest[:1] != ["launch"]:
            return None
        scripts = [i for i, t in enumerate(rest) if t.endswith(".py")]
        return script_target(rest[scripts[0]], rest[scripts[0] + 1:]) if scripts else None
    if re.fullmatch(r"python[\d.]*", Path(head).name):
        i = 0
        while i < len(rest) and rest[i].startswith("-") and rest[i] not in ("-m", "-c"):
            i += 1
        if i >= len(rest) or rest[i] == "-c":
            return None
        if rest[i] == "-m":
            module = rest[i + 1] if i + 1 < len(rest) else ""
            if not module.startswith("xurdif"):
                return None
            return Target(f"python -m {module}", lambda: importlib.import_module(module).main, rest[i + 2:])
        return script_target(rest[i], rest[i + 1:])
    if head.endswith(".py"):
        return script_target(head, rest)
    if head.startswith("xurdif-"):
        entry = console_scripts().get(head)
        if entry is None:
            return f"{head}: no such console script in setup.cfg [options.entry_points]"
        module, _, func = entry.partition(":")
        return Target(head, lambda: getattr(importlib.import_module(module), func), rest)
    if re.fullmatch(r"(\./)?scripts/\S+\.sh", head):
        path = ROOT / head
        return None if path.is_file() and os.access(path, os.X_OK) else f"{head}: no such executable script"
    return None


_mains: dict[Path, Callable | None] = {}


def script_target(script: str, argv: list[str]) -> Target | str:
    path = (ROOT / script).resolve()
    if not path.is_file() or ROOT not in path.parents:
        return f"{script}: no such file in the repository"

    def load() -> Callable:
        if path not in _mains:
            _mains[path] = runpy.run_path(str(path), run_name="docs_example").get("main")
        if _mains[path] is None:
            raise AssertionError(f"{script}: has no main()")
        return _mains[path]

    return Target(script, load, argv)


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser, method: str):
        self.parser, self.method = parser, method


_PARSE_METHODS = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")
_parsers: dict[str, tuple[argparse.ArgumentParser, str]] = {}


def captured_parser(target: Target) -> tuple[argparse.ArgumentParser, str]:
    """The parser a command's main() builds, and the parse method it calls, without running it."""
    if target.prog not in _parsers:
        def stop(method: str) -> Callable:
            def grab(self, *args, **kwargs):
                raise _Parsed(self, method)
            return grab

        main = target.load()
        with contextlib.ExitStack() as stack:
            for m in _PARSE_METHODS:
                stack.enter_context(mock.patch.object(argparse.ArgumentParser, m, stop(m)))
            stack.enter_context(mock.patch.object(sys, "argv", [target.prog]))
            try:
                main()
            except _Parsed as p:
                _parsers[target.prog] = (p.parser, p.method)
            else:
                raise AssertionError(f"{target.prog}: main() returned without parsing its arguments")
    return _parsers[target.prog]


class _ArgError(Exception):
    pass


def flag_problem(target: Target) -> str | None:
    """The parser's own error for the reader's arguments, or None."""
    parser, method = captured_parser(target)

    def error(message: str):
        raise _ArgError(message)

    with mock.patch.object(parser, "error", error), contextlib.redirect_stdout(io.StringIO()):
        try:
            getattr(parser, method)(target.argv)
        except _ArgError as e:
            return f"{target.prog}: {e}"
        except SystemExit as e:  # --help, --version
            if e.code:
                return f"{target.prog}: exits with {e.code}"
    return None


def call_main(main: Callable, prog: str, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", [prog, *argv]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main()
        except SystemExit as e:
            code = e.code
    return int(code or 0), out.getvalue(), err.getvalue()


def check_shell(block: Block) -> list[str]:
    problems = []
    for tokens in shell_commands(block.text, prompted=block.lang == "console"):
        if tokens[0].startswith("!"):
            problems.append(f"cannot split the shell line {tokens[0][1:]}")
            continue
        target = resolve(tokens)
        if target is None:
            continue
        if isinstance(target, str):
            problems.append(target)
            continue
        problem = flag_problem(target)
        if problem:
            problems.append(problem)
            continue
        parser, _ = captured_parser(target)
        if "--check" in parser._option_string_actions:
            # A training run: validate the recipe and overrides, never train.
            argv = [a for a in target.argv if a not in ("--dry-run", "--check", "--restart")] + ["--check"]
        else:
            argv = ["--help"]
        code, out, err = call_main(target.load(), target.prog, argv)
        if code != 0:
            problems.append(f"{target.prog} {' '.join(argv)}: exit {code}: {(err or out).strip()}")
    return problems


def check_block(block: Block, tmp: Path) -> list[str]:
    kind = kind_of(block)
    if kind == "skip":
        return []
    checks = {"recipe": lambda: check_recipe(block, tmp), "jobs": lambda: check_jobs(block),
              "guidance": lambda: check_guidance(block), "shell": lambda: check_shell(block),
              "prompts": lambda: check_prompts(block), "json": lambda: check_json(block),
              "python": lambda: check_python(block)}
    return checks[kind]() if kind in checks else [kind]


# ---------------------------------------------------------------- tests


BLOCKS = doc_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_doc_example_works(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)  # relative paths in examples are read from the repository root
    problems = check_block(block, tmp_path)
    assert not problems, f"{block.where} (```{block.lang}):\n" + "\n".join(problems)


def test_docs_hold_every_kind_of_example():
    """The classifier sees the examples (a checker that skipped everything would pass)."""
    kinds = [kind_of(b) for b in BLOCKS]
    for kind in ("recipe", "jobs", "prompts", "shell", "skip"):
        assert kind in kinds, kind
    programs = {t.prog for b in BLOCKS if kind_of(b) == "shell"
                for t in map(resolve, shell_commands(b.text)) if isinstance(t, Target)}
    assert {"launch.py", "tools/sample.py", "tools/evaluate.py", "tools/import_urdiffusion.py",
            "bench/quality.py"} <= programs


def md(body: str, lang: str) -> Block:
    return fenced_blocks(f"intro\n\n```{lang}\n{body}```\n", "doc.md")[0]


def test_fences_are_collected_with_their_line_and_tag():
    text = "# t\n\n```yaml\na: 1\n```\n\n- item\n\n  ~~~bash\n  echo hi\n  ```\n  ~~~\n\n````\nx\n````\n"
    blocks = fenced_blocks(text, "doc.md")
    assert [(b.line, b.lang, b.text) for b in blocks] == [
        (3, "yaml", "a: 1\n"), (9, "bash", "echo hi\n```\n"), (14, "", "x\n")]


def test_a_bare_list_of_jobs_is_caught(tmp_path):
    block = md('- prompt: "a red fox"\n  guidance: {clip_model: ViT-B-32}\n', "yaml")
    assert kind_of(block) == "jobs"
    assert check_block(block, tmp_path) == [
        "doc.md:1: a job file is a mapping with keys defaults, presets, jobs"]


def test_bad_guidance_in_a_job_file_is_caught(tmp_path):
    block = md("jobs:\n  - prompt: a fox\n    guidance: {stlye: refs/paper.png}\n", "yaml")
    [problem] = check_block(block, tmp_path)
    # Line 6: the bad key's own line (the job starts on 5).
    assert problem.startswith("doc.md:6: guidance: unknown key 'stlye'; did you mean 'style'?")


def test_guidance_blocks_are_parsed(tmp_path):
    assert kind_of(md("scale: 0.05\ncut_min: 0.5\n", "yaml")) == "guidance"
    assert check_block(md("guidance: {scale: 0.05, style: refs/paper.png}\n", "yaml"), tmp_path) == []
    assert check_block(md("scale: 0.05\ncut_min: 2\n", "yaml"), tmp_path) == [
        "guidance.cut_min: 2.0 is invalid; valid: a fraction in (0, 1]"]


def test_a_recipe_with_a_typo_is_caught(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert check_block(md("base: demo.yaml\ntrain: {images: 100}\n", "yaml"), tmp_path) == []
    [problem] = check_block(md("base: demo.yaml\ntrain: {imgs: 100}\n", "yaml"), tmp_path)
    assert "train.imgs: unknown key; did you mean train.images?" in problem


def test_shell_flags_and_recipes_are_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ok = md("python tools/sample.py runs/x prompts.txt -o out --steps 20  # comment\n"
            "accelerate launch --num_processes 2 launch.py recipes/demo.yaml train.images=500 --dry-run\n"
            "tensorboard --logdir runs/demo/tb && scripts/test.sh\n", "bash")
    assert check_block(ok, tmp_path) == []
    bad = md("python tools/sample.py runs/x --stpes 20\n"
             "python launch.py recipes/demo.yaml \\\n  train.imagez=5\n"
             "xurdif-nothing --help\n"
             "python tools/nothing.py\n", "bash")
    problems = check_block(bad, tmp_path)
    assert problems[0] == "tools/sample.py: unrecognized arguments: --stpes 20"
    assert problems[1].startswith("launch.py recipes/demo.yaml train.imagez=5 --check: exit 2: recipe errors:\n"
                                  "override train.imagez: unknown key; did you mean train.images?")
    assert problems[2:] == ["xurdif-nothing: no such console script in setup.cfg [options.entry_points]",
                            "tools/nothing.py: no such file in the repository"]


def test_prompts_untagged_and_text_blocks(tmp_path):
    assert check_block(md("a red fox | seed=7 n=4\n", "prompts"), tmp_path) == []
    assert check_block(md("a red fox | sed=7\n", "prompts"), tmp_path)[0].startswith(
        "doc.md:4: unknown option 'sed'; did you mean 'seed'?")
    diagram = "recipes/x.yaml ─▶ xurdif/recipe/\n   │\n"
    assert check_block(md(diagram, "text"), tmp_path) == []
    assert check_block(md(diagram, ""), tmp_path)[0].startswith("untagged: tag the block")
    assert kind_of(md("python launch.py recipes/demo.yaml --check\n", "")) == "shell"


@pytest.mark.slow
def test_doc_scripts_run_with_help():
    """Each script the docs run starts as a process and prints its usage (imports, sys.path set-up)."""
    scripts = sorted({t.prog for b in BLOCKS if kind_of(b) == "shell"
                      for t in map(resolve, shell_commands(b.text))
                      if isinstance(t, Target) and t.prog.endswith(".py")})
    assert scripts
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for script in scripts:
        r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("usage:"), f"{script}: {r.stderr[-500:]}"


def test_console_sessions_check_only_prompted_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    session = "$ python launch.py recipes/demo.yaml --check\nrecipes/demo.yaml: OK\nit's \"output\n"
    assert shell_commands(session, prompted=True) == [["python", "launch.py", "recipes/demo.yaml", "--check"]]
    assert check_block(md(session, "console"), tmp_path) == []
    assert check_block(md('python tools/sample.py runs/x --prompt "a fox\n', "bash"), tmp_path) == [
        'cannot split the shell line python tools/sample.py runs/x --prompt "a fox: No closing quotation']
