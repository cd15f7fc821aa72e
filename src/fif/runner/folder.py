"""What a resumable run needs besides checkpoints: the config it resumes with, a lock on its folder,
and SIGINT/SIGTERM turned into a clean stop.

- :func:`resume_config` reloads the run folder's ``config.yaml`` and applies command-line overrides,
  refusing those that would change what the run computes (seed, stream, model, method, budget, ...)
  and warning, with the value that won, for the others.
- :class:`RunLock` holds an exclusive ``flock`` on ``<run>/.lock`` while a process works in the
  folder; the kernel drops it when the process dies, even by SIGKILL, so there are no stale locks.
- :class:`StopSignals` turns the first SIGINT/SIGTERM into a stop request that the training loop honours
  at the next step (after a checkpoint) and that interrupts at once outside the loop; a second signal
  interrupts at once anywhere.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fif.config import Config, load_config, read_yaml
from fif.core.io import STORAGE_ERRNOS, StorageError
from fif.core.typed import ConfigError
from fif.train.loop import TrainingDivergedError  # noqa: F401  (raised by the runner; the CLI catches it here)

log = logging.getLogger(__name__)

# Event fields that measure wall-clock time: they differ between any two runs, resumed or not.
# Everything else in events.jsonl, all of summary.json and the final weights are compared for exactness.
TIMING_KEYS = ("time", "seconds", "train_seconds")

# Overrides that change what the run computes (its stream, data, model, budget plan): refused on resume.
FIXED_ON_RESUME = (
    "run.seed", "model.", "data.benchmark", "data.root", "data.options", "data.mixture.", "stream.", "method.", "merge.",
    "budget.", "train.batch_size", "train.grad_accum_steps", "train.grad_checkpointing", "train.precision",
)
# Overrides that cannot change results: accepted with a notice.
NEUTRAL_ON_RESUME = (
    "run.out", "run.threads", "run.cache_dir", "run.device", "data.num_workers", "eval.num_workers",
    "data.max_bad_samples", "checkpoint.",
)


class RunFolderInUseError(FileExistsError):
    """Another fif process holds the run folder's lock."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run; ``checkpoint`` is where it can resume from (None: the last saved one).

    A KeyboardInterrupt so that no ``except Exception`` in library code swallows it.
    """

    def __init__(self, signum: int, out_dir: Path | None = None, checkpoint: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.out_dir, self.checkpoint = signum, out_dir, checkpoint


def without_timing(event: dict[str, Any]) -> dict[str, Any]:
    """An event without its wall-clock fields (see :data:`TIMING_KEYS`), for exactness checks."""
    return {k: v for k, v in event.items() if k not in TIMING_KEYS}


# ----------------------------------------------------------------------------------------------
# Config on resume


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in prefixes)


@dataclass
class ResumeConfig:
    """The config a run resumes with, and what the command line changed (key → (saved, given))."""

    cfg: Config
    changed: dict[str, tuple[Any, Any]]


def resume_config(run_dir: Path, overrides: list[str] | None = None) -> ResumeConfig:
    """The run's saved config with ``overrides`` applied.

    Each accepted change is logged as a warning naming the saved value, the given value and which won
    (the command line). Changes to keys in :data:`FIXED_ON_RESUME` are refused.

    Raises:
        FileNotFoundError: ``run_dir`` has no config.yaml (not a fif run folder).
        ConfigError: an override is invalid or would change what the run computes.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume {str(run_dir)!r}: it has no config.yaml (is it a fif run folder?)")
    saved_raw = read_yaml(path)
    saved = load_config(None, [], base=saved_raw)
    cfg = load_config(None, list(overrides or []), base=saved_raw) if overrides else saved
    before, after = _flatten(saved.to_dict()), _flatten(cfg.to_dict())
    changed = {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}
    refused = [k for k in changed if _matches(k, FIXED_ON_RESUME)]
    if refused:
        raise ConfigError(
            [
                f"{k}: the run has {changed[k][0]!r}, the command line gives {changed[k][1]!r}; it cannot change on "
                "resume (it changes what the run computes). Drop the override, or start a new run with --out"
                for k in refused
            ],
            source=f"resume of {run_dir}",
        )
    for key, (old, new) in changed.items():
        effect = "results are unaffected" if _matches(key, NEUTRAL_ON_RESUME) else (
            "the continued run will no longer match an uninterrupted one"
        )
        log.warning(f"resume: {key}={new!r} (command line) overrides {old!r} (run's config.yaml); using {new!r}: {effect}")
    return ResumeConfig(cfg, changed)


def check_checkpoint_config(cfg: Config, manifest: dict[str, Any], where: str) -> None:
    """Refuse to resume with a config that differs from the one the checkpoint was made with in a key of
    :data:`FIXED_ON_RESUME` (config.yaml edited by hand since): the checkpoint, not the file, says what
    the run computes.

    Args:
        cfg: the config the run would resume with (config.yaml plus accepted overrides).
        manifest: the checkpoint's manifest (its ``metadata`` holds the resolved config; checkpoints of
            older versions only the seed, method and architecture, which are compared then).
        where: the checkpoint's name, for the message.

    Raises:
        ConfigError: naming every such key, both values and the fix.
    """
    meta = manifest.get("metadata") if isinstance(manifest.get("metadata"), dict) else {}
    if isinstance(meta.get("config"), dict):
        try:
            recorded = _flatten(load_config(None, [], base=meta["config"]).to_dict())
        except ConfigError:  # written by another fif version: compare the keys it has
            recorded = _flatten(meta["config"])
    else:
        recorded = {k: meta[m] for k, m in (("run.seed", "seed"), ("method.name", "method"), ("model.arch", "arch"))
                    if m in meta}
    now = _flatten(cfg.to_dict())
    differ = [k for k in sorted(recorded) if _matches(k, FIXED_ON_RESUME) and k in now and now[k] != recorded[k]]
    if differ:
        raise ConfigError(
            [f"{k}: config.yaml has {now[k]!r}, but checkpoint {where} was made with {recorded[k]!r}; it cannot change "
             f"on resume. Put {k}: {recorded[k]!r} back into config.yaml, or start a new run with --out" for k in differ],
            source=f"resume from {where}",
        )


# ----------------------------------------------------------------------------------------------
# The run folder lock


class RunLock:
    """An exclusive, non-blocking lock on ``<folder>/.lock`` (the file keeps the last holder's pid).

    Usage::

        with RunLock(out_dir):
            ...  # only this process writes in out_dir
    """

    NAME = ".lock"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock.

        Raises:
            RunFolderInUseError: another process holds it (the message gives its pid).
            StorageError: the folder cannot be created or written (read-only, no permission).
            FileExistsError: a file stands where the folder should be.
        """
        try:
            import fcntl  # POSIX only
        except ImportError:  # not POSIX: no locking
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileExistsError, NotADirectoryError) as e:
            raise FileExistsError(f"run folder {str(self.folder)!r}: a file is in the way ({e.filename}); "
                                  "choose another --out") from e
        except OSError as e:
            if e.errno not in STORAGE_ERRNOS:
                raise
            raise StorageError(
                e.errno, f"cannot write in run folder {str(self.folder)!r} ({e.strerror}); choose a writable --out, "
                "or make the folder writable", str(self.folder),
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunFolderInUseError(
                f"run folder {str(self.folder)!r} is in use by another fif process (pid {holder}); wait for it to "
                "finish or stop it (it checkpoints on SIGTERM), or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (unlinking would race a waiter)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# SIGINT / SIGTERM


class StopSignals:
    """Turn SIGINT/SIGTERM into a stop request while a run is active (only in the main thread).

    ``deferred`` is True while the training loop runs: the first signal then only sets ``signum`` and
    the loop checkpoints and raises :class:`RunInterrupted` after the current step. Outside the loop
    (setup, evaluation, task hooks) the first signal raises at once: the last checkpoint is the resume
    point. A second signal always raises at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, out_dir: Path | None = None):
        self.out_dir = out_dir
        self.signum: int | None = None
        self.deferred = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = signum if first else self.signum
        if not (first and self.deferred):
            raise RunInterrupted(signum, self.out_dir)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
