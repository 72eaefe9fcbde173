"""Shipped toy weights: the trained toy teachers and toy rewards that live in the package.

Every shipped asset is a folder under ``turbo/toy/weights/<name>/`` (a diffusers-format model
folder for a teacher, safetensors + config for a reward). ``weights/MANIFEST.json`` records, for
each asset, the sha256 of every file in it and the recipe that made it (command, seed, steps,
final loss, date), so the weights can be re-made and checked:

    {"t2v": {"recipe": {"command": "...", "seed": 0, "steps": 3000, "final_loss": 0.21, ...},
             "files": {"transformer/config.json": "<sha256>", ...}}}

``asset(name)`` returns the folder after checking every file against the manifest; a file that
fails raises ``ChecksumError`` naming it. ``register(name, recipe)`` (used by the recipes that
train them) writes the manifest entry for a folder already in place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from turbo.atomic import atomic_write_text

WEIGHTS = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS / "MANIFEST.json"
MAX_TOTAL_BYTES = 20 * 2**20  # everything shipped, together


class ChecksumError(RuntimeError):
    """A shipped weight file is missing or does not match its sha256 in the manifest."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest() -> dict:
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


_verified: set[str] = set()


def asset(name: str, root: Path | None = None) -> Path:
    """The folder of shipped asset ``name``, every file checked against the manifest (once per
    process). Raises KeyError for an unknown name, ChecksumError naming the bad file."""
    root = WEIGHTS if root is None else Path(root)
    entries = json.loads((root / "MANIFEST.json").read_text()) if (root / "MANIFEST.json").is_file() else {}
    if name not in entries:
        raise KeyError(f"no shipped toy asset {name!r} in {root / 'MANIFEST.json'}; shipped: {sorted(entries)}")
    folder = root / name
    key = str(folder.resolve())
    if key in _verified:
        return folder
    for rel, expected in entries[name]["files"].items():
        path = folder / rel
        if not path.is_file():
            raise ChecksumError(f"shipped toy weight file {path} is missing (asset {name!r}); reinstall turbo "
                                f"or re-make it: {entries[name]['recipe'].get('command', '?')}")
        found = sha256(path)
        if found != expected:
            raise ChecksumError(f"shipped toy weight file {path} fails its checksum: sha256 {found[:16]}... "
                                f"expected {expected[:16]}... (MANIFEST.json); the file is corrupt or was "
                                f"changed. Reinstall turbo or re-make it: {entries[name]['recipe'].get('command', '?')}")
    _verified.add(key)
    return folder


def register(name: str, recipe: dict, root: Path | None = None) -> dict:
    """Record every file of ``<root>/<name>/`` with its sha256 and ``recipe`` in the manifest."""
    root = WEIGHTS if root is None else Path(root)
    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no asset folder {folder}")
    files = {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    entries = json.loads((root / "MANIFEST.json").read_text()) if (root / "MANIFEST.json").is_file() else {}
    entries[name] = {"recipe": recipe, "files": files}
    total = sum((root / n / rel).stat().st_size for n, e in entries.items() for rel in e["files"])
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"shipped toy weights would total {total / 2**20:.1f} MiB, over the "
                         f"{MAX_TOTAL_BYTES / 2**20:.0f} MiB budget")
    atomic_write_text(root / "MANIFEST.json", json.dumps(entries, indent=2, sort_keys=True) + "\n")
    _verified.discard(str(folder.resolve()))
    return entries[name]
