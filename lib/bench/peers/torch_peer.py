"""PyTorch (and, on a GPU, Cut Cross-Entropy and Liger) as peers of `cutloss bench`.

One contestant on one case per process, on the very inputs lib/bench/data.ts builds (the same
counter hash), so the losses can be compared:

    python3 torch_peer.py probe
    python3 torch_peer.py '{"case": {...}, "variant": "torch", "device": "cuda", "rows": 8192, ...}'

Variants: "torch" (F.cross_entropy on materialized logits), "torch-chunked" (row chunks, each
chunk's logits freed after its backward), "cce" (cut_cross_entropy.linear_cross_entropy),
"liger" (LigerFusedLinearCrossEntropyLoss). Prints `@@RESULT {json}` in the shape of
lib/bench/worker.ts's WorkerResult: the first call's time and peak memory, the median and
range of `runs` more calls (forward alone and forward + backward; CUDA events on a GPU), and on
a GPU an energy window between two readings of nvidia-smi's energy counter.
"""
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np


def fmix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def uniform_values(count, seed, std):
    """lib/bench/data.ts uniformValues, bit for bit."""
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


def probe():
    out = {"python": sys.version.split()[0], "torch": None, "cuda": False, "device": None,
           "cce": None, "liger": None, "reasons": {}}
    try:
        import torch
        out["torch"] = torch.__version__
        out["cuda"] = bool(torch.cuda.is_available())
        if out["cuda"]:
            out["device"] = torch.cuda.get_device_name(0)
        else:
            out["reasons"]["cuda"] = "torch.cuda.is_available() is False"
    except Exception as e:  # noqa: BLE001 - any import failure is a reason
        out["reasons"]["torch"] = f"import torch failed: {e}"
    for key, module in (("cce", "cut_cross_entropy"), ("liger", "liger_kernel")):
        try:
            m = __import__(module)
            out[key] = getattr(m, "__version__", "installed")
        except Exception as e:  # noqa: BLE001
            out["reasons"][key] = f"import {module} failed: {e}"
    print(json.dumps(out), flush=True)


def status():
    with open("/proc/self/status") as f:
        s = f.read()
    field = lambda name: int(s.split(name + ":")[1].split()[0]) * 1024
    return field("VmHWM"), field("VmRSS")


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        return True
    except OSError:
        return False


def smi_number(args):
    try:
        r = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15)
        cell = r.stdout.strip().splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else ""
        return float(cell), None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
        return None, f"nvidia-smi: {e}"


def main():
    import torch
    import torch.nn.functional as F

    spec = json.loads(sys.argv[1])
    c, variant, device = spec["case"], spec["variant"], spec["device"]
    runs, threads, rows = spec["runs"], spec["threads"], spec["rows"]
    N, V, D, kind = rows, c["V"], c["D"], c["kind"]
    cuda = device == "cuda"
    gpu = str(spec.get("gpu", 0))
    torch.set_num_threads(threads)
    # bf16 on the GPU as the case says; on the CPU, torch 1.13's bf16 matmul is not what anyone
    # would use, so f32 (the report's note says so)
    dtype = torch.bfloat16 if (c["dtype"] == "bf16" and cuda) else torch.float32
    labels = torch.from_numpy(label_values(N, V, 3)).to(device)
    notes = []
    if c["dtype"] == "bf16" and not cuda:
        notes.append("bf16 inputs run in f32 on the CPU")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    memory_before = smi_number(["-i", gpu, "--query-gpu=memory.used"])[0] if cuda and spec.get("smi") else None

    if kind != "linear":
        x = torch.from_numpy(uniform_values(N * V, 1, c["std"])).reshape(N, V).to(device=device, dtype=dtype)
        if kind == "softmax":
            fwd = lambda: (torch.softmax(x, -1), None)[1]
            bwd = None
        else:
            x.requires_grad_()

            def fwd():
                x.grad = None
                return F.cross_entropy(x.float(), labels)

            bwd = lambda loss: loss.backward()
        returned = N * V * x.element_size()
    else:
        E = torch.from_numpy(uniform_values(N * D, 1, 1.0)).reshape(N, D).to(device=device, dtype=dtype).requires_grad_()
        W = torch.from_numpy(uniform_values(V * D, 2, c["std"])).reshape(V, D).to(device=device, dtype=dtype).requires_grad_()
        returned = (N + V) * D * E.element_size()
        if variant == "torch":
            def fwd():
                E.grad = None
                W.grad = None
                # logits upcast to fp32 before the loss, as Hugging Face models do
                return F.cross_entropy((E @ W.T).float(), labels)

            bwd = lambda loss: loss.backward()
        elif variant == "torch-chunked":
            chunk = int(spec.get("chunk", 1024))
            notes.append(f"row chunks of {chunk}: each chunk's loss and backward before the next")
            state = {}

            def fwd():
                E.grad = None
                W.grad = None
                state["grad"] = torch.is_grad_enabled()
                if not torch.is_grad_enabled():
                    return sum(F.cross_entropy((E[i : i + chunk] @ W.T).float(), labels[i : i + chunk], reduction="sum")
                               for i in range(0, N, chunk)) / N
                return None

            def bwd(_):
                total = 0.0
                for i in range(0, N, chunk):
                    l = F.cross_entropy((E[i : i + chunk] @ W.T).float(), labels[i : i + chunk], reduction="sum") / N
                    l.backward()
                    total += l.detach()
                return total
        elif variant == "cce":
            from cut_cross_entropy import linear_cross_entropy

            def fwd():
                E.grad = None
                W.grad = None
                return linear_cross_entropy(E, W, labels)

            bwd = lambda loss: loss.backward()
        elif variant == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()

            def fwd():
                E.grad = None
                W.grad = None
                return liger(W, E, labels)

            bwd = lambda loss: loss.backward()
        else:
            raise SystemExit(f"unknown variant {variant}")

    def full_call():
        loss = fwd()
        if bwd is not None:
            out = bwd(loss)
            if loss is None:
                loss = out
        return loss

    def forward_only():
        with torch.no_grad():
            return fwd()

    def clear_grads():
        for t in ([x] if kind != "linear" else [E, W]):
            t.grad = None

    # warm up (kernels, autotuning), then free its gradients so that the measured call allocates its own
    full_call()
    sync()
    if kind != "softmax":
        clear_grads()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        allocated0 = torch.cuda.memory_allocated()
        free0, total0 = torch.cuda.mem_get_info()
    reset = reset_hwm()
    hwm0, _ = status()

    def timed(fn):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            v = fn()
            b.record()
            b.synchronize()
            return v, a.elapsed_time(b)
        t0 = time.perf_counter()
        v = fn()
        return v, (time.perf_counter() - t0) * 1e3

    loss, first_ms = timed(full_call)
    device_report = None
    host_report = None
    if cuda:
        free1, total1 = torch.cuda.mem_get_info()
        device_report = {
            "peakBytes": torch.cuda.max_memory_allocated() - allocated0,
            "peakSource": "torch.cuda.max_memory_allocated",
            "inputBytes": allocated0,
            "before": {"freeBytes": free0, "totalBytes": total0},
            "after": {"freeBytes": free1, "totalBytes": total1},
            "infoSource": "cudaMemGetInfo (torch.cuda.mem_get_info)",
        }
    elif reset and rows == c["N"]:
        hwm1, _ = status()
        host_report = {"growthBytes": hwm1 - hwm0, "returnedBytes": returned, "extraBytes": hwm1 - hwm0 - returned}

    fwd_bwd, fwd_only = [], []
    for _ in range(runs):
        gc.collect()
        fwd_bwd.append(timed(full_call)[1])
        if kind != "softmax":
            fwd_only.append(timed(forward_only)[1])

    window = None
    if cuda and spec.get("energyWindowMs", 0) > 0:
        before, why0 = smi_number(["-i", gpu, "--query-gpu=total_energy_consumption"]) if spec.get("smi") else (None, "nvidia-smi not sampled")
        start_ms = time.time() * 1e3
        t0 = time.perf_counter()
        calls = 0
        while True:
            full_call()
            sync()
            calls += 1
            if (time.perf_counter() - t0) * 1e3 >= spec["energyWindowMs"]:
                break
        window_ms = (time.perf_counter() - t0) * 1e3
        after, why1 = smi_number(["-i", gpu, "--query-gpu=total_energy_consumption"]) if spec.get("smi") else (None, "nvidia-smi not sampled")
        window = {"startMs": start_ms, "windowMs": window_ms, "tokens": calls * N, "counterBeforeMJ": before,
                  "counterAfterMJ": after, "memoryBeforeMiB": memory_before, "counterNote": why0 or why1}

    # a slice of the rows is scaled up to the case's N, as the node worker does
    scale = c["N"] / rows
    if scale != 1:
        notes.append(f"ran {rows} of {c['N']} rows, times scaled by {scale:g}")

    def st(ts):
        return {"medianMs": float(np.median(ts)) * scale, "minMs": min(ts) * scale, "maxMs": max(ts) * scale, "runs": len(ts)} if ts else None

    label = {"torch": "PyTorch", "torch-chunked": "PyTorch, chunked", "cce": "Cut Cross-Entropy", "liger": "Liger"}[variant]
    version = torch.__version__
    if variant == "cce":
        import cut_cross_entropy
        version = f"cut_cross_entropy {getattr(cut_cross_entropy, '__version__', '?')}, torch {torch.__version__}"
    elif variant == "liger":
        import liger_kernel
        version = f"liger_kernel {getattr(liger_kernel, '__version__', '?')}, torch {torch.__version__}"
    if not cuda:
        notes.insert(0, f"{torch.get_num_threads()} threads, BLAS: {blas_info()}")
    result = {
        "case": c["name"],
        "contestant": variant,
        "label": f"{label} ({device})",
        "note": "; ".join([f"torch {version}" if variant.startswith("torch") else version, *notes]),
        "scale": scale,
        "clock": "torch.cuda.Event" if cuda else "host",
        "firstMs": first_ms * scale,
        "fwd": st(fwd_only),
        "fwdBwd": st(fwd_bwd) or st([first_ms]),
        "host": host_report,
        "device": device_report,
        "window": window,
        "loss": float(loss) if loss is not None else None,
    }
    print("@@RESULT " + json.dumps(result), flush=True)


def blas_info():
    import torch

    cfg = torch.__config__.show()
    core = "OPENBLAS_CORETYPE=" + os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    for line in cfg.splitlines():
        if "BLAS_INFO" in line:
            return line.strip().split("BLAS_INFO=")[1].split(",")[0] + " (libblas.so.3), " + core
    return "libblas.so.3, " + core


if __name__ == "__main__":
    if sys.argv[1:] == ["probe"]:
        probe()
    else:
        main()
