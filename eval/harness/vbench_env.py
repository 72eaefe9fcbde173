"""The VBench environment: a virtualenv of its own, and running VBench inside it.

VBench 0.1.5 pins ``transformers==4.33.2`` and ``numpy<2``, which cannot share turbo's environment.
So it lives in a venv of its own (``setup``), and turbo scores videos by running
``vbench_worker.py`` with that venv's python (``score``). The worker imports nothing from turbo.

    python -m eval.harness.vbench_env setup [ENV]   # create the env (minutes, ~6.7 GB)
    python -m eval.harness.vbench_env check [ENV]   # is it usable? prints its python

Nothing is downloaded at scoring time: the dimensions that need model weights read them from
``VBENCH_CACHE_DIR`` (VBench's ``local=True`` mode), and ``score`` refuses to start when a file
listed in ``CHECKPOINTS`` is missing there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

PINS: list[str] = [
    "vbench==0.1.5",
    "transformers==4.33.2",  # vbench's own pin
    "numpy<2",
    "setuptools<81",  # openai-clip (hence pyiqa, clip) imports pkg_resources, gone in setuptools 81
    "timm>=0.9,<=1.0.12",
    "pyiqa==0.1.10",
    # vbench 0.1.5 pins no torch; take a PyPI (CUDA) build explicitly so the env is reproducible. It
    # runs on CPU too (a CPU-only torch with PyPI torchvision does not import). torch < 2.6: 0.1.5 loads
    # AMT (motion_smoothness) with torch.load's old weights_only=False default; torchvision 0.20 still
    # has io.write_video, which VBench-Long's clip splitting calls.
    "torch==2.5.1",
    "torchvision==0.20.1",
    # VBench-Long (vbench2_beta_long) imports these; vbench does not require them
    "scenedetect==0.6.4",
    "moviepy==1.0.3",  # vbench2_beta_long imports moviepy.editor, gone in moviepy 2
    "av==13.1.0",  # torchvision.io.write_video's backend
]

# every package of the env at the versions the tests last passed with: PINS are installed under these
# constraints, so a fresh machine builds the same env, not whatever is newest
LOCK = Path(__file__).with_name("vbench_lock.txt")
MARKER = "turbo-vbench-env.json"  # inside the env: the pins it was built with, written after success
SETUP_LOG = "turbo-setup.log"  # inside the env: the output of the last setup step that ran
WORKER = Path(__file__).with_name("vbench_worker.py")
WORKER_LOG = "vbench_worker.log"  # inside score()'s output folder

# dimension -> files expected under VBENCH_CACHE_DIR when VBench loads its models locally
# (vbench/utils.py::init_submodules and vbench2_beta_i2v/utils.py, local=True). A trailing "/"
# marks a folder (a git clone). Dimensions not listed need no file (temporal_flickering).
_DINO = ["dino_model/facebookresearch_dino_main/", "dino_model/dino_vitbase16_pretrain.pth"]
CHECKPOINTS: dict[str, list[str]] = {
    "subject_consistency": _DINO,
    "background_consistency": ["clip_model/ViT-B-32.pt"],
    "temporal_flickering": [],
    "motion_smoothness": ["amt_model/amt-s.pth"],
    "dynamic_degree": ["raft_model/models/raft-things.pth"],
    "aesthetic_quality": ["clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"],
    "imaging_quality": ["pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"],
    "object_class": ["grit_model/grit_b_densecap_objectdet.pth"],
    "multiple_objects": ["grit_model/grit_b_densecap_objectdet.pth"],
    "color": ["grit_model/grit_b_densecap_objectdet.pth"],
    "spatial_relationship": ["grit_model/grit_b_densecap_objectdet.pth"],
    "scene": ["caption_model/tag2text_swin_14m.pth"],
    "appearance_style": ["clip_model/ViT-B-32.pt"],
    "temporal_style": ["ViCLIP/ViClip-InternVid-10M-FLT.pth"],
    "overall_consistency": ["ViCLIP/ViClip-InternVid-10M-FLT.pth"],
    "human_action": ["umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth"],
    # VBench-I2V (camera_motion and i2v_background: see NOT_STAGEABLE)
    "i2v_subject": _DINO,
}
# Besides these files the GRiT dimensions (object_class, multiple_objects, color, spatial_relationship)
# need detectron2 installed in the env by hand, and GRiT / Tag2Text fetch bert-base-uncased from the HF hub.

# dimensions whose models VBench 0.1.5 does not read from VBENCH_CACHE_DIR at all: they cannot run offline
NOT_STAGEABLE: dict[str, str] = {
    "camera_motion": "loads CoTracker2 with torch.hub.load('facebookresearch/co-tracker') from GitHub",
    "i2v_background": "needs the dreamsim package (not a vbench requirement), which downloads its weights",
}


class VBenchEnvError(RuntimeError):
    """The vbench environment is missing or broken, or a scoring run failed (a one-line message)."""


def default_env() -> Path:
    """``$TURBO_VBENCH_ENV`` if set, else ``~/.cache/turbo/vbench-env``."""
    env = os.environ.get("TURBO_VBENCH_ENV")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "turbo" / "vbench-env"


def _python(env: Path) -> Path:
    return Path(env) / "bin" / "python"


def _marker_matches(env: Path) -> bool:
    try:
        return json.loads((Path(env) / MARKER).read_text()).get("pins") == PINS
    except (OSError, ValueError, AttributeError):
        return False


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def setup(env: Path, pip_args: Sequence[str] = (), python: str = "python3") -> Path:
    """Create the venv at ``env`` (``python -m venv``) and pip install ``PINS`` into it; return its python.

    Idempotent: a marker file recording the pins is written inside the env after success, and when
    it matches ``PINS`` nothing is done. ``pip_args`` go to ``pip install`` (e.g. ``--no-index``,
    ``--find-links DIR``). On failure raises a one-line VBenchEnvError naming the env, the failing
    step and the log file (inside the env) holding the step's full output.
    """
    env = Path(env).expanduser().absolute()
    if _marker_matches(env) and _python(env).exists():
        return _python(env)
    env.mkdir(parents=True, exist_ok=True)
    log = env / SETUP_LOG
    steps = []
    if not _python(env).exists():
        steps.append(("create the venv", [python, "-m", "venv", str(env)]))
    steps.append(("pip install " + " ".join(PINS),
                  [str(_python(env)), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(LOCK), *pip_args,
                   *PINS]))
    for step, cmd in steps:
        with log.open("w") as out:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            except OSError as error:
                out.write(f"{error}\n")
                rc = -1
        if rc != 0:
            tail = _last_line(log.read_text())
            raise VBenchEnvError(f"vbench environment {env}: step '{step}' failed (rc {rc}): {tail} "
                                 f"(full log: {log})")
    check(env, marker=False)  # the env must import vbench before it is marked as done
    (env / MARKER).write_text(json.dumps({"pins": PINS, "pip_args": list(pip_args)}, indent=1) + "\n")
    return _python(env)


def check(env: Path, *, marker: bool = True) -> Path:
    """Return the python of the vbench env at ``env``; one-line VBenchEnvError when it is missing,
    broken (no python, or ``import vbench`` fails) or built with other pins than ``PINS``."""
    env = Path(env).expanduser().absolute()
    hint = f"create it with: turbo-eval setup=vbench (or python -m eval.harness.vbench_env setup {env})"
    if not env.exists():
        raise VBenchEnvError(f"no vbench environment at {env}; {hint}")
    python = _python(env)
    if not python.exists():
        raise VBenchEnvError(f"broken vbench environment at {env}: {python} not found; remove it and {hint}")
    if marker and not _marker_matches(env):
        raise VBenchEnvError(f"vbench environment at {env} was not built with the current pins "
                             f"({env / MARKER} missing or different); {hint}")
    key = (str(env), _stamp(env / MARKER))
    if key in _IMPORTS_OK:  # import vbench takes ~10 s: probe an env once per process (per marker)
        return python
    proc = subprocess.run([str(python), "-c", "import vbench"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise VBenchEnvError(f"broken vbench environment at {env}: import vbench failed: "
                             f"{_last_line(proc.stderr)}; remove it and {hint}")
    if marker:
        _IMPORTS_OK.add(key)
    return python


_IMPORTS_OK: set[tuple[str, int | None]] = set()


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def full_info_path(env: Path) -> Path:
    """The ``vbench/VBench_full_info.json`` shipped in the env's installed vbench package."""
    found = sorted(Path(env).glob("lib/python3*/site-packages/vbench/VBench_full_info.json"))
    if len(found) == 1:
        return found[0].absolute()
    code = "import os, vbench; print(os.path.join(os.path.dirname(vbench.__file__), 'VBench_full_info.json'))"
    proc = subprocess.run([str(check(env)), "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    path = Path(proc.stdout.strip())
    if proc.returncode != 0 or not path.is_file():
        raise VBenchEnvError(f"vbench environment at {env}: VBench_full_info.json not found in its vbench package "
                             f"({_last_line(proc.stderr) if proc.returncode else path})")
    return path


def missing_checkpoints(dimensions: Iterable[str], cache_dir: Path) -> list[str]:
    """One line per file a dimension needs that is absent under ``cache_dir``."""
    cache_dir = Path(cache_dir).expanduser()
    missing = []
    for dim in dimensions:
        if dim in NOT_STAGEABLE:
            missing.append(f"dimension {dim} cannot be staged in {cache_dir}: it {NOT_STAGEABLE[dim]} "
                           "(nothing is downloaded)")
        for rel in CHECKPOINTS.get(dim, []):
            path = cache_dir / rel
            if not (path.is_dir() if rel.endswith("/") else path.is_file()):
                missing.append(f"dimension {dim} needs {path} (not found; stage it beforehand: nothing is downloaded)")
    return missing


def _cache_dir(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    env = os.environ.get("VBENCH_CACHE_DIR")
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "vbench"


def score(videos: Path, out: Path, dimensions: list[str], *, env: Path | None = None, name: str = "results",
          mode: str = "vbench_standard", full_info: Path | None = None, device: str = "cpu",
          cache_dir: Path | None = None, i2v: bool = False, resolution: str | None = None,
          image_folder: Path | None = None, long: bool = False, static_filter: bool = False,
          videos_per_prompt: int = 5, timeout: float | None = None) -> Path:
    """Score the videos in ``videos`` on ``dimensions`` with VBench (VBenchI2V if ``i2v``) in its env.

    ``mode`` is VBench's: ``vbench_standard`` (files ``{prompt}-{i}.mp4`` of the suite in
    ``full_info``, default: the env's ``VBench_full_info.json``) or ``custom_input`` (every video,
    prompt from the file name). Weights are read from ``cache_dir`` (default ``$VBENCH_CACHE_DIR``
    or ``~/.cache/vbench``); missing ones are an error before anything runs. ``i2v``: VBenchI2V with
    the crop ``resolution`` (e.g. "16-9"), ``image_folder`` holding the cropped input images and the
    I2V suite as ``full_info`` (vbench_standard only). ``long``: VBench-Long (videos of 5 s and more:
    scene-split into clips, scored per clip, averaged per video) in mode ``long_vbench_standard``
    (``videos_per_prompt`` files per prompt) or ``long_custom_input``, with its own static filter if
    ``static_filter``. ``timeout`` (s) bounds the worker. Returns
    ``out/{name}_eval_results.json``; the worker's output is kept in ``out/vbench_worker.log``.
    """
    env = Path(env) if env is not None else default_env()
    python = check(env)
    cache = _cache_dir(cache_dir)
    missing = missing_checkpoints(dimensions, cache)
    if missing:
        raise VBenchEnvError(f"{len(missing)} checkpoint(s) missing: " + "; ".join(missing))
    if long and (i2v or mode not in ("long_vbench_standard", "long_custom_input")):
        raise VBenchEnvError(f"VBench-Long scores text-to-video suites in mode long_vbench_standard or "
                             f"long_custom_input, found mode={mode!r}{' with i2v' if i2v else ''}")
    if i2v and (full_info is None or image_folder is None or mode != "vbench_standard"):
        raise VBenchEnvError("i2v scoring needs mode='vbench_standard' (the only mode VBenchI2V 0.1.5 has), "
                             "full_info (vbench2_i2v_full_info.json, in VBench's git repository, not the wheel) "
                             "and image_folder (the cropped images for the resolution, e.g. data/crop/16-9)")
    out = Path(out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    args = {"videos_path": str(Path(videos).expanduser().absolute()), "output_dir": str(out), "name": name,
            "dimensions": list(dimensions), "mode": mode, "device": device,
            "full_info": str(Path(full_info).absolute() if full_info else full_info_path(env)),
            "local": any(CHECKPOINTS.get(d) for d in dimensions), "i2v": i2v, "resolution": resolution,
            "image_folder": str(Path(image_folder).absolute()) if image_folder else None,
            "long": long, "static_filter": static_filter, "videos_per_prompt": int(videos_per_prompt)}
    results = out / f"{name}_eval_results.json"
    results.unlink(missing_ok=True)  # a stale file must not pass for this run's result
    _run_worker(python, args, out, cache, results, timeout)
    return results


def _run_worker(python: Path, args: dict, out: Path, cache: Path, expected: Path, timeout: float | None) -> None:
    """Run the worker with ``args`` in ``out``; any failure, or no ``expected`` file after it, is one
    VBenchEnvError naming ``expected`` with the worker's own error line (full log: out/vbench_worker.log)."""
    log = out / WORKER_LOG
    child_env = {**os.environ, "VBENCH_CACHE_DIR": str(cache)}
    cmd = [str(python), str(WORKER), "--json-args", json.dumps(args)]
    try:
        proc = subprocess.run(cmd, cwd=out, env=child_env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as error:
        def text(data): return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
        stdout, stderr, rc = text(error.stdout), text(error.stderr) + f"\ntimed out after {timeout} s", None
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n")
    if rc != 0 or not expected.exists():
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("vbench_worker: error:")]
        tail = errors[-1] if errors else " | ".join(lines[-3:]) or "(no stderr)"  # the worker's own message
        why = "timed out" if rc is None else f"exited {rc}" if rc else "exited 0 but wrote no results"
        raise VBenchEnvError(f"vbench worker {why}; expected {expected}: {tail} (full log: {log})")


RAFT = "raft_model/models/raft-things.pth"  # the static filter's optical flow (as dynamic_degree's)


def static_filter(videos: Path, out: Path, files: list[str], *, env: Path | None = None, device: str = "cpu",
                  cache_dir: Path | None = None, keep: int = 5, timeout: float | None = None) -> tuple[Path, dict[str, int]]:
    """VBench's static filter for temporal_flickering: of each prompt's sampled ``files`` (25 per
    prompt, ``{prompt}-{i}.mp4``), the first ``keep`` that RAFT finds static (in VBench's order:
    sorted file names), as ``{prompt}-{0..keep-1}.mp4`` in the returned folder. Also returns how many
    each prompt kept (fewer than ``keep``: sample more per prompt)."""
    env = Path(env) if env is not None else default_env()
    python = check(env)
    cache = _cache_dir(cache_dir)
    if not (cache / RAFT).is_file():
        raise VBenchEnvError(f"the static filter needs {cache / RAFT} (not found; stage it beforehand: nothing is "
                             f"downloaded), or set suite.static_filter=false")
    out = Path(out).expanduser().absolute()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    args = {"action": "static_filter", "videos_path": str(Path(videos).absolute()), "result_path": str(out),
            "model": str(cache / RAFT), "device": device, "files": list(files)}
    folder = out / "filtered_videos"
    _run_worker(python, args, out, cache, folder, timeout)
    kept: dict[str, int] = {}
    for path in sorted(folder.glob("*.mp4")):  # VBench copies every static one: keep the first `keep`
        prompt, index = path.stem.rsplit("-", 1)
        if int(index) >= keep:
            path.unlink()
        else:
            kept[prompt] = kept.get(prompt, 0) + 1
    return folder, kept


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.harness.vbench_env setup|check [ENV]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("setup", "check") or len(argv) > 2:
        print("usage: python -m eval.harness.vbench_env setup|check [ENV]   (default ENV: "
              f"{default_env()})", file=sys.stderr)
        return 2
    env = Path(argv[1]) if len(argv) == 2 else default_env()
    try:
        python = setup(env) if argv[0] == "setup" else check(env)
    except VBenchEnvError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
