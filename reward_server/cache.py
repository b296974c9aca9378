"""An LRU mapping bounded by the bytes of its values."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Least-recently-used cache whose total size, as measured by ``sizeof``, stays within ``capacity`` bytes.

    A value larger than the whole capacity is not kept. Not thread-safe: the engine uses it from its one device
    thread.
    """

    def __init__(self, capacity: int, sizeof: Callable[[V], int]):
        self.capacity = capacity
        self._sizeof = sizeof
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value, marked most recently used, or None."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V) -> None:
        """Stores a value, evicting least recently used ones until it fits."""
        size = self._sizeof(value)
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        if size > self.capacity:
            return
        while self._items and self.bytes + size > self.capacity:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted
            self.evictions += 1
        self._items[key] = (value, size)
        self.bytes += size
