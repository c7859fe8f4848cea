"""Optional numba compilation of the chain kernels, with the numpy path as the fallback.

The pricing and detector hot paths exist twice: as numpy array code (the reference, always
available) and as fused scalar loops compiled by numba (:mod:`agent.pricing._kernels`,
:mod:`agent.detector._kernels`). On a 600-contract chain numpy's fixed cost per call, paid over
dozens of small array operations, dominates; the compiled loops do the same arithmetic in one pass.

* :func:`njit` compiles with ``cache=True`` (machine code stored beside the sources, or in
  ``NUMBA_CACHE_DIR``). When no cache location is writable (a read-only install, a read-only
  root file system), the cache moves to a per-user directory under the system temp dir, and
  failing that the kernels are compiled in memory on every start (a warning says so).
* :func:`kernels_ready` compiles every kernel once per process on tiny inputs (or loads them from
  the cache). If numba is missing, disabled (``NUMBA_DISABLE_JIT``) or fails to compile, it logs a
  warning and returns False: callers then use the numpy path. Nothing fails at trading time.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

numba: Any
try:
    import numba as _numba_module
    from numba.core.errors import NumbaError

    numba = _numba_module
    HAVE_NUMBA = not numba.config.DISABLE_JIT
except ImportError:  # pragma: no cover - numba is a runtime dependency; the fallback stays tested
    numba = None
    HAVE_NUMBA = False

    class NumbaError(Exception):  # type: ignore[no-redef]
        """Stand-in so that ``except NumbaError`` works without numba."""


COMPILE_ERRORS: tuple[type[BaseException], ...] = (
    NumbaError,
    RuntimeError,
    OSError,
    TypeError,
    ValueError,
    AttributeError,
    ImportError,
)
"""What a failed compilation or cache load can raise (numba's own errors, file system, typing)."""


def _fallback_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"spyops-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")


def njit(fn: F) -> F:
    """``numba.njit(cache=True)`` when numba is usable; the plain function otherwise (never called
    on the hot path then: :func:`kernels_ready` is False)."""
    if not HAVE_NUMBA:
        return fn
    try:
        return cast(F, numba.njit(cache=True, nogil=True, error_model="numpy")(fn))
    except RuntimeError:  # "cannot cache function ...: no locator available"
        if not numba.config.CACHE_DIR:
            numba.config.CACHE_DIR = _fallback_cache_dir()
            log.warning(
                "numba cannot write its cache beside the sources; caching in %s (set NUMBA_CACHE_DIR "
                "to a writable directory to choose)",
                numba.config.CACHE_DIR,
            )
            try:
                return cast(F, numba.njit(cache=True, nogil=True, error_model="numpy")(fn))
            except RuntimeError:
                pass
        log.warning("numba cannot cache %s: compiled in memory on every start", fn.__name__)
        return cast(F, numba.njit(cache=False, nogil=True, error_model="numpy")(fn))


_state: dict[str, bool] = {}
COMPILE_SECONDS: dict[str, float] = {}
"""Seconds spent in each warm-up (``pricing``, ``detector``): compile, or load from the cache."""


def warm(name: str, warm_up: Callable[[], None]) -> bool:
    """Run ``warm_up`` (which calls every kernel of a group once) the first time; remember the outcome."""
    if name in _state:
        return _state[name]
    if not HAVE_NUMBA:
        log.warning("numba is not available: %s uses the numpy path (slower, same results)", name)
        _state[name] = False
        return False
    t0 = time.perf_counter()
    try:
        warm_up()
    except COMPILE_ERRORS as exc:
        log.warning("numba could not compile the %s kernels (%s): using the numpy path", name, exc)
        _state[name] = False
        return False
    COMPILE_SECONDS[name] = time.perf_counter() - t0
    _state[name] = True
    return True


def forget() -> None:
    """Forget the warm-up outcomes (tests)."""
    _state.clear()
    COMPILE_SECONDS.clear()
