"""Hypothesis profiles of the property-based fuzz suite (see docs/numeric_contract.md).

* ``ci`` (default): few examples per property, derandomized (the same examples on every run, so CI
  is reproducible and bounded: the whole suite takes about two minutes on 2 cores).
* ``long`` (``REIDKERN_FUZZ=long``): many random examples per property, for nightly-style runs:
  ``REIDKERN_FUZZ=long python -m pytest tests/fuzz -q``. ``REIDKERN_FUZZ_EXAMPLES=N`` overrides
  the number of examples of either profile.
"""
import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
_n = os.environ.get("REIDKERN_FUZZ_EXAMPLES")
settings.register_profile("ci", max_examples=int(_n or 30), derandomize=True, database=None, **_common)
settings.register_profile("long", max_examples=int(_n or 400), **_common)
settings.load_profile("long" if os.environ.get("REIDKERN_FUZZ") == "long" else "ci")
