"""A bounded LRU cache of model outputs, keyed by the model's version and the exact input.

The key is the sha256 of the model version, the input's dtype, its shape and
its bytes, so a changed model file (a new version) or an input that differs in
one bit never reads another's answer. A hit skips the batcher altogether.
"""

from __future__ import annotations

import collections
import hashlib
import threading

import numpy as np

from hamjax._checks import check_int


def cache_key(version: str, x: np.ndarray) -> str:
    """The sha256 of ``(version, dtype, shape, bytes)`` of a validated input, as hex.

    Examples:
      >>> import numpy as np
      >>> a = cache_key("v1", np.zeros((1, 2), np.float32))
      >>> a == cache_key("v1", np.zeros((1, 2), np.float32)), a == cache_key("v2", np.zeros((1, 2), np.float32))
      (True, False)
      >>> a == cache_key("v1", np.zeros((2, 1), np.float32))
      False
    """
    x = np.ascontiguousarray(x)
    digest = hashlib.sha256()
    digest.update(f"{version}\0{x.dtype.str}\0{x.shape}\0".encode())
    digest.update(x.data)
    return digest.hexdigest()


class ResponseCache:
    """At most ``size`` outputs, least recently used evicted first; thread-safe.

    Args:
      size: most entries kept (>= 1).

    Attributes:
      hits, misses: lookups that found an entry or did not.

    Examples:
      >>> import numpy as np
      >>> cache = ResponseCache(1)
      >>> cache.put("a", np.ones(2)); cache.put("b", np.zeros(2))
      >>> cache.get("a") is None, cache.get("b").tolist(), (cache.hits, cache.misses)
      (True, [0.0, 0.0], (1, 1))
    """

    def __init__(self, size: int):
        self.size = check_int("ResponseCache", "size", size, minimum=1)
        self._items: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> np.ndarray | None:
        """The stored output for ``key`` (now the most recently used), or None."""
        with self._lock:
            y = self._items.get(key)
            if y is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return y

    def put(self, key: str, y: np.ndarray) -> None:
        """Store ``y`` (read-only) under ``key``, evicting the least recently used entry beyond ``size``."""
        y = np.array(y, copy=True)
        y.flags.writeable = False
        with self._lock:
            self._items[key] = y
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
