"""Built-in recipes; each module registers its recipe(s) on import."""

from . import cal  # noqa: F401
from . import dpti  # noqa: F401
from . import la_transformer  # noqa: F401
from . import lf2  # noqa: F401
from . import lgur  # noqa: F401
from . import baseline, osnet  # noqa: F401
