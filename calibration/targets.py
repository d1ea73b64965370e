"""Calibration targets (ChArUco boards) and their detection, shared by calibration and the simulator props.

A target is described by plain numbers so the same definition prints a real board, textures the
simulated one and drives detection. Board frame (OpenCV's convention): origin at the board's top-left
outer corner, x along the squares' rows (to the right on the printout), y down the printout, z into
the board (away from a viewer looking at its face).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

_DICTIONARIES = {
    "DICT_4X4_50": cv2.aruco.DICT_4X4_50,
    "DICT_4X4_100": cv2.aruco.DICT_4X4_100,
    "DICT_5X5_100": cv2.aruco.DICT_5X5_100,
    "DICT_6X6_250": cv2.aruco.DICT_6X6_250,
}


@dataclass(frozen=True)
class CharucoTarget:
    """A ChArUco board: ``squares_x`` x ``squares_y`` chessboard squares with ArUco markers in the white ones.

    ``first_marker_id`` lets two boards share one dictionary without sharing marker ids (the intrinsics
    board and the wrist plate are both visible in some views; their ids must never collide).
    """

    name: str
    squares_x: int
    squares_y: int
    square_m: float
    marker_m: float
    dictionary: str = "DICT_4X4_50"
    first_marker_id: int = 0

    def __post_init__(self) -> None:
        if self.squares_x < 2 or self.squares_y < 2:
            raise ValueError(f"target {self.name!r}: need at least 2x2 squares, got {self.squares_x}x{self.squares_y}")
        if not 0 < self.marker_m < self.square_m:
            raise ValueError(
                f"target {self.name!r}: marker_m ({self.marker_m}) must be > 0 and smaller than square_m ({self.square_m})"
            )
        if self.dictionary not in _DICTIONARIES:
            raise ValueError(f"target {self.name!r}: unknown dictionary {self.dictionary!r}; known: {sorted(_DICTIONARIES)}")
        last = self.first_marker_id + self.n_markers
        size = cv2.aruco.getPredefinedDictionary(_DICTIONARIES[self.dictionary]).bytesList.shape[0]
        if self.first_marker_id < 0 or last > size:
            raise ValueError(
                f"target {self.name!r}: marker ids {self.first_marker_id}..{last - 1} do not fit {self.dictionary} "
                f"({size} markers); use a larger dictionary or a smaller first_marker_id"
            )

    @property
    def n_markers(self) -> int:
        return (self.squares_x * self.squares_y) // 2

    @property
    def size_m(self) -> tuple[float, float]:
        """(width, height) of the chessboard area in metres."""
        return self.squares_x * self.square_m, self.squares_y * self.square_m

    @property
    def n_corners(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    def board(self) -> cv2.aruco.CharucoBoard:
        dictionary = cv2.aruco.getPredefinedDictionary(_DICTIONARIES[self.dictionary])
        ids = np.arange(self.first_marker_id, self.first_marker_id + self.n_markers, dtype=np.int32)
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, dictionary, ids)

    def image(self, px_per_square: int = 100) -> np.ndarray:
        """The board as a uint8 grayscale image with no margin: exactly the chessboard area."""
        size = (self.squares_x * px_per_square, self.squares_y * px_per_square)
        return self.board().generateImage(size, marginSize=0, borderBits=1)

    def corners_m(self) -> np.ndarray:
        """(N, 3) inner chessboard corners in the board frame, in ChArUco corner-id order."""
        return np.asarray(self.board().getChessboardCorners(), dtype=np.float64).reshape(-1, 3)


@dataclass
class Detection:
    """ChArUco corners found in one image: ids, board-frame 3D points and pixel coordinates."""

    ids: np.ndarray  # (N,) int
    object_points: np.ndarray  # (N, 3) float64, board frame (m)
    image_points: np.ndarray  # (N, 2) float64, pixels

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class CharucoDetectorFor:
    """Detects one target's ChArUco corners; reuses the OpenCV detector across images."""

    def __init__(self, target: CharucoTarget) -> None:
        self.target = target
        self._board = target.board()
        params = cv2.aruco.CharucoParameters()
        det_params = cv2.aruco.DetectorParameters()
        # Sub-pixel refinement of marker corners helps the interpolation of chessboard corners.
        det_params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        self._detector = cv2.aruco.CharucoDetector(self._board, params, det_params)
        self._corners = target.corners_m()

    def detect(self, image: np.ndarray) -> Detection:
        """Corners of this target in an RGB or grayscale uint8 image (empty Detection if none)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"target {self.target.name!r}: expected a uint8 (H, W) or (H, W, 3) image, "
                f"got {getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}"
            )
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        ch_corners, ch_ids, _, _ = self._detector.detectBoard(gray)
        if ch_ids is None or len(ch_ids) == 0:
            return Detection(np.zeros(0, int), np.zeros((0, 3)), np.zeros((0, 2)))
        ids = ch_ids.reshape(-1).astype(int)
        return Detection(ids, self._corners[ids].copy(), ch_corners.reshape(-1, 2).astype(np.float64))


# The two targets the project uses. Print the board at 100 % scale and measure a square: square_m must match.
INTRINSICS_BOARD = CharucoTarget("intrinsics_board", 7, 5, 0.04, 0.03, "DICT_4X4_50", first_marker_id=0)
# 5x4 squares of 16 mm (80 x 64 mm) on the back of the G1's hand; ids 20..29 never collide with the board's 0..16.
WRIST_PLATE = CharucoTarget("wrist_plate", 5, 4, 0.016, 0.012, "DICT_4X4_50", first_marker_id=20)

# Where the wrist plate is clipped: on the back (+z face) of the right rubber hand, centred, printed face up.
# Only a starting guess for planning poses; hand-eye calibration estimates the true mount itself.
WRIST_PLATE_PARENT = "right_rubber_hand"
WRIST_PLATE_POS_IN_HAND = (0.055, 0.0, 0.037)  # plate body centre (m); the printed face is 1 mm above it

TARGETS: dict[str, CharucoTarget] = {t.name: t for t in (INTRINSICS_BOARD, WRIST_PLATE)}


def write_printable(target: CharucoTarget, folder: Path, dpi: int = 300) -> Path:
    """A PNG of the target with a white margin, at ``dpi``; print at 100 % and check one square's size."""
    px_per_m = dpi / 0.0254
    px_per_square = round(target.square_m * px_per_m)
    board = target.image(px_per_square)
    margin = px_per_square // 2
    page = np.full((board.shape[0] + 2 * margin, board.shape[1] + 2 * margin), 255, np.uint8)
    page[margin:margin + board.shape[0], margin:margin + board.shape[1]] = board
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{target.name}_{target.squares_x}x{target.squares_y}_{target.square_m * 1000:g}mm_{dpi}dpi.png"
    if not cv2.imwrite(str(path), page):
        raise OSError(f"could not write {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the calibration targets as printable PNGs.")
    ap.add_argument("--print", dest="folder", type=Path, required=True, help="output folder")
    ap.add_argument("--dpi", type=int, default=300)
    args = ap.parse_args(argv)
    for t in TARGETS.values():
        print(write_printable(t, args.folder, args.dpi))


if __name__ == "__main__":
    main()
