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


# --- shipping a trained teacher -------------------------------------------------------------------
STORAGE_DTYPES = ("float32", "float16")


def ship(run_dir: str | Path, name: str, command: str, root: Path | None = None,
         storage_dtype: str = "float32") -> dict:
    """Copy a finished ``objective=diffusion train=base`` run into shipped asset ``name``: its
    exported backbone (``<run>/teacher/<transformer|unet>``), the frozen text encoder and tokenizer
    its config builds, and the recipe (command, seed, steps, final loss = mean of the last 50
    steps, date) read from the run's config.yaml and metrics.jsonl.

    ``storage_dtype="float16"`` stores the backbone's floating tensors in half precision (half the
    bytes, for the 20 MiB budget); diffusers loads them back into the float32 model the toy
    teachers compute in, so the shipped teacher is the trained one rounded to float16 once. The
    recipe records it, and what is measured on the shipped asset is measured on those weights."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype={storage_dtype!r}: expected one of {', '.join(STORAGE_DTYPES)}")
    import datetime
    import shutil
    import statistics

    from omegaconf import OmegaConf

    from turbo.config import build

    run = Path(run_dir)
    if not (run / "DONE").is_file():
        raise FileNotFoundError(f"{run} is not a finished run (no DONE marker)")
    cfg = OmegaConf.load(run / "config.yaml")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [m["diffusion"] for m in lines if "diffusion" in m]
    if not losses:
        raise ValueError(f"{run}/metrics.jsonl has no 'diffusion' loss: ship() takes objective=diffusion runs")
    root = WEIGHTS if root is None else Path(root)
    folder = root / name
    exported = [p for p in (run / "teacher").iterdir() if p.is_dir()]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for component in exported:
        shutil.copytree(component, folder / component.name)
        if storage_dtype == "float16":
            _to_half(folder / component.name)
    text = build(cfg.model.text_encoder, "model.text_encoder")
    text.model.save_pretrained(folder / "text_encoder")
    text.tokenizer.save_pretrained(folder / "tokenizer")
    recipe = {
        "command": command, "seed": int(cfg.seed), "steps": len(losses),
        "batch_size": int(cfg.train.batch_size), "video": OmegaConf.to_container(cfg.video),
        "first_losses": [round(v, 6) for v in losses[:5]],
        "final_loss": round(statistics.fmean(losses[-50:]), 6),
        "date": datetime.date.today().isoformat(),
        **({} if storage_dtype == "float32" else {"storage_dtype": storage_dtype}),
    }
    return register(name, recipe, root)


def _to_half(folder: Path) -> None:
    """Rewrite every safetensors file under ``folder`` with its floating tensors in float16."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(path),
                  metadata=metadata)


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m turbo.toy.assets",
                                     description="check or ship the toy weights in turbo/toy/weights")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="verify every shipped file against MANIFEST.json")
    s = sub.add_parser("ship", help="ship a finished objective=diffusion run as a toy teacher")
    s.add_argument("run"), s.add_argument("name"), s.add_argument("--command", required=True)
    s.add_argument("--storage-dtype", default="float32", choices=STORAGE_DTYPES,
                   help="float16 halves the backbone's bytes; it loads back into float32")
    args = parser.parse_args(argv)
    if args.cmd == "check":
        for name in manifest():
            print(f"{name}: ok ({len(manifest()[name]['files'])} files)", asset(name))
    else:
        entry = ship(args.run, args.name, args.command, storage_dtype=args.storage_dtype)
        print(json.dumps(entry["recipe"], indent=2))


if __name__ == "__main__":
    _main()
