"""PyTorch on the CPU as a peer of the cutloss cpu benchmark (bench/cpu/run.ts runs it with
Debian's /usr/bin/python3 and python3-torch). One scenario per process, on the very inputs
bench/cpu/data.ts builds (the same counter hash), so the losses can be compared:

    python3 bench/cpu/torch_peer.py '{"scenario": "S2", "runs": 5, "threads": 2, "rows": 2048}'

Prints `@@RESULT {json}`: the first call's time and peak memory growth (VmHWM reset just
before it, as bench/measure.ts does), then the median of `runs` more calls.
"""
import gc
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

SCENARIOS = {
    "S1": dict(N=4096, V=32000, D=0, std=2.0),
    "S2": dict(N=2048, V=32000, D=512, std=0.05),
    "S2-peaked": dict(N=2048, V=32000, D=512, std=0.884),
    "S3": dict(N=4096, V=32000, D=0, std=2.0),
}


def fmix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def uniform_values(count, seed, std):
    """bench/cpu/data.ts uniformValues, bit for bit."""
    out = np.empty(count, dtype=np.float32)
    a = std * np.sqrt(3.0)
    offset = np.uint32((seed * 0x9E3779B9) & 0xFFFFFFFF)
    step = 1 << 24
    with np.errstate(over="ignore"):
        for start in range(0, count, step):
            i = np.arange(start, min(count, start + step), dtype=np.uint32) + offset
            u = (fmix32(i) >> np.uint32(8)).astype(np.float64) * 2.0**-24
            out[start : start + len(i)] = ((2.0 * u - 1.0) * a).astype(np.float32)
    return out


def label_values(count, V, seed):
    offset = np.uint32((seed * 0x9E3779B9) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        i = np.arange(count, dtype=np.uint32) ^ offset
        return (fmix32(i) % np.uint32(V)).astype(np.int64)


def status():
    with open("/proc/self/status") as f:
        s = f.read()
    field = lambda name: int(s.split(name + ":")[1].split()[0]) * 1024
    return field("VmHWM"), field("VmRSS")


def peak_growth(fn):
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        reset = True
    except OSError:
        reset = False
    hwm0, rss0 = status()
    t0 = time.perf_counter()
    value = fn()
    ms = (time.perf_counter() - t0) * 1e3
    hwm1, _ = status()
    return value, ms, (hwm1 - hwm0 if reset else None), rss0


def main():
    spec = json.loads(sys.argv[1])
    name, runs, threads = spec["scenario"], spec["runs"], spec["threads"]
    s = SCENARIOS[name]
    N, V, D = spec.get("rows", s["N"]), s["V"], s["D"]
    torch.set_num_threads(threads)
    labels = torch.from_numpy(label_values(N, V, 3))
    if D == 0:
        x = torch.from_numpy(uniform_values(N * V, 1, s["std"])).reshape(N, V)
        if name == "S3":
            call = lambda: (torch.softmax(x, -1), None)[1]
            returned = N * V * 4
        else:
            x.requires_grad_()

            def call():
                x.grad = None
                loss = F.cross_entropy(x, labels)
                loss.backward()
                return loss.item()

            returned = N * V * 4
    else:
        E = torch.from_numpy(uniform_values(N * D, 1, 1.0)).reshape(N, D).requires_grad_()
        W = torch.from_numpy(uniform_values(V * D, 2, s["std"])).reshape(V, D).requires_grad_()

        def call():
            E.grad = None
            W.grad = None
            loss = F.cross_entropy(E @ W.T, labels)
            loss.backward()
            return loss.item()

        returned = (N + V) * D * 4

    # warm up on a few rows (operator dispatch, thread pools)
    if D == 0:
        xs = x.detach()[:4].clone().requires_grad_()
        F.cross_entropy(xs, labels[:4]).backward()
        torch.softmax(xs.detach(), -1)
    else:
        es = E.detach()[:4].clone().requires_grad_()
        F.cross_entropy(es @ W.detach().T, labels[:4]).backward()

    loss, first_ms, growth, rss0 = peak_growth(call)
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    result = {
        "label": "PyTorch",
        "scenario": name,
        "firstMs": first_ms,
        "timesMs": times,
        "medianMs": float(np.median(times)) if times else first_ms,
        "growthBytes": growth,
        "rssBeforeBytes": rss0,
        "returnedBytes": returned,
        "loss": loss,
        "note": f"torch {torch.__version__}, {torch.get_num_threads()} threads, BLAS: {blas_info()}",
    }
    print("@@RESULT " + json.dumps(result), flush=True)


def blas_info():
    cfg = torch.__config__.show()
    core = "OPENBLAS_CORETYPE=" + __import__("os").environ.get("OPENBLAS_CORETYPE", "(unset)")
    for line in cfg.splitlines():
        if "BLAS_INFO" in line:
            return line.strip().split("BLAS_INFO=")[1].split(",")[0] + " (libblas.so.3), " + core
    return "libblas.so.3, " + core


if __name__ == "__main__":
    main()
