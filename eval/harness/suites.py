"""The suites turbo-eval samples: which prompts, how many videos each, and what each file is called.

A suite is a list of ``Item`` s, one per video file. Each item knows its file name (the benchmark's
own naming, so the benchmark's scorer finds it), the prompt the file is named for, the prompt the
model is given (they differ for VBench's augmented prompts), its index among the prompt's videos,
its seed, and, for image-to-video suites, its conditioning image.

    VBench        prompts of ``VBench_full_info.json``; ``{prompt}-{index}.mp4``, 5 per prompt
                  (temporal_flickering: 25 per prompt when the static filter runs)
    VBench-I2V    ``vbench2_i2v_full_info.json`` + a local data folder of cropped images
                  (``crop/{ratio}/{image_name}``); ``{prompt}-{index}.mp4``, 5 per pair
    EvalCrafter   ``prompt700.txt`` (or ``metadata.json``); ``0000.mp4 .. 0699.mp4``, 1 per prompt
    ToyBench      the toy world's held-out prompts; ``{prompt}-{index}.mp4``

Seeds: ``item_seed(seed, prompt, index)`` depends on nothing but the run's seed, the prompt and the
index, so a file's content does not change with the dimension subset, the shard or the order in
which files are sampled (a sharded run's union equals the unsharded run).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

VIDEOS_PER_PROMPT = 5        # VBench / VBench-I2V: 5 videos per prompt, one seed each
EVALCRAFTER_PROMPTS = 700
I2V_RATIOS = {"1-1": 1.0, "8-5": 8 / 5, "7-4": 7 / 4, "16-9": 16 / 9}  # the crops VBench-I2V ships
MAX_NAME_BYTES = 255


class SuiteError(ValueError):
    """A suite file that is not in the benchmark's format, or a suite option out of range."""


@dataclass(frozen=True)
class Item:
    """One video of a suite. ``file``: its path relative to the run's ``videos/`` folder."""

    file: str
    prompt: str                    # what the file is named for and what scorers read
    index: int                     # which of the prompt's videos
    seed: int
    sample_prompt: str = ""        # what the model is given ("" = ``prompt``)
    dimensions: tuple[str, ...] = ()
    image: str | None = None       # image-to-video: the conditioning image's path

    @property
    def model_prompt(self) -> str:
        return self.sample_prompt or self.prompt

    def to_json(self) -> dict:
        d = asdict(self)
        d["dimensions"] = list(self.dimensions)
        return d


def item_seed(seed: int, prompt: str, index: int) -> int:
    """The noise seed of video ``index`` of ``prompt``: a function of these three only."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{prompt}\x00{index}".encode())) % 2**31


def video_name(prompt: str, index: int, where: str) -> str:
    """VBench's ``{prompt}-{index}.mp4``; a prompt that cannot be a file name is refused naming ``where``."""
    name = f"{prompt}-{index}.mp4"
    if "/" in prompt or "\x00" in prompt or prompt.strip() != prompt or not prompt:
        raise SuiteError(f"{where}: prompt {prompt!r} cannot be a file name ({{prompt}}-{{index}}.mp4): it is empty, "
                         f"has leading/trailing spaces or a '/'")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise SuiteError(f"{where}: prompt {prompt[:40]!r}... is too long for a file name "
                         f"({len(name.encode())} bytes > {MAX_NAME_BYTES})")
    return name


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise SuiteError(f"{path}: no such file (expected {what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SuiteError(f"{path}: is not JSON ({e.msg} at line {e.lineno}); expected {what}") from None


def _entries(path: Path, what: str, fields: tuple[str, ...]) -> list[dict]:
    data = _read_json(path, what)
    if not isinstance(data, list) or not data:
        raise SuiteError(f"{path}: expected {what} (a non-empty JSON list of entries), found {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or any(f not in entry for f in fields):
            raise SuiteError(f"{path}: entry {i} is not a {what} entry: expected the fields {list(fields)}, "
                             f"found {sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
        if not isinstance(entry["prompt_en"], str) or not isinstance(entry["dimension"], list):
            raise SuiteError(f"{path}: entry {i}: prompt_en must be a string and dimension a list")
    return data


def _augmented(path: str | None, entries: list[dict]) -> dict[str, str]:
    """Augmented prompts: a JSON dict {original prompt: long prompt}, or a text file with one long
    prompt per line aligned with the suite's entries (VBench's ``all_dimension_longer.txt`` form)."""
    if path is None:
        return {}
    p = Path(path)
    if p.suffix == ".json":
        data = _read_json(p, "augmented prompts ({original prompt: long prompt})")
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise SuiteError(f"{p}: augmented prompts must be a JSON object of strings {{original: long}}")
        return data
    if not p.is_file():
        raise SuiteError(f"{p}: no such file (suite.augmented_prompts)")
    lines = p.read_text().splitlines()
    if len(lines) != len(entries):
        raise SuiteError(f"{p}: has {len(lines)} lines, but the suite has {len(entries)} entries; an augmented "
                         f"prompt file is aligned line by line with the suite's entries")
    return {e["prompt_en"]: line.strip() for e, line in zip(entries, lines)}


def vbench_items(full_info: str | Path, dimensions: list[str] | None = None, *, seed: int = 0,
                 videos_per_prompt: int = VIDEOS_PER_PROMPT, flicker_per_prompt: int = VIDEOS_PER_PROMPT,
                 augmented_prompts: str | None = None, limit: int | None = None) -> list[Item]:
    """The VBench suite: every unique prompt whose entry names one of ``dimensions`` (all when None),
    in the file's order, ``videos_per_prompt`` files each (``flicker_per_prompt`` for prompts of
    temporal_flickering: 25 when the static filter will pick 5 of them). ``limit``: the first N
    prompts only (a subset). A prompt listed under several dimension sets is sampled once."""
    path = Path(full_info)
    entries = _entries(path, "VBench_full_info.json", ("prompt_en", "dimension"))
    known = sorted({d for e in entries for d in e["dimension"]})
    wanted = set(known if dimensions is None else dimensions)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise SuiteError(f"suite.dimensions: {unknown} are not dimensions of {path}; it has {known}")
    long = _augmented(augmented_prompts, entries)
    dims: dict[str, set[str]] = {}
    for e in entries:
        hit = wanted & set(e["dimension"])
        if hit:
            dims.setdefault(e["prompt_en"], set()).update(hit)
    prompts = list(dims)[:limit] if limit is not None else list(dims)
    items = []
    for prompt in prompts:
        n = flicker_per_prompt if "temporal_flickering" in dims[prompt] else videos_per_prompt
        for i in range(n):
            items.append(Item(video_name(prompt, i, str(path)), prompt, i, item_seed(seed, prompt, i),
                              long.get(prompt, ""), tuple(sorted(dims[prompt]))))
    return items


def i2v_ratio(width: int, height: int) -> str:
    """The VBench-I2V crop closest to a model's output aspect (width / height)."""
    aspect = width / height
    return min(I2V_RATIOS, key=lambda r: abs(I2V_RATIOS[r] - aspect))


def vbench_i2v_items(data_dir: str | Path, info_json: str | Path | None = None, dimensions: list[str] | None = None, *,
                     ratio: str = "1-1", seed: int = 0, videos_per_prompt: int = VIDEOS_PER_PROMPT,
                     limit: int | None = None) -> list[Item]:
    """The VBench-I2V suite from a local copy of its data: ``info_json`` (default
    ``<data_dir>/vbench2_i2v_full_info.json``) and the images ``<data_dir>/crop/<ratio>/<image_name>``."""
    if ratio not in I2V_RATIOS:
        raise SuiteError(f"suite.ratio={ratio!r}: VBench-I2V ships the crops {sorted(I2V_RATIOS)}")
    data = Path(data_dir)
    path = Path(info_json) if info_json is not None else data / "vbench2_i2v_full_info.json"
    entries = _entries(path, "vbench2_i2v_full_info.json", ("prompt_en", "dimension", "image_name"))
    wanted = None if dimensions is None else set(dimensions)
    items, seen = [], set()
    for e in entries:
        if wanted is not None and not wanted & set(e["dimension"]):
            continue
        if e["prompt_en"] in seen:
            continue
        if limit is not None and len(seen) >= limit:
            break
        seen.add(e["prompt_en"])
        image = data / "crop" / ratio / e["image_name"]
        if not image.is_file():
            raise SuiteError(f"{image}: no such image (entry {e['prompt_en']!r} of {path}); suite.data_dir must hold "
                             f"VBench-I2V's crop/{ratio}/ folder")
        for i in range(videos_per_prompt):
            items.append(Item(video_name(e["prompt_en"], i, str(path)), e["prompt_en"], i,
                              item_seed(seed, e["prompt_en"], i), "", tuple(e["dimension"]), str(image)))
    return items


def evalcrafter_prompts(folder: str | Path) -> list[str]:
    """EvalCrafter's 700 prompts from ``prompt700.txt`` or ``metadata.json`` (keys "0000".."0699").
    Not ``prompts/NNNN.txt``: 100 of those differ from prompt700.txt in the upstream repository."""
    folder = Path(folder)
    txt, meta = folder / "prompt700.txt", folder / "metadata.json"
    if txt.is_file():
        prompts = [line.strip() for line in txt.read_text().splitlines() if line.strip()]
        source = txt
    elif meta.is_file():
        data = _read_json(meta, "EvalCrafter's metadata.json")
        if not isinstance(data, dict) or not all(isinstance(v, dict) and "prompt" in v for v in data.values()):
            raise SuiteError(f"{meta}: expected {{\"0000\": {{\"prompt\": ...}}, ...}}")
        prompts = [data[k]["prompt"] for k in sorted(data)]
        source = meta
    else:
        raise SuiteError(f"suite.prompts={folder}: holds neither prompt700.txt nor metadata.json")
    if len(prompts) != EVALCRAFTER_PROMPTS:
        raise SuiteError(f"{source}: has {len(prompts)} prompts; EvalCrafter has {EVALCRAFTER_PROMPTS}")
    return prompts


def evalcrafter_items(folder: str | Path, *, seed: int = 0, limit: int | None = None) -> list[Item]:
    prompts = evalcrafter_prompts(folder)[:limit]
    return [Item(f"{i:04d}.mp4", p, 0, item_seed(seed, p, 0)) for i, p in enumerate(prompts)]


def toybench_items(num_prompts: int = 24, videos_per_prompt: int = 1, *, seed: int = 0,
                   split_seed: int = 0, heldout_fraction: float = 0.2) -> list[Item]:
    """ToyBench's held-out prompts (eval/toybench.py), named as VBench names its files."""
    from turbo.toy.split import split_specs

    _, held_out = split_specs(split_seed, heldout_fraction)
    if not 1 <= num_prompts <= len(held_out):
        raise SuiteError(f"suite.num_prompts={num_prompts}: the toy world has {len(held_out)} held-out prompts")
    prompts = [spec.caption() for spec in held_out[:num_prompts]]
    return [Item(video_name(p, i, "toybench"), p, i, item_seed(seed, p, i))
            for p in prompts for i in range(videos_per_prompt)]


@dataclass
class Suite:
    """A suite ready to sample: its name, its items, and what its scorers need to know."""

    name: str
    items: list[Item]
    options: dict = field(default_factory=dict)

    def prompts(self) -> list[str]:
        return list(dict.fromkeys(item.prompt for item in self.items))
