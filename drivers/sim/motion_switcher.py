"""The robot's MotionSwitcher RPC service, as a G1 in debug mode answers it: no motion service active.

Unitree's low-level SDK examples (and dit4dit's driver on a real robot) first ask the ``motion_switcher``
service which built-in controller runs (``CheckMode``) and release it (``ReleaseMode``) until none does;
without an answer they time out and fail (the SDK returns ``None`` and the example indexes it). The
simulator has no built-in controller, so it answers like a robot in debug mode: CheckMode -> no mode
(``{"form": "0", "name": ""}``), ReleaseMode -> done; SelectMode is refused (there is nothing to start),
SetSilent / GetSilent keep a flag. Served over the SDK's own RPC server on the bridge's DDS domain.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def start_motion_switcher() -> Any:
    """Start answering the motion_switcher RPC (after ChannelFactoryInitialize). Returns the server."""
    from unitree_sdk2py.comm.motion_switcher import motion_switcher_api as api
    from unitree_sdk2py.rpc.internal import RPC_ERR_SERVER_API_NOT_IMPL
    from unitree_sdk2py.rpc.server import Server

    class SimMotionSwitcher(Server):
        def __init__(self) -> None:
            super().__init__(api.MOTION_SWITCHER_SERVICE_NAME)
            self.silent = False
            self.calls: dict[str, int] = {}

        def Init(self) -> None:  # noqa: N802 - the SDK's naming
            self._SetApiVersion(api.MOTION_SWITCHER_API_VERSION)
            for api_id, handler in ((api.MOTION_SWITCHER_API_ID_CHECK_MODE, self.check_mode),
                                    (api.MOTION_SWITCHER_API_ID_SELECT_MODE, self.select_mode),
                                    (api.MOTION_SWITCHER_API_ID_RELEASE_MODE, self.release_mode),
                                    (api.MOTION_SWITCHER_API_ID_SET_SILENT, self.set_silent),
                                    (api.MOTION_SWITCHER_API_ID_GET_SILENT, self.get_silent)):  # fmt: skip
                self._RegistHandler(api_id, handler, False)

        def _count(self, name: str) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1

        def check_mode(self, _parameter: str) -> tuple[int, str]:
            self._count("check_mode")
            return 0, json.dumps({"form": "0", "name": ""})

        def select_mode(self, parameter: str) -> tuple[int, str]:
            self._count("select_mode")
            log.warning("MotionSwitcher SelectMode(%s) refused: dit4dit-sim has no built-in motion service", parameter)
            return RPC_ERR_SERVER_API_NOT_IMPL, ""

        def release_mode(self, _parameter: str) -> tuple[int, str]:
            self._count("release_mode")
            return 0, ""

        def set_silent(self, parameter: str) -> tuple[int, str]:
            self._count("set_silent")
            try:
                self.silent = bool(json.loads(parameter or "{}").get("silent", False))
            except (ValueError, AttributeError):
                return RPC_ERR_SERVER_API_NOT_IMPL, ""
            return 0, ""

        def get_silent(self, _parameter: str) -> tuple[int, str]:
            self._count("get_silent")
            return 0, json.dumps({"silent": self.silent})

    server = SimMotionSwitcher()
    server.Init()
    server.Start(False)
    return server
