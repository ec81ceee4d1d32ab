"""Reading and writing Minari datasets: the one place the project talks to Minari's storage.

- :func:`open_minari`: a dataset named by a local path or by an id in the local Minari root
  (``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``), with an error that says which of
  the two was tried and what the root holds. Nothing is ever downloaded.
- :func:`write_minari`: a new dataset from episode buffers, written atomically: Minari builds
  it under a hidden staging root beside the real one (Minari skips hidden folders when it
  lists datasets), and one ``rename`` puts it in place, so an interrupted export or relabel
  never leaves a half-written dataset under its id. Images are never JPEG-encoded (Minari's
  default is lossy).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec


def minari_root(root: str | Path | None = None) -> Path:
    """The local Minari root: ``root``, else ``$MINARI_DATASETS_PATH``, else Minari's default."""
    if root is not None:
        return Path(root)
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path())


def check_dataset_id(dataset_id: str) -> str:
    """``dataset_id`` if Minari accepts it (``(namespace/)name-v<version>``), else a ValueError."""
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except ValueError:
        raise ValueError(f"dataset id {dataset_id!r}: expected Minari's form (namespace/)name-v<version>, "
                         "e.g. rgvlm/ordered/sparse-v0") from None
    return dataset_id


@contextlib.contextmanager
def _datasets_path(root: Path) -> Iterator[None]:
    # Minari reads the root from this variable on every call and offers no argument for it.
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def open_minari(ref: str | Path, root: str | Path | None = None):
    """The Minari dataset ``ref``: a directory (the dataset's folder or its ``data/``) or an id
    in the local root. Raises FileNotFoundError naming both readings of ``ref``."""
    from minari import MinariDataset

    path = Path(ref)
    for candidate in (path / "data", path):
        if (candidate / "metadata.json").is_file():
            return MinariDataset(candidate)
    base = minari_root(root)
    by_id = base / str(ref) / "data"
    if (by_id / "metadata.json").is_file():
        return MinariDataset(by_id)
    held = sorted(str(p.parent.parent.relative_to(base)) for p in base.glob("**/data/metadata.json"))
    raise FileNotFoundError(
        f"Minari dataset {str(ref)!r} not found: it is neither a directory holding a Minari dataset nor an id "
        f"in the local Minari root {base} (which holds: {', '.join(held) or 'nothing'}). Set "
        "MINARI_DATASETS_PATH or pass a path; nothing is downloaded."
    )


def check_writable(dataset_id: str, root: str | Path | None = None, overwrite: bool = False) -> Path:
    """Where ``dataset_id`` will be written; fails before any work when it exists and
    ``overwrite`` is off."""
    target = minari_root(root) / check_dataset_id(dataset_id)
    if target.exists() and not overwrite:
        raise FileExistsError(f"Minari dataset {dataset_id!r} already exists at {target}: pass --force to replace it "
                              "or choose another id")
    return target


def write_minari(dataset_id: str, buffers: Sequence[Any], *, env: gym.Env | EnvSpec | None,
                 observation_space: gym.Space, action_space: gym.Space, root: str | Path | None = None,
                 overwrite: bool = False, episode_metadata: Sequence[dict] | None = None,
                 extra_metadata: dict[str, Any] | None = None, **metadata: Any):
    """Write ``buffers`` (Minari ``EpisodeBuffer``s) as the dataset ``dataset_id`` under ``root``
    atomically (module docstring) and return it, opened from its final place.

    ``env``: the environment whose spec ``recover_environment()`` gives back (None: none);
    ``episode_metadata``: extra per-episode fields, one dict per buffer; ``extra_metadata``: fields
    of the dataset's own (JSON) beside Minari's; ``metadata``: further
    ``minari.create_dataset_from_buffers`` arguments (description, author, algorithm_name...)."""
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    target = check_writable(dataset_id, root, overwrite)
    base = minari_root(root)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    try:
        with _datasets_path(staging), warnings.catch_warnings():
            # Minari recommends an author e-mail, a code permalink and an evaluation environment on
            # every write; none is something a user of these commands could act on.
            warnings.filterwarnings("ignore", message=r"`\w+` is set to None", category=UserWarning)
            made = minari.create_dataset_from_buffers(
                dataset_id, list(buffers), env=env, observation_space=observation_space, action_space=action_space,
                jpeg_encoding=False, **metadata)
            if episode_metadata is not None:
                made.storage.update_episode_metadata(list(episode_metadata), range(len(buffers)))
            if extra_metadata:
                made.storage.update_metadata(extra_metadata)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # moved aside first, so the id never names a half-deleted dataset
            target.rename(staging / ".replaced")
        (staging / dataset_id).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    namespace = parse_dataset_id(dataset_id)[0]
    if namespace is not None:
        with _datasets_path(base):
            if namespace not in list_local_namespaces():
                create_namespace(namespace)
    return open_minari(target)


def episode_metadata(dataset) -> list[dict[str, Any]]:
    """Every episode's stored metadata (``seed``, ``options``, ``total_steps`` and any extra field)."""
    return list(dataset.storage.get_episode_metadata(dataset.episode_indices))
