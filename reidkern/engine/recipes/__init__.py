"""Built-in recipes; each module registers its recipe(s) on import."""
