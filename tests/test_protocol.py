"""The wire format: arrays, images, envelopes, and refusal of hostile input (no sockets here)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dit4dit.runtime import protocol
from dit4dit.runtime.protocol import ProtocolError


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<i8", "|u1", "|b1", ">f4", "<f2"])
def test_array_round_trip_keeps_dtype_shape_and_values(dtype: str) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) % 2 == 0) if dtype == "|b1" else np.arange(24, dtype=dtype).reshape(2, 3, 4)
    wire = protocol.unpack(protocol.pack({"a": protocol.encode_array(arr)}))
    out = protocol.decode_array(wire["a"], "a")
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_non_contiguous_array_is_sent_in_c_order() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4).T
    out = protocol.decode_array(protocol.unpack(protocol.pack(protocol.encode_array(arr))), "a")
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("arr", [np.array([1 + 2j]), np.array([object()], dtype=object), np.zeros(2, dtype="V4"), np.array(["x"])])
def test_encode_refuses_object_void_complex_and_string_dtypes(arr: np.ndarray) -> None:
    with pytest.raises(ProtocolError, match="cannot be sent"):
        protocol.encode_array(arr, "x")


@pytest.mark.parametrize("dtype", ["|O", "|V8", "<c8", "<U4", "<M8[s]", "[('a','<f4')]"])
def test_decode_refuses_dangerous_dtypes_naming_the_field(dtype: str) -> None:
    obj = {"nd": True, "dtype": dtype, "shape": [1], "data": b"\0" * 8}
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_array(obj, "observation.state")
    assert exc.value.field.startswith("observation.state")


def test_one_gigabyte_declared_size_is_refused_before_allocation() -> None:
    obj = {"nd": True, "dtype": "<f4", "shape": [1024, 1024, 256], "data": b"\0" * 16}
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_array(obj, "observation.images.head")
    assert exc.value.code == protocol.E_TOO_LARGE and "1073741824" in str(exc.value)


def test_astronomical_shape_does_not_overflow() -> None:
    obj = {"nd": True, "dtype": "<f8", "shape": [2**62, 2**62], "data": b""}
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        protocol.decode_array(obj, "x")


def test_buffer_shorter_than_declared_shape_is_refused() -> None:
    obj = {"nd": True, "dtype": "<f4", "shape": [29], "data": b"\0" * 100}
    with pytest.raises(ProtocolError, match="holds 100 bytes but .* needs 116") as exc:
        protocol.decode_array(obj, "observation.state")
    assert exc.value.field == "observation.state.data"


@pytest.mark.parametrize("shape", [[-1], [1.5], ["3"], [True], list(range(1, 9)), "12"])
def test_bad_shapes_are_refused(shape: object) -> None:
    with pytest.raises(ProtocolError, match="shape"):
        protocol.decode_array({"nd": True, "dtype": "<f4", "shape": shape, "data": b""}, "x")


def test_truncated_msgpack_is_a_malformed_error() -> None:
    payload = protocol.pack_request(1, "ping")
    for cut in (1, len(payload) // 2, len(payload) - 1):
        with pytest.raises(ProtocolError) as exc:
            protocol.parse_request(payload[:cut])
        assert exc.value.code == protocol.E_MALFORMED


def test_envelope_errors_name_the_field_and_keep_the_request_id() -> None:
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_request(msgpack.packb({"v": 99, "id": 7, "endpoint": "ping", "data": {}}))
    assert exc.value.field == "v" and exc.value.code == protocol.E_VERSION and exc.value.request_id == 7
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_request(msgpack.packb({"v": 1, "id": 8, "endpoint": 3, "data": {}}))
    assert exc.value.field == "endpoint"
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_request(msgpack.packb([1, 2, 3]))
    assert exc.value.code == protocol.E_MALFORMED


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 2, [1]])
def test_version_must_be_the_integer_1(version: object) -> None:
    # True == 1 and 1.0 == 1 in Python; the version is type-checked like every other field.
    msg = {"v": version, "id": 5, "endpoint": "ping", "data": {}}
    if version is None:
        del msg["v"]
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_request(msgpack.packb(msg))
    assert exc.value.field == "v" and exc.value.code == protocol.E_VERSION and exc.value.request_id == 5
    assert protocol.parse_request(msgpack.packb({**msg, "v": 1})).endpoint == "ping"


def test_msgpack_ext_types_are_refused() -> None:
    payload = msgpack.packb({"v": 1, "id": 1, "endpoint": "ping", "data": {"x": msgpack.ExtType(1, b"abc")}})
    with pytest.raises(ProtocolError):
        protocol.parse_request(payload)


def test_huge_declared_msgpack_container_is_refused_without_allocating() -> None:
    # A map header claiming 2**32-1 entries followed by nothing.
    with pytest.raises(ProtocolError):
        protocol.unpack(b"\xdf\xff\xff\xff\xff")
    # A bin header claiming 4 GB.
    with pytest.raises(ProtocolError):
        protocol.unpack(b"\xc6\xff\xff\xff\xff" + b"\0" * 10)


def test_jpeg_round_trip_and_header_size() -> None:
    rng = np.random.default_rng(0)
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (200, 30, 30)
    img[:, 32:] = rng.integers(0, 255, (48, 32, 3), dtype=np.uint8) // 8 + 20
    enc = protocol.encode_image(img, "im", jpeg_quality=95)
    assert protocol.jpeg_size(enc["jpeg"]) == (48, 64)
    out = protocol.decode_image(enc, "im")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out[:, :28].astype(int) - img[:, :28]).mean() < 4  # RGB order kept (red stays red)


def test_jpeg_declaring_a_huge_frame_is_refused_before_decoding() -> None:
    enc = protocol.encode_image(np.zeros((8, 8, 3), np.uint8), "im", jpeg_quality=90)
    data = bytearray(enc["jpeg"])
    pos = data.index(b"\xff\xc0")
    data[pos + 5 : pos + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_image({"jpeg": bytes(data)}, "observation.images.head")
    assert exc.value.code == protocol.E_TOO_LARGE and exc.value.field == "observation.images.head.jpeg"


def test_garbage_jpeg_is_refused() -> None:
    with pytest.raises(ProtocolError, match="not a JPEG"):
        protocol.decode_image({"jpeg": b"hello world"}, "im")


def test_observation_round_trip_and_field_errors() -> None:
    obs = {"images": {"head": np.zeros((224, 224, 3), np.uint8)}, "state": np.arange(29, dtype=np.float64), "instruction": "pick"}
    out = protocol.decode_observation(protocol.unpack(protocol.pack(protocol.encode_observation(obs))))
    assert out["state"].dtype == np.float32 and out["instruction"] == "pick"
    bad = protocol.encode_observation(obs)
    bad["images"]["head"] = protocol.encode_array(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ProtocolError, match="uint8") as exc:
        protocol.decode_observation(bad)
    assert exc.value.field == "observation.images.head"
    bad = protocol.encode_observation(obs)
    bad["state"] = protocol.encode_array(np.zeros(29, np.int32))
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_observation(bad)
    assert exc.value.field == "observation.state"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_never_crash_the_parser(payload: bytes) -> None:
    try:
        protocol.parse_request(payload)
    except ProtocolError:
        pass
