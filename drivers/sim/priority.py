"""Scheduling of the simulator's threads and processes (Linux; elsewhere these do nothing).

The physics thread may run SCHED_FIFO (``dit4dit-sim --rt-priority``), set before CycloneDDS starts so
its receive threads inherit it. A thread inherits its creator's policy, so every Python helper thread
the physics thread starts (control socket, hand state) drops back to normal scheduling first: it must
never hold the CPU, and the GIL, against the physics. The renderer runs normal and niced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

RENDER_NICE = 10  # the render process (or --render-in-process thread) yields to physics on a small CPU


def physics_priority(priority: int) -> bool:
    """SCHED_FIFO at ``priority`` for the calling thread; False (with a warning) where not permitted."""
    from dit4dit.drivers.g1_robot import set_realtime_priority

    return set_realtime_priority(priority, "dit4dit-sim physics loop")


def helper_thread_priority() -> None:
    """Normal scheduling (SCHED_OTHER) for the calling thread, whatever its creator ran at."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError) as e:  # not Linux
        log.debug("could not set normal scheduling: %s", e)


@contextlib.contextmanager
def normal_priority() -> Iterator[None]:
    """Normal scheduling for the calling thread inside the block (threads started there inherit it), then
    its policy and priority as before."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):  # not Linux
        yield
        return
    helper_thread_priority()
    try:
        yield
    finally:
        try:
            os.sched_setscheduler(0, policy, param)
        except OSError as e:
            log.warning("could not restore the scheduling policy %s: %s", policy, e)


def background_priority(nice: int = RENDER_NICE) -> None:
    """Normal scheduling and ``nice`` more niceness for the calling thread (Linux: per thread; threads
    started afterwards inherit it, so call it before starting any)."""
    helper_thread_priority()
    try:
        tid = threading.get_native_id()  # Linux: PRIO_PROCESS with a thread id sets that thread only
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError) as e:
        log.debug("could not lower the priority: %s", e)
