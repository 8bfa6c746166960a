"""Safe state on the way out of a plan: the finally clauses of the lab.

Why wrappers and not ``try/finally`` in each plan: a bluesky plan's clean-up must itself be
messages for the RunEngine (``bps.mv(shutter, 0)``), yielded even when the RunEngine throws an
abort or an instrument error into the plan. ``bluesky.preprocessors`` does this correctly
(``finalize_wrapper`` runs its plan on success, error, abort and Ctrl-C; only ``RE.halt()`` skips
clean-up, by bluesky's definition of halt); these helpers name the two uses the plans need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from typing import Any

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.protocols import Stoppable

__all__ = ["finally_plan", "stop_on_failure"]

log = logging.getLogger("daqbridge.plans")


def stop_on_failure(plan: Generator, movables: Sequence[Any]) -> Generator:
    """Run ``plan``; if it fails or is aborted, ``stop()`` every movable, then re-raise.

    The RunEngine also stops what it moved at the end of every plan, but with
    ``success=True``; an explicit stop here says "failed" to the device (ophyd statuses of a
    running move fail instead of finishing) and reaches the wire before the run closes.
    """

    def stop_all(exc: BaseException) -> Generator:
        for obj in movables:
            if isinstance(obj, Stoppable):
                try:
                    yield from bps.stop(obj)
                except Exception as err:  # noqa: BLE001 - keep stopping the others
                    log.error(
                        "stopping %s after %r failed: %s", getattr(obj, "name", obj), exc, err
                    )

    return (yield from bpp.contingency_wrapper(plan, except_plan=stop_all))


def finally_plan(plan: Generator, final: Callable[[], Generator]) -> Generator:
    """Run ``plan`` and then ``final()`` whatever happens (error, abort, Ctrl-C)."""
    return (yield from bpp.finalize_wrapper(plan, final))
