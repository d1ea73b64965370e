"""The render process: the cameras are rendered and JPEG-encoded outside the physics process, so rendering
(the simulator's heaviest work, and GIL-bound in a thread) can never delay a physics step.

``SimBridge.start()`` runs ``python -m dit4dit.drivers.sim.render_process`` (:class:`RenderProcess`) and
writes a pickled :class:`RenderJob` to its stdin. The child first drops to normal scheduling with
niceness +10 (before anything in it starts a thread), binds the camera streams and answers one line on
its stdout: ``ready``, or ``error <why>`` (a taken port still fails ``start()``). It then builds its own
G1Sim from the same SceneConfig and runs the camera loop (render_loop.py) on the shared snapshot
(shared_snapshot.py) until the snapshot's stop flag is set, it gets SIGTERM, or its parent goes away
(polled, so it never outlives a killed simulator). SIGINT is ignored: Ctrl-C reaches the whole process
group, and the parent stops the renderer in its own order.

:class:`RenderThread` runs the same loop in a thread of the physics process instead: the old way, kept
as a debugging baseline (``dit4dit-sim --render-in-process``, bench/bench_sim_realtime.py).
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .priority import background_priority

if TYPE_CHECKING:
    from .render_loop import CameraStreamConfig
    from .scene import SceneConfig
    from .shared_snapshot import SharedSnapshot

log = logging.getLogger(__name__)

MODULE = "dit4dit.drivers.sim.render_process"
READY_TIMEOUT_S = 60.0  # imports and socket binding on a loaded machine
STOP_TIMEOUT_S = 5.0


@dataclass
class RenderJob:
    scene: SceneConfig  # the physics process's, so both build the same model
    cameras: list[CameraStreamConfig]
    host: str
    jpeg_quality: int
    snapshot: str  # shared-memory block name
    parent_pid: int


def picklable_scene(scene: SceneConfig) -> SceneConfig:
    """The scene with its additions as plain SceneAddition values (names stay names)."""
    import dataclasses

    from .scene import get_addition

    return dataclasses.replace(scene, additions=[a if isinstance(a, str) else get_addition(a) for a in scene.additions])


class RenderProcess:
    """The parent's handle on the render process."""

    def __init__(self, job: RenderJob, snapshot: SharedSnapshot) -> None:
        self.job, self.snapshot = job, snapshot
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Spawn it and wait until its camera streams are bound; RuntimeError saying why not."""
        self.proc = subprocess.Popen([sys.executable, "-m", MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(pickle.dumps(self.job))
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; the handshake below says so
        line = None
        if select.select([self.proc.stdout], [], [], timeout_s)[0]:
            line = self.proc.stdout.readline().decode(errors="replace").strip()
        self.proc.stdout.close()
        if line != "ready":
            rc = self.stop()
            if line is None:
                why = f"no answer in {timeout_s:.0f} s"
            elif line.startswith("error "):
                why = line.removeprefix("error ")
            else:
                why = f"it exited ({rc}) before its camera streams were ready (see its messages above)"
            raise RuntimeError(f"camera render process: {why}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Ask it to stop (flag), then SIGTERM, then SIGKILL; reaped. Its exit status."""
        if self.proc is None:
            return None
        self.snapshot.stop = True
        for send in (None, self.proc.terminate, self.proc.kill):
            if send is not None:
                send()
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.wait()


class RenderThread:
    """``--render-in-process``: the camera loop in a thread of the physics process (its rendering holds the
    GIL against the physics loop: the behaviour the render process exists to avoid)."""

    def __init__(self, job: RenderJob, snapshot: SharedSnapshot) -> None:
        self.job, self.snapshot = job, snapshot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publishers: list[Any] = []

    def start(self) -> None:
        from .render_loop import bind_publishers

        self._publishers = bind_publishers(self.job.cameras, self.job.host, self.job.jpeg_quality)
        self._thread = threading.Thread(target=self._run, name="sim-render", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .render_loop import render_loop
        from .scene import G1Sim

        background_priority()
        sim = None
        try:
            sim = G1Sim(self.job.scene)
            reader = self.snapshot.view(sim.model, sim.data)
            render_loop(sim, reader, self.job.cameras, self._publishers, self._stop.is_set)
        except Exception:  # the physics and DDS go on; camera readers will report stale frames
            log.exception("camera render thread failed: no more frames will be published")
        finally:
            if sim is not None:
                sim.close()  # this thread's GL contexts
            for p in self._publishers:
                p.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return None


def main() -> int:
    """The render process itself (stdin: a pickled RenderJob; stdout: one handshake line)."""
    background_priority()  # first: every thread started from here on (BLAS, ZeroMQ, EGL) inherits it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s dit4dit-sim render %(levelname)s: %(message)s")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL's import-time INFO chatter
    job: RenderJob = pickle.load(sys.stdin.buffer)
    handshake = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed later goes to stderr, not into the closed handshake pipe

    from .render_loop import bind_publishers, render_loop
    from .scene import G1Sim
    from .shared_snapshot import SharedSnapshot

    try:
        publishers = bind_publishers(job.cameras, job.host, job.jpeg_quality)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which refuses to start
        handshake.write(f"error {e}\n")
        handshake.close()
        return 2
    handshake.write("ready\n")
    handshake.close()
    sim = snapshot = None
    try:
        sim = G1Sim(job.scene)
        snapshot = SharedSnapshot.attach(job.snapshot, sim.model, sim.data, len(job.cameras))
        render_loop(sim, snapshot, job.cameras, publishers,
                    lambda: terminated.is_set() or snapshot.stop or os.getppid() != job.parent_pid)
    except Exception:  # the physics and DDS go on; camera readers will report stale frames
        log.exception("camera rendering failed: no more frames will be published")
        return 1
    finally:
        for p in publishers:
            p.close()
        if sim is not None:
            sim.close()
        if snapshot is not None:
            snapshot.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
