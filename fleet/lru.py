"""A bounded map that forgets the least recently used entry first (pure: no Django).

The worker's ready manifests used to live in a dict emptied whenever it filled: above that size every
device, hot or not, went back to Redis (and the dict refilled and emptied again). Here a hit moves the
entry to the young end and an insert past the bound drops the oldest, so the devices that poll keep
their place and memory stays at ``maxsize`` entries. Built on ``OrderedDict`` (its moves are C code and
atomic under the GIL); a key another thread dropped meanwhile is simply a miss.
"""

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(OrderedDict[K, V], Generic[K, V]):
    """``get`` marks a hit as recent; ``put`` inserts and drops the least recently used past ``maxsize``."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        if maxsize < 1:
            raise ValueError("an LRU holds at least one entry")
        self.maxsize = maxsize
        self.evictions = 0

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        value = super().get(key, default)
        if value is not default:
            try:  # noqa: SIM105  (the poll's hot path: contextlib.suppress costs a context manager)
                self.move_to_end(key)
            except KeyError:  # dropped by another thread between the two calls
                pass
        return value

    def put(self, key: K, value: V) -> None:
        self[key] = value
        try:
            self.move_to_end(key)
        except KeyError:
            return
        while len(self) > self.maxsize:
            try:
                self.popitem(last=False)
                self.evictions += 1
            except KeyError:  # emptied by another thread
                return

    def full(self) -> bool:
        return len(self) >= self.maxsize
