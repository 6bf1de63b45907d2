"""ONNX Runtime's side of `qatc int bench --onnxruntime` (docs/performance.md).

Run by qatc with `$QATC_ONNX_PYTHON` and `PYTHONPATH=$QATC_ONNX_PYTHONPATH`
(`source scripts/onnx-env.sh`); the binary embeds this file and writes it to
a temporary directory, so it is the copy in the source tree that runs.

    python3 ort-bench.py JOB.json

JOB.json:
    {"models": [{"label": "qdq", "path": "m.onnx"}, ...],
     "inputs": "inputs.f32", "shape": [N, C, H, W],   # float32, little-endian
     "threads": [1, 2], "batches": [1, 64],
     "levels": ["disable_all", "enable_all"], "rounds": 3,
     "optimized_dir": "dir",                          # optimised models saved here
     "profile": {"level": "enable_all", "threads": 1, "batches": [1, 64]}}  # optional

With "profile": after the timings, one more pass over the N images per
model and batch with SessionOptions.enable_profiling (ORT's JSON trace,
kept in optimized_dir), summarised per op type: the kernel time of every
node ("Node" events `*_kernel_time`) summed by the node's op_name.

Every session: CPUExecutionProvider, intra_op_num_threads = T,
inter_op_num_threads = 1, execution_mode ORT_SEQUENTIAL, the optimisation
level named. One timed round runs all N images in batches of B (the last
batch may be smaller), after one untimed batch; the median round is
reported, wall clock and CPU time of the process (time.process_time: every
thread of it).

Prints one JSON object per line:
    {"kind": "versions", ...}
    {"kind": "ops", "model", "level", "ops": {op_type: count}, "path"}
      (the graph ONNX Runtime runs after its optimisations, from
      SessionOptions.optimized_model_filepath; domain-qualified where not
      the default domain, e.g. "com.microsoft.QLinearConv")
    {"kind": "time", "model", "level", "threads", "batch", "images",
     "images_per_s", "ms_per_image", "cpu_ms_per_image"}
    {"kind": "profile", "model", "level", "threads", "batch", "images",
     "us_per_image": [[op_type, microseconds of kernel time per image], ...]
       (largest first), "wall_ms_per_image", "path"}
"""

import collections
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enable_basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "enable_extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "enable_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(path, level, threads, optimized=None, profile=None):
    so = ort.SessionOptions()
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    so.graph_optimization_level = LEVELS[level]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized:
        so.optimized_model_filepath = optimized
        so.log_severity_level = 3  # not the warning that an NCHWc model is machine-specific
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def op_counts(path):
    m = onnx.load(path, load_external_data=False)
    c = collections.Counter(
        (n.domain + "." if n.domain not in ("", "ai.onnx") else "") + n.op_type
        for n in m.graph.node
    )
    return dict(sorted(c.items()))


def feed(s, x):
    """The model's input as it expects it (float32 images; an integer input
    is not something qatc writes today)."""
    inp = s.get_inputs()[0]
    if inp.type != "tensor(float)":
        raise SystemExit(f"ort-bench: input `{inp.name}` is {inp.type}, expected tensor(float)")
    return inp.name


def main():
    job = json.load(open(sys.argv[1]))
    n, *chw = job["shape"]
    x = np.fromfile(job["inputs"], dtype="<f4").reshape([n] + chw)
    print(json.dumps({"kind": "versions", "onnxruntime": ort.__version__, "onnx": onnx.__version__,
                      "numpy": np.__version__}), flush=True)
    os.makedirs(job["optimized_dir"], exist_ok=True)
    for model in job["models"]:
        for level in job["levels"]:
            opt = os.path.join(job["optimized_dir"], f"{model['label']}.{level}.onnx")
            session(model["path"], level, 1, opt)
            print(json.dumps({"kind": "ops", "model": model["label"], "level": level,
                              "ops": op_counts(opt), "path": opt}), flush=True)
            for threads in job["threads"]:
                for batch in job["batches"]:
                    s = session(model["path"], level, threads)
                    name = feed(s, x)
                    s.run(None, {name: x[:batch]})
                    walls, cpus = [], []
                    for _ in range(max(1, job["rounds"])):
                        w, c = time.perf_counter(), time.process_time()
                        for i in range(0, n, batch):
                            s.run(None, {name: x[i:i + batch]})
                        walls.append(time.perf_counter() - w)
                        cpus.append(time.process_time() - c)
                    wall, cpu = statistics.median(walls), statistics.median(cpus)
                    print(json.dumps({"kind": "time", "model": model["label"], "level": level,
                                      "threads": threads, "batch": batch, "images": n,
                                      "images_per_s": n / wall, "ms_per_image": 1000 * wall / n,
                                      "cpu_ms_per_image": 1000 * cpu / n}), flush=True)

    prof = job.get("profile")
    if prof:
        for model in job["models"]:
            for batch in prof["batches"]:
                prefix = os.path.join(job["optimized_dir"], f"profile.{model['label']}.b{batch}")
                s = session(model["path"], prof["level"], prof["threads"], profile=prefix)
                name = feed(s, x)
                s.run(None, {name: x[:batch]})
                # Only what follows the warm-up counts: the trace's start.
                t0 = time.perf_counter()
                for i in range(0, n, batch):
                    s.run(None, {name: x[i:i + batch]})
                path = s.end_profiling()
                per_op = collections.Counter()
                events = json.load(open(path))
                # The warm-up batch's events: the first run's, before the timed ones.
                runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
                first_end = runs[0]["ts"] + runs[0]["dur"] if runs else -1
                for e in events:
                    if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") \
                            and e.get("ts", 0) > first_end:
                        per_op[e["args"].get("op_name", "?")] += e["dur"]
                print(json.dumps({"kind": "profile", "model": model["label"], "level": prof["level"],
                                  "threads": prof["threads"], "batch": batch, "images": n,
                                  "wall_ms_per_image": 1000 * (time.perf_counter() - t0) / n,
                                  "us_per_image": [[k, v / n] for k, v in per_op.most_common()],
                                  "path": path}), flush=True)


if __name__ == "__main__":
    main()
