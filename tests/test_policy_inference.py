"""Policy checkpoint and inference API: round trip, metadata contract, determinism, batching, prefix, bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from dit4dit.drivers import g1_spec
from dit4dit.policy.checkpoint import CheckpointError, make_random_checkpoint, read_checkpoint, save_checkpoint
from dit4dit.policy.inference import InferenceEngine, ObservationError, Policy, prefix_weights

ARM = [g1_spec.JOINT_NAMES[i] for i in g1_spec.ARM_JOINTS]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return str(make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "g1.pt", preset="tiny", seed=3))


@pytest.fixture(scope="module")
def policy(ckpt: str) -> Policy:
    return Policy.from_checkpoint(ckpt, device="cpu")


def observation(seed: int = 0, size: tuple[int, int] = (48, 64)) -> dict:
    rng = np.random.default_rng(seed)
    home = g1_spec.HOME_POSE[list(g1_spec.ARM_JOINTS)].astype(np.float32)
    return {"images": {"head": rng.integers(0, 256, (*size, 3), dtype=np.uint8)},
            "state": home + rng.normal(0, 0.05, 14).astype(np.float32), "instruction": "pick up the red block"}


def test_metadata_is_the_contract(policy: Policy) -> None:
    md = policy.metadata
    assert set(md) == {"model", "version", "preset", "cameras", "context_frames", "state_names", "action_names",
                       "action_space", "chunk_length", "control_rate_hz", "normalization", "instructions", "training"}
    json.dumps(md)  # JSON-able: the server publishes it
    assert md["model"] == "dit4dit" and md["preset"] == "tiny" and md["action_space"] == "joint_position"
    assert md["state_names"] == md["action_names"] == ARM
    assert md["cameras"] == {"head": {"height": 32, "width": 32}}
    assert md["chunk_length"] == policy.chunk_length and md["context_frames"] == 1
    assert len(md["normalization"]["action"]["mean"]) == len(md["normalization"]["state"]["std"]) == 14


def test_checkpoint_round_trip_is_bit_exact(ckpt: str, policy: Policy, tmp_path) -> None:
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, policy.model, policy.vocab, policy.metadata)
    a, b = read_checkpoint(ckpt), read_checkpoint(copy)
    assert a["config"] == b["config"] and a["vocab"] == b["vocab"] and a["metadata"] == b["metadata"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    reloaded = Policy.from_checkpoint(copy)
    noise = np.random.default_rng(0).standard_normal((policy.chunk_length, 14)).astype(np.float32)
    np.testing.assert_array_equal(policy.infer(observation(), noise=noise), reloaded.infer(observation(), noise=noise))


def test_bad_checkpoints_get_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Policy.from_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="not a readable"):
        Policy.from_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a dit4dit policy"):
        Policy.from_checkpoint(other)
    code = tmp_path / "code.pt"  # a pickle that would call a function when loaded: refused, never run
    torch.save({"format": "dit4dit-policy", "x": pickle.loads(pickle.dumps(np.random.default_rng(0)))}, code)
    with pytest.raises(CheckpointError, match="weights-only"):
        Policy.from_checkpoint(code)


def test_truncated_and_inconsistent_checkpoints(ckpt: str, tmp_path) -> None:
    data = open(ckpt, "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        Policy.from_checkpoint(cut)
    blob = read_checkpoint(ckpt)
    blob["state_dict"].pop(next(iter(blob["state_dict"])))
    bad = tmp_path / "bad.pt"
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="inconsistent"):
        Policy.from_checkpoint(bad)


def test_engine_is_the_inference_engine_interface(policy: Policy) -> None:
    engine = policy.engine
    assert isinstance(engine, InferenceEngine) and engine.name == "torch"
    cfg = policy.cfg
    frames = np.zeros((2, 1, 3, 32, 32), np.float32)
    tokens = np.zeros((2, cfg.max_text_len), np.int64)
    tokens[:, 0] = 1
    features = engine.features(frames, tokens)
    assert features.dtype == np.float32 and features.shape == (2, cfg.condition_tokens, cfg.condition_width)
    H, A = cfg.chunk_length, cfg.action_dim
    out = engine.sample(features, np.zeros((2, 14), np.float32), np.zeros((2, H, A), np.float32),
                        np.zeros((2, H, A), np.float32), np.zeros((2, H), np.float32))
    assert out.dtype == np.float32 and out.shape == (2, H, A)


def test_deterministic_with_given_noise(policy: Policy) -> None:
    H = policy.chunk_length
    noise = np.random.default_rng(1).standard_normal((H, 14)).astype(np.float32)
    a = policy.infer(observation(), noise=noise)
    b = policy.infer(observation(), noise=noise)
    assert a.shape == (H, 14) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, policy.infer(observation(), noise=-noise))
    torch.manual_seed(5)
    c = policy.infer(observation())
    torch.manual_seed(5)
    np.testing.assert_array_equal(c, policy.infer(observation()))  # noise=None: torch's generator


def test_outputs_depend_on_observation(policy: Policy) -> None:
    noise = np.zeros((policy.chunk_length, 14), np.float32)
    base = policy.infer(observation(0), noise=noise)
    other_image = observation(0)
    other_image["images"]["head"] = 255 - other_image["images"]["head"]
    other_text = {**observation(0), "instruction": "push the blue block to the target"}
    assert not np.allclose(base, policy.infer(other_image, noise=noise))
    assert not np.allclose(base, policy.infer(other_text, noise=noise))


def test_batched_matches_single(policy: Policy) -> None:
    H = policy.chunk_length
    obs = [observation(i) for i in range(3)]
    obs[2]["instruction"] = "push the blue block to the target"
    noise = np.random.default_rng(2).standard_normal((3, H, 14)).astype(np.float32)
    batched = {"images": {"head": np.stack([o["images"]["head"] for o in obs])},
               "state": np.stack([o["state"] for o in obs]), "instruction": [o["instruction"] for o in obs]}
    out = policy.infer(batched, noise=noise)
    assert out.shape == (3, H, 14)
    for i in range(3):
        np.testing.assert_allclose(out[i], policy.infer(obs[i], noise=noise[i]), atol=1e-5)


def test_prefix_keeps_frozen_steps_and_ramps(policy: Policy) -> None:
    H = policy.chunk_length
    noise = np.random.default_rng(3).standard_normal((H, 14)).astype(np.float32)
    free = policy.infer(observation(), noise=noise)
    previous = free + 0.2  # a previous chunk that disagrees with the new one
    P, n_frozen = 6, 3
    out = policy.infer(observation(), noise=noise, prefix=(previous[:P], n_frozen))
    np.testing.assert_array_equal(out[:n_frozen], previous[:n_frozen])
    # the ramp steps lie between the previous chunk and the free chunk, closer to the previous one first
    gap = np.abs(out[n_frozen:P] - free[n_frozen:P]).mean(axis=1)
    assert np.all(gap > 1e-3) and gap[0] > gap[-1]
    np.testing.assert_allclose(prefix_weights(8, 6, 3), [1, 1, 1, 0.75, 0.5, 0.25, 0, 0])
    np.testing.assert_allclose(prefix_weights(4, 2, 2), [1, 1, 0, 0])


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o["images"].pop("head"), "camera 'head'"),
        (lambda o: o["images"].__setitem__("head", o["images"]["head"].astype(np.float32)), "dtype float32"),
        (lambda o: o["images"].__setitem__("head", o["images"]["head"][..., :2]), r"obs\['images'\]\['head'\] must have shape"),
        (lambda o: o["images"].__setitem__("head", np.zeros((2, 48, 64, 3), np.uint8)), "T = 1 context frames"),
        (lambda o: o.__setitem__("state", o["state"][:13]), r"obs\['state'\] must have shape \(14,\)"),
        (lambda o: o.__setitem__("state", o["state"].astype(np.int32)), r"obs\['state'\] must be float32"),
        (lambda o: o["state"].__setitem__(4, np.nan), "NaN or inf .*'left_wrist_roll_joint'"),
        (lambda o: o.__setitem__("instruction", 3), r"obs\['instruction'\] must be a str"),
        (lambda o: o.pop("state"), r"obs\['state'\] is missing"),
        (lambda o: o.__setitem__("images", np.zeros((48, 64, 3), np.uint8)), "dict of camera name"),
    ],
)
def test_bad_observations_name_the_field(policy: Policy, mutate, field: str) -> None:
    obs = observation()
    mutate(obs)
    with pytest.raises(ObservationError, match=field):
        policy.infer(obs)


def test_bad_noise_and_prefix_are_rejected(policy: Policy) -> None:
    H = policy.chunk_length
    with pytest.raises(ObservationError, match="noise"):
        policy.infer(observation(), noise=np.zeros((H, 13), np.float32))
    with pytest.raises(ObservationError, match="prefix actions"):
        policy.infer(observation(), prefix=(np.zeros((H + 1, 14), np.float32), 1))
    with pytest.raises(ObservationError, match="n_frozen"):
        policy.infer(observation(), prefix=(np.zeros((4, 14), np.float32), 5))
    with pytest.raises(ObservationError, match="NaN"):
        policy.infer(observation(), prefix=(np.full((4, 14), np.nan, np.float32), 1))


def test_any_camera_resolution_is_resized(policy: Policy) -> None:
    noise = np.zeros((policy.chunk_length, 14), np.float32)
    for size in ((32, 32), (480, 640)):
        out = policy.infer(observation(size=size), noise=noise)
        assert out.shape == (policy.chunk_length, 14) and np.isfinite(out).all()


def test_several_context_frames(tmp_path) -> None:
    policy = Policy.from_checkpoint(make_random_checkpoint(tmp_path / "t2.pt", preset="tiny", context_frames=2))
    assert policy.metadata["context_frames"] == 2
    clip = np.stack([observation(0)["images"]["head"], observation(1)["images"]["head"]])  # (T, H, W, 3), current last
    obs = {**observation(0), "images": {"head": clip}}
    noise = np.zeros((policy.chunk_length, 14), np.float32)
    single = policy.infer(obs, noise=noise)
    batched = policy.infer({"images": {"head": clip[None].repeat(2, 0)}, "state": obs["state"][None].repeat(2, 0),
                            "instruction": [obs["instruction"]] * 2}, noise=noise[None].repeat(2, 0))
    np.testing.assert_allclose(batched[1], single, atol=1e-5)
    assert not np.allclose(single, policy.infer({**obs, "images": {"head": clip[::-1].copy()}}, noise=noise))
    with pytest.raises(ObservationError, match="T = 2 context frames"):
        policy.infer(observation(0))  # one frame for a two-frame model
