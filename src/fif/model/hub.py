"""Pretrained weights from the Hugging Face Hub, cache first: open_clip tags and ``hf-hub:`` models.

open_clip asks the Hub for every tag, even one already in the cache, and without a network its client
retries for about a minute per file (with a warning per retry) before it gives up. fif looks in the cache
first, the way open_clip lays it out, and builds from the cached files without any request. Only when
the files are missing does it talk to the network: one short probe (a few seconds at most), then either
open_clip's own download or a one-line error that names the cache folder, ``HF_HUB_OFFLINE`` and the
local-file alternative.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import constants, try_to_load_from_cache

PROBE_TIMEOUT_S = 4.0  # the whole network check; a missing DNS server must not stall a run for a minute
HF_CONFIG_NAME = "open_clip_config.json"
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip's names (open_clip.constants)
HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")  # what a tag sets of open_clip's PreprocessCfg


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights could not be loaded (the message says how to fix it)."""


def hub_offline() -> bool:
    """Whether the Hub is off limits: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now
    (huggingface_hub reads it once, at import)."""

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face cache folder used (``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``/hub)."""

    return Path(cache_dir or constants.HF_HUB_CACHE).expanduser()


def unreachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url``'s server cannot be reached (None when it answers at all, even with an HTTP error).

    One HEAD request of the server's root, honouring proxy variables, bounded by ``timeout_s`` in all
    (name resolution included: it runs in a daemon thread that is abandoned when it overruns).
    """
    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    outcome: dict[str, str] = {}

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(root, method="HEAD"), timeout=timeout_s).close()
        except urllib.error.HTTPError:
            pass  # the server answered
        except Exception as e:  # URLError, socket errors, TLS errors: nothing usable answered
            outcome["error"] = str(getattr(e, "reason", e))

    thread = threading.Thread(target=probe, name="fif-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    if thread.is_alive():
        return f"no answer within {timeout_s:g} s"
    return outcome.get("error")


def _hub_files(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, file names in the order open_clip tries them) for a tag's ``hf_hub`` entry.

    Mirrors ``open_clip.pretrained.download_pretrained_from_hf``: ``org/repo/`` means open_clip's default
    file, and a ``.safetensors`` twin of a ``.bin``/``.pth`` file is tried first.
    """
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def _cached(repo_id: str, filename: str, cache_dir: str | Path | None) -> str | None:

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache(cache_dir)))
    return found if isinstance(found, str) and os.path.isfile(found) else None  # not the "known missing" marker


def offline_reason(server: str) -> str | None:
    """Why the network cannot be used for ``server`` now (None: it answers)."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    reason = unreachable(server)
    return None if reason is None else f"{urlsplit(server).netloc} cannot be reached ({reason})"


def _not_cached(what: str, where: str, why: str, fetch: str, alternative: str) -> ModelLoadError:
    return ModelLoadError(
        f"{what}: not in the cache {where} and {why}. Fetch it once where there is network ({fetch}) and copy "
        f"the cache folder here (or point HF_HUB_CACHE / HF_HOME at a copy), or {alternative}. With the files "
        "in the cache, HF_HUB_OFFLINE=1 skips the network check"
    )


def tag_weights(arch: str, tag: str, cache_dir: str | Path | None = None) -> tuple[str, dict]:
    """The local weights file of open_clip tag ``tag`` of ``arch``, and the preprocessing the tag sets.

    A cached file is used without any network request; a missing one is downloaded with open_clip's
    own downloader when the server answers a short probe.

    Args:
        arch: a built-in open_clip architecture with pretrained tags.
        tag: one of its tags (``open_clip.list_pretrained_tags_by_model(arch)``).
        cache_dir: the Hugging Face cache (default: huggingface_hub's, or ``~/.cache/clip`` for URL tags).

    Returns:
        (file path, the tag's preprocessing keys for ``create_model(force_preprocess_cfg=...)``).

    Raises:
        ModelLoadError: within seconds, when the file is not cached and the Hub is offline or unreachable;
            after open_clip's own retries, when a download that started fails.
    """
    import open_clip  # heavy: every fif command would pay for it at start

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    preprocess = {k: cfg[k] for k in PREPROCESS_KEYS if cfg.get(k) is not None}
    fetch = f"python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{tag}')\""
    alternative = "set model.pretrained=/path/to/open_clip_model.safetensors"
    if cfg.get("file"):
        return cfg["file"], preprocess
    if cfg.get("hf_hub"):  # open_clip prefers the Hub to a URL when a tag has both
        repo_id, names = _hub_files(cfg["hf_hub"])
        for name in names:
            found = _cached(repo_id, name, cache_dir)
            if found:
                return found, preprocess
        why = offline_reason(constants.ENDPOINT)
        if why is not None:
            raise _not_cached(f"model.pretrained={tag!r} of {arch} (Hugging Face repo {repo_id}, file {names[-1]})",
                              str(hub_cache(cache_dir)), why, fetch, alternative)
    elif cfg.get("url"):
        url, folder = cfg["url"], Path(cache_dir or "~/.cache/clip").expanduser()
        why = None if (folder / os.path.basename(url)).is_file() else offline_reason(url)  # cached: no request
        if why is not None:
            raise _not_cached(f"model.pretrained={tag!r} of {arch} ({url})", str(folder), why, fetch, alternative)
    else:
        raise ModelLoadError(f"model.pretrained={tag!r}: open_clip names no file, URL or Hub repo for this tag of {arch}")
    try:
        path = open_clip.download_pretrained(cfg, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as e:  # open_clip raises bare RuntimeError / FileNotFoundError for download failures
        raise ModelLoadError(f"model.pretrained={tag!r} of {arch}: the download failed ({e}); {alternative}") from e
    return path, preprocess


def hub_model_dir(arch: str, cache_dir: str | Path | None = None) -> str | None:
    """The cached snapshot folder of an ``hf-hub:org/repo`` model, as ``local-dir:<folder>`` (None to let
    open_clip download it: not cached, and the Hub answers).

    Raises:
        ModelLoadError: within seconds, when the config or weights are not cached and the Hub is offline
            or unreachable.
    """

    repo_id = arch.removeprefix("hf-hub:")
    config = _cached(repo_id, HF_CONFIG_NAME, cache_dir)
    weights = next((w for w in (_cached(repo_id, n, cache_dir) for n in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)) if w), None)
    if config and weights and Path(config).parent == Path(weights).parent:
        return f"local-dir:{Path(config).parent}"
    why = offline_reason(constants.ENDPOINT)
    if why is not None:
        raise _not_cached(
            f"model.arch={arch!r} (its {HF_CONFIG_NAME} and weights)", str(hub_cache(cache_dir)), why,
            f"python -c \"import open_clip; open_clip.create_model('{arch}')\"",
            "set model.arch=local-dir:/folder/with/open_clip_config.json+weights",
        )
    return None
