"""Run VBench (or VBench-I2V) once, inside the vbench environment; driven by eval/harness/vbench_env.py.

    <vbench env>/bin/python vbench_worker.py --json-args '{"videos_path": ..., "output_dir": ..., ...}'

Standalone: it runs in the vbench venv, so it imports only the standard library, torch and vbench
(never turbo). Single process on the given device: VBench's CLI launcher is not used (it always
starts torch.distributed with NCCL and hard-codes CUDA). The weights come from ``$VBENCH_CACHE_DIR``
(``local=True``). Writes ``{output_dir}/{name}_eval_results.json`` (VBench's own file) and exits 0;
on any error prints ``vbench_worker: error: ...`` last on stderr and exits 1.

``"action": "static_filter"`` runs VBench's static filter instead (videos_path, result_path, model
(raft-things.pth), device, files: the file names to filter) and writes ``result_path/filtered_videos``.

JSON arguments: videos_path, output_dir, name, dimensions (list), mode, device, full_info,
local (bool), i2v (bool), resolution (I2V crop ratio, e.g. "16-9"), image_folder (I2V: the cropped
input images for that ratio, named as the suite's image_name; linked where VBenchI2V looks for them,
``vbench2_beta_i2v/data/crop/{resolution}`` under the working directory).
"""

import argparse
import json
import os
import sys
import traceback
from importlib.metadata import version

REQUIRED = ("videos_path", "output_dir", "name", "dimensions", "mode", "device", "full_info")


def run(args: dict) -> str:
    """Evaluate as ``args`` says; return the results file path."""
    missing = [key for key in REQUIRED if key not in args]
    if missing:
        raise ValueError(f"missing argument(s): {', '.join(missing)}")
    import torch

    # A single process: vbench.distributed falls back to rank 0 / world size 1 when torch.distributed
    # is not initialised, and VBench.evaluate only gathers results across ranks when world size > 1.
    device = torch.device(args["device"])
    kwargs = {"mode": args["mode"]}
    if args.get("i2v"):
        from vbench2_beta_i2v import VBenchI2V

        bench = VBenchI2V(device, args["full_info"], args["output_dir"])
        resolution = args.get("resolution") or "1-1"
        kwargs = {"resolution": resolution}
        if args["mode"] != "vbench_standard":
            raise ValueError(f"VBenchI2V {version('vbench')} has no mode {args['mode']!r}; use vbench_standard")
        if args.get("image_folder"):
            # VBenchI2V 0.1.5 reads the images from vbench2_beta_i2v/data/crop/{resolution} relative
            # to the working directory: point that path at image_folder.
            link = os.path.join("vbench2_beta_i2v", "data", "crop", resolution)
            if os.path.realpath(link) != os.path.realpath(args["image_folder"]):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                if os.path.lexists(link):
                    os.remove(link)
                os.symlink(args["image_folder"], link)
    else:
        from vbench import VBench

        bench = VBench(device, args["full_info"], args["output_dir"])
    bench.evaluate(videos_path=args["videos_path"], name=args["name"], dimension_list=list(args["dimensions"]),
                   local=bool(args.get("local")), **kwargs)
    results = os.path.join(args["output_dir"], f"{args['name']}_eval_results.json")
    if not os.path.isfile(results):
        raise RuntimeError(f"VBench finished but wrote no {results}")
    return results


def static_filter(args: dict) -> str:
    """VBench's static filter (``vbench static_filter``'s code) on the files listed in ``args["files"]``,
    on ``args["device"]`` (the module hard-codes CUDA); returns the filtered-videos folder."""
    import vbench.cli.static_filter as sf

    sf.DEVICE = args["device"]
    scope = os.path.join(args["result_path"], "filter_scope.json")
    os.makedirs(args["result_path"], exist_ok=True)
    with open(scope, "w") as f:
        json.dump(list(args["files"]), f)
    sf.static_filter(argparse.Namespace(model=args["model"], videos_path=args["videos_path"],
                                        result_path=args["result_path"], store_name="filtered_static_video.json",
                                        small=False, mixed_precision=False, alternate_corr=False, filter_scope=scope))
    return os.path.join(args["result_path"], "filtered_videos")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json-args", required=True, help="the arguments, as one JSON object")
    ns = parser.parse_args(argv)
    try:
        args = json.loads(ns.json_args)
        if not isinstance(args, dict):
            raise ValueError("--json-args must be a JSON object")
        action = static_filter if args.pop("action", "evaluate") == "static_filter" else run
        print(f"vbench_worker: wrote {action(args)}", flush=True)
    except BaseException as error:  # noqa: BLE001 - every failure must end in a non-zero exit and a message
        if isinstance(error, SystemExit) and error.code in (0, None):
            error = RuntimeError("VBench called exit(0) without results")
        traceback.print_exc()
        print(f"vbench_worker: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
