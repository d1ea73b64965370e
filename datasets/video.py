"""H.264 mp4 encode/decode through PyAV (torch-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dit4dit.datasets.common import DatasetError

VIDEO_CODEC = "h264"
VIDEO_CRF = 18  # near-lossless at the small policy resolutions; keeps decoded frames close to what was seen


def encode_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 (T, H, W, 3) RGB frames to an H.264 mp4 (yuv420p; H and W must be even)."""
    import av  # lazy: only recording and training need it

    frames = np.ascontiguousarray(frames)
    _, h, w, c = frames.shape
    if c != 3 or frames.dtype != np.uint8:
        raise DatasetError(f"video frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if h % 2 or w % 2:
        raise DatasetError(f"video frames need even height and width for yuv420p, got {h}x{w}")
    from fractions import Fraction

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(VIDEO_CODEC, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Every frame a keyframe-friendly GOP keeps random access cheap for training loaders.
        stream.options = {"crf": str(VIDEO_CRF), "g": "8", "preset": "veryfast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_video(path: Path) -> np.ndarray:
    """Every frame of an mp4 as uint8 (T, H, W, 3) RGB."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise DatasetError(f"{path}: no video frames")
    return np.stack(frames)
