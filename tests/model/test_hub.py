"""Pretrained tags and hf-hub models: cached files load with no network request; missing ones fail within
seconds offline, naming HF_HUB_OFFLINE, the cache folder and the local-file alternative. No test here
touches the network: name resolution is replaced by a stub that records every attempt."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from fif.model import hub
from fif.model.clip import ModelLoadError, build_clip, resolve_weights

MINI_CFG = json.loads((Path(hub.__file__).parent / "configs" / "fif-mini-rn32.json").read_text())
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAST_S = 5.0  # the bound the offline failures must keep (open_clip's own retries took ~50 s here)


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup fails at once and is recorded (so a test can assert that none was made)."""
    calls = []

    def fail(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test: no network)")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return calls


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, made the default one."""
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes | dict]) -> Path:
    """Lay out ``repo_id`` in a Hugging Face cache as huggingface_hub does (refs/main → snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, content in files.items():
        if isinstance(content, dict):
            save_file(content, str(snapshot / name))
        else:
            (snapshot / name).write_bytes(content)
    return snapshot


def mini_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {k: v.contiguous() for k, v in build_clip("fif-mini-rn32").model.state_dict().items()}


def add_tag(monkeypatch, tag: str, **entry) -> None:
    """Register ``tag`` for fif-mini-rn32 in open_clip's table of pretrained weights (for this test only)."""
    from open_clip import pretrained

    monkeypatch.setitem(pretrained._PRETRAINED, "fif-mini-rn32", {tag: {"url": "", "hf_hub": "", **entry}})


def test_uncached_tag_fails_fast_with_hf_hub_offline(hf_cache, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: still honoured
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        build_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert time.perf_counter() - t0 < FAST_S
    msg = str(err.value)
    assert "HF_HUB_OFFLINE is set" in msg and str(hf_cache) in msg and "model.pretrained=/path/to/" in msg
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg and "\n" not in msg
    assert no_network == []  # offline means no request at all


def test_uncached_tag_fails_fast_when_the_hub_is_unreachable(hf_cache, no_network):
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"huggingface.co cannot be reached \(.*Name or service not known") as err:
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k")  # what `fif run` checks before reading any data
    assert time.perf_counter() - t0 < FAST_S
    assert "HF_HUB_OFFLINE" in str(err.value) and str(hf_cache) in str(err.value)
    assert len(no_network) == 1  # one probe (of huggingface.co, or of a proxy), no retries


def test_the_probe_gives_up_on_a_hanging_name_server(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(30))
    t0 = time.perf_counter()
    assert hub.unreachable("https://huggingface.co/x", timeout_s=0.3) == "no answer within 0.3 s"
    assert time.perf_counter() - t0 < 2.0


def test_cached_tag_loads_without_any_request(hf_cache, no_network, monkeypatch):
    weights = mini_weights()
    cache_repo(hf_cache, "fif-test/mini-rn32", {"open_clip_model.safetensors": weights})
    add_tag(monkeypatch, "fiftest", hf_hub="fif-test/mini-rn32/", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    t0 = time.perf_counter()
    clip = build_clip("fif-mini-rn32", "fiftest")
    assert time.perf_counter() - t0 < FAST_S and no_network == []
    state = clip.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert clip.mean == (0.5, 0.4, 0.3) and clip.std == (0.2, 0.2, 0.2)  # the tag's preprocessing, as open_clip sets it


def test_cached_url_tag_loads_offline_and_a_missing_one_names_the_folder(tmp_path, no_network, monkeypatch):
    weights = mini_weights()
    save_file(weights, str(tmp_path / "mini.safetensors"))
    add_tag(monkeypatch, "fifurl", url="https://example.invalid/weights/mini.safetensors")
    clip = build_clip("fif-mini-rn32", "fifurl", cache_dir=str(tmp_path))
    assert torch.equal(clip.model.state_dict()["text_projection"], weights["text_projection"])
    assert no_network == []
    with pytest.raises(ModelLoadError, match="example.invalid cannot be reached") as err:
        build_clip("fif-mini-rn32", "fifurl", cache_dir=str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(err.value)


def test_cached_hf_hub_model_loads_without_any_request(hf_cache, no_network):
    weights = mini_weights()
    config = {"model_cfg": MINI_CFG, "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3]}}
    cache_repo(hf_cache, "fif-test/mini-hub", {
        "open_clip_config.json": json.dumps(config).encode(), "open_clip_model.safetensors": weights,
    })
    clip = build_clip("hf-hub:fif-test/mini-hub")
    assert no_network == [] and clip.arch == "hf-hub:fif-test/mini-hub"
    assert torch.equal(clip.model.state_dict()["token_embedding.weight"], weights["token_embedding.weight"])
    assert clip.tokenize(["a photo"]).shape == (1, MINI_CFG["text_cfg"]["context_length"])
    assert clip.mean == (0.1, 0.2, 0.3)
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="model.arch='hf-hub:fif-test/missing'.*cannot be reached"):
        build_clip("hf-hub:fif-test/missing")
    assert time.perf_counter() - t0 < FAST_S


def test_local_files_and_random_init_need_no_hub(tmp_path, no_network):
    weights = mini_weights()
    save_file(weights, str(tmp_path / "w.safetensors"))
    clip = build_clip("fif-mini-rn32", str(tmp_path / "w.safetensors"))
    assert torch.equal(clip.model.state_dict()["positional_embedding"], weights["positional_embedding"])
    assert build_clip("fif-mini-rn32").arch == "fif-mini-rn32"
    assert no_network == []
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_weights("fif-mini-rn32", str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelLoadError, match="Tags for ViT-B-32: .*laion2b_s34b_b79k"):
        resolve_weights("ViT-B-32", "laion2b_nope")
    assert open_clip.list_pretrained_tags_by_model("ViT-B-32")  # the tag table the message lists
