"""open_clip wrapper: build a CLIP by architecture name + weights source, tokenize, encode.

The model itself stays a plain open_clip module (its state_dict keys are open_clip's), so methods,
merges and checkpoints work on any open_clip architecture. :class:`Clip` carries what goes with it:
the tokenizer, the input size and the normalisation constants.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from fif.core.names import unknown_name_message

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip clamps the learnable temperature at 1/100
_registered = False


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights could not be loaded (the message says how to fix it)."""


def register_fif_models() -> None:
    """Add fif's architectures (e.g. ``fif-mini-rn32``) to open_clip's registry.

    open_clip's registry is a module global, so this must run in every process (DataLoader workers,
    DDP ranks); :func:`build_clip` calls it.
    """
    global _registered
    if not _registered:
        import open_clip  # heavy: every fif command would pay for it at start

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


@dataclass
class Clip:
    """An open_clip model with its tokenizer and preprocessing constants.

    Attributes:
        model: the open_clip module (``CLIP`` or ``CustomTextCLIP``), built with ``output_dict=True``.
        tokenizer: ``tokenizer(list[str]) -> LongTensor (B, context_length)``.
        arch: open_clip architecture name.
        image_size: square input size in pixels.
        mean, std: per-channel normalisation applied to [0, 1] images.
    """

    model: nn.Module
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    arch: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images → model input (on the images' device)."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_clip(
    arch: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    attention: str = "default",
) -> Clip:
    """Build an open_clip model.

    Args:
        arch: open_clip architecture (``ViT-B-16``, ``fif-mini-rn32``, ``hf-hub:org/repo``, ...).
        pretrained: None (random init), an open_clip tag (``laion2b_s34b_b88k``), or a local checkpoint
            file (``.safetensors``, or a torch file loaded with ``weights_only=True``).
        device: where to put the model.
        cache_dir: download cache for pretrained tags.
        attention: ``default`` (the architecture's own transformer blocks) or ``custom``: open_clip's
            ``CustomResidualAttentionBlock`` in every transformer tower (see :func:`attention_overrides`).

    Returns:
        The model (fp32, train mode) with its tokenizer and preprocessing constants.

    Raises:
        ModelLoadError: unknown architecture, missing file, or weights that cannot be downloaded.
    """
    register_fif_models()
    import open_clip  # heavy: every fif command would pay for it at start

    if not arch.startswith(("hf-hub:", "local-dir:")) and arch not in open_clip.list_models():

        raise ModelLoadError(unknown_name_message("model architecture (model.arch)", arch, open_clip.list_models()))
    if pretrained:
        looks_like_file = any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith(
            (".safetensors", ".pt", ".pth", ".bin")
        )
        if looks_like_file and not Path(pretrained).is_file():
            raise ModelLoadError(
                f"model.pretrained: checkpoint file {pretrained!r} does not exist; give an existing "
                f".safetensors/.pt file, an open_clip tag, or leave it empty for random init"
            )
        if not looks_like_file:
            tags = [t for a, t in open_clip.list_pretrained() if a == arch]
            if pretrained not in tags:
                raise ModelLoadError(
                    f"model.pretrained: {pretrained!r} is neither a file nor an open_clip tag for {arch!r}. "
                    f"Tags for {arch}: {', '.join(tags) or '(none)'}"
                )
    overrides = attention_overrides(arch, attention)
    try:
        model = open_clip.create_model(
            arch, pretrained=pretrained or None, device=device, cache_dir=cache_dir, output_dict=True,
            weights_only=True, **overrides,
        )
    except Exception as e:  # open_clip raises bare RuntimeErrors for network and file problems
        if "Weights only load failed" in str(e):  # torch.load(weights_only=True) met a pickled object
            blocked = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
            raise ModelLoadError(
                f"model.pretrained: refused to load {pretrained!r}: it holds pickled Python objects, not only tensors"
                f"{f' ({blocked[0]})' if blocked else ''}. fif never unpickles user files; convert it to .safetensors "
                "where you trust its source"
            ) from e
        hint = ""
        if pretrained and not Path(pretrained).is_file():
            hint = (
                f" Downloading the weights for tag {pretrained!r} failed (offline?). Download them where you have "
                f"network (e.g. open_clip.create_model({arch!r}, pretrained={pretrained!r}) fills the HF cache) "
                f"or set model.pretrained=/path/to/open_clip_model.safetensors."
            )
        raise ModelLoadError(f"could not build model {arch!r} (pretrained={pretrained!r}): {e}.{hint}") from e
    model.train()
    visual = model.visual
    size = getattr(visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    tokenizer = open_clip.get_tokenizer(arch)
    return Clip(model=model, tokenizer=tokenizer, arch=arch, image_size=size, mean=mean, std=std)  # type: ignore[arg-type]


ATTENTION_CHOICES = ("default", "custom")


def attention_overrides(arch: str, attention: str) -> dict[str, dict]:
    """open_clip model kwargs that select the transformer block type (``model.attention``).

    ``custom`` sets ``block_type: custom`` in the tower configs of ``arch`` (open_clip's
    ``CustomResidualAttentionBlock``, whose attention is a module of fif's reach rather than
    ``nn.MultiheadAttention``). The state_dict keys and the function are those of the default block, so
    pretrained weights load unchanged. Towers that are not open_clip transformers (ModifiedResNet, timm,
    HF text models) are left as they are.

    Raises:
        ModelLoadError: an unknown value, or ``custom`` for an architecture without a built-in config.
    """
    if attention not in ATTENTION_CHOICES:
        raise ModelLoadError(f"model.attention={attention!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
    if attention == "default":
        return {}
    import open_clip  # heavy: every fif command would pay for it at start

    cfg = None if arch.startswith(("hf-hub:", "local-dir:")) else open_clip.get_model_config(arch)
    if cfg is None:
        raise ModelLoadError(
            f"model.attention=custom needs a built-in open_clip architecture; {arch!r} has none (use default)"
        )
    overrides = {}
    vision, text = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
    if isinstance(vision.get("layers"), int) and "timm_model_name" not in vision:  # a ViT, not a ResNet/timm
        overrides["vision_cfg"] = {**vision, "block_type": "custom"}
    if text and "hf_model_name" not in text:
        overrides["text_cfg"] = {**text, "block_type": "custom"}
    return overrides


def clamp_logit_scale_(model: nn.Module) -> None:
    """Clamp the learnable log-temperature to [0, ln 100] in place, as open_clip's trainer does."""
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        with torch.no_grad():
            scale.clamp_(0, MAX_LOGIT_SCALE)
