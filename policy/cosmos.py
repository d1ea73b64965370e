"""Cosmos-Predict2.5 as DiT4DiT's video backbone: diffusers' classes, weights from a local directory.

    transformer  diffusers.CosmosTransformer3DModel   (DIR/transformer: config.json + *.safetensors)
    vae          diffusers.AutoencoderKLWan (Wan 2.1) (DIR/vae: config.json + *.safetensors)
    text         the 7B Qwen2.5-VL text encoder is NOT part of the policy: its outputs, projected by the
                 transformer's `crossattn_proj`, are cached per instruction in the checkpoint (InstructionContext)

DIR is the diffusers layout of nvidia/Cosmos-Predict2.5-2B (revision diffusers/base/post-trained); loading uses
local files only (`local_files_only=True`), and a missing or mismatched file is a BackboneError naming it.

Feature pass (CosmosVideo.forward with depth=k), as the public DiT4DiT code and the Cosmos 2.5 pipeline do it:
context latent frame(s) at flow time 1e-4 with the condition-mask channel set, future latent slots pure noise (a
fixed extraction noise), one pass; the hidden states after `transformer_blocks[k-1]`. The blocks are run here, so
blocks k.. are never computed (diffusers' forward would run all 28), and the padding-mask channel (all zeros: no
padding) is built at latent size, so torchvision (which diffusers uses only to resize that mask) is never needed.

diffusers is an optional extra (`pip install -e .[cosmos]`); this module imports it on first use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

TRANSFORMER_DIR, VAE_DIR = "transformer", "vae"
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin")
# Keys of the transformer / VAE config that the project's shapes depend on; a local directory must agree on them.
CHECKED_TRANSFORMER_KEYS = ("in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "num_layers",
                            "patch_size", "use_crossattn_projection", "crossattn_proj_in_channels",
                            "encoder_hidden_states_channels", "concat_padding_mask")
CHECKED_VAE_KEYS = ("z_dim",)


class BackboneError(FileNotFoundError):
    """A Cosmos backbone directory lacks a file, or a file does not match the preset; the message names the file."""


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as e:
        raise BackboneError("the cosmos backbone needs diffusers: pip install -e '.[cosmos]' (see README)") from e
    return diffusers


# ------------------------------------------------------------------------------------------ configs


def cosmos_2b_configs() -> dict[str, Any]:
    """Cosmos-Predict2.5-2B (diffusers' conversion script's "Cosmos-2.5-Predict-Base-2B") and its Wan 2.1 VAE."""
    transformer = dict(in_channels=17, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
                       mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256, max_size=[128, 240, 240],
                       patch_size=[1, 2, 2], rope_scale=[1.0, 3.0, 3.0], concat_padding_mask=True,
                       extra_pos_embed_type=None, use_crossattn_projection=True, crossattn_proj_in_channels=100352,
                       encoder_hidden_states_channels=1024)
    vae = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
    # text: Cosmos-Reason1-7B hidden states of 28 layers x 3584, 512 tokens (padded, no mask)
    return {"transformer": transformer, "vae": vae, "text_length": 512}


def cosmos_tiny_configs() -> dict[str, Any]:
    """The same classes at a CPU size for tests: 4 blocks of 2 heads x 16, a 3-wide Wan VAE, 32 text tokens of 48."""
    transformer = dict(in_channels=17, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=4,
                       mlp_ratio=2.0, text_embed_dim=32, adaln_lora_dim=8, max_size=[8, 32, 32], patch_size=[1, 2, 2],
                       rope_scale=[1.0, 3.0, 3.0], concat_padding_mask=True, extra_pos_embed_type=None,
                       use_crossattn_projection=True, crossattn_proj_in_channels=48, encoder_hidden_states_channels=32)
    vae = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    return {"transformer": transformer, "vae": vae, "text_length": 32}


def text_channels(configs: dict[str, Any]) -> int:
    """Channels of one raw text-encoder token (what `crossattn_proj` takes)."""
    t = configs["transformer"]
    return int(t["crossattn_proj_in_channels"] if t.get("use_crossattn_projection") else t["text_embed_dim"])


def _plain(config: Any) -> dict[str, Any]:
    """A diffusers FrozenDict config as a plain dict of JSON-able values (what a checkpoint stores)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def build_backbone(configs: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """(transformer, vae) with random weights from the config dicts (no file is read)."""
    d = _diffusers()
    return d.CosmosTransformer3DModel.from_config(configs["transformer"]), d.AutoencoderKLWan.from_config(configs["vae"])


def save_backbone(directory: str | Path, transformer: nn.Module, vae: nn.Module) -> Path:
    """Write DIR/transformer and DIR/vae in the diffusers layout (what load_backbone reads)."""
    directory = Path(directory)
    transformer.save_pretrained(directory / TRANSFORMER_DIR)
    vae.save_pretrained(directory / VAE_DIR)
    return directory


def _check_folder(directory: Path, sub: str) -> Path:
    folder = directory / sub
    config = folder / "config.json"
    if not config.is_file():
        raise BackboneError(f"{config} is missing: --backbone must be a Cosmos-Predict2.5 directory in the diffusers "
                            f"layout (e.g. huggingface-cli download nvidia/Cosmos-Predict2.5-2B --revision "
                            f"diffusers/base/post-trained --local-dir DIR on a machine with internet)")
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir()):
        raise BackboneError(f"{folder} has config.json but no weights file (diffusion_pytorch_model*.safetensors)")
    return config


def _check_keys(config_file: Path, loaded: dict[str, Any], expected: dict[str, Any], keys: Sequence[str]) -> None:
    wrong = [f"{k} is {loaded.get(k)!r}, the preset needs {expected[k]!r}" for k in keys
             if k in expected and json.loads(json.dumps(loaded.get(k))) != json.loads(json.dumps(expected[k]))]
    if wrong:
        raise BackboneError(f"{config_file} does not match this preset: " + "; ".join(wrong))


def load_backbone(directory: str | Path, expected: dict[str, Any],
                  dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(transformer, vae, configs as loaded) from a local diffusers-layout directory; never downloads."""
    d = _diffusers()
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise BackboneError(f"backbone directory {directory} does not exist (nothing is downloaded)")
    t_config, v_config = _check_folder(directory, TRANSFORMER_DIR), _check_folder(directory, VAE_DIR)
    for config in (t_config, v_config):
        try:
            json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BackboneError(f"{config} is not readable JSON: {e}") from e
    _check_keys(t_config, json.loads(t_config.read_text()), expected["transformer"], CHECKED_TRANSFORMER_KEYS)
    _check_keys(v_config, json.loads(v_config.read_text()), expected["vae"], CHECKED_VAE_KEYS)
    loaded = []
    for cls, sub, config in ((d.CosmosTransformer3DModel, TRANSFORMER_DIR, t_config), (d.AutoencoderKLWan, VAE_DIR, v_config)):
        try:
            loaded.append(cls.from_pretrained(str(directory / sub), local_files_only=True, torch_dtype=dtype))
        except (OSError, ValueError, RuntimeError, KeyError) as e:  # truncated/mismatched weights, bad index
            raise BackboneError(f"{config.parent}: its weights do not load into {cls.__name__} of {config.name}: "
                                f"{str(e)[:400]}") from e
    transformer, vae = loaded
    configs = dict(expected, transformer=_plain(transformer.config), vae=_plain(vae.config))
    return transformer.eval(), vae.eval(), configs


# ------------------------------------------------------------------------------------------ modules


class CosmosLatents(nn.Module):
    """The Wan 2.1 VAE's encoder as the frame tokenizer: frames -> normalised latents.

    Normalisation (z - mean) / std with mean and std from the VAE's own config. Not the pipeline's attribute:
    since diffusers 0.39 `Cosmos2_5_PredictBasePipeline.latents_std` holds 1/std (and multiplies), so code that
    divides by it, written against older releases, silently computes (z - mean) * std."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        z = vae.config.z_dim
        self.register_buffer("latent_mean", torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1))
        self.register_buffer("latent_std", torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1))

    @property
    def temporal_factor(self) -> int:
        """Pixel frames per latent frame after the first (4 for Wan 2.1)."""
        return 2 ** sum(bool(d) for d in self.vae.config.temperal_downsample)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, T, 3, H, W) in [-1, 1], T = 1 + 4k -> normalised latents (B, 1 + k, C, H/8, W/8).
        The VAE is causal: latent frame 0 depends on pixel frame 0 only."""
        z = self.vae.encode(video.transpose(1, 2)).latent_dist.mode()  # (B, C, 1 + k, h, w): the mean ("argmax")
        z = (z.float() - self.latent_mean) / self.latent_std
        return z.transpose(1, 2).contiguous()  # (B, 1 + k, C, h, w)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, 3, H, W) -> (N, C, h, w): each frame alone, i.e. as the first frame of a clip."""
        return self.encode_video(frames.unsqueeze(1))[:, 0]


class InstructionContext(nn.Module):
    """Cached text conditioning: row i = instruction i's text-encoder output through `crossattn_proj`, (L, D).

    tokens (B, 1) int64 instruction index -> (context (B, L, D), mask (B, L) all True: Cosmos attends to every
    padded token, as it was trained)."""

    def __init__(self, count: int, length: int, width: int) -> None:
        super().__init__()
        self.register_buffer("context", torch.zeros(count, length, width))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.context[tokens[:, 0]]  # (B, L, D)
        return ctx, torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device)

    @torch.no_grad()
    def fill(self, transformer: nn.Module, raw: torch.Tensor) -> None:
        """raw (count, L, C_text) text-encoder outputs -> the projected cache."""
        self.context.copy_(project_text(transformer, raw.to(self.context.dtype)))


def project_text(transformer: nn.Module, raw: torch.Tensor) -> torch.Tensor:
    """Raw text-encoder output (.., L, C_text) -> cross-attention context (.., L, D), as the transformer does."""
    if transformer.config.use_crossattn_projection:
        return transformer.crossattn_proj(raw.to(transformer.crossattn_proj[0].weight.dtype))
    return raw


class CosmosVideo(nn.Module):
    """The Cosmos transformer behind the project's video-DiT interface.

    forward(latents (B, T, C, h, w), frame_times (B, T), text (B, L, D) projected, text_mask, depth=None):
      depth k: hidden states after k blocks (B, T*h/2*w/2, heads*head_dim), blocks k.. not run;
      depth None: the velocity of the future slots (B, Tf, C, h, w) from the full network.
    The first `context_groups` latent frames are the condition (condition-mask channel 1)."""

    def __init__(self, transformer: nn.Module, context_frames: int, future_frames: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.context_groups = context_frames
        self.groups = context_frames + future_frames
        self.gradient_checkpointing = False

    def _blocks_input(self, latents: torch.Tensor, frame_times: torch.Tensor,
                      text: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        tr = self.transformer
        B, T, _, h, w = latents.shape
        x = latents.transpose(1, 2).to(tr.patch_embed.proj.weight.dtype)  # (B, C, T, h, w)
        cond = (torch.arange(T, device=x.device) < self.context_groups).to(x.dtype).view(1, 1, T, 1, 1)
        parts = [x, cond.expand(B, 1, T, h, w)]
        if tr.config.concat_padding_mask:  # no padding anywhere: a zero channel (diffusers resizes a zero mask to this)
            parts.append(torch.zeros_like(parts[1]))
        x = torch.cat(parts, dim=1)  # (B, C + 1 (+1), T, h, w)
        rotary = tr.rope(x)
        extra_pos = tr.learnable_pos_embed(x) if tr.config.extra_pos_embed_type else None
        tokens = tr.patch_embed(x).flatten(1, 3)  # (B, N, D), N = T * h/2 * w/2 (temporal patch 1)
        temb, t_emb = tr.time_embed(tokens, frame_times.reshape(-1).float())  # (B*T, 3D), (B*T, D): one per frame
        per_token = tokens.shape[1] // T
        temb, t_emb = (e.view(B, T, 1, -1).expand(-1, -1, per_token, -1).reshape(B, tokens.shape[1], -1)
                       for e in (temb, t_emb))
        return tokens, (text.to(tokens.dtype), t_emb, temb, rotary, extra_pos)

    def forward(self, latents: torch.Tensor, frame_times: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                depth: int | None = None) -> torch.Tensor:
        x, args = self._blocks_input(latents, frame_times, text)
        for block in self.transformer.transformer_blocks[: depth or None]:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, *args, use_reentrant=False)
            else:
                x = block(x, *args)  # (B, N, D)
        if depth is not None:
            return x
        return self._future_velocity(x, args, latents.shape)

    def _future_velocity(self, x: torch.Tensor, args: tuple[Any, ...], shape: torch.Size) -> torch.Tensor:
        tr = self.transformer
        _, t_emb, temb, _, _ = args
        B, T, _, h, w = shape
        pt, ph, pw = tr.config.patch_size
        v = tr.proj_out(tr.norm_out(x, t_emb, temb))  # (B, N, ph*pw*pt*C)
        # the transformer's own token layout: (T', H', W') tokens of (ph, pw, pt, C) values
        v = v.view(B, T // pt, h // ph, w // pw, ph, pw, pt, -1)
        v = v.permute(0, 1, 6, 7, 2, 4, 3, 5).reshape(B, T, -1, h, w)  # (B, T, C, h, w)
        return v[:, self.context_groups :].float()


TEXT_EMBEDDINGS_FORMAT = "dit4dit-text-embeddings"


def save_text_embeddings(path: str | Path, instructions: Sequence[str], embeddings: torch.Tensor) -> None:
    """Raw text-encoder outputs per instruction, (n, L, C_text), for dit4dit-train --text-embeddings."""
    torch.save({"format": TEXT_EMBEDDINGS_FORMAT, "instructions": list(instructions),
                "embeddings": embeddings.detach().float().cpu()}, str(path))


def read_text_embeddings(path: str | Path, configs: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    """(instructions, embeddings (n, L, C_text)) from a file of save_text_embeddings, checked against the preset."""
    p = Path(path)
    if not p.is_file():
        raise BackboneError(f"text embeddings file {p} does not exist")
    blob = torch.load(str(p), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != TEXT_EMBEDDINGS_FORMAT:
        raise BackboneError(f"{p} is not a dit4dit text embeddings file (format {TEXT_EMBEDDINGS_FORMAT!r})")
    emb, names = blob["embeddings"], list(blob["instructions"])
    want = (len(names), configs["text_length"], text_channels(configs))
    if tuple(emb.shape) != want:
        raise BackboneError(f"{p}: embeddings are {tuple(emb.shape)}, this backbone needs {want} "
                            f"(instructions, text_length, text channels)")
    return names, emb


SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."


class CosmosTextEncoder:
    """The Cosmos-Predict2.5 text encoder (Qwen2.5-VL, Cosmos-Reason1-7B) from a local folder with its tokenizer
    (the diffusers layout's text_encoder/ and tokenizer/, or one folder holding both); for instructions that a
    checkpoint has not cached. __call__(instructions) -> raw embeddings (n, L, layers * hidden): the instruction
    in the chat template with the pipeline's system prompt, padded/cut to L tokens (no mask), each layer's hidden
    states after the embeddings standardised per token, concatenated on channels, as the Cosmos 2.5 pipeline."""

    def __init__(self, directory: str | Path, length: int, device: str | torch.device = "cpu") -> None:
        try:
            from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        except ImportError as e:
            raise BackboneError("--text-encoder needs transformers: pip install -e '.[cosmos]'") from e
        root = Path(directory).expanduser()
        model_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        if not (model_dir / "config.json").is_file():
            raise BackboneError(f"{model_dir / 'config.json'} is missing: --text-encoder must be a local Qwen2.5-VL "
                                f"folder (the Cosmos-Predict2.5 download's text_encoder/ and tokenizer/)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as e:
            raise BackboneError(f"{root}: the text encoder or its tokenizer does not load: {str(e)[:400]}") from e
        self.model.to(device).eval()
        self.length = length

    @torch.no_grad()
    def __call__(self, instructions: Sequence[str]) -> torch.Tensor:
        ids = []
        for text in instructions:
            chat = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                    {"role": "user", "content": [{"type": "text", "text": text}]}]
            out = self.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False,
                                                     max_length=self.length, truncation=True, padding="max_length")
            ids.append(torch.as_tensor(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out))
        device = next(self.model.parameters()).device
        hidden = self.model(torch.stack(ids).to(device), output_hidden_states=True).hidden_states
        layers = [(h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + 1e-8) for h in hidden[1:]]
        return torch.cat(layers, dim=-1).float().cpu()  # (n, L, layers * hidden)
