#!/usr/bin/env python3
"""Ours against PyTorch, case by case in one session: bench_layer and benchmarks/peers/torch_moe.py.

    python3 benchmarks/side_by_side.py --bench build/bench/benchmarks/bench_layer \
        --shapes small,mixtral-mini --tokens 1,16,128,1024 --threads 1 --repetitions 5 --min-time 0.1

For each selected case (shape, T, mode, threads) it runs, one after the other:
  * ours:  bench_layer --benchmark_filter='^(BM_Layer_Forward|BM_Naive_Forward)/<shape>/T:<T>/threads:<n>/'
           --benchmark_format=json --benchmark_repetitions=R --benchmark_report_aggregates_only=true
           and keeps the median aggregates. BM_Naive_<Mode> (the per-expert loop that HF uses, in Eigen)
           is included when the binary has it (--benchmark_list_tests says which benchmarks exist).
  * torch: OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS=<n> /usr/bin/python3 torch_moe.py for the same
           case, --repetitions R, reporting the median of the repetitions' medians.
--weights f32,bf16 runs each case with fp32 weights (ours BM_Layer_<Mode>/<case>, torch in float32) and
with bf16 weights (ours BM_Layer_<Mode>/<case>/w:bf16, torch after .to(torch.bfloat16)); the naive
baseline runs with fp32 only.
The order of the two alternates from one run of a pair to the next (ours first, then torch first, ...),
so that a slow drift of the shared machine does not always hit the same side. --rounds N runs each case's
pair N times (alternating) and keeps the median of the rounds.

--torch-best-threads: torch runs with every thread count from 1 up to the case's n (1 and 2 here: it has
been slower with 2 than with 1 on these machines) and the fastest counts; it never gets more threads than
ours. The torch thread count used is in the JSON (`torch_threads`).

Output: a JSON file (--out, default benchmarks/results/side_by_side.json) with
  "context"      bench_layer's context (date, host, caches), the CPU model, torch's and OpenBLAS's version
                 and core name, the options;
  "benchmarks"   Google Benchmark-style entries (ours BM_*, Torch_*), one per benchmark: what plot.py reads;
  "side_by_side" one row per case, the numbers of the table;
and a markdown table on stdout: ours/naive/torch ms, ours GFLOP/s, torch/ours (= the speed-up of ours; > 1
means ours is faster) and ours GB/s. Progress goes to stderr.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
from torch_moe import cpu_model  # noqa: E402  (imports torch only when run as a script)
REPO = os.path.dirname(HERE)
SHAPES = ("small", "mixtral-mini", "deepseek-moe", "mixtral-8x7b")
TOKENS = (1, 16, 128, 1024)
MODES = {"forward": "Forward", "forward_backward": "ForwardBackward"}
COUNTERS = ("GFLOPS", "GBps", "tokens_per_s")


def log(message):
    print(f"side_by_side: {message}", file=sys.stderr, flush=True)


def git_commit():
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def list_tests(bench):
    out = subprocess.run([bench, "--benchmark_list_tests"], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.split():
        names.add(line[: -len("/real_time")] if line.endswith("/real_time") else line)
    return names


WEIGHTS = {"f32": ("", "float32"), "bf16": ("/w:bf16", "bfloat16")}  # bench_layer suffix, torch dtype


def case_suffix(shape, tokens, threads, weights="f32"):
    return f"{shape}/T:{tokens}/threads:{threads}{WEIGHTS[weights][0]}"


def run_ours(args, families, shape, tokens, threads, weights):
    """Median aggregates of the given benchmark families for one case: {family: entry}, context."""
    pattern = f"^({'|'.join(families)})/{case_suffix(shape, tokens, threads, weights)}/real_time$"
    command = [args.bench, f"--benchmark_filter={pattern}", "--benchmark_format=json",
               f"--benchmark_repetitions={args.repetitions}", "--benchmark_report_aggregates_only=true",
               f"--benchmark_min_time={args.min_time}"]
    proc = subprocess.run(command, capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        log(f"  bench_layer: {line}")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}")
    doc = json.loads(proc.stdout)
    found = {}
    for entry in doc.get("benchmarks", []):
        if entry.get("run_type") == "aggregate" and entry.get("aggregate_name") != "median":
            continue
        if entry.get("error_occurred"):
            log(f"  {entry['name']}: error: {entry.get('error_message')}")
            continue
        run_name = entry.get("run_name", entry["name"])
        family = run_name.split("/", 1)[0]
        found[family] = entry
    return found, doc.get("context", {})


def run_torch(args, shape, tokens, mode, threads, weights):
    """The torch entry for one case with `threads` threads (None when torch is missing), and its context."""
    env = dict(os.environ, OPENBLAS_CORETYPE="SkylakeX", OPENBLAS_NUM_THREADS=str(threads))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    command = [args.python, args.torch_script, f"--shapes={shape}", f"--tokens={tokens}",
               f"--modes={mode}", f"--threads={threads}", f"--repetitions={args.repetitions}",
               f"--min-time={args.min_time}", f"--dtype={WEIGHTS[weights][1]}", f"--out={out}"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        for line in proc.stderr.splitlines():
            log(f"  torch: {line}")
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}")
        with open(out) as f:
            doc = json.load(f)
    finally:
        os.unlink(out)
    entries = doc.get("benchmarks", [])
    return (entries[0] if entries else None), doc.get("context", {})


def run_torch_best(args, shape, tokens, mode, threads, weights):
    counts = range(1, threads + 1) if args.torch_best_threads else [threads]
    best, context = None, {}
    for n in counts:
        entry, context = run_torch(args, shape, tokens, mode, n, weights)
        if entry is None:
            return None, context
        entry["torch_threads"] = n
        if best is None or entry["real_time"] < best["real_time"]:
            best = entry
    if best is not None and args.torch_best_threads:
        # Named after the case it is compared with; torch_threads tells how many threads it used.
        best["name"] = best["run_name"] = f"Torch_{MODES[mode]}/{case_suffix(shape, tokens, threads, weights)}"
    return best, context


def median_entry(entries):
    """One entry whose real_time and counters are the medians over rounds (the first entry's other fields)."""
    if len(entries) == 1:
        return dict(entries[0])
    merged = dict(entries[0])
    for key in ("real_time", "cpu_time") + COUNTERS:
        values = [e[key] for e in entries if key in e]
        if values:
            merged[key] = statistics.median(values)
    merged["rounds"] = len(entries)
    return merged


def selected_cases(args, available):
    cases, missing = [], []
    for shape in args.shapes:
        for mode in args.modes:
            for tokens in args.tokens:
                for threads in args.threads:
                    for weights in args.weights:
                        ours = f"BM_Layer_{MODES[mode]}/{case_suffix(shape, tokens, threads, weights)}"
                        if ours in available:
                            cases.append((shape, tokens, mode, threads, weights))
                        else:
                            missing.append(ours)
    return cases, missing


def fmt(value, digits=3):
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def markdown_table(rows):
    lines = ["| shape | T | mode | threads | weights | ours ms | naive ms | torch ms | ours GFLOP/s | torch/ours | GB/s |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        torch_ms = fmt(r["torch_ms"])
        if r["torch_ms"] is not None and r.get("torch_threads") not in (None, r["threads"]):
            torch_ms += f" ({r['torch_threads']}t)"
        speedup = f"{r['speedup']:.2f}×" if r["speedup"] is not None else "—"
        lines.append(f"| {r['shape']} | {r['tokens']} | {r['mode']} | {r['threads']} | {r['weights']} | {fmt(r['ours_ms'])} | "
                     f"{fmt(r['naive_ms'])} | {torch_ms} | {fmt(r['ours_gflops'])} | {speedup} | "
                     f"{fmt(r['ours_gbps'])} |")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda kind: (lambda s: [kind(v) for v in s.split(",") if v])  # noqa: E731
    p.add_argument("--bench", default=os.path.join(REPO, "build/bench/benchmarks/bench_layer"),
                   help="the bench_layer binary (default build/bench/benchmarks/bench_layer)")
    p.add_argument("--torch-script", default=os.path.join(HERE, "peers", "torch_moe.py"))
    p.add_argument("--python", default="/usr/bin/python3", help="the Python with torch (Debian's)")
    p.add_argument("--shapes", type=csv(str), default=["small", "mixtral-mini", "deepseek-moe"],
                   help="comma list (default small,mixtral-mini,deepseek-moe; mixtral-8x7b also exists)")
    p.add_argument("--tokens", type=csv(int), default=list(TOKENS), help="comma list of T (default 1,16,128,1024)")
    p.add_argument("--threads", type=csv(int), default=[1], help="comma list (default 1)")
    p.add_argument("--modes", type=csv(str), default=["forward"], help="forward,forward_backward (default forward)")
    p.add_argument("--weights", type=csv(str), default=["f32"], help="f32,bf16 (default f32)")
    p.add_argument("--repetitions", type=int, default=3, help="repetitions per process, median kept (default 3)")
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per repetition (default 0.1)")
    p.add_argument("--rounds", type=int, default=1, help="run each case's pair this many times (default 1)")
    p.add_argument("--torch-best-threads", action="store_true",
                   help="torch runs with 1..n threads and the fastest counts")
    p.add_argument("--no-torch", action="store_true", help="ours only")
    p.add_argument("--out", default=os.path.join(HERE, "results", "side_by_side.json"))
    args = p.parse_args(argv)
    for s in args.shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; known: {', '.join(MODES)}")
    for w in args.weights:
        if w not in WEIGHTS:
            p.error(f"unknown weights {w!r}; known: {', '.join(WEIGHTS)}")
    if args.repetitions < 1 or args.rounds < 1:
        p.error("--repetitions and --rounds must be >= 1")
    if not os.access(args.bench, os.X_OK):
        p.error(f"no bench_layer at {args.bench}; build it (-DMOE_BUILD_BENCHMARKS=ON) or pass --bench")
    return args


def main(argv):
    args = parse_args(argv)
    available = list_tests(args.bench)
    cases, missing = selected_cases(args, available)
    for name in missing:
        log(f"skipping {name}: not in {args.bench}")
    if not cases:
        log("nothing selected")
        return 1

    started = datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")
    ours_context, torch_context = {}, {}
    rows, benchmarks = [], []
    torch_available = not args.no_torch
    turn = 0  # alternates which side runs first
    for shape, tokens, mode, threads, weights in cases:
        suffix = case_suffix(shape, tokens, threads, weights)
        families = [f"BM_Layer_{MODES[mode]}"]
        if f"BM_Naive_{MODES[mode]}/{suffix}" in available:
            families.append(f"BM_Naive_{MODES[mode]}")
        per_family = {f: [] for f in families}
        torch_entries = []
        for _ in range(args.rounds):
            sides = ["ours", "torch"] if turn % 2 == 0 else ["torch", "ours"]
            turn += 1
            for side in sides:
                if side == "ours":
                    log(f"ours  {mode} {suffix}")
                    found, ours_context = run_ours(args, families, shape, tokens, threads, weights)
                    for family in families:
                        if family in found:
                            per_family[family].append(found[family])
                elif torch_available:
                    log(f"torch {mode} {suffix}")
                    entry, context = run_torch_best(args, shape, tokens, mode, threads, weights)
                    if context:
                        torch_context = context
                    if entry is None:
                        log(f"torch skipped: {context.get('skipped', 'no result')}")
                        torch_available = False
                    else:
                        torch_entries.append(entry)

        merged = {f: median_entry(e) for f, e in per_family.items() if e}
        ours = merged.get(f"BM_Layer_{MODES[mode]}")
        naive = merged.get(f"BM_Naive_{MODES[mode]}")
        torch = median_entry(torch_entries) if torch_entries else None
        for entry in list(merged.values()) + ([torch] if torch else []):
            entry = dict(entry)
            if entry.get("run_type") == "aggregate":
                entry["name"] = entry.get("run_name", entry["name"])  # drop the _median suffix
            benchmarks.append(entry)
        row = {
            "shape": shape, "tokens": tokens, "mode": mode, "threads": threads, "weights": weights,
            "ours_ms": ours["real_time"] if ours else None,
            "naive_ms": naive["real_time"] if naive else None,
            "torch_ms": torch["real_time"] if torch else None,
            "torch_threads": torch.get("torch_threads") if torch else None,
            "ours_gflops": ours.get("GFLOPS") if ours else None,
            "naive_gflops": naive.get("GFLOPS") if naive else None,
            "torch_gflops": torch.get("GFLOPS") if torch else None,
            "ours_gbps": ours.get("GBps") if ours else None,
            "torch_gbps": torch.get("GBps") if torch else None,
        }
        row["speedup"] = row["torch_ms"] / row["ours_ms"] if row["torch_ms"] and row["ours_ms"] else None
        rows.append(row)
        log(f"  ours {fmt(row['ours_ms'])} ms, naive {fmt(row['naive_ms'])} ms, torch {fmt(row['torch_ms'])} ms")

    context = dict(ours_context)
    context.update({
        "date": started,
        "cpu_model": cpu_model(),
        "git_commit": git_commit(),
        "bench": os.path.abspath(args.bench),
        "repetitions": args.repetitions,
        "min_time": args.min_time,
        "rounds": args.rounds,
        "torch_best_threads": args.torch_best_threads,
    })
    for key in ("torch_version", "blas_library", "openblas_corename", "OPENBLAS_CORETYPE", "skipped"):
        if key in torch_context:
            context["torch_" + key if not key.startswith("torch") else key] = torch_context[key]
    doc = {"context": context, "benchmarks": benchmarks, "side_by_side": rows}
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    log(f"wrote {args.out}")
    print(f"{context.get('cpu_model')}, {started}, {args.repetitions} repetitions × {args.min_time} s, "
          f"median{'' if args.rounds == 1 else f' of {args.rounds} rounds'}; torch/ours > 1: ours is faster\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
