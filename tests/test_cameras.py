"""Cameras: frame gate (duplicates, staleness), ZeroMQ stream, OpenCV on a recorded video, RealSense
frame handling without a device (and the device path when one is attached)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hst
from dit4dit.drivers.cameras import (
    CameraError,
    CameraFault,
    FrameGate,
    ImageStreamPublisher,
    OpenCVCameraConfig,
    RealSenseCameraConfig,
    SimCameraConfig,
    ZmqCameraConfig,
    camera_config,
    check_fresh,
    make_camera,
)
from dit4dit.drivers.cameras.realsense import frame_from_arrays, select_device
from dit4dit.drivers.cameras.zmq_stream import decode_frame, encode_frame, local_stamp


def _img(value: int, h: int = 48, w: int = 64) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = value  # R
    img[..., 1] = np.arange(w, dtype=np.uint8)[None, :]  # a gradient so orientation errors show
    img[..., 2] = 255 - value
    return img


# -- frame gate -------------------------------------------------------------------------------------
def test_gate_rejects_repeated_frame_numbers_and_timestamps():
    gate = FrameGate("head")
    assert gate.accept(_img(1), 1.0, device_number=10, device_stamp=0.100).frame_id == 10
    assert gate.accept(_img(1), 1.1, device_number=10, device_stamp=0.133) is None  # same number
    assert gate.accept(_img(1), 1.1, device_number=11, device_stamp=0.100) is None  # timestamp did not advance
    assert gate.accept(_img(2), 1.2, device_number=12, device_stamp=0.166).frame_id == 12
    assert (gate.accepted, gate.duplicates) == (2, 2)
    with pytest.raises(CameraFault, match=r"uint8 \(H, W, 3\)"):
        gate.accept(np.zeros((4, 4), np.uint8), 1.3, device_number=13)


def test_stale_frame_is_a_fault_naming_the_camera():
    f = FrameGate("wrist").accept(_img(1), stamp=10.0)
    assert check_fresh(f, "wrist", 0.2, now=10.1) is f
    with pytest.raises(CameraFault, match=r"camera 'wrist'.*300 ms old \(max 200 ms\)"):
        check_fresh(f, "wrist", 0.2, now=10.3)
    with pytest.raises(CameraFault, match="no frame"):
        check_fresh(None, "wrist", 0.2)


# -- RealSense frame handling (no device needed) ---------------------------------------------------
def test_realsense_frame_handling_without_device():
    gate = FrameGate("head")
    depth = np.full((48, 64), 1000, np.uint16)
    f = frame_from_arrays(gate, _img(3), 100, 3300.0, stamp=5.0, depth=depth, expect_shape=(48, 64))
    assert f.frame_id == 100 and f.device_stamp == pytest.approx(3.3) and f.depth.dtype == np.uint16
    assert frame_from_arrays(gate, _img(3), 100, 3300.0, stamp=5.1) is None  # a repeated buffer
    with pytest.raises(CameraFault, match=r"colour frame is \(48, 64\), configured \(480, 640\)"):
        frame_from_arrays(gate, _img(3), 101, 3333.0, stamp=5.2, expect_shape=(480, 640))
    with pytest.raises(CameraFault, match="aligned depth must be uint16"):
        frame_from_arrays(gate, _img(3), 102, 3366.0, stamp=5.2, depth=np.zeros((10, 10), np.uint16))


def test_realsense_device_selection():
    devs = [("123", "Intel RealSense D435I"), ("456", "Intel RealSense D405")]
    assert select_device(devs, "456") == "456"
    assert select_device(devs, "Intel RealSense D405") == "456"
    assert select_device(devs[:1], None) == "123"
    with pytest.raises(CameraError, match="several RealSense devices"):
        select_device(devs, None)
    with pytest.raises(CameraError, match="'999' not attached; attached: Intel RealSense D435I"):
        select_device(devs, "999")
    with pytest.raises(CameraError, match="no RealSense device found; check the USB3 cable"):
        select_device([], None, "head")


def _realsense_devices() -> list:
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        pytest.skip(f"pyrealsense2 not importable: {e}")
    return list(rs.context().query_devices())


def test_realsense_missing_device_is_camera_error():
    if _realsense_devices():
        pytest.skip("a RealSense is attached; this test needs none")
    cam = make_camera(RealSenseCameraConfig(name="head", serial_number_or_name="000000000000"))
    with pytest.raises(CameraError, match="camera 'head': no RealSense device found"):
        cam.connect()


def test_realsense_device_streams():
    if not _realsense_devices():
        pytest.skip("no RealSense device attached to this machine")
    cam = make_camera(RealSenseCameraConfig(name="rs", width=640, height=480, fps=30, use_depth=True))
    with cam:
        f1 = cam.read_new(timeout_s=2.0)
        f2 = cam.read_new(timeout_s=2.0)
        assert f1.image.shape == (480, 640, 3) and f1.depth.shape == (480, 640)
        assert f2.frame_id > f1.frame_id and f2.device_stamp > f1.device_stamp


# -- ZeroMQ stream ----------------------------------------------------------------------------------
def test_encode_decode_raw_is_exact_and_jpeg_close():
    img = _img(200)
    header, out, depth = decode_frame(encode_frame(img, camera="head", frame_id=3, stamp_mono=time.monotonic(), encoding="raw"))
    np.testing.assert_array_equal(out, img)
    assert header["frame_id"] == 3 and header["shape"] == [48, 64, 3] and depth is None
    _, out, _ = decode_frame(encode_frame(img, camera="head", frame_id=4, stamp_mono=0.0, encoding="jpeg", jpeg_quality=95))
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 3  # and colours stay in RGB order
    d = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    _, _, depth = decode_frame(encode_frame(img, camera="head", frame_id=5, stamp_mono=0.0, encoding="raw", depth=d))
    np.testing.assert_array_equal(depth, d)
    with pytest.raises(ValueError, match="version"):
        decode_frame(b"\x81\xa1v\x07")


def test_capture_stamp_mapping_across_hosts():
    now_mono, now_wall = 1000.0, 1_700_000_000.0
    header = {"clock": "other-host/boot", "stamp_mono": 5.0, "stamp_wall": now_wall - 0.25}
    assert local_stamp(header, now_mono, now_wall) == pytest.approx(now_mono - 0.25)
    header["stamp_wall"] = now_wall + 3.0  # sender's clock ahead: never a frame from the future
    assert local_stamp(header, now_mono, now_wall) == pytest.approx(now_mono)


class _Feeder:
    """Publishes numbered frames on a thread until stopped."""

    def __init__(self, pub: ImageStreamPublisher, period: float = 0.01) -> None:
        self.pub, self.period, self.stop, self.n = pub, period, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.pub.publish(_img(self.n % 250))
            self.n += 1
            time.sleep(self.period)

    def __enter__(self) -> _Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)


def test_zmq_camera_reads_latest_and_faults_when_stream_stops(free_port):
    ep = f"tcp://127.0.0.1:{free_port}"
    with ImageStreamPublisher(ep, "head", encoding="raw") as pub:
        cam = make_camera(ZmqCameraConfig(name="head", endpoint=ep, stream_camera="head", max_age_s=0.3))
        with _Feeder(pub):
            cam.connect()
            f1 = cam.read_new(timeout_s=1.0)
            f2 = cam.read_new(timeout_s=1.0)
            assert f2.frame_id > f1.frame_id and f2.stamp >= f1.stamp
            assert f1.image.shape == (48, 64, 3) and f1.image.dtype == np.uint8
            assert cam.read_latest().age_s < 0.3
        time.sleep(0.5)  # publisher stopped: the newest frame ages out
        with pytest.raises(CameraFault, match=r"camera 'head': newest frame \d+ is \d+ ms old"):
            cam.read_latest()
        cam.disconnect()


def test_zmq_camera_keeps_only_the_newest_frame(free_port):
    ep = f"tcp://127.0.0.1:{free_port}"
    with ImageStreamPublisher(ep, "head", encoding="raw") as pub:
        cam = make_camera(ZmqCameraConfig(name="head", endpoint=ep))
        with _Feeder(pub, period=0.005) as feeder:
            cam.connect()
            time.sleep(0.2)
            f = cam.read_latest(0.2)
            # The reader holds no backlog: what it returns is within a few frames of the newest sent.
            assert feeder.n - 1 - f.frame_id < 10
        cam.disconnect()


def test_zmq_camera_accepts_a_restarted_publisher(free_port):
    ep = f"tcp://127.0.0.1:{free_port}"
    cam = make_camera(ZmqCameraConfig(name="head", endpoint=ep))
    with ImageStreamPublisher(ep, "head") as pub, _Feeder(pub):
        cam.connect()
        cam.read_new(1.0)
    time.sleep(0.2)
    with ImageStreamPublisher(ep, "head") as pub, _Feeder(pub):  # frame ids start at 0 again
        time.sleep(0.3)
        assert cam.read_latest(0.2).age_s < 0.2
    cam.disconnect()


def test_zmq_camera_no_publisher_is_camera_error(free_port):
    cam = make_camera(ZmqCameraConfig(name="head", endpoint=f"tcp://127.0.0.1:{free_port}", connect_timeout_s=0.5))
    with pytest.raises(CameraError, match=r"camera 'head' \(image stream tcp://127.0.0.1:\d+\) opened but delivered no frame"):
        cam.connect()


def test_sim_camera_insists_on_simulator_source_and_camera_name(free_port):
    ep = f"tcp://127.0.0.1:{free_port}"
    with ImageStreamPublisher(ep, "head", source="realsense") as pub, _Feeder(pub):
        cam = make_camera(SimCameraConfig(name="head", endpoint=ep, connect_timeout_s=10.0))
        with pytest.raises(CameraError, match="comes from 'realsense', expected 'dit4dit-sim'"):
            cam.connect()
    with ImageStreamPublisher(ep, "left_wrist", source="dit4dit-sim") as pub, _Feeder(pub):
        cam = make_camera(SimCameraConfig(name="head", endpoint=ep, connect_timeout_s=10.0))
        with pytest.raises(CameraError, match="carries camera 'left_wrist', expected 'head'"):
            cam.connect()
    with ImageStreamPublisher(ep, "head", source="dit4dit-sim") as pub, _Feeder(pub):
        cam = make_camera(SimCameraConfig(name="head", endpoint=ep))
        with cam:
            assert cam.read_latest(0.2).image.shape == (48, 64, 3)


# -- OpenCV on a recorded video ---------------------------------------------------------------------
def _write_video(path: Path, n: int, fps: float = 30.0) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert w.isOpened()
    for i in range(n):
        w.write(cv2.cvtColor(_img(40 + 4 * i), cv2.COLOR_RGB2BGR))
    w.release()


def test_opencv_camera_plays_a_recording_then_faults_at_its_end(tmp_path):
    video = tmp_path / "rec.avi"
    _write_video(video, n=15)
    cam = make_camera(OpenCVCameraConfig(name="usb", device=str(video), fps=60, width=64, height=48, max_age_s=0.2))
    cam.connect()
    frames = [cam.read_new(timeout_s=1.0) for _ in range(5)]
    ids = [f.frame_id for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == 5
    f = frames[0]
    assert f.image.shape == (48, 64, 3)
    # RGB order survives BGR video I/O: red channel is the counter, blue its complement.
    assert abs(int(f.image[..., 0].mean()) + int(f.image[..., 2].mean()) - 255) < 8
    time.sleep(0.8)  # 15 frames at 60 fps are long gone: the camera must fault, not freeze
    with pytest.raises(CameraFault):
        cam.read_latest()
    cam.disconnect()


def test_opencv_missing_device_is_camera_error(tmp_path):
    with pytest.raises(CameraError, match="does not exist; check the USB cable"):
        make_camera(OpenCVCameraConfig(name="usb", device="/dev/video-missing")).connect()
    with pytest.raises(CameraError, match="cannot open OpenCV device 57"):
        make_camera(OpenCVCameraConfig(name="usb", device=57)).connect()


def test_opencv_wrong_size_is_reported(tmp_path):
    video = tmp_path / "rec.avi"
    _write_video(video, n=30)
    cam = make_camera(OpenCVCameraConfig(name="usb", device=str(video), width=640, height=480, connect_timeout_s=1.0))
    with pytest.raises(CameraError, match="delivers 64x48, configured 640x480"):
        cam.connect()


# -- factory and configs ----------------------------------------------------------------------------
def test_factory_and_config_validation():
    cfg = camera_config("zmq", name="head", endpoint="tcp://127.0.0.1:1")
    assert type(make_camera(cfg)).__name__ == "ZmqCamera"
    assert camera_config("sim", name="head", endpoint="tcp://127.0.0.1:1").stream_camera == "head"
    with pytest.raises(ValueError, match="unknown camera kind 'gopro'"):
        camera_config("gopro")
    with pytest.raises(ValueError, match="both width and height"):
        OpenCVCameraConfig(width=640)
    with pytest.raises(ValueError, match="must look like tcp://"):
        ZmqCameraConfig(endpoint="127.0.0.1:5555")


@given(seq=hst.lists(hst.tuples(hst.integers(0, 50), hst.floats(0, 10, allow_nan=False)), max_size=60))
def test_gate_only_ever_moves_forward(seq):
    gate = FrameGate("head")
    img = _img(1, 4, 4)
    accepted = [f for n, t in seq if (f := gate.accept(img, 0.0, device_number=n, device_stamp=t)) is not None]
    ids = [f.frame_id for f in accepted]
    stamps = [f.device_stamp for f in accepted]
    assert ids == sorted(set(ids)) and stamps == sorted(set(stamps))  # strictly increasing: no repeat, no going back
    assert gate.accepted + gate.duplicates == len(seq)
