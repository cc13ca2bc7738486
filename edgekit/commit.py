"""The commit stage: the only code that writes into an export's output folder.

An artifact is a *set* of files (``.xml`` + ``.bin`` + sidecar, or ``.onnx`` + sidecar) that is
only meaningful whole. Renaming the files into place one by one cannot be atomic: an interrupt
between two renames leaves a new ``.xml`` beside the old ``.bin`` and the old sidecar, and the
previous good artifact is gone. So each committed set lives in its own generation folder and the
user-visible names are symlinks through one ``current`` link per artifact::

    out/model_int8.xml            -> .edgekit/model_int8.xml/current/model_int8.xml
    out/model_int8.bin            -> .edgekit/model_int8.xml/current/model_int8.bin
    out/model_int8.xml.edgekit.json -> .edgekit/model_int8.xml/current/model_int8.xml.edgekit.json
    out/.edgekit/model_int8.xml/current -> g<time>-<pid>
    out/.edgekit/model_int8.xml/g<time>-<pid>/{model_int8.xml, model_int8.bin, ...}

Switching ``current`` is one ``rename(2)`` of a fresh symlink over the old one, so at every
instant the names resolve to either the old set or the new one. This is the deployment
"current symlink" technique; the runtimes open the user-visible paths as usual (OpenVINO finds
``model_int8.bin`` beside ``model_int8.xml``, ONNX Runtime its external data).

On a filesystem without symlinks (FAT/exFAT cards) the set is renamed file by file, primary
first and sidecar last, and the commit says so. Temporary folders and generations left by a
killed export are removed by the next export into the same folder once their process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgekit.errors import UsageError

STORE = ".edgekit"
TMP_PREFIX = ".edgekit-tmp-"
_CURRENT = "current"
# A temporary folder whose owner cannot be identified is left alone for this long.
_STALE_SECONDS = 24 * 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_gone(name: str, prefix: str, path: Path) -> bool:
    """Whether the process that made ``<prefix><pid>-...`` has exited (or it is very old)."""
    pid_text = name.removeprefix(prefix).split("-", 1)[0]
    if pid_text.isdigit():
        return int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
    try:
        return time.time() - path.lstat().st_mtime > _STALE_SECONDS
    except OSError:
        return False


def remove_stale(out_dir: Path) -> None:
    """Remove temporary folders and uncommitted generations of exports that died."""
    with contextlib.suppress(OSError):
        for entry in out_dir.iterdir():
            if entry.name.startswith(TMP_PREFIX) and _owner_gone(entry.name, TMP_PREFIX, entry):
                shutil.rmtree(entry, ignore_errors=True)
    store = out_dir / STORE
    with contextlib.suppress(OSError):
        for key in store.iterdir():
            current = _current_target(key)
            for gen in key.iterdir():
                if gen.name == current or gen.is_symlink() or not gen.name.startswith("g"):
                    continue
                stamp = gen.name[1:].split("-", 1)
                if len(stamp) == 2 and _owner_gone(stamp[1], "", gen):
                    shutil.rmtree(gen, ignore_errors=True)


def make_workdir(out_dir: Path) -> Path:
    """A private staging folder inside ``out_dir`` (same filesystem, so moves are renames)."""
    import tempfile

    return Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{TMP_PREFIX}{os.getpid()}-"))


def _current_target(key: Path) -> str | None:
    try:
        return os.readlink(key / _CURRENT)
    except OSError:
        return None


def _symlink_replace(target: str, link: Path) -> None:
    """Make ``link`` point at ``target`` with one rename, whatever was there before."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.{time.monotonic_ns()}.lnk")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _symlinks_work(folder: Path) -> bool:
    probe = folder / f".edgekit-symlink-probe-{os.getpid()}"
    try:
        os.symlink(".", probe)
    except OSError:
        return False
    os.unlink(probe)
    return True


def _adopt_plain_files(out_dir: Path, key: Path, names: Sequence[str]) -> None:
    """Plain files of an earlier export (or of edgekit before 0.2) become a generation first,
    so that replacing them below is as atomic as replacing a committed set."""
    plain = [n for n in names if (out_dir / n).is_file() and not (out_dir / n).is_symlink()]
    if not plain or _current_target(key) is not None:
        return
    gen = key / f"g{time.time_ns()}-{os.getpid()}-adopted"
    gen.mkdir(parents=True)
    for name in plain:
        try:
            os.link(out_dir / name, gen / name)
        except OSError:
            shutil.copy2(out_dir / name, gen / name)
    _symlink_replace(gen.name, key / _CURRENT)
    for name in plain:
        # Same content behind the name before and after: the old artifact stays whole.
        _symlink_replace(f"{STORE}/{key.name}/{_CURRENT}/{name}", out_dir / name)


def commit(out_dir: Path, files: Sequence[Path], primary: Path) -> list[Path]:
    """Move ``files`` (staged inside ``out_dir``) into place as one set; returns their paths.

    ``files`` holds the primary artifact file, its companions and its sidecar, in the order a
    reader should see them appear on a filesystem without symlinks (primary first, sidecar
    last).
    """
    names = [f.name for f in files]
    if not _symlinks_work(out_dir):
        for f in files:
            os.replace(f, out_dir / f.name)
        return [out_dir / n for n in names]
    key = out_dir / STORE / primary.name
    key.mkdir(parents=True, exist_ok=True)
    _adopt_plain_files(out_dir, key, names)
    gen = key / f"g{time.time_ns()}-{os.getpid()}"
    gen.mkdir()
    for f in files:
        os.replace(f, gen / f.name)
    previous = _current_target(key)
    old_names = set(os.listdir(key / previous)) if previous and (key / previous).is_dir() else set()
    # The commit point: from here on every name resolves into the new generation.
    _symlink_replace(gen.name, key / _CURRENT)
    for name in names:
        want = f"{STORE}/{key.name}/{_CURRENT}/{name}"
        link = out_dir / name
        if not (link.is_symlink() and os.readlink(link) == want):
            _symlink_replace(want, link)
    for name in sorted(old_names - set(names)):
        link = out_dir / name
        if link.is_symlink() and os.readlink(link).startswith(f"{STORE}/{key.name}/"):
            link.unlink()
    for entry in key.iterdir():
        if entry.name != gen.name and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    return [out_dir / n for n in names]


@contextlib.contextmanager
def output_folder(out_dir: Path) -> Iterator[None]:
    """Create ``out_dir`` (and parents) for an export; if the export fails, remove the folders
    it created as long as they are empty, so a failed export leaves nothing behind."""
    created = []
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists():
            break
        created.append(parent)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the output folder {out_dir} ({exc.strerror}); choose another with -o"
        ) from exc
    try:
        yield
    except BaseException:
        for folder in [out_dir / STORE, *created]:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
