"""The dit4dit wire format: msgpack frames over ZeroMQ, numpy arrays as raw bytes. Never pickle.

Torch-free: the robot imports this through `runtime/client.py`. The normative description is
docs/protocol.md; this module is its one implementation, shared by the client and the server.

A request is one msgpack map  {"v": 1, "id": int, "endpoint": str, "token": str?, "data": map}
and a reply is                {"v": 1, "id": int, "ok": true,  "data": map}
                           or {"v": 1, "id": int, "ok": false, "error": {"code", "field", "message"}}.
An array is the map {"nd": true, "dtype": "<f4", "shape": [..], "data": bin}; an image may instead be
{"jpeg": bin}. Every size is checked against its declared shape and against a maximum before
anything is allocated, so a hostile sender cannot make the receiver allocate a gigabyte.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

ENDPOINTS = ("metadata", "infer", "reset", "ping")

# Limits. A 480x640x3 frame is 0.9 MB; 8 cameras x 17 context frames of 720p would be 376 MB,
# beyond any sane request, so 64 MiB per message is generous and still cheap to refuse.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_ARRAY_BYTES = 64 * 1024 * 1024
MAX_ARRAY_DIMS = 6
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_STRING_CHARS = 4096

# Kinds numpy can carry as raw bytes without any object reconstruction. Object ("O"), void ("V"),
# complex ("c"), strings ("U", "S") and datetimes ("M", "m") are refused.
_ALLOWED_KINDS = frozenset("biuf")

# Error codes carried in error replies (docs/protocol.md lists them).
E_MALFORMED = "malformed"  # not msgpack, truncated, or not a map
E_VERSION = "version"  # protocol version mismatch
E_UNAUTHORIZED = "unauthorized"  # wrong or missing token
E_UNKNOWN_ENDPOINT = "unknown_endpoint"
E_INVALID = "invalid"  # a field has the wrong type, dtype, shape or size
E_TOO_LARGE = "too_large"  # a message or field exceeds a limit
E_EXPIRED = "expired"  # the request waited longer than its deadline_s; it was not run
E_BUSY = "busy"  # too many infer requests already waiting; retry later
E_OUT_OF_RANGE = "out_of_range"  # a state or prefix value lies far outside the range the model was trained on
E_NON_FINITE = "non_finite"  # the policy produced NaN or infinite actions; none were sent
E_INTERNAL = "internal"  # the policy failed; the server keeps serving


class ProtocolError(ValueError):
    """A message that does not follow the protocol. `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str, code: str = E_INVALID) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.code = code
        self.detail = message


# ----------------------------------------------------------------------------------------- arrays


def encode_array(array: np.ndarray, field: str = "array") -> dict[str, Any]:
    """Encode a numpy array as raw bytes + dtype + shape (C order, the sender's byte order)."""
    array = np.asarray(array)
    if array.dtype.kind not in _ALLOWED_KINDS:
        raise ProtocolError(
            field, f"dtype {array.dtype} cannot be sent; use a bool, integer or float dtype", E_INVALID
        )
    array = np.ascontiguousarray(array)
    # A memoryview of the array: msgpack copies it once into the message, no intermediate bytes object.
    data = memoryview(array.reshape(-1)).cast("B") if array.size else b""
    return {"nd": True, "dtype": array.dtype.str, "shape": list(array.shape), "data": data}


def _parse_dtype(value: Any, field: str) -> np.dtype:
    if not isinstance(value, str) or len(value) > 8:
        raise ProtocolError(f"{field}.dtype", f"expected a numpy dtype string such as '<f4', got {value!r}")
    try:
        dtype = np.dtype(value)
    except TypeError as exc:
        raise ProtocolError(f"{field}.dtype", f"unknown dtype {value!r}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(
            f"{field}.dtype", f"dtype {value!r} is refused; only bool, integer and float dtypes are accepted"
        )
    return dtype


def _parse_shape(value: Any, field: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ARRAY_DIMS:
        raise ProtocolError(f"{field}.shape", f"expected a list of at most {MAX_ARRAY_DIMS} sizes, got {value!r}")
    shape = []
    for size in value:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"{field}.shape", f"sizes must be non-negative integers, got {value!r}")
        shape.append(size)
    return tuple(shape)


def decode_array(obj: Any, field: str, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """Decode an encoded array, checking dtype, declared size, actual size and the limit first.

    The result is a read-only view on the message bytes (no copy); copy it to modify it.
    """
    if not isinstance(obj, Mapping) or obj.get("nd") is not True:
        raise ProtocolError(field, f"expected an encoded array map {{nd, dtype, shape, data}}, got {_kind(obj)}")
    dtype = _parse_dtype(obj.get("dtype"), field)
    shape = _parse_shape(obj.get("shape"), field)
    # Python ints do not overflow, so the declared size is exact even for absurd shapes.
    declared = dtype.itemsize
    for size in shape:
        declared *= size
    if declared > max_bytes:
        raise ProtocolError(
            field, f"declared size {declared} bytes (shape {list(shape)}) exceeds the limit of {max_bytes}", E_TOO_LARGE
        )
    data = obj.get("data")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{field}.data", f"expected binary data, got {_kind(data)}")
    if len(data) != declared:
        raise ProtocolError(
            f"{field}.data",
            f"holds {len(data)} bytes but dtype {dtype.str} x shape {list(shape)} needs {declared}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# ----------------------------------------------------------------------------------------- images


def encode_image(image: np.ndarray, field: str = "image", jpeg_quality: int | None = None) -> dict[str, Any]:
    """Encode one uint8 RGB image (H, W, 3) raw, or as JPEG when `jpeg_quality` is given (1-100)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ProtocolError(field, f"images must be uint8 RGB, got dtype {image.dtype}")
    if jpeg_quality is None:
        return encode_array(image, field)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ProtocolError(field, f"JPEG encoding takes one (H, W, 3) image, got shape {image.shape}")
    import cv2  # local: only senders that ask for JPEG pay the import

    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise ProtocolError(field, "OpenCV could not JPEG-encode the image")
    return {"jpeg": buf.tobytes()}


def jpeg_size(data: bytes, field: str = "jpeg") -> tuple[int, int]:
    """(height, width) from a JPEG's start-of-frame header, read without decoding any pixels."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ProtocolError(field, "not a JPEG (missing the FFD8 start-of-image marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ProtocolError(field, f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return height, width
        pos += 2 + length
    raise ProtocolError(field, "corrupt or truncated JPEG: no frame header found")


def decode_image(obj: Any, field: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an image field: a raw uint8 array (H, W, 3) or (T, H, W, 3), or a JPEG (H, W, 3) RGB."""
    if isinstance(obj, Mapping) and "jpeg" in obj:
        data = obj["jpeg"]
        if not isinstance(data, (bytes, bytearray)):
            raise ProtocolError(f"{field}.jpeg", f"expected binary JPEG data, got {_kind(data)}")
        height, width = jpeg_size(bytes(data), f"{field}.jpeg")
        if height * width > max_pixels:
            raise ProtocolError(
                f"{field}.jpeg", f"declares {height}x{width} pixels, above the limit of {max_pixels}", E_TOO_LARGE
            )
        import cv2

        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ProtocolError(f"{field}.jpeg", "OpenCV could not decode the JPEG")
        return np.ascontiguousarray(image[:, :, ::-1])
    image = decode_array(obj, field, max_bytes=MAX_ARRAY_BYTES)
    if image.dtype != np.uint8:
        raise ProtocolError(field, f"images must be uint8 RGB, got dtype {image.dtype}; convert with .astype(np.uint8)")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ProtocolError(field, f"expected shape (H, W, 3) or (T, H, W, 3) RGB, got {list(image.shape)}")
    if image.shape[-3] * image.shape[-2] > max_pixels:
        raise ProtocolError(field, f"{image.shape[-3]}x{image.shape[-2]} exceeds {max_pixels} pixels", E_TOO_LARGE)
    return image


# ------------------------------------------------------------------------------------ observations


def encode_observation(obs: Mapping[str, Any], jpeg_quality: int | None = None) -> dict[str, Any]:
    """The `infer` request's `observation` map from the Policy.infer observation dict."""
    if not isinstance(obs, Mapping):
        raise ProtocolError("observation", f"expected a dict, got {_kind(obs)}")
    images = obs.get("images")
    if not isinstance(images, Mapping) or not images:
        raise ProtocolError("observation.images", "expected a dict of camera name -> uint8 RGB image")
    encoded_images = {}
    for name, image in images.items():
        field = f"observation.images.{name}"
        image = np.asarray(image)
        quality = jpeg_quality if (jpeg_quality is not None and image.ndim == 3) else None
        encoded_images[str(name)] = encode_image(image, field, quality)
    out: dict[str, Any] = {
        "images": encoded_images,
        "state": encode_array(np.asarray(obs.get("state"), dtype=np.float32), "observation.state"),
    }
    if obs.get("instruction") is not None:
        out["instruction"] = str(obs["instruction"])
    return out


def decode_observation(obj: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> dict[str, Any]:
    """Decode an `observation` map into the Policy.infer form (images, state float32, instruction)."""
    if not isinstance(obj, Mapping):
        raise ProtocolError("observation", f"expected a map, got {_kind(obj)}")
    unknown = set(obj) - {"images", "state", "instruction"}
    if unknown:
        raise ProtocolError(f"observation.{sorted(map(str, unknown))[0]}", "unknown field; expected images, state, instruction")
    images = obj.get("images")
    if not isinstance(images, Mapping) or not images:
        raise ProtocolError("observation.images", "expected a non-empty map of camera name -> image")
    decoded = {}
    for name, image in images.items():
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ProtocolError("observation.images", f"camera names must be short strings, got {name!r}")
        decoded[name] = decode_image(image, f"observation.images.{name}", max_pixels)
    state = decode_array(obj.get("state"), "observation.state", max_bytes=1 << 16)
    if state.dtype.kind != "f":
        raise ProtocolError("observation.state", f"expected float32, got dtype {state.dtype}")
    if state.ndim != 1:
        raise ProtocolError("observation.state", f"expected a 1-D vector (S,), got shape {list(state.shape)}")
    instruction = obj.get("instruction", "")
    if not isinstance(instruction, str) or len(instruction) > MAX_STRING_CHARS:
        raise ProtocolError("observation.instruction", f"expected a string of at most {MAX_STRING_CHARS} characters")
    return {"images": decoded, "state": state.astype(np.float32), "instruction": instruction}


# ---------------------------------------------------------------------------------------- framing


@dataclass(frozen=True)
class Request:
    id: int
    endpoint: str
    data: dict[str, Any]
    token: str | None = None


def pack(obj: Mapping[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(payload: bytes | memoryview, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """msgpack-decode one frame with every container capped, so a hostile header cannot allocate."""
    if len(payload) > max_bytes:
        raise ProtocolError("", f"message of {len(payload)} bytes exceeds the limit of {max_bytes}", E_TOO_LARGE)
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=1 << 20,
            max_array_len=1 << 16,
            max_map_len=1 << 12,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError("", f"not a valid msgpack frame ({type(exc).__name__}: {exc})", E_MALFORMED) from exc
    except Exception as exc:  # msgpack raises a few other types on corrupt input
        raise ProtocolError("", f"not a valid msgpack frame ({type(exc).__name__})", E_MALFORMED) from exc


def pack_request(request_id: int, endpoint: str, data: Mapping[str, Any] | None = None, token: str | None = None) -> bytes:
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "endpoint": endpoint, "data": dict(data or {})}
    if token is not None:
        msg["token"] = token
    return pack(msg)


def parse_request(payload: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Request:
    """Parse and check the envelope. The request id is recovered where possible, for the error reply."""
    msg = unpack(payload, max_bytes)
    if not isinstance(msg, dict):
        raise ProtocolError("", f"a request must be a msgpack map, got {_kind(msg)}", E_MALFORMED)
    request_id = msg.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise ProtocolError("id", "expected an integer request id", E_MALFORMED)
    try:
        version = msg.get("v")
        # Type-checked like every other field: True == 1 and 1.0 == 1 in Python, but neither is version 1.
        if not isinstance(version, int) or isinstance(version, bool) or version != PROTOCOL_VERSION:
            raise ProtocolError(
                "v", f"protocol version {version!r} ({_kind(version)}) is not supported; this end speaks the integer {PROTOCOL_VERSION}", E_VERSION
            )
        endpoint = msg.get("endpoint")
        if not isinstance(endpoint, str):
            raise ProtocolError("endpoint", f"expected one of {list(ENDPOINTS)}", E_MALFORMED)
        data = msg.get("data", {})
        if not isinstance(data, dict):
            raise ProtocolError("data", f"expected a map, got {_kind(data)}", E_MALFORMED)
        token = msg.get("token")
        if token is not None and not isinstance(token, str):
            raise ProtocolError("token", "expected a string", E_MALFORMED)
    except ProtocolError as exc:
        exc.request_id = request_id  # type: ignore[attr-defined]
        raise
    return Request(request_id, endpoint, data, token)


def pack_reply(request_id: int | None, data: Mapping[str, Any]) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "data": dict(data)})


def pack_error(request_id: int | None, code: str, field: str, message: str) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": {"code": code, "field": field, "message": message}})


def _kind(obj: Any) -> str:
    return type(obj).__name__
