"""LeRobot dataset I/O, torch-free: written by the trial recorder and dit4dit-collect, read by training.

Below policy/ and runtime/; of the project it imports only drivers/g1_spec.py (the joint table, for
unitree_g1.py, the map of Unitree's G1 Dex3 layout).
"""

from dit4dit.datasets.common import CACHE_DIR, IMAGE_KEY_PREFIX, DatasetError
from dit4dit.datasets.tools import copy_subset
from dit4dit.datasets.v21 import Episode, LeRobotDataset, LeRobotWriter
from dit4dit.datasets.video import decode_video, encode_video

__all__ = ["CACHE_DIR", "IMAGE_KEY_PREFIX", "DatasetError", "Episode", "LeRobotDataset", "LeRobotWriter",
           "copy_subset", "decode_video", "encode_video"]
