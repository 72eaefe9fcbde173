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
``vbench2_beta_i2v/data/crop/{resolution}`` under the working directory), long (bool: VBench-Long,
``vbench2_beta_long.VBenchLong`` in mode ``long_vbench_standard`` or ``long_custom_input``),
static_filter (bool, long only: VBench-Long's own static filter for temporal_flickering),
videos_per_prompt (long_vbench_standard: how many ``{prompt}-{i}`` files each prompt has).
"""

import argparse
import json
import os
import sys
import traceback
from importlib.metadata import version

REQUIRED = ("videos_path", "output_dir", "name", "dimensions", "mode", "device", "full_info")

# VBench-Long's configs (vbench2_beta_long/configs/ in VBench's git repository; the 0.1.5 wheel does
# not ship them, and VBenchLong reads them from beside its own module). Clip seconds per dimension
# (clip_length_mix.yaml, its default), and the slow-fast fusion constants (slow_fast_params.yaml),
# which the consistency dimensions read even when, as in the default non-dev mode, the clip-to-clip
# weight is 0.
LONG_CLIP_SECONDS = {
    "subject_consistency": 2.0, "background_consistency": 2.0, "motion_smoothness": 2.0,
    "temporal_flickering": 2.0, "dynamic_degree": 2.0, "imaging_quality": 2.0, "aesthetic_quality": 2.0,
    "object_class": 2.0, "multiple_objects": 2.0, "human_action": 10.0, "color": 2.0,
    "spatial_relationship": 2.0, "scene": 2.0, "appearance_style": 2.0, "temporal_style": 10.0,
    "overall_consistency": 10.0}
LONG_SLOW_FAST = {
    "w_inclip_sb": 0.7, "w_clip2clip_sb": 0.3, "inclip_mean_sb": 0.9206531487463249,
    "inclip_std_sb": 0.004580085658914342, "clip2clip_mean_sb": 0.782773956831079,
    "clip2clip_std_sb": 0.024658268466961904, "w_inclip_bg": 0.8, "w_clip2clip_bg": 0.2,
    "inclip_mean_bg": 0.9461633887475777, "inclip_std_bg": 0.00041191287498028263,
    "clip2clip_mean_bg": 0.8817304710164493, "clip2clip_std_bg": 0.007886728751286067}
# eval_long.py's settings without --dev_flag (the leaderboard's): DINO / CLIP features, in-clip only
LONG_KWARGS = {"sb_clip2clip_feat_extractor": "dino", "bg_clip2clip_feat_extractor": "clip", "w_inclip": 1.0,
               "w_clip2clip": 0.0, "imaging_quality_preprocessing_mode": "longer", "use_semantic_splitting": False,
               "clip_length_config": "clip_length_mix.yaml", "dev_flag": False}


def long_configs() -> str:
    """Write VBench-Long's two config files beside its module if the installed package lacks them;
    return the slow-fast config's path."""
    import vbench2_beta_long

    folder = os.path.join(os.path.dirname(os.path.abspath(vbench2_beta_long.__file__)), "configs")
    os.makedirs(folder, exist_ok=True)
    for name, table in (("clip_length_mix.yaml", LONG_CLIP_SECONDS), ("slow_fast_params.yaml", LONG_SLOW_FAST)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            with open(path + ".tmp", "w") as f:
                f.writelines(f"{key}: {value!r}\n" for key, value in table.items())
            os.replace(path + ".tmp", path)
    return os.path.join(folder, "slow_fast_params.yaml")


def vbench_long_class():
    """VBenchLong with one fix. In mode long_vbench_standard its build_full_info_json takes the video
    suffix from whichever entry os.listdir returns first; when that is its own split_clip folder the
    suffix is '' and no clip matches, so every prompt gets an empty video list (and then an
    IndexError). The same listing with the suffix of the videos themselves."""
    from vbench.utils import load_json, save_json
    from vbench2_beta_long import VBenchLong

    class FixedVBenchLong(VBenchLong):
        def build_full_info_json(self, videos_path, name, dimension_list, prompt_list=[], special_str="",
                                 verbose=False, mode="vbench_standard", **kwargs):
            if mode != "long_vbench_standard":
                return super().build_full_info_json(videos_path, name, dimension_list, prompt_list, special_str,
                                                    verbose, mode, **kwargs)
            videos = [f for f in os.listdir(videos_path) if os.path.isfile(os.path.join(videos_path, f))]
            stems = {os.path.splitext(f)[0] for f in videos}
            entries = []
            for entry in load_json(self.full_info_dir):
                if not set(dimension_list) & set(entry["dimension"]):
                    continue
                entry["video_list"] = []
                for i in range(kwargs["num_of_samples_per_prompt"]):
                    folder = os.path.join(videos_path, "split_clip", f"{entry['prompt_en']}{special_str}-{i}")
                    if not os.path.isdir(folder):
                        print(f"WARNING: no clips of {folder} (a missing video)")
                        continue
                    entry["video_list"] += [os.path.join(folder, clip) for clip in os.listdir(folder)
                                            if clip.rsplit("_", 1)[0] in stems]
                entries.append(entry)
            path = os.path.join(self.output_path, name + "_full_info.json")
            save_json(entries, path)
            return path

    return FixedVBenchLong


def run_long(args: dict, device) -> None:
    """VBench-Long: it splits every video into clips and writes them INTO the folder it is given, so
    it gets a folder of links to the videos under output_dir (the sampled folder stays as it was)."""
    if args["mode"] not in ("long_vbench_standard", "long_custom_input"):
        raise ValueError(f"VBench-Long has modes long_vbench_standard and long_custom_input, found {args['mode']!r}")
    slow_fast = long_configs()
    staged = os.path.join(args["output_dir"], f"{args['name']}_long_input")
    os.makedirs(staged, exist_ok=True)
    for file in sorted(os.listdir(args["videos_path"])):
        if file.endswith(".mp4") and not os.path.lexists(os.path.join(staged, file)):
            os.symlink(os.path.join(args["videos_path"], file), os.path.join(staged, file))
    bench = vbench_long_class()(device, args["full_info"], args["output_dir"])
    bench.evaluate(videos_path=staged, name=args["name"], dimension_list=list(args["dimensions"]),
                   local=bool(args.get("local")), mode=args["mode"], slow_fast_eval_config=slow_fast,
                   static_filter_flag=bool(args.get("static_filter")),
                   num_of_samples_per_prompt=int(args.get("videos_per_prompt") or 5), **LONG_KWARGS)


def run(args: dict) -> str:
    """Evaluate as ``args`` says; return the results file path."""
    missing = [key for key in REQUIRED if key not in args]
    if missing:
        raise ValueError(f"missing argument(s): {', '.join(missing)}")
    import torch

    # A single process: vbench.distributed falls back to rank 0 / world size 1 when torch.distributed
    # is not initialised, and VBench.evaluate only gathers results across ranks when world size > 1.
    device = torch.device(args["device"])
    if args.get("long"):
        run_long(args, device)
    elif args.get("i2v"):
        from vbench2_beta_i2v import VBenchI2V

        resolution = args.get("resolution") or "1-1"
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
        VBenchI2V(device, args["full_info"], args["output_dir"]).evaluate(
            videos_path=args["videos_path"], name=args["name"], dimension_list=list(args["dimensions"]),
            local=bool(args.get("local")), resolution=resolution)
    else:
        from vbench import VBench

        VBench(device, args["full_info"], args["output_dir"]).evaluate(
            videos_path=args["videos_path"], name=args["name"], dimension_list=list(args["dimensions"]),
            local=bool(args.get("local")), mode=args["mode"])
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
