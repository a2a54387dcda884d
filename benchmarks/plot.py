#!/usr/bin/env python3
"""GFLOP/s against tokens per batch, one panel per shape, as a hand-written SVG (no matplotlib needed).

    python3 benchmarks/plot.py benchmarks/results/side_by_side.json
    python3 benchmarks/plot.py ours.json torch.json --threads 2 --mode forward_backward --out fb.svg

Reads Google Benchmark JSON files (bench_layer's --benchmark_format=json or --benchmark_out, the JSON
of peers/torch_moe.py, or side_by_side.py's file) and draws, for each shape, one line per implementation
at the chosen thread count:
    ours      BM_Layer_Forward/<shape>/T:<T>/threads:<n>    (BM_Layer_ForwardBackward with --mode)
    naive     BM_Naive_Forward/...                          the per-expert loop, written with Eigen
    dense     BM_DenseGemm/<shape>/T:<T>/threads:<n>        dense GEMMs of the same FLOPs (if present)
    PyTorch   Torch_Forward/...                              peers/torch_moe.py
and, where the inputs have them, the bf16 cases (names ending /w:bf16) of ours and PyTorch as dashed
lines of the same colours,
and a dashed horizontal line at the fp32 FMA peak: the GFLOPS counter of BM_Machine_FmaPeak/threads:<n>
if an input has it, else --peak. Aggregates other than the median are ignored; when several entries
name the same benchmark (several files, repetitions without aggregates) their median is drawn.
The x axis is log2 T from 1 to 1024; the y axis is linear (--log-y for a log scale, which shows decode).
Title: the mode, the thread count, the CPU model and the date from the inputs' "context".
"""

import argparse
import html
import json
import math
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = {"forward": "Forward", "forward_backward": "ForwardBackward"}
# (key, legend label, colour, dash pattern, marker): drawn in this order, the legend too.
SERIES = (
    ("ours", "ours (moe)", "#1f5fbf", None, "circle"),
    ("naive", "naive per-expert loop (Eigen)", "#e07b00", None, "square"),
    ("dense", "dense GEMM, same FLOPs", "#7f7f7f", "2 3", "diamond"),
    ("torch", "PyTorch + OpenBLAS (HF loop)", "#c0282d", None, "triangle"),
    ("ours_bf16", "ours, bf16 weights", "#1f5fbf", "6 3", "circle"),
    ("torch_bf16", "PyTorch bf16 (oneDNN)", "#c0282d", "6 3", "triangle"),
)
NAME = re.compile(r"^(?P<family>[A-Za-z0-9_]+)/(?P<shape>[a-z0-9.-]+)/T:(?P<tokens>\d+)/threads:(?P<threads>\d+)"
                  r"(?P<bf16>/w:bf16)?$")
PEAK = re.compile(r"^BM_Machine_FmaPeak/threads:(?P<threads>\d+)$")


def family_key(family, mode):
    """The series a benchmark family belongs to in `mode`, or None."""
    suffix = MODES[mode]
    families = {f"BM_Layer_{suffix}": "ours", f"BM_Naive_{suffix}": "naive", f"Torch_{suffix}": "torch"}
    if mode == "forward":
        families["BM_DenseGemm"] = "dense"  # the forward's FLOPs as dense GEMMs
    return families.get(family)


def base_name(entry):
    """The benchmark's name without Google Benchmark's /real_time and aggregate suffixes."""
    name = entry.get("run_name") or entry["name"]
    if entry.get("run_type") == "aggregate" and name == entry["name"]:
        name = re.sub(r"_(mean|median|stddev|cv)$", "", name)
    for suffix in ("/real_time", "/process_time", "/manual_time"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def load(paths, mode, threads):
    """{series: {shape: {T: [GFLOPS, ...]}}}, [peak GFLOPS], [contexts]."""
    data, peaks, contexts = {}, [], []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        contexts.append(doc.get("context", {}))
        entries = doc.get("benchmarks", [])
        # A file with repetitions but without --benchmark_report_aggregates_only has both the runs and
        # their median: use the median alone.
        has_median = {base_name(e) for e in entries
                      if e.get("run_type") == "aggregate" and e.get("aggregate_name") == "median"}
        for entry in entries:
            if entry.get("run_type") == "aggregate":
                if entry.get("aggregate_name") != "median":
                    continue
            elif base_name(entry) in has_median:
                continue
            if entry.get("error_occurred") or "GFLOPS" not in entry:
                continue
            name = base_name(entry)
            peak = PEAK.match(name)
            if peak:
                if int(peak["threads"]) == threads:
                    peaks.append(float(entry["GFLOPS"]))
                continue
            match = NAME.match(name)
            if not match or int(match["threads"]) != threads:
                continue
            key = family_key(match["family"], mode)
            if key is None or (match["bf16"] and key not in ("ours", "torch")):
                continue
            if match["bf16"]:
                key += "_bf16"
            data.setdefault(key, {}).setdefault(match["shape"], {}).setdefault(int(match["tokens"]), []).append(
                float(entry["GFLOPS"]))
    return data, peaks, contexts


def nice_ceiling(value, steps=(1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)):
    """The smallest step x 10^k that is >= value."""
    if value <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    for step in steps:
        if step * base >= value * (1 - 1e-9):
            return step * base
    return 10 * base


def linear_ticks(top):
    step = nice_ceiling(top / 6, steps=(1, 2, 2.5, 5))
    ticks, value = [], 0.0
    while value <= top * (1 + 1e-9):
        ticks.append(value)
        value += step
    return ticks


def fmt_number(value):
    return f"{value:g}" if value < 1e4 else f"{value:.0f}"


def marker(shape, x, y, colour):
    r = 3.5
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" fill="{colour}"/>'
    if shape == "diamond":
        return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},{y + r + 1:.1f} '
                f'{x - r - 1:.1f},{y:.1f}" fill="{colour}"/>')
    if shape == "triangle":
        return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y + r:.1f} {x - r - 1:.1f},{y + r:.1f}" '
                f'fill="{colour}"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}"/>'


def title_text(contexts, mode, threads):
    cpu = next((c["cpu_model"] for c in contexts if c.get("cpu_model")), None)
    if cpu is None:
        c = contexts[0] if contexts else {}
        parts = [c.get("host_name")]
        if c.get("num_cpus"):
            parts.append(f"{c['num_cpus']} CPUs")
        if c.get("mhz_per_cpu"):
            parts.append(f"{c['mhz_per_cpu']} MHz")
        cpu = ", ".join(p for p in parts if p) or "unknown machine"
    dates = sorted(c["date"][:10] for c in contexts if c.get("date"))
    date = dates[0] if dates else "undated"
    if dates and dates[-1] != dates[0]:
        date += f" to {dates[-1]}"
    what = "forward" if mode == "forward" else "forward + backward"
    return f"MoE layer {what}, fp32, threads:{threads} — {cpu}, {date}"


def render(data, peak, shapes, mode, title, log_y):
    panel_w, panel_h = 300, 250
    left, gap, right, bottom = 70, 40, 20, 56
    width = left + len(shapes) * panel_w + (len(shapes) - 1) * gap + right

    # Legend under the title: the series that have data, then the peak; wrapped into rows.
    items = [(label, colour, dash, mark) for key, label, colour, dash, mark in SERIES if key in data]
    if peak:
        items.append((f"fp32 FMA peak ({peak:.0f} GFLOP/s)", "#2a9d3a", "6 4", None))
    # Title: one line, or two split at the dash when it would not fit (~8.5 px a bold character).
    title_lines = [title]
    if 8.5 * len(title) > width - 20 and " — " in title:
        title_lines = title.split(" — ", 1)
    legend, x, y = [], left, 50 + 18 * (len(title_lines) - 1)
    for item in items:
        item_w = 34 + 7 * len(item[0]) + 20  # line, gap, text at ~7 px a character, space
        if x > left and x + item_w > width - right:
            x, y = left, y + 20
        legend.append((x, y) + item)
        x += item_w
    top = y + 46
    height = top + panel_h + bottom
    values = [v for series in data.values() for shape in shapes for vs in series.get(shape, {}).values() for v in vs]
    highest = max(values + ([peak] if peak else []), default=1.0)
    if log_y:
        positive = [v for v in values if v > 0] or [1.0]
        y_lo = 10 ** math.floor(math.log10(min(positive)))
        y_hi = 10 ** math.ceil(math.log10(highest * 1.05))
        ticks = [10 ** e for e in range(round(math.log10(y_lo)), round(math.log10(y_hi)) + 1)]
    else:
        y_lo, y_hi = 0.0, nice_ceiling(highest * 1.08)
        ticks = linear_ticks(y_hi)

    def y_of(value):
        if log_y:
            frac = (math.log10(max(value, y_lo)) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        else:
            frac = (value - y_lo) / (y_hi - y_lo)
        return top + panel_h * (1 - frac)

    def x_of(panel, tokens):
        return left + panel * (panel_w + gap) + panel_w * math.log2(tokens) / 10  # T = 1 .. 1024

    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2:.0f}" y="24" text-anchor="middle" font-size="15" font-weight="bold">'
           f'{html.escape(title_lines[0])}</text>']
    if len(title_lines) > 1:
        out.append(f'<text x="{width / 2:.0f}" y="42" text-anchor="middle" font-size="13">'
                   f'{html.escape(title_lines[1])}</text>')

    for x, y, label, colour, dash, mark in legend:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 28}" y2="{y}" stroke="{colour}" stroke-width="2"{dash_attr}/>')
        if mark:
            out.append(marker(mark, x + 14, y, colour))
        out.append(f'<text x="{x + 34}" y="{y + 4}">{html.escape(label)}</text>')

    for panel, shape in enumerate(shapes):
        x0, x1 = x_of(panel, 1), x_of(panel, 1024)
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{top - 10}" text-anchor="middle" font-size="13" '
                   f'font-weight="bold">{html.escape(shape)}</text>')
        out.append(f'<rect x="{x0:.1f}" y="{top}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#444"/>')
        for tick in ticks:
            y = y_of(tick)
            out.append(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
            if panel == 0:
                out.append(f'<text x="{x0 - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{fmt_number(tick)}</text>')
        for exponent in range(0, 11):
            tokens = 2 ** exponent
            x = x_of(panel, tokens)
            out.append(f'<line x1="{x:.1f}" y1="{top + panel_h}" x2="{x:.1f}" y2="{top + panel_h + 4}" stroke="#444"/>')
            if exponent % 2 == 0:  # label 1, 4, 16, 64, 256, 1024
                out.append(f'<text x="{x:.1f}" y="{top + panel_h + 17}" text-anchor="middle">{tokens}</text>')
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{top + panel_h + 38}" text-anchor="middle">'
                   f'tokens per batch T (log scale)</text>')
        if peak:
            y = y_of(peak)
            out.append(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="#2a9d3a" '
                       f'stroke-width="1.5" stroke-dasharray="6 4"/>')
        for key, label, colour, dash, mark in SERIES:
            points = data.get(key, {}).get(shape)
            if not points:
                continue
            xy = [(x_of(panel, t), y_of(statistics.median(points[t]))) for t in sorted(points)]
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in xy)}" fill="none" '
                       f'stroke="{colour}" stroke-width="2"{dash_attr}/>')
            for (x, y), t in zip(xy, sorted(points)):
                value = statistics.median(points[t])
                out.append(f'<g>{marker(mark, x, y, colour)}<title>{html.escape(label)}, T = {t}: '
                           f'{value:.1f} GFLOP/s</title></g>')
        if not any(data.get(key, {}).get(shape) for key, *_ in SERIES):
            out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{top + panel_h * 0.6:.1f}" text-anchor="middle" '
                       f'fill="#888">no data</text>')
    mid_y = top + panel_h / 2
    out.append(f'<text x="18" y="{mid_y:.1f}" text-anchor="middle" transform="rotate(-90 18 {mid_y:.1f})">'
               f'GFLOP/s (routed experts{", ×3 fwd+bwd" if mode != "forward" else ""})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="Google Benchmark JSON files (ours, torch, side_by_side.json)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "gflops_vs_tokens.svg"))
    p.add_argument("--threads", type=int, default=1, help="thread count to draw (default 1)")
    p.add_argument("--mode", choices=list(MODES), default="forward")
    p.add_argument("--shapes", default="small,mixtral-mini,deepseek-moe", help="comma list: one panel each")
    p.add_argument("--peak", type=float, default=None,
                   help="FMA peak GFLOP/s, when no input has BM_Machine_FmaPeak/threads:<n>")
    p.add_argument("--log-y", action="store_true", help="log-scale GFLOP/s axis")
    p.add_argument("--title", default=None, help="replace the generated title")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    data, peaks, contexts = load(args.inputs, args.mode, args.threads)
    peak = statistics.median(peaks) if peaks else args.peak
    if not data:
        print(f"plot.py: no {args.mode} GFLOPS at threads:{args.threads} in {', '.join(args.inputs)}",
              file=sys.stderr)
        return 1
    title = args.title or title_text(contexts, args.mode, args.threads)
    svg = render(data, peak, shapes, args.mode, title, args.log_y)
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(svg)
    drawn = ", ".join(f"{key} ({sum(len(v) for v in data[key].values())} points)" for key, *_ in SERIES if key in data)
    print(f"plot.py: wrote {args.out}: {drawn}; peak {peak if peak else 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
