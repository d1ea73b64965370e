"""What the operator asks for, gathered once per control tick: e-stop, takeover, hand-back, start, verdict.

Sources:
* the wireless remote, read from every robot state (``RobotState.remote``): the e-stop combination
  (``safety.estop_buttons``, default L2+B) counts while held; takeover / release combinations and
  ``start`` count on their rising edge;
* the keyboard (stdin; cbreak mode when it is a terminal, plain bytes from a pipe): ``e`` or space =
  e-stop, ``t`` = take over, ``h`` = hand back to the policy, ``g`` = start, ``y`` / ``n`` = mark the
  episode success / failure; with ``teleop.device: keyboard`` every key is also fed to KeyboardTeleop
  (its keys, 12mwsadrf[], do not overlap these);
* the teleop device of ``teleop.device`` (drivers/teleop.py): started from the current target at
  takeover, then polled for joint targets while in TELEOP (None = no live input: hold).
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KEY_ESTOP = ("e", " ")
KEY_TAKEOVER = "t"
KEY_RELEASE = "h"
KEY_START = "g"
KEY_SUCCESS = "y"
KEY_FAILURE = "n"


@dataclass(frozen=True)
class OperatorCommand:
    estop: str | None = None  # source of an e-stop request
    takeover: str | None = None  # source of a takeover request (rising edge)
    release: str | None = None  # source of a hand-back request
    start: bool = False
    success: bool | None = None  # episode verdict
    teleop_target: np.ndarray | None = None  # (29,) joint targets from the teleop device


class KeyboardListener:
    """Reads single keys from stdin in a thread (raw/cbreak when it is a terminal, bytes otherwise)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self._keys: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tty_state: Any = None

    def start(self) -> None:
        try:
            fd = self.stream.fileno()
        except (AttributeError, ValueError, OSError):
            log.info("keyboard: stdin is not readable; keyboard e-stop unavailable (use the remote or Ctrl-C)")
            return
        if os.isatty(fd):
            import termios
            import tty

            self._tty_state = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._run, args=(fd,), name="keyboard", daemon=True)
        self._thread.start()
        log.info("keyboard: e/space = e-stop, t = take over, h = hand back, g = start, y/n = success/failure")

    def _run(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(fd, 64)
            if not data:  # EOF: stdin closed, nothing more will come
                return
            with self._lock:
                self._keys.extend(data.decode(errors="ignore").lower())

    def take(self) -> list[str]:
        with self._lock:
            keys, self._keys = self._keys, []
        return keys

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._tty_state is not None:
            import termios

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._tty_state)
            self._tty_state = None


class OperatorInputs:
    def __init__(
        self,
        estop_combo: list[str],
        takeover_combo: list[str],
        release_combo: list[str],
        keyboard: KeyboardListener | None,
        teleop: Any = None,
    ) -> None:
        from dit4dit.drivers.remote import combo_mask

        self.estop_mask = combo_mask(estop_combo)
        self.takeover_mask = combo_mask(takeover_combo)
        self.release_mask = combo_mask(release_combo)
        self.start_mask = combo_mask(["start"])
        self.estop_name = "+".join(estop_combo)
        self.takeover_name = "+".join(takeover_combo)
        self.release_name = "+".join(release_combo)
        self.keyboard = keyboard
        self.teleop = teleop
        self._teleop_active = False
        self._prev_keys = 0

    @classmethod
    def from_config(cls, cfg: Any, remote_source: Any, measured_source: Any = None) -> OperatorInputs:
        """``remote_source``: a callable returning the latest Remote (for the remote-sticks device);
        ``measured_source``: the measured joints, so stick and key targets cannot wind up past a blocked arm."""
        from dit4dit.drivers.teleop import make_teleop

        t = cfg.teleop
        device = make_teleop(
            t.device, controlled=cfg.robot.controlled_joints, endpoint=t.endpoint,
            stick_velocity=t.stick_velocity, timeout_s=t.timeout_s, remote_source=remote_source,
            measured_source=measured_source,
        )  # fmt: skip
        return cls(cfg.safety.estop_buttons, t.takeover_buttons, t.release_buttons, KeyboardListener(), device)

    def begin_teleop(self, q_current: np.ndarray) -> None:
        """At takeover: the device starts from the current target, so the handover itself does not move."""
        self._teleop_active = self.teleop is not None
        if self.teleop is not None:
            self.teleop.start(q_current)

    def end_teleop(self) -> None:
        self._teleop_active = False

    def start(self) -> None:
        if self.keyboard is not None:
            self.keyboard.start()

    def stop(self) -> None:
        if self.keyboard is not None:
            self.keyboard.stop()
        if self.teleop is not None:
            self.teleop.close()

    def poll(self, state: Any, now: float) -> OperatorCommand:
        keys = int(state.remote.keys)
        rose = keys & ~self._prev_keys
        self._prev_keys = keys

        def rising(mask: int) -> bool:
            return keys & mask == mask and rose & mask != 0

        estop = takeover = release = None
        start = False
        success: bool | None = None
        if keys & self.estop_mask == self.estop_mask:
            estop = f"remote {self.estop_name}"
        if rising(self.takeover_mask):
            takeover = f"remote {self.takeover_name}"
        if rising(self.release_mask):
            release = f"remote {self.release_name}"
        if rising(self.start_mask):
            start = True
        if self.keyboard is not None:
            for k in self.keyboard.take():
                if self.teleop is not None and hasattr(self.teleop, "feed"):
                    self.teleop.feed(k)
                if k in KEY_ESTOP:
                    estop = estop or "keyboard"
                elif k == KEY_TAKEOVER:
                    takeover = takeover or "keyboard"
                elif k == KEY_RELEASE:
                    release = release or "keyboard"
                elif k == KEY_START:
                    start = True
                elif k == KEY_SUCCESS:
                    success = True
                elif k == KEY_FAILURE:
                    success = False
        target = None
        if self._teleop_active and self.teleop is not None:
            target = self.teleop.target(now)
        return OperatorCommand(estop, takeover, release, start, success, target)
