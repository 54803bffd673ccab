"""reidkern.engine: the training loop, checkpoints, schedules and the recipes of each model."""
from .recipe import Recipe, get_recipe, recipe_names, register_recipe

__all__ = ["Recipe", "get_recipe", "recipe_names", "register_recipe"]
