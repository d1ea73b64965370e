"""DiT4DiT model: shapes per preset, the dual flow-matching loss, extraction, the ablation switch, components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dit4dit.policy.checkpoint import perturb_zero_init
from dit4dit.policy.flow import FlowConfig, TimeDistribution, dual_flow_matching_loss, paper_flow
from dit4dit.policy.model import (
    ActionSampler,
    DiT4DiT,
    DiT4DiTConfig,
    FeatureNet,
    PretrainedComponentError,
    load_component,
    paper,
    preset_config,
    save_component,
    tiny,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Two cores shared by several test runs: one thread per process avoids OpenMP spin contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def inputs(cfg: DiT4DiTConfig, B: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(B, cfg.context_frames, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    tokens = torch.zeros(B, cfg.max_text_len, dtype=torch.long)
    tokens[:, 0] = 1
    tokens[:, 1:4] = torch.randint(3, cfg.vocab_size, (B, 3), generator=g)
    return frames, tokens


def latent_batch(cfg: DiT4DiTConfig, B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    C, h = cfg.latent_channels, cfg.latent_size
    _, tokens = inputs(cfg, B, seed)
    return {
        "context": torch.randn(B, cfg.context_frames, C, h, h, generator=g),
        "future": torch.randn(B, cfg.future_frames, C, h, h, generator=g),
        "text": tokens,
        "state": torch.randn(B, cfg.state_dim, generator=g),
        "actions": torch.randn(B, cfg.chunk_length, cfg.action_dim, generator=g),
    }


def sample_inputs(cfg: DiT4DiTConfig, B: int) -> tuple[torch.Tensor, ...]:
    H, A = cfg.chunk_length, cfg.action_dim
    return torch.zeros(B, cfg.state_dim), torch.randn(B, H, A), torch.zeros(B, H, A), torch.zeros(B, H)


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("conditioning", ["video", "image_features"])
def test_shapes_and_dtypes_per_preset(preset: str, conditioning: str) -> None:
    cfg = preset_config(preset, conditioning=conditioning)
    torch.manual_seed(0)
    model = DiT4DiT(cfg).eval()
    frames, tokens = inputs(cfg, 2)
    with torch.no_grad():
        features = FeatureNet(model)(frames, tokens)
        actions = ActionSampler(model)(features, *sample_inputs(cfg, 2))
    assert features.shape == (2, cfg.condition_tokens, cfg.condition_width)
    assert actions.shape == (2, cfg.chunk_length, cfg.action_dim)
    assert features.dtype == actions.dtype == torch.float32
    assert torch.isfinite(features).all() and torch.isfinite(actions).all()


def test_paper_preset_shapes_without_allocating_weights() -> None:
    cfg = paper()
    assert (cfg.video_width, cfg.extract_layer, cfg.action_depth, cfg.chunk_length, cfg.num_euler_steps,
            cfg.image_size) == (2048, 17, 16, 16, 4, 224)
    with torch.device("meta"):
        model = DiT4DiT(cfg)
        features = FeatureNet(model)(torch.empty(1, 1, 3, 224, 224), torch.zeros(1, cfg.max_text_len, dtype=torch.long))
        actions = ActionSampler(model)(features, torch.empty(1, 14), torch.empty(1, 16, 14), torch.empty(1, 16, 14),
                                       torch.empty(1, 16))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert features.shape == (1, cfg.condition_tokens, 2048)
    assert actions.shape == (1, 16, 14)
    video_params = sum(p.numel() for p in model.video.parameters())
    assert 1.7e9 < video_params < 2.2e9, video_params  # the Cosmos-Predict2.5-2B backbone's size


def test_feature_pass_is_one_video_pass_up_to_the_extraction_layer() -> None:
    cfg = tiny(video_depth=3, extract_layer=2)
    model = DiT4DiT(cfg).eval()
    calls: dict[str, int] = {}

    def count(name: str):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1
        return hook

    for i, block in enumerate(model.video.blocks):
        block.register_forward_hook(count(f"block{i}"))
    model.video.final.register_forward_hook(count("final"))
    model.tokenizer.decoder.register_forward_hook(count("decoder"))
    with torch.no_grad():
        FeatureNet(model)(*inputs(cfg, 1))
    assert calls == {"block0": 1, "block1": 1}  # no later block, no output layer, no frame decoding


def test_features_depend_on_frames_and_instruction() -> None:
    for conditioning in ("video", "image_features"):
        cfg = tiny(conditioning=conditioning)
        torch.manual_seed(1)
        model = DiT4DiT(cfg).eval()
        perturb_zero_init(model, 0.05, torch.Generator().manual_seed(0))
        net = FeatureNet(model)
        frames, tokens = inputs(cfg, 1)
        with torch.no_grad():
            base = net(frames, tokens)
            other_frames = net(-frames, tokens)
            other_text = net(frames, torch.where(tokens > 1, tokens % (cfg.vocab_size - 3) + 3, tokens))
        assert not torch.allclose(base, other_frames), conditioning
        assert not torch.allclose(base, other_text), conditioning


def test_dual_loss_decreases() -> None:
    cfg = tiny()
    torch.manual_seed(0)
    model = DiT4DiT(cfg)
    batch = latent_batch(cfg, 8)
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("tokenizer")], lr=2e-3)
    history = []
    for step in range(40):
        losses = dual_flow_matching_loss(model, batch, torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append((losses["video"].item(), losses["action"].item()))
    first, last = np.mean(history[:4], axis=0), np.mean(history[-4:], axis=0)
    assert last[0] < 0.8 * first[0], (first, last)  # video velocity loss
    assert last[1] < 0.8 * first[1], (first, last)  # action velocity loss


@pytest.mark.parametrize("trains_video", [True, False])
def test_action_loss_reaches_video_dit_only_when_end_to_end(trains_video: bool) -> None:
    flow = paper_flow()
    flow.video_loss_weight, flow.action_trains_video = 0.0, trains_video
    cfg = tiny(flow=flow, video_depth=3, extract_layer=2)
    model = DiT4DiT(cfg)
    perturb_zero_init(model, 0.05, torch.Generator().manual_seed(0))
    dual_flow_matching_loss(model, latent_batch(cfg, 4), torch.Generator().manual_seed(0))["loss"].backward()
    grad = model.video.blocks[0].attn.q.weight.grad
    reached = grad is not None and grad.abs().sum() > 0
    assert reached == trains_video
    later = model.video.blocks[2].attn.q.weight.grad  # after the extraction layer: only the video loss trains it
    assert later is None or later.abs().sum() == 0


def test_ablation_switch_uses_plain_image_features() -> None:
    cfg = tiny(conditioning="image_features")
    model = DiT4DiT(cfg)
    perturb_zero_init(model, 0.05, torch.Generator().manual_seed(0))  # adaLN-Zero: no gradient reaches it at init
    assert not hasattr(model, "video") and hasattr(model, "image")
    assert cfg.condition_tokens == cfg.context_frames * cfg.tokens_per_frame
    losses = dual_flow_matching_loss(model, latent_batch(cfg, 4), torch.Generator().manual_seed(0))
    assert losses["video"].item() == 0.0 and losses["action"].item() > 0
    losses["loss"].backward()
    assert model.image.patch_embed.weight.grad.abs().sum() > 0  # trained through the action loss
    with pytest.raises(ValueError, match="conditioning"):
        tiny(conditioning="vlm")


def test_time_distributions_and_their_validation() -> None:
    g = torch.Generator().manual_seed(0)
    flow = paper_flow()
    t_a = flow.action_time.sample(20000, g)
    # 0.001 + 0.999 * Beta(1.5, 1): mean 0.001 + 0.999 * 0.6, skewed towards noise (t = 1)
    assert abs(t_a.mean().item() - (0.001 + 0.999 * 0.6)) < 0.01
    assert t_a.min() >= 0.001 and t_a.max() <= 1.0
    t_v = flow.video_time.sample(20000, g)
    assert 0.0 < t_v.min() and t_v.max() < 1.0
    assert 0.05 < (t_v >= 0.98).float().mean().item() < 0.08  # 5 % forced high noise + the logit-normal tail
    assert torch.all(flow.extraction_time.sample(3, g) == 1.0)
    a, b = TimeDistribution("beta").sample(5, torch.Generator().manual_seed(3)), TimeDistribution("beta").sample(
        5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="kind"):
        TimeDistribution("gaussian")
    with pytest.raises(ValueError, match="extraction_time"):
        FlowConfig(video_time=TimeDistribution(), extraction_time=TimeDistribution("uniform"),
                   action_time=TimeDistribution("beta"))


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="extract_layer 9"):
        tiny(extract_layer=9)
    with pytest.raises(ValueError, match="image_size"):
        tiny(image_size=30)
    with pytest.raises(ValueError, match="unknown DiT4DiT config keys"):
        DiT4DiTConfig.from_dict({**tiny().to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")
    assert DiT4DiTConfig.from_dict(tiny().to_dict()) == tiny()


def test_pretrained_components_load_from_local_files_only(tmp_path) -> None:
    cfg = tiny()
    src, dst = DiT4DiT(cfg), DiT4DiT(cfg)
    for p in src.tokenizer.parameters():
        p.data.normal_()
    save_component(src.tokenizer, "frame_tokenizer", {"latent_channels": cfg.latent_channels}, tmp_path / "tok.pt")
    load_component(dst.tokenizer, "frame_tokenizer", tmp_path / "tok.pt")
    for (k, a), b in zip(src.tokenizer.state_dict().items(), dst.tokenizer.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(PretrainedComponentError, match="no path was given"):
        load_component(dst.tokenizer, "frame_tokenizer", paper().tokenizer_path)
    with pytest.raises(PretrainedComponentError, match="does not exist"):
        load_component(dst.text, "text_encoder", tmp_path / "missing.pt")
    with pytest.raises(PretrainedComponentError, match="kind 'text_encoder'"):
        load_component(dst.text, "text_encoder", tmp_path / "tok.pt")
    wrong = DiT4DiT(tiny(latent_channels=8))
    with pytest.raises(PretrainedComponentError, match="does not match"):
        load_component(wrong.tokenizer, "frame_tokenizer", tmp_path / "tok.pt")


@pytest.mark.parametrize("temporal_patch", [1, 2])
def test_patchify_round_trip(temporal_patch: int) -> None:
    cfg = tiny(context_frames=2, future_frames=2, temporal_patch=temporal_patch)
    video = DiT4DiT(cfg).video
    latents = torch.randn(2, 4, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    tokens = video.patchify(latents)
    assert tokens.shape == (2, 4 // temporal_patch * cfg.tokens_per_frame, video.patch_dim)
    torch.testing.assert_close(video.unpatchify(tokens, 4), latents, rtol=0, atol=0)
    # the token of latent frame-group 0, patch (0, 0) holds exactly that patch's values
    p = cfg.patch_size
    first = latents[0, :temporal_patch, :, :p, :p].permute(0, 2, 3, 1).reshape(-1)
    torch.testing.assert_close(tokens[0, 0], first, rtol=0, atol=0)
