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
from safetensors import safe_open
from torch import nn

from fif.core.names import unknown_name_message
from fif.model.hub import ModelLoadError, hub_model_dir, tag_weights
from fif.model.vocab import CompactTokenizer, read_vocabulary

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
# fif's own architectures (every config in CONFIG_DIR) read this compact vocabulary, not open_clip's 49,408
# BPE tokens: see fif.model.vocab.
COMPACT_VOCABULARY = CONFIG_DIR / "fif-mini.vocab"
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip clamps the learnable temperature at 1/100
_registered = False


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


@dataclass(frozen=True)
class WeightsSource:
    """What :func:`resolve_weights` found: the name open_clip builds from (``arch``, or ``local-dir:`` of a
    cached ``hf-hub:`` model), the weights file (None: random init or the hf-hub folder's own), and the
    preprocessing an open_clip tag sets."""

    source: str
    weights: str | None = None
    preprocess: dict | None = None


def looks_like_file(pretrained: str) -> bool:
    """Whether ``model.pretrained`` names a file rather than an open_clip tag."""
    return any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin"))


def resolve_weights(arch: str, pretrained: str | None = None, cache_dir: str | None = None) -> WeightsSource:
    """Check ``model.arch`` / ``model.pretrained`` and find the weights on disk, before any model is built.

    Cheap when the weights are local (a file, or a tag or ``hf-hub:`` model in the Hugging Face cache: no
    network request); a tag that is not cached is downloaded, or fails within seconds when offline
    (:mod:`fif.model.hub`). Runs can call it first, so a bad source fails before any data is read.

    Raises:
        ModelLoadError: unknown architecture or tag, missing file, or weights neither cached nor reachable.
    """
    register_fif_models()
    import open_clip  # heavy: every fif command would pay for it at start

    if not arch.startswith(("hf-hub:", "local-dir:")) and arch not in open_clip.list_models():
        raise ModelLoadError(unknown_name_message("model architecture (model.arch)", arch, open_clip.list_models()))
    if arch.startswith("hf-hub:"):  # from the cache when it is there: open_clip would ask the Hub first
        return WeightsSource(hub_model_dir(arch, cache_dir) or arch)
    if not pretrained:
        return WeightsSource(arch)
    if looks_like_file(pretrained):
        if not Path(pretrained).is_file():
            raise ModelLoadError(
                f"model.pretrained: checkpoint file {pretrained!r} does not exist; give an existing "
                f".safetensors/.pt file, an open_clip tag, or leave it empty for random init"
            )
        return WeightsSource(arch, pretrained)
    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    if pretrained not in tags:
        raise ModelLoadError(
            f"model.pretrained: {pretrained!r} is neither a file nor an open_clip tag for {arch!r}. "
            f"Tags for {arch}: {', '.join(tags) or '(none)'}"
        )
    weights, preprocess = tag_weights(arch, pretrained, cache_dir)
    quick_gelu = open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False)
    if quick_gelu != open_clip.get_model_config(arch).get("quick_gelu", False):  # open_clip warns so as well
        log.warning(f"model.pretrained={pretrained!r} was trained with quick_gelu={quick_gelu} but {arch!r} uses "
                    f"quick_gelu={not quick_gelu}; the matching architecture is usually "
                    f"{arch + '-quickgelu' if quick_gelu else arch.removesuffix('-quickgelu')}")
    return WeightsSource(arch, weights, preprocess)


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
        cache_dir: the Hugging Face cache for pretrained tags and ``hf-hub:`` models (default: huggingface_hub's).
        attention: ``default`` (the architecture's own transformer blocks) or ``custom``: open_clip's
            ``CustomResidualAttentionBlock`` in every transformer tower (see :func:`attention_overrides`).

    Returns:
        The model (fp32, train mode) with its tokenizer and preprocessing constants.

    Raises:
        ModelLoadError: see :func:`resolve_weights`; weights that do not fit the architecture or hold
            pickled objects.
    """
    import open_clip  # heavy: every fif command would pay for it at start

    found = resolve_weights(arch, pretrained, cache_dir)
    overrides = attention_overrides(arch, attention)
    try:
        model = open_clip.create_model(
            found.source, pretrained=found.weights, device=device, cache_dir=cache_dir, output_dict=True,
            weights_only=True, force_preprocess_cfg=found.preprocess, **overrides,
        )
    except Exception as e:  # open_clip raises bare RuntimeErrors for file problems
        if "Weights only load failed" in str(e):  # torch.load(weights_only=True) met a pickled object
            blocked = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
            raise ModelLoadError(
                f"model.pretrained: refused to load {pretrained!r}: it holds pickled Python objects, not only tensors"
                f"{f' ({blocked[0]})' if blocked else ''}. fif never unpickles user files; convert it to .safetensors "
                "where you trust its source"
            ) from e
        raise ModelLoadError(f"could not build model {arch!r} (pretrained={pretrained!r}): {e}") from e
    model.train()
    visual = model.visual
    size = getattr(visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    tokenizer = open_clip.get_tokenizer(found.source)
    if uses_compact_vocabulary(found.source):
        vocab_size = open_clip.get_model_config(found.source)["text_cfg"]["vocab_size"]
        tokenizer = CompactTokenizer(tokenizer, read_vocabulary(COMPACT_VOCABULARY), vocab_size)
    return Clip(model=model, tokenizer=tokenizer, arch=arch, image_size=size, mean=mean, std=std)  # type: ignore[arg-type]


def uses_compact_vocabulary(arch: str) -> bool:
    """Whether ``arch`` is one of fif's own architectures, whose text tower reads :data:`COMPACT_VOCABULARY`."""
    return "/" not in arch and (CONFIG_DIR / f"{arch}.json").is_file()


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a weights file, read the way open_clip's ``load_state_dict`` reads it (a
    ``state_dict`` entry is unwrapped, a ``module.`` prefix dropped); safetensors headers only.

    Raises:
        ModelLoadError: the file is unreadable, holds pickled objects, or is not a mapping of tensors.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # mmap needs torch's zip format; older files are read whole
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
            if not isinstance(loaded, dict):
                raise ModelLoadError(f"{path}: not a state dict (a mapping of names to tensors)")
            shapes = {k: tuple(v.shape) for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    except ModelLoadError:
        raise
    except Exception as e:  # safetensors / torch errors for truncated, foreign or pickled files
        raise ModelLoadError(f"{path}: cannot read its tensors ({str(e).splitlines()[0]})") from e
    if shapes and next(iter(shapes)).startswith("module."):
        shapes = {k.removeprefix("module."): v for k, v in shapes.items()}
    return shapes


def _vision_kind(keys) -> str:
    """open_clip's image tower behind a state dict's keys: ``timm``, ``resnet`` (ModifiedResNet) or ``vit``."""
    if any(k.startswith("visual.trunk.") for k in keys):
        return "timm"
    return "resnet" if "visual.layer1.0.conv1.weight" in keys else "vit"


def _config_probe(cfg: dict) -> tuple[str, dict[str, tuple[int, ...]]] | None:
    """(image tower kind, shapes any state dict of config ``cfg`` has), read from the config alone: the text
    tower's token and position embeddings and the image tower's stem (None: a Hugging Face text tower,
    which needs a download to build). A cheap filter before building a candidate."""
    text, vision = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
    if "hf_model_name" in text:
        return None
    prefix = "text." if cfg.get("custom_text") else ""
    width = text.get("width", 512)
    probe = {prefix + "token_embedding.weight": (text.get("vocab_size", 49408), width),
             prefix + "positional_embedding": (text.get("context_length", 77), width)}
    layers = vision.get("layers", 12)
    if "timm_model_name" in vision:
        return "timm", probe
    if isinstance(layers, (list, tuple)):  # ModifiedResNet: a stem conv of width/2 channels
        probe["visual.conv1.weight"] = (vision.get("width", 64) // 2, 3, 3, 3)
        return "resnet", probe
    patch = vision.get("patch_size", 16)
    probe["visual.conv1.weight"] = (vision.get("width", 768), 3, patch, patch)
    return "vit", probe


def fitting_archs(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The built-in open_clip architectures (and fif's) whose state dict has exactly these keys and shapes.

    Candidates passing a cheap filter on the config (:func:`_config_probe`) are built on the ``meta`` device
    (no memory, no weights) and compared in full. Architectures that differ only in their function
    (``-quickgelu`` twins) all fit. Architectures with Hugging Face text towers are not tried.
    """
    register_fif_models()
    import open_clip  # heavy: every fif command would pay for it at start
    from open_clip.model import convert_to_custom_text_state_dict  # open_clip's own key renaming on load

    custom = convert_to_custom_text_state_dict(dict(shapes))  # the keys a CustomTextCLIP loads them as
    kind = _vision_kind(shapes)
    fits = []
    for arch in open_clip.list_models():
        cfg = open_clip.get_model_config(arch) or {}
        probe = _config_probe(cfg)
        want = custom if cfg.get("custom_text") else shapes
        if probe is None or probe[0] != kind or any(want.get(k) != v for k, v in probe[1].items()):
            continue
        with quiet_open_clip(), torch.device("meta"):
            model = open_clip.create_model(arch, device="meta")
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == want:
            fits.append(arch)
    return fits


def infer_arch(path: str | Path, prefer: str | None = None) -> str:
    """The open_clip architecture a plain state dict file (one without fif's ``arch`` metadata) was made for.

    Args:
        path: a ``.safetensors`` or torch weights file.
        prefer: the architecture to take when several fit and it is one of them (e.g. a preset's).

    Raises:
        ModelLoadError: no architecture fits, or several do and ``prefer`` is not among them (naming them).
    """
    fits = fitting_archs(checkpoint_shapes(path))
    if len(fits) == 1 or (fits and prefer in fits):
        return fits[0] if len(fits) == 1 else prefer  # type: ignore[return-value]
    if not fits:
        raise ModelLoadError(
            f"{path}: its tensor shapes fit none of open_clip's built-in architectures (those with Hugging Face "
            "text towers are not tried); name the architecture with --arch NAME (model.arch=NAME)"
        )
    raise ModelLoadError(
        f"{path}: its tensor shapes fit {len(fits)} architectures: {', '.join(fits)}; name the one it was trained "
        f"as with --arch NAME (model.arch=NAME; -quickgelu variants differ only in the activation, e.g. OpenAI's "
        "weights use QuickGELU)"
    )


class quiet_open_clip(logging.Filter):
    """Context manager: drop the root-logger warnings open_clip logs while models are built that are meant to
    have random weights ("No pretrained weights loaded ...": candidate models, shape-only and fingerprint
    builds)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname

    def __enter__(self) -> "quiet_open_clip":
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self)


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
