#!/usr/bin/env python3
"""PyTorch peer of bench_layer: an HF Mixtral-style sparse MoE block on the reference shapes.

The shapes, token counts and counters are those of benchmarks/README.md, "Shapes and conventions".

Run it with Debian's PyTorch and OpenBLAS's AVX-512 kernels, one BLAS thread per benchmark thread:

    OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS=1 /usr/bin/python3 benchmarks/peers/torch_moe.py \
        --shapes small,mixtral-mini --threads 1 --min-time 0.5 --out torch.json

Needs `apt-get install python3-torch libopenblas0-pthread` (Debian 12: PyTorch 1.13, OpenBLAS 0.3.21;
no pip). Without OpenBLAS, torch's GEMMs run on the reference BLAS (libblas3) at ~3 GFLOP/s: the
context's `blas_library` says which one was loaded, `openblas_corename` which kernels it chose. Without
torch the script says so on stderr and writes an empty benchmark list (exit 0), so scripts can skip it.

OPENBLAS_CORETYPE: OpenBLAS 0.3.21 does not know this machine's CPU (a KVM guest reporting Intel family 6
model 207) and, left alone, picks its generic Prescott (SSE3) kernels; on the Zen 5 of benchmarks/README.md
("Shapes and conventions") it picked Haswell (AVX2). SkylakeX selects the AVX-512 kernels. Measured here
on 2026-11-28 (2 vCPU KVM Intel Xeon), mixtral-mini, T = 1024, forward, 1 thread, OPENBLAS_NUM_THREADS=1,
median of 5 repetitions of 0.5 s, one quiet round while another build used the other core (a later
round with two builds running was 1.3-1.6x slower across the board):
    OPENBLAS_CORETYPE unset (OpenBLAS chose Prescott)  : 1602 ms  ( 28 GFLOP/s)
    OPENBLAS_CORETYPE=Haswell                          :  694 ms  ( 65 GFLOP/s)
    OPENBLAS_CORETYPE=SkylakeX                         :  411 ms  (110 GFLOP/s)
    reference BLAS (libblas3, OpenBLAS not installed)  : mixtral-mini T = 128 took 1959 ms (2.9 GFLOP/s)
OPENBLAS_NUM_THREADS sets the BLAS thread count when the library loads; the script also calls
openblas_set_num_threads(n) for each case, so a --threads list in one process is still right.

The block (HF transformers' MixtralSparseMoeBlock, written out here):
    router   logits = Linear(d_model -> E, no bias)(x); softmax in float32; top-k; renormalise to sum 1
    experts  for each expert that got tokens: gather its tokens (index_select), SwiGLU
             w2(silu(w1 x) * w3 x) with nn.Linear without bias, times the routing weight,
             index_add_ into the output
    shared   deepseek-moe only: 2 shared SwiGLU experts of d_ff 1408 each, applied densely to every
             token and added to the output (like bench_layer). The counters leave them out.

--dtype bfloat16: the block after .to(torch.bfloat16), inputs in bf16 (softmax still in float32, the
routing weights cast back to bf16 before index_add_, as HF does); names gain "/w:bf16" as bench_layer's
bf16 cases, GBps counts 2 bytes per weight. PyTorch's bf16 matmuls use oneDNN (AMX or AVX512-BF16 where
the CPU has them).

Modes: `forward` under torch.inference_mode; `forward_backward`: forward with autograd, then
loss = (y * dy).sum() and loss.backward() into every weight (router included) and x. Gradients
accumulate across iterations (never zeroed), as bench_layer's do.

Timing: time.perf_counter around each iteration. Warm-up, then iterations until --min-time seconds
of timed work (and at least --min-iters); a repetition reports its median per-iteration time, and with
--repetitions R the reported time is the median of the R repetitions' medians.
Like bench_layer: inputs x ~ U(-1, 1) seeded by T, rotating through 4 batches (decode routing varies
between iterations); weights seeded; decode (T <= 16) of a shape larger than the L3 reads a 2 x L3
buffer between iterations, outside the timer, so that the weights come from DRAM (--no-evict: don't).

Output: Google Benchmark's JSON, on stdout or to --out:
    {"context": {...}, "benchmarks": [{"name": "Torch_Forward/<shape>/T:<T>/threads:<n>",
      "real_time": ms, "time_unit": "ms", "GFLOPS": ..., "GBps": ..., "tokens_per_s": ..., ...}]}
Counters follow benchmarks/shapes.hpp: GFLOPS = 2*3*d_model*d_ff per routed (token, expert) pair
computed (x3 for forward_backward), router and shared experts excluded; GBps = distinct routed experts
the batch touched x 3*d_model*d_ff x 4 bytes per second (forward only, as in bench_layer).
"""

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import re
import socket
import statistics
import sys
import time

# name: (d_model, d_ff, num_experts, top_k, num_shared, shared_d_ff) -- benchmarks/shapes.hpp
SHAPES = {
    "small": (512, 1024, 8, 2, 0, 0),
    "mixtral-mini": (1024, 3584, 8, 2, 0, 0),
    "deepseek-moe": (2048, 1408, 64, 6, 2, 1408),
    "mixtral-8x7b": (4096, 14336, 8, 2, 0, 0),
}
TOKENS = (1, 16, 128, 1024)
DECODE_ONLY = {"mixtral-8x7b": (1, 16)}  # forward only, decode token counts (a 5.6 GB layer)
MODES = {"forward": "Torch_Forward", "forward_backward": "Torch_ForwardBackward"}
DECODE_TOKENS = 16  # T <= this is decode
NUM_BATCHES = 4


def expert_params(shape):
    d_model, d_ff = SHAPES[shape][0], SHAPES[shape][1]
    return 3.0 * d_model * d_ff


def cpu_model():
    """The CPU's model name, with its family and model numbers (a VM's name can be as vague as "Intel Xeon")."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def l3_bytes():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        return 256 << 20


def loaded_blas():
    """Paths of the BLAS libraries this process has mapped (torch links libblas.so.3), the real one first.

    Debian's OpenBLAS libblas.so.3 is a thin wrapper around libopenblasp-r<version>.so, which is the one
    that exports openblas_get_corename and friends."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    blas = [p for p in paths if re.search(r"blas|blis|mkl_rt", os.path.basename(p))]
    return sorted(blas, key=lambda p: (not os.path.basename(p).startswith("libopenblas"), p))


class OpenBlas:
    """openblas_get_corename / openblas_set_num_threads of the library torch loaded, if it is OpenBLAS."""

    def __init__(self, paths):
        self.lib = None
        self.path = paths[0] if paths else None
        for path in paths:
            try:
                lib = ctypes.CDLL(path)  # already loaded: the same instance as torch's
                lib.openblas_get_corename.restype = ctypes.c_char_p
                lib.openblas_get_config.restype = ctypes.c_char_p
            except (OSError, AttributeError):
                continue
            self.lib, self.path = lib, path
            break

    def corename(self):
        return self.lib.openblas_get_corename().decode() if self.lib else None

    def config(self):
        return self.lib.openblas_get_config().decode() if self.lib else None

    def set_num_threads(self, n):
        if self.lib:
            self.lib.openblas_set_num_threads(ctypes.c_int(n))


def empty_output(args, context):
    write_json({"context": context, "benchmarks": []}, args.out)


def write_json(doc, out):
    text = json.dumps(doc, indent=2) + "\n"
    if out:
        directory = os.path.dirname(out)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def base_context():
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "host_name": socket.gethostname(),
        "executable": os.path.abspath(__file__),
        "cpu_model": cpu_model(),
        "num_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "library_build_type": "release",
    }


def build_model(torch, shape, seed=1):
    """The MoE block of `shape`, weights ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (nn.Linear's default), seeded."""
    nn = torch.nn
    F = torch.nn.functional
    d_model, d_ff, num_experts, top_k, num_shared, shared_d_ff = SHAPES[shape]
    generator = torch.Generator().manual_seed(seed)

    def linear(fan_in, fan_out):
        # skip_init: no default initialisation to throw away (5.6 GB for mixtral-8x7b); then one seeded fill.
        layer = torch.nn.utils.skip_init(nn.Linear, fan_in, fan_out, bias=False)
        bound = fan_in ** -0.5
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=generator)
        return layer

    class SwiGluExpert(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.w1 = linear(d_model, width)  # gate projection
            self.w3 = linear(d_model, width)  # up projection
            self.w2 = linear(width, d_model)  # down projection

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class SparseMoeBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = linear(d_model, num_experts)
            self.experts = nn.ModuleList(SwiGluExpert(d_ff) for _ in range(num_experts))
            # deepseek-moe: 2 shared experts (d_ff 1408 each), dense over every token, added to the
            # output. Run, as bench_layer runs them, but not counted in GFLOPS/GBps.
            self.shared = nn.ModuleList(SwiGluExpert(shared_d_ff) for _ in range(num_shared))
            self.last_assignments = 0  # (token, expert) pairs computed by the last forward
            self.last_experts_touched = 0  # distinct routed experts with at least one token

        def forward(self, x):  # x [T, d_model] -> y [T, d_model]
            router_logits = self.gate(x)
            routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
            routing_weights, selected_experts = torch.topk(routing_weights, top_k, dim=-1)
            routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
            routing_weights = routing_weights.to(x.dtype)

            y = torch.zeros_like(x)
            # [E, top_k, T]: expert_mask[e, j, t] = 1 when token t's j-th choice is expert e.
            expert_mask = F.one_hot(selected_experts, num_classes=num_experts).permute(2, 1, 0)
            assignments = touched = 0
            for e in range(num_experts):
                idx, top_x = torch.where(expert_mask[e])
                if top_x.numel() == 0:
                    continue
                tokens = x.index_select(0, top_x)
                h = self.experts[e](tokens) * routing_weights[top_x, idx, None]
                y.index_add_(0, top_x, h.to(x.dtype))
                assignments += top_x.numel()
                touched += 1
            for expert in self.shared:
                y = y + expert(x)
            self.last_assignments = assignments
            self.last_experts_touched = touched
            return y

    return SparseMoeBlock()


def cases(args):
    """(shape, T, mode, threads) in shape order, so that one model is built per shape."""
    out = []
    for shape in args.shapes:
        for mode in args.modes:
            if shape in DECODE_ONLY and mode != "forward":
                continue
            for t in args.tokens:
                if shape in DECODE_ONLY and t not in DECODE_ONLY[shape]:
                    continue
                for n in args.threads:
                    name = f"{MODES[mode]}/{shape}/T:{t}/threads:{n}" + ("/w:bf16" if args.dtype == "bfloat16" else "")
                    if args.filter is None or re.search(args.filter, name):
                        out.append((name, shape, t, mode, n))
    return out


def make_inputs(torch, shape, num_tokens, dtype):
    d_model = SHAPES[shape][0]
    generator = torch.Generator().manual_seed(1000 + num_tokens)
    batches = [torch.empty(num_tokens, d_model).uniform_(-1.0, 1.0, generator=generator).to(dtype)
               for _ in range(NUM_BATCHES)]
    d_y = torch.empty(num_tokens, d_model).uniform_(-1.0, 1.0, generator=generator).to(dtype)
    return batches, d_y


def run_case(torch, model, shape, num_tokens, mode, args, evict_buffer):
    dtype = getattr(torch, args.dtype)
    batches, d_y = make_inputs(torch, shape, num_tokens, dtype)
    if mode == "forward":
        def step(x):
            with torch.inference_mode():
                return model(x)
    else:
        for x in batches:
            x.requires_grad_(True)

        def step(x):
            y = model(x)
            loss = (y * d_y).sum()
            loss.backward()  # into every weight and x; .grad accumulates
            return y

    evict = mode == "forward" and num_tokens <= DECODE_TOKENS and evict_buffer is not None
    cpu_seconds = 0.0  # process CPU time (all threads) of the timed steps

    def one(batch):
        nonlocal cpu_seconds
        if evict:
            float(evict_buffer.sum())  # reads 2 x L3, outside the timer
        x = batches[batch % NUM_BATCHES]
        cpu_start = time.process_time()
        start = time.perf_counter()
        step(x)
        elapsed = time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        return elapsed

    # Warm-up: --warmup-iters iterations, more until a fifth of --min-time has passed (4x at most).
    warm_start = time.perf_counter()
    batch = 0
    while True:
        one(batch)
        batch += 1
        if batch >= args.warmup_iters and time.perf_counter() - warm_start >= 0.2 * args.min_time:
            break
        if batch >= 4 * max(1, args.warmup_iters):
            break

    rep_medians, all_times = [], []
    assignments = touched = iterations = 0
    cpu_seconds = 0.0
    for _ in range(args.repetitions):
        times = []
        while sum(times) < args.min_time or len(times) < args.min_iters:
            times.append(one(batch))
            assignments += model.last_assignments
            touched += model.last_experts_touched
            batch += 1
        rep_medians.append(statistics.median(times))
        all_times += times
        iterations += len(times)
    cpu_per_iter = cpu_seconds / iterations

    seconds = statistics.median(rep_medians)
    # Counters are rates over the median time, using the mean work per iteration (routing varies).
    flops = 2.0 * expert_params(shape) * assignments / iterations * (3 if mode == "forward_backward" else 1)
    result = {
        "name": None,
        "run_type": "iteration",
        "repetitions": args.repetitions,
        "threads": 1,
        "iterations": iterations,
        "real_time": seconds * 1e3,
        "cpu_time": cpu_per_iter * 1e3,
        "time_unit": "ms",
        "GFLOPS": flops / seconds * 1e-9,
        "tokens_per_s": num_tokens / seconds,
        "repetition_medians_ms": [t * 1e3 for t in rep_medians],
        "min_ms": min(all_times) * 1e3,
    }
    if mode == "forward":
        bytes_per_weight = 2.0 if args.dtype == "bfloat16" else 4.0
        result["GBps"] = expert_params(shape) * bytes_per_weight * touched / iterations / seconds * 1e-9
    if evict:
        result["cache_evicted"] = True
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda kind: (lambda s: [kind(v) for v in s.split(",") if v])  # noqa: E731
    p.add_argument("--shapes", type=csv(str), default=list(SHAPES), help="comma list (default: all four)")
    p.add_argument("--tokens", type=csv(int), default=list(TOKENS), help="comma list of T (default 1,16,128,1024)")
    p.add_argument("--threads", type=csv(int), default=[1], help="comma list of thread counts (default 1)")
    p.add_argument("--modes", type=csv(str), default=list(MODES), help="forward,forward_backward (default both)")
    p.add_argument("--filter", default=None, help="regex on the benchmark name, like --benchmark_filter")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timed iterations per repetition")
    p.add_argument("--min-iters", type=int, default=3, help="at least this many timed iterations (default 3)")
    p.add_argument("--warmup-iters", type=int, default=2, help="warm-up iterations at least (default 2)")
    p.add_argument("--repetitions", type=int, default=1, help="report the median of this many repetitions")
    p.add_argument("--no-evict", action="store_true", help="don't evict the caches between decode iterations")
    p.add_argument("--list", action="store_true", help="print the selected benchmark names and exit")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the block's weights and activations (default float32)")
    p.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    args = p.parse_args(argv)
    for s in args.shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; known: {', '.join(MODES)}")
    if args.min_iters < 1 or args.repetitions < 1 or any(n < 1 for n in args.threads):
        p.error("--min-iters, --repetitions and --threads must be >= 1")
    return args


def main(argv):
    args = parse_args(argv)
    selected = cases(args)
    if args.list:
        for name, *_ in selected:
            print(name)
        return 0
    context = base_context()
    context["dtype"] = args.dtype
    try:
        import torch
    except ImportError as error:
        print(f"torch_moe.py: PyTorch is not available ({error}); skipping: no benchmarks run. "
              "Install Debian's python3-torch and run with /usr/bin/python3.", file=sys.stderr)
        context["skipped"] = "torch not available"
        empty_output(args, context)
        return 0

    openblas = OpenBlas(loaded_blas())
    blas_path = openblas.path
    context.update({
        "torch_version": torch.__version__,
        "blas_library": blas_path,
        "openblas_corename": openblas.corename(),
        "openblas_config": openblas.config(),
    })
    if openblas.lib is None:
        print(f"torch_moe.py: warning: torch's BLAS is {blas_path}, not OpenBLAS: its GEMMs are the slow "
              "reference ones (apt-get install libopenblas0-pthread)", file=sys.stderr)
    elif not os.environ.get("OPENBLAS_CORETYPE"):
        print(f"torch_moe.py: warning: OPENBLAS_CORETYPE is not set; OpenBLAS chose {openblas.corename()} "
              "(run with OPENBLAS_CORETYPE=SkylakeX for its AVX-512 kernels)", file=sys.stderr)

    evict_bytes = 2 * l3_bytes()
    evict_buffer = None
    results = []
    model, model_shape = None, None
    for name, shape, num_tokens, mode, threads in selected:
        if model_shape != shape:
            model = None  # one shape alive at a time: free the last before building the next
            evict_buffer = None
            gc.collect()
            start = time.perf_counter()
            torch.manual_seed(0)
            model = build_model(torch, shape).to(getattr(torch, args.dtype))
            model_shape = shape
            gb = expert_params(shape) * 4 * SHAPES[shape][2] * 1e-9
            print(f"torch_moe.py: built {shape} ({gb:.2f} GB of routed weights) in "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
            if not args.no_evict and expert_params(shape) * 4 * SHAPES[shape][2] > l3_bytes():
                evict_buffer = torch.ones(evict_bytes // 4)
        model.requires_grad_(mode == "forward_backward")
        torch.set_num_threads(threads)
        openblas.set_num_threads(threads)
        result = run_case(torch, model, shape, num_tokens, mode, args, evict_buffer)
        result["name"] = name
        result["run_name"] = name
        result["torch_threads"] = threads
        results.append(result)
        gbps = f"{result['GBps']:7.2f} GB/s" if "GBps" in result else " " * 12
        print(f"{name:<48} {result['real_time']:10.3f} ms {result['GFLOPS']:8.1f} GFLOP/s {gbps}"
              f"  ({result['iterations']} it)", file=sys.stderr)
    model = None
    gc.collect()
    write_json({"context": context, "benchmarks": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
