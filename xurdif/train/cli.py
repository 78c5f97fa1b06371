"""`accelerate launch launch.py RECIPE [a.b=c ...]`: validate, decide between a
fresh start and a resume, then train."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import typing
from pathlib import Path

import yaml

from ..recipe import Recipe, RecipeError, describe_keys, load_recipe, recipe_from_yaml, recipe_to_dict, recipe_to_yaml
from .checkpoint import CheckpointError, latest_checkpoint, stored_recipe
from .rundir import foreign_entries, prepare_run_dir

log = logging.getLogger("xurdif.train")


def safe_to_change(cls: type = Recipe, prefix: str = "", whole: bool = False) -> tuple[str, ...]:
    """The dotted keys a resumed run may change: fields the schema marks `safe`, and every key
    of a section marked so (xurdif/recipe/schema.py)."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        safe = whole or f.metadata.get("safe", False)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += safe_to_change(hints[f.name], f"{prefix}{f.name}.", safe)
        elif safe:
            keys.append(prefix + f.name)
    return tuple(keys)


SAFE_TO_CHANGE = safe_to_change()


# A run stopped by SIGTERM / SIGINT / SIGUSR1 (checkpoint saved) exits with this, so a
# scheduler or a rerun-until-success wrapper can tell "run me again" from "done" (0).
# 75 is sysexits.h's EX_TEMPFAIL: a temporary failure, try again later.
EXIT_STOPPED = 75


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Train a diffusion model from a YAML recipe. Run it with `accelerate launch launch.py RECIPE` "
        "(or plain `python launch.py RECIPE` for one process). SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 stop it "
        "cleanly: it saves a checkpoint within one log interval (log.every_steps) and exits with status "
        f"{EXIT_STOPPED} (stopped, not finished); the same command resumes. A finished run exits 0 (also one "
        "ended by eval.stop_on_memorised), bad input 1 or 2.",
        epilog="Recipe keys (section.key = default):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="path to a recipe YAML file, e.g. recipes/demo.yaml")
    p.add_argument("overrides", nargs="*", help="recipe overrides section.key=value, e.g. train.images=2000")
    p.add_argument("--dry-run", action="store_true", help="print the resolved recipe, dataset size and "
                   "parameter count, then exit")
    p.add_argument("--check", action="store_true", help="validate the recipe only (does not touch the dataset)")
    p.add_argument("--resume", default="auto", metavar="auto|PATH",
                   help="auto (default): continue the run in its folder if one exists; or a checkpoint folder")
    p.add_argument("--restart", action="store_true", help="start over in an existing run folder "
                   "(the old folder is kept, renamed to <run>.old-<time>)")
    return p.parse_intermixed_args(argv)  # overrides may come before or after options


def recipe_changes(old: Recipe, new: Recipe) -> tuple[list[str], list[str]]:
    """(safe, unsafe) lists of 'key: old -> new'."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    a, b = flat(recipe_to_dict(old)), flat(recipe_to_dict(new))
    safe, unsafe = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
            (safe if key in SAFE_TO_CHANGE else unsafe).append(line)
    return safe, unsafe


def choose_start(recipe: Recipe, resume: str, restart: bool) -> tuple[Path | None, str | None]:
    """(the checkpoint to resume from or None for a fresh start, what to set aside first:
    None, "restart" (the whole folder) or "aborted" (what a start without a checkpoint left)).
    Decides only: nothing is moved until the dataset has opened."""
    run_dir = recipe.run_dir
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"--resume {resume}: no such checkpoint folder")
        return path, None
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None, None
    if restart:
        return None, "restart"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        # No usable checkpoint: nothing to lose but logs, which are kept aside. A folder with
        # files no run writes is another matter: it may not be a run folder at all.
        foreign = foreign_entries(run_dir)
        if foreign:
            raise CheckpointError(
                f"{run_dir} holds no usable checkpoint but files a run does not write "
                f"({', '.join(foreign[:5])}); pass --restart to start over (the old folder is kept aside) "
                "or set train.output_dir"
            )
        return None, "aborted"
    old, where = trained_recipe(run_dir, ckpt)
    if old is not None:
        safe, unsafe = recipe_changes(old, recipe)
        if unsafe:
            raise RecipeError([f"{where}: recipe changed since the run started, in settings that cannot change "
                               f"on resume: {u}" for u in unsafe] +
                              ["start a new run with --restart or another train.output_dir"])
        for s in safe:
            log.info("recipe changed on resume: %s", s)
    return ckpt, None


def trained_recipe(run_dir: Path, ckpt: Path) -> tuple[Recipe | None, str]:
    """The recipe the checkpoint was trained with, and where it was read: the checkpoint's
    own copy, else (older checkpoints) recipe.yaml. A recipe.yaml cut short by a kill is
    no list of changes: without a copy in the checkpoint the comparison is skipped."""
    text = stored_recipe(ckpt)
    if text is not None:
        return recipe_from_yaml(text, f"{ckpt}/state.json"), str(ckpt)
    saved = run_dir / "recipe.yaml"
    try:
        return recipe_from_yaml(saved.read_text(), str(saved)), str(saved)
    except (OSError, yaml.YAMLError, RecipeError) as e:
        log.warning("%s is unreadable and %s holds no recipe: recipe changes are not checked (%s)",
                    saved, ckpt, str(e).splitlines()[0])
        return None, str(saved)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"recipe errors:\n{e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.recipe}: OK")
        return 0
    from ..data import DataError, open_dataset
    from ..weights import ModelFileError, read_meta
    from .network import build_for_recipe, parameter_count

    if recipe.model.init_from:
        try:  # a damaged starting model is a user error: one line, before any run folder exists
            read_meta(recipe.model.init_from)
        except ModelFileError as e:
            print(f"{args.recipe}: model.init_from: {e}", file=sys.stderr)
            return 2

    if args.dry_run:
        try:
            data = open_dataset(recipe.data)
        except DataError as e:
            print(f"{args.recipe}: {e}", file=sys.stderr)
            return 2
        try:
            net, meta = build_for_recipe(recipe)
        except ModelFileError as e:
            print(f"{args.recipe}: model.init_from: {e}", file=sys.stderr)
            return 2
        print(recipe_to_yaml(recipe))
        print(f"dataset: {data.describe() if hasattr(data, 'describe') else len(data)}")
        print(f"model: {meta.architecture}, {parameter_count(net):,} parameters")
        print(f"run folder: {recipe.run_dir}")
        return 0
    return train(recipe, args.resume, args.restart)


def hold_run_folder(recipe: Recipe, acc, held: contextlib.ExitStack) -> str | None:
    """One training run per run folder: every process takes a lock (rank 0 the folder's
    own, whatever the process count), and all give up together when any lock is held
    elsewhere. Returns the message for the operator, or None when the folder is ours."""
    import torch

    from ..lock import FolderBusy, folder_lock

    part = "" if acc.process_index == 0 else f".rank{acc.process_index}"
    try:
        held.enter_context(folder_lock(recipe.run_dir, "training run", part))
        busy = None
    except FolderBusy as e:
        busy = str(e)
    if acc.num_processes > 1:
        flag = acc.reduce(torch.tensor(float(busy is not None), device=acc.device), "sum")
        if float(flag) > 0 and busy is None:
            busy = f"{recipe.run_dir}: another training run holds it"
    return busy


def close_session(recipe: Recipe, acc, outputs, opened: bool, held: contextlib.ExitStack) -> None:
    from ..report import training

    training(recipe.run_dir, False)
    if opened:  # however the run ended: the final report, which no longer reloads itself
        outputs.write_report()
    if outputs is not None:
        outputs.close()
    held.close()
    acc.end_training()


def last_words(end, state) -> list[str]:
    """Printed last, after the progress bar: what the operator reads when the command returns."""
    from .best import best_summary

    best = best_summary(state)
    return ([best] if best else []) + [f"done: {end.path}" if end.reason == "done"
                                       else f"stopped at step {state.step}: checkpoint saved in {end.path}"]


def train(recipe: Recipe, resume: str = "auto", restart: bool = False) -> int:
    from ..data import DataError
    from ..weights import ModelFileError
    from ..report import training
    from .dist import make_accelerator
    from .loop import Trainer
    from .nonfinite import NonFiniteError
    from .outputs import RunOutputs
    from .signals import StopRequest, stop_with_launcher

    acc = make_accelerator(recipe)
    logging.basicConfig(level=logging.INFO if acc.is_main_process else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    stop = StopRequest().install()
    stop_with_launcher()
    outputs = None
    opened = False  # this session wrote the run folder: its report is written once more at the end
    held = contextlib.ExitStack()
    try:
        busy = hold_run_folder(recipe, acc, held)
        if busy:
            if acc.is_main_process:
                print(f"error: {busy}", file=sys.stderr)
            return 1
        start, set_aside = choose_start(recipe, resume, restart)
        outputs = RunOutputs(recipe, recipe.run_dir, acc.is_main_process)
        trainer = Trainer(recipe, acc, outputs)  # opens the dataset: bad data leaves no run folder
        if acc.is_main_process:
            prepare_run_dir(recipe.run_dir, set_aside)
            training(recipe.run_dir, True)
            outputs.open()
            opened = True
        acc.wait_for_everyone()
        if start is not None:
            trainer.load(start, verified=resume == "auto")  # latest_checkpoint already hashed it
            log.info("resumed from %s at step %d (%d images seen)", start, trainer.state.step,
                     trainer.state.images_seen)
        elif acc.is_main_process:
            log.info("%s: %s", recipe.name, trainer.data.describe())
        end = trainer.run(stop)
        if recipe.sampling.choose and end.reason != "stopped":
            if acc.is_main_process:
                from .choose_sampler import choose_default_sampler

                choose_default_sampler(trainer, lambda: stop.flag)
            acc.wait_for_everyone()
        if acc.is_main_process:
            print("\n".join(last_words(end, trainer.state)))
        return EXIT_STOPPED if end.reason == "stopped" else 0
    except ModelFileError as e:  # model.init_from: one line, exit 2 like every tool given a bad model file
        print(f"error: model.init_from: {e}", file=sys.stderr)
        return 2
    except (RecipeError, CheckpointError, DataError, NonFiniteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        stop.uninstall()
        close_session(recipe, acc, outputs, opened, held)
