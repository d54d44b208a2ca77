"""A run's data identity in its folder: recorded when the run starts, checked when it resumes, and
compared before a finished run is reused (``cvlth study``) or counted done (``cvlth study --plan``).

A run that trains on a dataset with files of its own (image folders, VisDA, CIFAR, SVHN,
Fashion-MNIST; see :func:`cvlth.data.registry.data_identity`) writes ``data-identity.json`` into
its folder when it first starts, and the file list into ``<store>/data-manifests/`` (once per
identity). Then:

* **resume** (the folder holds progress: a training state, masks, round folders, ...): the identity
  is computed again; if the files changed, the run is refused with what changed (resuming would mix
  old and new data); a started folder without progress simply records the data as they are now;
* **a finished run** whose data changed is *stale*: ``cvlth study --plan`` counts it to do and names
  it, ``cvlth study`` refuses to start until it is forgotten (its result was computed on other data).

The identity is recorded beside the config, never in it: run hashes do not change. Runs started
before cvlth recorded identities have none and are not checked. A dataset that is not present here
cannot be compared: ``--plan`` elsewhere reports nothing about it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from cvlth.atomic import atomic_write_text
from cvlth.config import DataRef, RunConfig
from cvlth.data.identity import DataIdentity, change_summary, read_manifest, write_manifest
from cvlth.data.registry import data_identity
from cvlth.errors import CvlthError, DatasetError
from cvlth.run_files import CONFIG, DATA_IDENTITY, DATA_MANIFESTS, LOCK
from cvlth.runs.kinds import training_data
from cvlth.store import RunFolder, Store

#: The dataset identities computed in this process, by (name, root): one listing per dataset.
Identities = dict[str, DataIdentity | None]

_NOT_PROGRESS = frozenset({CONFIG, LOCK, DATA_IDENTITY})


class DataChangedError(CvlthError):
    """The files a run reads changed since the run started."""


def current_identity(ref: DataRef, cache: Identities | None = None) -> DataIdentity | None:
    """The identity of ``ref``'s files now (None: a dataset without files of its own); computed once
    per ``cache``. Raises DatasetError when the files cannot be listed."""
    key = json.dumps([ref.name, ref.root])  # the options choose among the files, not which are read
    if cache is not None and key in cache:
        return cache[key]
    identity = data_identity(ref.name, ref.root)
    if cache is not None:
        cache[key] = identity
    return identity


def recorded_identity(folder: RunFolder) -> DataIdentity | None:
    """The identity the run recorded when it started; None if it recorded none (no files of its
    own, or started before cvlth recorded identities)."""
    path = folder.path / DATA_IDENTITY
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _edited(folder, f"{path} cannot be read ({exc})") from None
    identity = DataIdentity.from_json(raw)
    if identity is None:
        raise _edited(folder, f"{path} is not a cvlth-data-identity/1 record")
    return identity


def record_or_check(run: RunConfig, folder: RunFolder, store: Store, cache: Identities | None = None) -> None:
    """Before ``run`` computes in ``folder`` (under its lock): record what its data are, or, when it
    resumes, refuse (DataChangedError) if they changed since it started."""
    ref = training_data(run)
    now = current_identity(ref, cache) if ref is not None else None
    if now is None:
        return
    then = recorded_identity(folder)
    if then is not None and then.sha256 == now.sha256:
        return
    if then is not None and _has_progress(folder):
        raise DataChangedError(
            f"{ref.name}: {_what_changed(store, then, now)} since run {folder.name} started; resuming "
            "it would mix old and new data",
            hint=_forget_hint(store, [folder.name], "on the data as they are now (or restore the files)"),
        )
    write_manifest(store.root / DATA_MANIFESTS, now)
    text = json.dumps(now.to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write_text(folder.path / DATA_IDENTITY, text)


def stale_reason(
    run: RunConfig, folder: RunFolder, store: Store, cache: Identities | None = None
) -> str | None:
    """Why finished ``run`` is stale (its data changed since it started), or None: unchanged, no
    identity recorded, or the data are not here to compare."""
    then = recorded_identity(folder)
    ref = training_data(run)
    if then is None or ref is None:
        return None
    try:
        now = current_identity(ref, cache)
    except DatasetError:  # not here (`--plan` on another machine): nothing to compare with
        return None
    if now is None or now.sha256 == then.sha256:
        return None
    return f"run {folder.name} is stale: {ref.name}: {_what_changed(store, then, now)} since it started"


def refuse_stale_runs(runs: Iterable[RunConfig], store: Store) -> None:
    """Before a study computes anything: refuse (DataChangedError) if a finished run's data changed,
    so that no result computed on other data is reused."""
    cache: Identities = {}
    stale: dict[str, str] = {}
    for run in runs:
        folder = store.run_dir(run)
        if folder.is_done() and (why := stale_reason(run, folder, store, cache)) is not None:
            stale[folder.name] = why
    if not stale:
        return
    names = sorted(stale)
    more = (
        f" (and {len(names) - 1} more stale runs: `cvlth study --plan` lists them)" if len(names) > 1 else ""
    )
    raise DataChangedError(
        f"{stale[names[0]]}{more}",
        hint=_forget_hint(store, names, "on the data as they are now"),
    )


def _has_progress(folder: RunFolder) -> bool:
    """Whether the folder holds anything the run computed (a training state, masks, rounds, ...)."""
    return any(
        path.name not in _NOT_PROGRESS and not (path.name.startswith(".") and path.name.endswith(".tmp"))
        for path in folder.path.iterdir()
    )


def _what_changed(store: Store, then: DataIdentity, now: DataIdentity) -> str:
    return change_summary(then, now, read_manifest(store.root / DATA_MANIFESTS, then))


def _forget_hint(store: Store, names: list[str], how: str) -> str:
    forget = " ".join(f"--forget {name}" for name in names[:20])
    return f"`cvlth runs --store {store.root} {forget}` deletes the folder, so that the next study computes it again {how}"


def _edited(folder: RunFolder, what: str) -> CvlthError:
    return CvlthError(
        f"run {folder.name}: {what}",
        hint=f"the file was edited; `cvlth runs --forget {folder.name}` deletes the run so it is computed again",
    )
