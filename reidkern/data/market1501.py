"""Former home of the Market-1501 reader; it lives in :mod:`reidkern.data.datasets.market1501`."""
from reidkern.data.datasets.market1501 import (  # noqa: F401
    Market1501,
    MarketName,
    parse_market_name,
    read_image_folder,
)

__all__ = ["Market1501", "MarketName", "parse_market_name", "read_image_folder"]
