"""dit4dit-train: overfitting a synthetic task, determinism, resume, LeRobot input, CLI errors, DDP with torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dit4dit.policy.checkpoint import read_checkpoint
from dit4dit.policy.data import moving_dot_dataset
from dit4dit.policy.inference import Policy
from dit4dit.policy.train import main as train_main


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(out: Path, *extra: str) -> int:
    return train_main(["--data", "synthetic:moving_dot", "--preset", "tiny", "--out", str(out), "--no-progress",
                       "--synthetic-episodes", "2", *extra])


def test_tiny_overfits_moving_dot(tmp_path) -> None:
    """Two episodes (follow the red dot / follow the blue dot): after 300 steps the sampled chunks (4 Euler steps
    from zero noise) must track the named dot to a mean absolute error below 0.3x that of holding the current
    position. Stated bound: the hold-still baseline is ~0.068 image widths; this run reaches ~0.013 (~20 s CPU)."""
    out = tmp_path / "dot.pt"
    assert train(out, "--steps", "300", "--tokenizer-steps", "100", "--lr", "2e-3", "--ema", "0.99",
                 "--flow", "action_noise_repeats=2") == 0
    policy = Policy.from_checkpoint(out)
    cfg = policy.cfg
    data = moving_dot_dataset(2, cfg.image_size, seed=0)
    idx = np.arange(0, data.num_frames, 2)
    obs = {"images": {"head": data.frames[idx]}, "state": data.state[idx],
           "instruction": [data.episodes[e].instruction for e in data.episode_of[idx]]}
    truth = data.action[data.windows(idx, 1, cfg.future_frames, cfg.future_stride, cfg.chunk_length)["actions"]]
    pred = policy.infer(obs, noise=np.zeros((len(idx), cfg.chunk_length, 2), np.float32))
    error = np.abs(pred - truth).mean()
    hold = np.abs(truth - data.state[idx][:, None]).mean()
    assert error < 0.3 * hold, (error, hold)
    history = read_checkpoint(out)["metadata"]["training"]
    assert history["steps"] == 300 and history["complete"] and history["tokenizer_steps"] == 100


def test_training_is_deterministic_and_resume_repeats_the_run(tmp_path) -> None:
    args = ("--steps", "6", "--tokenizer-steps", "4", "--seed", "7", "--batch-size", "4")
    assert train(tmp_path / "a.pt", *args) == 0
    assert train(tmp_path / "b.pt", *args) == 0
    # interrupted twice (once inside the tokenizer stage, once inside the policy stage), then resumed
    assert train(tmp_path / "c.pt", *args, "--stop-after", "2") == 0
    assert not read_checkpoint(tmp_path / "c.pt")["metadata"]["training"]["complete"]
    assert train(tmp_path / "c.pt", *args, "--resume", "--stop-after", "5") == 0
    assert train(tmp_path / "c.pt", *args, "--resume") == 0
    a, b, c = (read_checkpoint(tmp_path / f"{n}.pt")["state_dict"] for n in "abc")
    for k in a:
        assert torch.equal(a[k], b[k]), f"same seed, different weights: {k}"
        assert torch.equal(a[k], c[k]), f"resumed run differs: {k}"
    assert train(tmp_path / "d.pt", *args[:-4], "--seed", "8", "--batch-size", "4") == 0
    d = read_checkpoint(tmp_path / "d.pt")["state_dict"]
    assert not torch.equal(a["action.final.linear.weight"], d["action.final.linear.weight"])


def test_ablation_trains_from_the_cli(tmp_path) -> None:
    out = tmp_path / "ablation.pt"
    assert train(out, "--steps", "3", "--tokenizer-steps", "2", "--ablation", "image_features",
                 "--save-components", str(tmp_path / "parts")) == 0
    policy = Policy.from_checkpoint(out)
    assert policy.cfg.conditioning == "image_features"
    assert policy.metadata["training"]["conditioning"] == "image_features"
    # the trained tokenizer and text encoder seed another run (as a large preset would load them), text frozen
    out2 = tmp_path / "reuse.pt"
    assert train(out2, "--steps", "2", "--override", f"tokenizer_path={tmp_path / 'parts' / 'frame_tokenizer.pt'}",
                 "--override", f"text_encoder_path={tmp_path / 'parts' / 'text_encoder.pt'}") == 0
    a, b = read_checkpoint(out)["state_dict"], read_checkpoint(out2)["state_dict"]
    for k in a:
        if k.startswith(("tokenizer.", "text.")):
            assert torch.equal(a[k], b[k]), k


def test_context_window_gathering_and_training_with_two_context_frames(tmp_path) -> None:
    data = moving_dot_dataset(2, 32, length=10, seed=0)
    w = data.windows(np.array([0, 9, 10, 19]), context_frames=2, future_frames=2, future_stride=4, chunk_length=3)
    np.testing.assert_array_equal(w["context"], [[0, 0], [8, 9], [10, 10], [18, 19]])  # clamped at episode start
    np.testing.assert_array_equal(w["future"], [[4, 8], [9, 9], [14, 18], [19, 19]])  # clamped at episode end
    np.testing.assert_array_equal(w["actions"], [[0, 1, 2], [9, 9, 9], [10, 11, 12], [19, 19, 19]])
    np.testing.assert_array_equal(w["episode"], [0, 0, 1, 1])
    out = tmp_path / "ctx2.pt"
    assert train(out, "--steps", "2", "--tokenizer-steps", "1", "--override", "context_frames=2") == 0
    assert Policy.from_checkpoint(out).metadata["context_frames"] == 2


def test_bf16_autocast_trains(tmp_path) -> None:
    out = tmp_path / "bf16.pt"
    assert train(out, "--steps", "2", "--tokenizer-steps", "1", "--precision", "bf16") == 0
    state = read_checkpoint(out)["state_dict"]
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())  # weights stay fp32
    assert np.isfinite(read_checkpoint(out)["metadata"]["training"]["final_loss"]["loss"])


def test_cli_errors_are_clear(tmp_path, capsys) -> None:
    assert train_main(["--data", str(tmp_path / "missing"), "--preset", "tiny", "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train(tmp_path / "x.pt", "--steps", "1", "--override", "widht=3") == 2
    assert "unknown --override keys ['widht']" in capsys.readouterr().err
    assert train(tmp_path / "x.pt", "--steps", "1", "--flow", "action_repeats=2") == 2
    assert "unknown --flow keys" in capsys.readouterr().err
    assert train(tmp_path / "x.pt", "--steps", "1", "--resume") == 2
    assert "no training state" in capsys.readouterr().err
    assert train_main(["--data", "synthetic:moving_dot", "--preset", "paper", "--out", str(tmp_path / "x.pt")]) == 2
    assert "loads its frame tokenizer and text encoder from local files" in capsys.readouterr().err
    assert train_main(["--data", "synthetic:spinning_top", "--preset", "tiny", "--out", str(tmp_path / "x.pt")]) == 2
    assert "unknown synthetic task" in capsys.readouterr().err


def test_trains_on_a_lerobot_dataset(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    from dit4dit.datasets import LeRobotWriter

    dot = moving_dot_dataset(2, 64, length=20, seed=1)
    names = [f"joint_{i}" for i in range(2)]
    writer = LeRobotWriter(tmp_path / "ds", fps=15.0, state_names=names, action_names=names,
                           cameras={"head": (64, 64)})
    for ep in dot.episodes:
        for t in range(len(ep.state)):
            writer.add_frame(images={"head": ep.frames[t]}, state=ep.state[t], action=ep.action[t], task=ep.instruction)
        writer.save_episode(success=True)
    out = tmp_path / "g1.pt"
    assert train_main(["--data", str(tmp_path / "ds"), "--preset", "tiny", "--out", str(out), "--steps", "3",
                       "--tokenizer-steps", "2", "--no-progress", "--val-episodes", "1"]) == 0
    policy = Policy.from_checkpoint(out)
    md = policy.metadata
    assert md["training"]["episodes"] == 1  # one held out
    assert 0 < md["training"]["val_action_mae"] < 1 and 0 < md["training"]["train_action_mae"] < 1
    assert md["state_names"] == names and md["control_rate_hz"] == 15.0
    assert md["instructions"] == ["follow the blue dot"]  # the training episode's (episode 0 is held out)
    np.testing.assert_allclose(md["normalization"]["action"]["mean"], dot.episodes[1].action.mean(0), atol=1e-4)
    chunk = policy.infer({"images": {"head": dot.frames[0]}, "state": dot.state[0], "instruction": "follow the red dot"})
    assert chunk.shape == (policy.chunk_length, 2)
    assert train_main(["--data", str(tmp_path / "ds"), "--preset", "tiny", "--out", str(out), "--camera", "wrist",
                       "--steps", "1"]) == 2


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_torchrun(tmp_path, free_port) -> None:
    out = tmp_path / "ddp.pt"
    returncode, output = run_torchrun(free_port, out)
    assert returncode == 0, output
    training = read_checkpoint(out)["metadata"]["training"]
    assert training["world_size"] == 2 and training["steps"] == 3 and training["complete"]
    Policy.from_checkpoint(out)


def run_torchrun(port: int, out: Path, *extra: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "dit4dit.policy.train",
           "--data", "synthetic:moving_dot", "--preset", "tiny", "--out", str(out), "--steps", "3",
           "--tokenizer-steps", "2", "--batch-size", "4", "--synthetic-episodes", "2", "--threads", "1",
           "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, output


@pytest.mark.slow
def test_fsdp_two_cpu_processes_with_torchrun_matches_ddp(tmp_path, free_port) -> None:
    """--parallel fsdp shards the policy stage over 2 gloo processes; the same seed under DDP gives the same EMA
    weights (sharding changes where the gradients are averaged, not what they are: they match bit for bit here)."""
    from dit4dit.policy.model import DiT4DiT

    rc, output = run_torchrun(free_port, tmp_path / "fsdp.pt", "--parallel", "fsdp")
    assert rc == 0, output
    ckpt = read_checkpoint(tmp_path / "fsdp.pt")
    training = ckpt["metadata"]["training"]
    assert training["world_size"] == 2 and training["steps"] == 3 and training["complete"]
    assert all(np.isfinite(v) for v in training["final_loss"].values())
    policy = Policy.from_checkpoint(tmp_path / "fsdp.pt")
    torch.manual_seed(0)  # the run's --seed: its initial weights
    initial = DiT4DiT(policy.cfg).state_dict()
    trained = ckpt["state_dict"]
    changed = [k for k in trained if k.startswith(("video.", "action.", "text.")) and not torch.equal(trained[k], initial[k])]
    assert len(changed) > 20, changed  # the DiTs and the text encoder trained

    rc, output = run_torchrun(free_port, tmp_path / "ddp.pt")
    assert rc == 0, output
    ddp = read_checkpoint(tmp_path / "ddp.pt")["state_dict"]
    assert ddp.keys() == trained.keys()
    for k in ddp:
        torch.testing.assert_close(trained[k], ddp[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")

    rc, output = run_torchrun(free_port, tmp_path / "fsdp.pt", "--parallel", "fsdp", "--resume")
    assert rc != 0 and "DDP-only for now" in output, output
