"""The cosmos backbone: diffusers' Cosmos transformer and Wan VAE, built tiny, saved, loaded from a local folder.

No downloads: the backbone is built with diffusers at the cosmos-tiny size and `save_pretrained` into a
temporary folder; everything else goes through the project's loader, trainer, server and exporter."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from dit4dit.policy import cosmos  # noqa: E402
from dit4dit.policy.checkpoint import cosmos_model  # noqa: E402
from dit4dit.policy.model import FeatureNet, preset_config  # noqa: E402

TINY = preset_config("cosmos-tiny", state_dim=14, action_dim=14)
INSTRUCTIONS = ["pick up the red block", "push the blue block to the target"]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    torch.manual_seed(0)
    transformer, vae = cosmos.build_backbone(preset_config("cosmos-tiny").cosmos)
    return cosmos.save_backbone(tmp_path_factory.mktemp("cosmos") / "Cosmos-Predict2.5-tiny", transformer, vae)


@pytest.fixture(scope="module")
def raw_text():
    cfgs = preset_config("cosmos-tiny").cosmos
    g = torch.Generator().manual_seed(1)
    return torch.randn(len(INSTRUCTIONS), cfgs["text_length"], cosmos.text_channels(cfgs), generator=g)


def nearest_resize_namespace():
    """diffusers' Cosmos forward resizes its padding mask with torchvision, which this project does not install
    (its PyPI wheels are CUDA builds). The mask is all zeros (no padding), so any nearest resize gives the same
    zeros; this is only what torchvision.transforms.functional.resize(NEAREST) does, written with torch."""
    def resize(x, size, interpolation=None):
        return torch.nn.functional.interpolate(x, size=tuple(size), mode="nearest")

    return types.SimpleNamespace(functional=types.SimpleNamespace(resize=resize),
                                 InterpolationMode=types.SimpleNamespace(NEAREST="nearest"))


def reference_features(model, frames, raw, monkeypatch):
    """DiT4DiT's recipe written against diffusers directly: VAE mean latent normalised with the VAE config's
    mean/std, condition frame at t = 1e-4, the future slots = the model's extraction noise at t = 1, one
    transformer forward with a hook on transformer_blocks[extract_layer - 1]. Returns (hidden, full output)."""
    from diffusers.models.transformers import transformer_cosmos

    monkeypatch.setattr(transformer_cosmos, "transforms", nearest_resize_namespace(), raising=False)
    vae, tr = model.tokenizer.vae, model.video.transformer
    B = frames.shape[0]
    z = vae.encode(frames.permute(0, 2, 1, 3, 4)).latent_dist.mean  # (B, 16, 1, h, w)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    cond = (z - mean) / std
    noise = model.extraction_noise.permute(1, 0, 2, 3).unsqueeze(0).expand(B, -1, -1, -1, -1)  # (B, 16, Tf, h, w)
    latents = torch.cat([cond, noise], dim=2)
    T = latents.shape[2]
    mask = torch.zeros(B, 1, T, 1, 1)
    mask[:, :, 0] = 1.0
    timestep = mask * 1e-4 + (1 - mask) * 1.0
    captured = []
    hook = tr.transformer_blocks[model.cfg.extract_layer - 1].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        out = tr(hidden_states=latents, timestep=timestep, encoder_hidden_states=raw,
                 condition_mask=mask.expand(-1, -1, -1, *latents.shape[-2:]),
                 padding_mask=torch.zeros(1, 1, *frames.shape[-2:]), return_dict=False)[0]
    finally:
        hook.remove()
    return captured[0], out


@torch.no_grad()
def test_features_equal_a_hooked_diffusers_forward(backbone_dir, raw_text, monkeypatch):
    model = cosmos_model(TINY, backbone_dir, INSTRUCTIONS, raw_text).eval()
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(2, 1, 3, 32, 32, generator=g) * 2 - 1
    tokens = torch.tensor([[1], [0]])
    ours = FeatureNet(model)(frames, tokens)
    hidden, full = reference_features(model, frames, raw_text[[1, 0]], monkeypatch)
    assert ours.shape == hidden.shape == (2, model.cfg.condition_tokens, model.cfg.condition_width)
    err = (ours - hidden).abs().max().item()
    print(f"cosmos-tiny features vs hooked diffusers forward: max abs error {err:.3e}")
    assert err <= 1e-5, err
    # the full network (training's video loss) agrees too: velocity of the future slots
    latents = model.encode_frames(frames)
    text, mask = model.text(tokens)
    future = model.extraction_noise.unsqueeze(0).expand(2, -1, -1, -1, -1)
    times = model.frame_times(torch.ones(2))
    v = model.video(torch.cat([latents, future], dim=1), times, text, mask)
    ref_v = full[:, :, 1:].permute(0, 2, 1, 3, 4)
    assert (v - ref_v).abs().max().item() <= 1e-5
    # and the features really are mid-network: not the last block's output
    assert model.cfg.extract_layer < model.cfg.video_depth


@torch.no_grad()
def test_truncated_pass_runs_no_later_block(backbone_dir, raw_text):
    model = cosmos_model(TINY, backbone_dir, INSTRUCTIONS, raw_text).eval()
    ran = []
    for i, block in enumerate(model.video.transformer.transformer_blocks):
        block.register_forward_hook(lambda m, inp, out, i=i: ran.append(i))
    FeatureNet(model)(torch.zeros(1, 1, 3, 32, 32), torch.tensor([[0]]))
    assert ran == list(range(model.cfg.extract_layer))


@torch.no_grad()
def test_context_latent_is_the_first_frame_of_a_padded_clip(backbone_dir, raw_text):
    """The pipeline encodes the condition frame zero-padded to the clip length; the causal VAE's first latent
    frame depends on frame 0 only, so encoding the frame alone (what the feature pass does) is the same."""
    model = cosmos_model(TINY, backbone_dir, INSTRUCTIONS, raw_text).eval()
    frame = torch.rand(1, 1, 3, 32, 32) * 2 - 1
    clip = torch.cat([frame, torch.zeros(1, 4, 3, 32, 32)], dim=1)
    alone = model.tokenizer.encode_video(frame)
    padded = model.tokenizer.encode_video(clip)
    assert padded.shape[1] == 2
    assert (alone[:, 0] - padded[:, 0]).abs().max().item() <= 1e-5


def test_normalisation_divides_by_the_vae_std(backbone_dir, raw_text):
    """(z - mean) / std from the VAE config; diffusers >= 0.39's pipeline attribute latents_std is 1/std."""
    model = cosmos_model(TINY, backbone_dir, INSTRUCTIONS, raw_text)
    vae_cfg = json.loads((backbone_dir / "vae" / "config.json").read_text())
    assert np.allclose(model.tokenizer.latent_std.flatten().numpy(), vae_cfg["latents_std"])
    assert np.allclose(model.tokenizer.latent_mean.flatten().numpy(), vae_cfg["latents_mean"])


def test_missing_or_mismatched_files_name_the_file(backbone_dir, raw_text, tmp_path):
    import shutil

    with pytest.raises(cosmos.BackboneError, match="does not exist"):
        cosmos_model(TINY, tmp_path / "nowhere", INSTRUCTIONS, raw_text)
    broken = tmp_path / "broken"
    shutil.copytree(backbone_dir, broken)
    (broken / "vae" / "config.json").unlink()
    with pytest.raises(cosmos.BackboneError, match=r"vae/config\.json is missing"):
        cosmos_model(TINY, broken, INSTRUCTIONS, raw_text)
    shutil.rmtree(broken)
    shutil.copytree(backbone_dir, broken)
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(cosmos.BackboneError, match="no weights file"):
        cosmos_model(TINY, broken, INSTRUCTIONS, raw_text)
    shutil.rmtree(broken)
    shutil.copytree(backbone_dir, broken)
    config = broken / "transformer" / "config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), num_layers=3)))
    with pytest.raises(cosmos.BackboneError, match=r"transformer/config\.json does not match this preset: num_layers"):
        cosmos_model(TINY, broken, INSTRUCTIONS, raw_text)
    # the 2B preset refuses the tiny folder, naming the file and the keys
    with pytest.raises(cosmos.BackboneError, match=r"transformer/config\.json.*num_attention_heads"):
        cosmos_model(preset_config("cosmos2.5-2b"), backbone_dir, INSTRUCTIONS, raw_text)


def test_2b_preset_has_the_paper_shape():
    cfg = preset_config("cosmos2.5-2b")
    t = cfg.cosmos["transformer"]
    assert (t["num_layers"], t["num_attention_heads"], t["attention_head_dim"], t["in_channels"]) == (28, 16, 128, 17)
    assert tuple(t["patch_size"]) == (1, 2, 2) and t["crossattn_proj_in_channels"] == 100352
    assert t["encoder_hidden_states_channels"] == 1024
    assert cfg.extract_layer == 18  # hidden states after transformer_blocks[17]
    assert (cfg.condition_tokens, cfg.condition_width) == (588, 2048)


@pytest.fixture(scope="module")
def trained(backbone_dir, tmp_path_factory):
    """dit4dit-train --preset cosmos-tiny --backbone DIR: a few bf16 steps on the synthetic task."""
    import subprocess
    import sys

    from dit4dit.policy.data import load_training_data

    root = tmp_path_factory.mktemp("cosmos_train")
    instructions = load_training_data("synthetic:moving_dot", 32, synthetic_episodes=4).instructions
    cfgs = preset_config("cosmos-tiny").cosmos
    text = root / "text.pt"
    cosmos.save_text_embeddings(text, instructions, torch.randn(len(instructions), cfgs["text_length"],
                                                                 cosmos.text_channels(cfgs)))
    out = root / "g1.pt"
    proc = subprocess.run([sys.executable, "-m", "dit4dit.policy.train", "--data", "synthetic:moving_dot",
                           "--synthetic-episodes", "4", "--preset", "cosmos-tiny", "--backbone", str(backbone_dir),
                           "--text-embeddings", str(text), "--out", str(out), "--steps", "4", "--batch-size", "2",
                           "--precision", "bf16", "--threads", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "memory plan (cosmos-tiny" in proc.stderr and "checkpointed" in proc.stderr
    return out, instructions, proc.stderr


def test_training_moves_the_backbone_at_its_own_rate(trained, backbone_dir):
    from diffusers import CosmosTransformer3DModel

    from dit4dit.policy.checkpoint import read_checkpoint

    out, _, _ = trained
    blob = read_checkpoint(out)
    assert blob["config"]["backbone"] == "cosmos" and blob["metadata"]["preset"] == "cosmos-tiny"
    start = CosmosTransformer3DModel.from_pretrained(str(backbone_dir / "transformer"), local_files_only=True)
    sd = blob["state_dict"]
    moved = [k for k, v in start.state_dict().items() if not torch.equal(sd[f"video.transformer.{k}"], v)]
    assert any(".transformer_blocks." in f".{k}" for k in moved)  # the backbone trains (lr 1e-5)...
    assert not any(k.startswith("crossattn_proj") for k in moved)  # ...but not the projection the text cache used


def test_freeze_backbone_trains_only_the_action_model(backbone_dir, trained, tmp_path):
    import subprocess
    import sys

    from diffusers import CosmosTransformer3DModel

    from dit4dit.policy.checkpoint import read_checkpoint

    text = trained[0].parent / "text.pt"
    out = tmp_path / "frozen.pt"
    proc = subprocess.run([sys.executable, "-m", "dit4dit.policy.train", "--data", "synthetic:moving_dot",
                           "--synthetic-episodes", "4", "--preset", "cosmos-tiny", "--backbone", str(backbone_dir),
                           "--text-embeddings", str(text), "--out", str(out), "--steps", "2", "--batch-size", "2",
                           "--freeze-backbone", "--threads", "1", "--no-progress"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    start = CosmosTransformer3DModel.from_pretrained(str(backbone_dir / "transformer"), local_files_only=True)
    sd = read_checkpoint(out)["state_dict"]
    assert all(torch.equal(sd[f"video.transformer.{k}"], v) for k, v in start.state_dict().items())


def test_served_over_zeromq_and_unknown_instructions_refused(trained, free_port):
    from server_harness import ServerProcess

    from dit4dit.policy.inference import Policy
    from dit4dit.runtime.client import PolicyClient, ServerError

    out, instructions, _ = trained
    endpoint = f"tcp://127.0.0.1:{free_port}"
    server = ServerProcess(["--ckpt", str(out), "--bind", endpoint, "--device", "cpu", "--backend", "torch"])
    try:
        with PolicyClient(endpoint, timeout_s=30.0) as client:
            meta = client.metadata()
            assert meta["preset"] == "cosmos-tiny" and meta["instructions"] == instructions
            obs = {"images": {"head": np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)},
                   "state": np.asarray(meta["normalization"]["state"]["mean"], np.float32),
                   "instruction": instructions[0]}
            result = client.infer(obs, seed=7)
            local = Policy.from_checkpoint(out)
            assert result.actions.shape == (local.chunk_length, local.action_dim)
            assert np.isfinite(result.actions).all()
            with pytest.raises(ServerError) as exc:
                client.infer(dict(obs, instruction="juggle three oranges"))
            assert "juggle three oranges" in str(exc.value) and all(s in str(exc.value) for s in instructions)
            assert client.infer(obs).actions.shape == result.actions.shape  # still serving
    finally:
        server.close()


def test_feature_pass_exports_through_the_parity_gate(trained, tmp_path):
    from dit4dit.policy import export

    out, _, _ = trained
    # fp16: the graphs strongly typed TensorRT builds from (here gated in ONNX Runtime on CPU)
    manifest = export.export(out, tmp_path / "engines", max_batch=2, exporter="torchscript", precision="fp16")
    assert manifest["onnx"] and manifest["graphs"]["fp32"]["passed"] and manifest["graphs"]["fp16"]["passed"]
    features = [r for r in manifest["parity"] if r["graph"] == "features"]
    assert features and all(r["cosine"] >= export.COSINE_GATE and r["max_abs_error"] < 1e-4 for r in features)


@pytest.mark.slow
def test_fsdp_over_cosmos_blocks_matches_ddp(backbone_dir, trained, tmp_path):
    """--parallel fsdp shards each CosmosTransformerBlock over 2 gloo processes; DDP with the same seed gives the
    same EMA weights (up to float reduction order)."""
    import os
    import socket
    import subprocess
    import sys

    text = trained[0].parent / "text.pt"
    outs = {}
    for parallel in ("fsdp", "ddp"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        outs[parallel] = tmp_path / f"{parallel}.pt"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "dit4dit.policy.train",
               "--data", "synthetic:moving_dot", "--synthetic-episodes", "4", "--preset", "cosmos-tiny",
               "--backbone", str(backbone_dir), "--text-embeddings", str(text), "--out", str(outs[parallel]),
               "--steps", "3", "--batch-size", "2", "--threads", "1", "--no-progress", "--parallel", parallel]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
    a = torch.load(str(outs["fsdp"]), weights_only=True)["state_dict"]
    b = torch.load(str(outs["ddp"]), weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-6


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL (3 layers x 16: 48 channels, what cosmos-tiny's crossattn_proj takes) and a word-level
    tokenizer with a chat template, saved as a local folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    words = ("<pad> <unk> <|im_start|> <|im_end|> system user assistant you are a helpful who will provide prompts to "
             "an image generator . pick up the red block push blue target follow dot green juggle").split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {% for c in m['content'] %}{{ c['text'] }}"
                          "{% endfor %} <|im_end|> {% endfor %}")
    root = tmp_path_factory.mktemp("qwen") / "text"
    fast.save_pretrained(root / "tokenizer")
    torch.manual_seed(3)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, out_hidden_size=16, intermediate_size=16, num_heads=2))
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(root / "text_encoder")
    return root


def test_text_encoder_embeds_new_instructions_when_serving(backbone_dir, text_encoder_dir, tmp_path, free_port):
    import subprocess
    import sys

    from server_harness import ServerProcess

    from dit4dit.policy.inference import Policy
    from dit4dit.runtime.client import PolicyClient

    encoder = cosmos.CosmosTextEncoder(text_encoder_dir, 32)
    raw = encoder(["follow the red dot", "follow the green dot"])
    assert raw.shape == (2, 32, 48) and torch.isfinite(raw).all()
    assert not torch.allclose(raw[0], raw[1])  # the instruction reaches the embedding
    assert torch.equal(encoder(["follow the red dot"])[0], raw[0])
    out = tmp_path / "g1.pt"
    proc = subprocess.run([sys.executable, "-m", "dit4dit.policy.train", "--data", "synthetic:moving_dot",
                           "--synthetic-episodes", "4", "--preset", "cosmos-tiny", "--backbone", str(backbone_dir),
                           "--text-encoder", str(text_encoder_dir), "--out", str(out), "--steps", "1",
                           "--batch-size", "2", "--threads", "1", "--no-progress"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    policy = Policy.from_checkpoint(out)
    known = policy.metadata["instructions"]
    # the cache holds the encoder's output through the trained (frozen) projection
    expect = cosmos.project_text(policy.model.video.transformer, encoder(known))
    assert torch.allclose(policy.model.text.context, expect, atol=1e-6)
    obs = {"images": {"head": np.zeros((32, 32, 3), np.uint8)}, "state": np.zeros(policy.cfg.state_dim, np.float32),
           "instruction": "juggle the green block"}
    policy.text_encoder = encoder
    fresh = policy.infer(obs, noise=np.zeros((policy.chunk_length, policy.action_dim), np.float32))
    assert policy.metadata["instructions"] == [*known, "juggle the green block"]
    endpoint = f"tcp://127.0.0.1:{free_port}"
    server = ServerProcess(["--ckpt", str(out), "--bind", endpoint, "--device", "cpu", "--backend", "torch",
                            "--text-encoder", str(text_encoder_dir)])
    try:
        with PolicyClient(endpoint, timeout_s=30.0) as client:
            served = client.infer(obs, seed=0)
            assert served.actions.shape == fresh.shape and np.isfinite(served.actions).all()
    finally:
        server.close()
