"""reidkern.engine: the training loop, checkpoints, schedules and the recipes of each model.

See docs/engine.md for the hook protocol and the Recipe fields.
"""
from .extract import Features, extract_features
from .hooks import EMATeacher, EpochHook, FreezeSchedule
from .recipe import Recipe, fixed_fields, get_recipe, recipe_names, register_recipe
from .trainer import Trainer, unwrap

__all__ = ["Recipe", "fixed_fields", "get_recipe", "recipe_names", "register_recipe", "Trainer", "unwrap",
           "extract_features", "Features", "FreezeSchedule", "EMATeacher", "EpochHook"]
