"""Price: versioned price tables, busy-time estimates, cost per attempt."""

from costproc.price.book import PriceBook
from costproc.price.pricer import Pricer

__all__ = ["PriceBook", "Pricer"]
