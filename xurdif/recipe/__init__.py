"""Recipes: the typed schema (`schema.py`) and its loading and validation (`load.py`)."""
from .load import (describe_keys, load_recipe, parse_override, recipe_from_yaml, recipe_hash, recipe_to_dict,
                   recipe_to_yaml)
from .schema import (AugmentCfg, CheckpointCfg, DataCfg, DiffusionCfg, EmaCfg, EvalCfg, LogCfg, LossCfg, ModelCfg, OptimCfg,
                     Recipe, RecipeError, SamplesCfg, TrainCfg, opt)

__all__ = [
    "AugmentCfg", "CheckpointCfg", "DataCfg", "DiffusionCfg", "EmaCfg", "EvalCfg", "LogCfg", "LossCfg", "ModelCfg", "OptimCfg",
    "Recipe", "RecipeError", "SamplesCfg", "TrainCfg", "describe_keys", "load_recipe", "opt", "parse_override",
    "recipe_from_yaml", "recipe_hash", "recipe_to_dict", "recipe_to_yaml",
]
