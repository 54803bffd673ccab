"""The metric codes and clamps: one definition each for Python/Triton (reidkern/_metric.py) and for
C++/CUDA (csrc/metric.h), and they agree."""
import re
from pathlib import Path

import pytest

from reidkern._metric import METRIC_NAMES, NORM_EPS, SQ_CLAMP, Metric

HEADER = Path(__file__).resolve().parent.parent / "csrc" / "metric.h"


def test_names_and_codes():
    assert METRIC_NAMES == tuple(m.name.lower() for m in Metric)
    assert [Metric.from_name(n) for n in METRIC_NAMES] == list(Metric)
    for bad in ("Euclidean", "manhattan", 0, None):
        with pytest.raises(ValueError, match="metric must be one of"):
            Metric.from_name(bad)


@pytest.mark.skipif(not HEADER.exists(), reason="needs a source checkout (csrc/metric.h)")
def test_cpp_header_agrees():
    text = HEADER.read_text()
    enum = re.search(r"enum Metric : int64_t \{([^}]*)\}", text).group(1)
    codes = {name: int(v) for name, v in re.findall(r"k(\w+) = (\d+)", enum)}
    assert codes == {m.name.capitalize().replace("Sqeuclidean", "SqEuclidean"): int(m) for m in Metric}
    assert int(re.search(r"kNumMetrics = (\d+)", text).group(1)) == len(Metric)
    assert float(re.search(r"kSqClamp = ([0-9.e+-]+);", text).group(1)) == SQ_CLAMP
    assert float(re.search(r"kNormEps = ([0-9.e+-]+);", text).group(1)) == NORM_EPS
