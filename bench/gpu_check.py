"""GPU check: a random Ettin-1B-shaped reranker in the Ettin layout, padded vs packed, on CUDA.

Sized for a few minutes on one H200. The model is a folder saved by Sentence Transformers in the
layout the Ettin rerankers ship in (headless ModernBERT > Pooling(cls) > Dense(GELU) > LayerNorm
> Dense, ``bench.models.build_ettin``), loaded by the server's own scorer (``HFCrossEncoder``).
For each workload (fixed 128/256/512-token pairs and a mixed one) it runs the same pairs several
ways and prints pairs/s, peak memory and model FLOPs utilisation (MFU: useful FLOPs of the real
tokens / elapsed time / the device's bf16 peak):

* padded: transformers' ModernBERT with SDPA on length-sorted batches padded to their longest
  pair under a 16,384-token budget, the head on each pair's CLS row;
* packed: the server's packed path (``--attention packed``, and ``auto`` on CUDA): every layer
  on the concatenated tokens of a batch (no padding) with PyTorch's own varlen Flash Attention
  (sliding window for the local layers), then the module chain on the packed CLS rows. Batches
  are cut by the sum of lengths under the same budget;
* packed (flash-attn): the same with the ``flash-attn`` package's varlen kernel, when installed
  (``auto`` picks it then), and padded with transformers' own Flash Attention 2 beside it;
* packed, synced per batch: each batch's scores copied to the host before the next is issued,
  as the server does; the gap to packed is what overlapping batches could win.

Before timing, the scorer has checked its packed scores against its padded ones at load (as the
server does); the check is repeated here on mixed pairs and printed. ``--self-check`` runs the
same equivalence on the CPU with the 17M shape and a reference (per-sequence SDPA) attention, so
the packed code path is tested without a GPU.

Two more checks of the server's scorer on a model folder:

* ``--parity MODEL...``: its scores, fp32 and bf16, packed and padded, against
  ``CrossEncoder.predict`` in fp32 on the same device and on the CPU (the correctness anchor);
* ``--oom-check MODEL``: with the process's device memory capped, one batch too large for it
  must split and retry (``HFCrossEncoder.forward``) and give the same scores as small batches.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bench.models import CACHE, ETTIN, MODEL_NAMES, build_ettin, model_path
from rerankd_server.scoring.packed import pack

#: Dense bf16 peak of the devices we expect (FLOP/s); MFU divides by it.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "RTX 3090": 71e12}
BUDGET = 16384
MAX_BATCH = 256
LOCAL_WINDOW, GLOBAL_EVERY = 128, 3  # ModernBERT's attention pattern (bench.models.ettin_config)


def build_scorer(shape: str, device: str, dtype: str, attention: str) -> Any:
    """The server's scorer on a random Ettin-layout reranker of ``shape`` (built once, cached:
    ``dtype`` weights, so a 1B model is written in bf16 for the GPU)."""
    from rerankd_server.scoring.hf import HFCrossEncoder, Placement

    folder = build_ettin(shape, CACHE / f"{shape}-modular-{dtype}", 8000, dtype)
    return HFCrossEncoder(str(folder), Placement(device, dtype, attention))


def scores(scorer: Any, ids: Sequence[list[int]], packed: bool) -> torch.Tensor:
    """Raw scores of ``ids`` on the device (no sync), packed or padded, by the scorer's code."""
    pin = scorer.info.device.startswith("cuda")
    batch = pack(ids, pin=pin) if packed else scorer.collate_padded(list(ids), None)
    result: torch.Tensor = scorer.device_scores(batch)
    return result


def batches(lengths: Sequence[int], packed: bool) -> list[list[int]]:
    """Indices, sorted by length, cut under the budget (padded: longest x count; packed: sum)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = [[]]
    cost = 0
    for i in order:
        n = lengths[i]
        batch = out[-1]
        new_cost = cost + n if packed else n * (len(batch) + 1)
        if batch and (new_cost > BUDGET or len(batch) >= MAX_BATCH):
            out.append(batch := [])
            new_cost = n
        batch.append(i)
        cost = new_cost
    return out


def flops_per_pair(shape: str, length: int) -> float:
    """Useful forward FLOPs of one pair: 2 x matmul params per token, plus attention scores."""
    size = ETTIN[shape]
    hidden = size.hidden
    per_layer_matmul = hidden * 3 * hidden + hidden * hidden + hidden * size.intermediate * 3
    flops = 2.0 * per_layer_matmul * size.layers * length
    for layer in range(size.layers):
        local = layer % GLOBAL_EVERY != 0
        ctx = min(length, LOCAL_WINDOW + 1) if local else length
        flops += 4.0 * length * ctx * hidden  # QK^T and AV
    return float(flops)


def run_one(
    scorer: Any, shape: str, ids: list[list[int]], packed: bool, sync: bool = False
) -> tuple[float, float, float]:
    """(pairs/s, peak GiB, achieved FLOP/s) for the whole list, after one warm-up batch.
    ``sync`` copies each batch's scores to the host before the next batch is issued, as the
    server's ``HFCrossEncoder.forward`` does: the gap to the unsynced rate is what overlapping
    one batch's kernel launches with the previous batch's work could win."""
    plan = batches([len(r) for r in ids], packed)

    def step(batch: list[int]) -> None:
        out = scores(scorer, [ids[i] for i in batch], packed)
        if sync:
            out.cpu()

    step(plan[-1])  # warm-up at the largest shape
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in plan:
        step(batch)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30
    useful = sum(flops_per_pair(shape, len(r)) for r in ids)
    return len(ids) / wall, peak, useful / wall


def workload(kind: str, count: int, rng: random.Random) -> list[list[int]]:
    """Random token ids (the values do not change the compute), CLS first."""
    if kind == "mixed":
        lengths = [
            int(min(2048, max(30, rng.lognormvariate(math.log(200), 0.9)))) for _ in range(count)
        ]
    else:
        lengths = [int(kind)] * count
    return [[2] + [rng.randrange(5, 1500) for _ in range(n - 1)] for n in lengths]


def self_check() -> int:
    """Packed (reference attention) vs padded scores on the CPU, fp32, Ettin-17M shape and
    layout, through the server's scorer."""
    scorer = build_scorer("ettin-17m", "cpu", "float32", "packed")
    if scorer.info.padded:
        print("self-check: the scorer refused packed execution (see the warning above)")
        return 1
    rng = random.Random(0)
    ids = [[2] + [rng.randrange(5, 1500) for _ in range(n - 1)] for n in (7, 150, 300, 40, 129)]
    padded = torch.cat([scores(scorer, [row], packed=False) for row in ids])
    packed = scores(scorer, ids, packed=True)
    diff = (padded - packed).abs().max().item()
    print(
        f"self-check (CPU, fp32, ettin-17m shape, {scorer.info.modules}): "
        f"max |padded - packed| = {diff:.2e}"
    )
    return 0 if diff < 1e-4 else 1


def cpu_compare(shape: str, pairs: int) -> int:
    """Padded vs packed on the CPU (fp32), short-workload lengths: what packing would buy there.

    The packed path runs the linear layers on the concatenated tokens (no padding) and the
    attention per sequence (``reference_attention``), so only real tokens are computed.
    """
    scorer = build_scorer(shape, "cpu", "float32", "packed")
    rng = random.Random(0)
    lengths = [int(min(200, max(30, rng.lognormvariate(math.log(80), 0.5)))) for _ in range(pairs)]
    ids = [[2] + [rng.randrange(5, 1500) for _ in range(n - 1)] for n in lengths]
    global BUDGET
    print(f"CPU fp32, {shape}, {pairs} pairs of 30-200 tokens (mean {sum(lengths) / pairs:.0f})")
    print("| mode | budget | pairs/s | padding eff. |\n|---|---|---|---|")
    for mode, budget in (("padded", 4096), ("padded", 1024), ("packed", 4096), ("packed", 1024)):
        BUDGET = budget
        plan = batches(lengths, mode == "packed")
        computed = sum(
            sum(lengths[i] for i in b) if mode == "packed" else max(lengths[i] for i in b) * len(b)
            for b in plan
        )
        start = time.perf_counter()
        for b in plan:
            scores(scorer, [ids[i] for i in b], packed=mode == "packed")
        rate = pairs / (time.perf_counter() - start)
        print(f"| {mode} | {budget} | {rate:,.1f} | {sum(lengths) / computed:.2f} |")
        sys.stdout.flush()
    return 0


def scorer_scores(scorer: Any, pairs: Sequence[tuple[str, str]], batch: int = 64) -> np.ndarray:
    """Activated scores of ``pairs`` through the scorer's tokenize/collate/forward, in order."""
    from rerankd_server.scoring.base import Truncation

    tokens = scorer.tokenize(pairs, Truncation.DEFAULT)
    out = []
    for i in range(0, len(pairs), batch):
        ids = tokens.ids[i : i + batch]
        types = tokens.type_ids[i : i + batch] if tokens.type_ids is not None else None
        out.append(scorer.activate(scorer.forward(scorer.collate(ids, types))))
    return np.concatenate(out).astype(np.float64)


def order_agreement(a: np.ndarray, b: np.ndarray, sizes: Sequence[int]) -> float:
    """Share of same-request document pairs that ``a`` and ``b`` order the same way."""
    agree = total = 0
    start = 0
    for n in sizes:
        x, y = a[start : start + n], b[start : start + n]
        dx, dy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
        upper = np.triu(np.ones((n, n), dtype=bool), 1)
        agree += int((dx == dy)[upper].sum())
        total += int(upper.sum())
        start += n
    return agree / max(1, total)


def parity(models: Sequence[str], device: str) -> int:
    """rerankd's scorer vs ``CrossEncoder.predict`` (fp32) on ``device`` and on the CPU."""
    from sentence_transformers import CrossEncoder

    from bench.workloads import make
    from rerankd_server.scoring.hf import HFCrossEncoder, Placement

    work = make("passages", 8, 0)
    pairs, sizes = work.pairs, [len(r.documents) for r in work.requests]
    failed = 0
    print(f"\nparity on {device}: {len(pairs)} passage pairs in {len(sizes)} requests")
    print(
        "| model | rerankd | attention | max abs diff vs predict here | vs predict on CPU "
        "| score std | same order (pairs) |"
    )
    print("|---|---|---|---|---|---|---|")
    for model in models:
        refs = {}
        for where in dict.fromkeys((device, "cpu")):
            ce = CrossEncoder(model, device=where, model_kwargs={"dtype": torch.float32})
            refs[where] = np.asarray(ce.predict(pairs, batch_size=32), dtype=np.float64)
            del ce
        for dtype, attention in (
            ("float32", "packed"),
            ("float32", "sdpa"),
            ("bfloat16", "packed"),
            ("bfloat16", "sdpa"),
        ):
            scorer = HFCrossEncoder(model, Placement(device, dtype, attention))
            got = scorer_scores(scorer, pairs)
            here, cpu = (float(np.abs(got - refs[w]).max()) for w in (device, "cpu"))
            same = order_agreement(got, refs["cpu"], sizes)
            impl = scorer.info.attention_implementation
            print(
                f"| {model.rstrip('/').split('/')[-1]} | {dtype} {attention} | {impl} "
                f"| {here:.2e} | {cpu:.2e} | {refs['cpu'].std():.3f} | {same:.4f} |"
            )
            sys.stdout.flush()
            # fp32 is the anchor: it must match within float tolerance (on a GPU, TF32 is off
            # by default in PyTorch for matmuls, so this is fp32 reduction-order noise).
            failed += dtype == "float32" and cpu > 1e-3 * (1.0 + float(np.abs(refs["cpu"]).max()))
            del scorer
            if device == "cuda":
                torch.cuda.empty_cache()
    return 1 if failed else 0


def oom_check(model: str, headroom_gib: float = 1.0) -> int:
    """Cap this process's device memory at the model plus ``headroom_gib``; one batch of long
    pairs too large for that must split in halves (HFCrossEncoder.forward) and still score
    the same as batches of 8."""
    import logging

    from bench.workloads import _text, _words
    from rerankd_server.scoring.hf import HFCrossEncoder, resolve_placement

    scorer = HFCrossEncoder(model, resolve_placement("cuda", "bfloat16", "auto"))
    rng, words = random.Random(0), _words()
    pairs = [("a query of a few words", _text(rng, words, 500)) for _ in range(512)]
    small = scorer_scores(scorer, pairs, batch=8)
    splits: list[str] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            splits.append(record.getMessage())

    logging.getLogger("rerankd_server.scoring.hf").addHandler(Count())
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = (torch.cuda.memory_allocated() + headroom_gib * 2**30) / total
    torch.cuda.set_per_process_memory_fraction(cap)
    print(
        f"\nOOM check: {scorer.info.attention_implementation}, memory capped at "
        f"{cap * total / 2**30:.2f} GiB; one batch of {len(pairs)} pairs"
    )
    try:
        big = scorer_scores(scorer, pairs, batch=len(pairs))
    except torch.OutOfMemoryError as exc:
        print(f"FAILED: out of memory was not handled: {exc}")
        return 1
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    diff = float(np.abs(big - small).max())
    halvings = [m for m in splits if "retrying in halves" in m]
    print(
        f"splits: {len(halvings)} ({'; '.join(halvings[:3])}); max |diff| vs batches "
        f"of 8: {diff:.2e}"
    )
    return 0 if halvings and diff < 5e-2 else 1


def model_folder(model: str) -> str:
    """A model folder, or a bench model name (``manpages``, ``ettin-150m``, ...) as the folder
    ``python -m bench run`` serves it from (built once, at its default max length)."""
    return str(model_path(model, 1024)) if model in MODEL_NAMES else model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=tuple(ETTIN), default="ettin-1b")
    parser.add_argument("--pairs", type=int, default=2048, help="pairs per fixed-length workload")
    parser.add_argument("--self-check", action="store_true", help="CPU check of the packed path")
    parser.add_argument("--cpu-compare", action="store_true", help="padded vs packed on CPU")
    parser.add_argument(
        "--parity",
        nargs="+",
        metavar="MODEL",
        help="server scorer vs CrossEncoder.predict (a folder or a bench model name)",
    )
    parser.add_argument(
        "--oom-check", metavar="MODEL", help="out of memory splits the batch (folder or name)"
    )
    args = parser.parse_args(argv)
    if args.parity:
        return parity(
            [model_folder(m) for m in args.parity], "cuda" if torch.cuda.is_available() else "cpu"
        )
    if args.oom_check:
        if not torch.cuda.is_available():
            print("error: --oom-check needs a CUDA device", file=sys.stderr)
            return 2
        return oom_check(model_folder(args.oom_check))
    if args.cpu_compare:
        return cpu_compare("ettin-17m" if args.shape == "ettin-1b" else args.shape, args.pairs)
    if args.self_check:
        return self_check()
    if not torch.cuda.is_available():
        print(
            "error: no CUDA device is visible (torch.cuda.is_available() is False); "
            "bench/gpu_check.sh needs one GPU. Use --self-check to test the packed path on CPU.",
            file=sys.stderr,
        )
        return 2
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), math.nan)
    print(f"device: {name}, torch {torch.__version__}, bf16, shape {args.shape}, budget {BUDGET}")
    kernels = ["packed"]
    if importlib.util.find_spec("flash_attn") is not None:
        kernels.append("flash_attention_2")
    scorers = {kernel: build_scorer(args.shape, "cuda", "bfloat16", kernel) for kernel in kernels}
    first = scorers["packed"]
    print(f"model: {first.info.modules}; bf16 peak assumed {peak / 1e12:.0f} TFLOP/s")
    modes: list[tuple[str, Any, bool, bool]] = [("padded (sdpa)", first, False, False)]
    rng = random.Random(0)
    for kernel, scorer in scorers.items():
        impl = scorer.info.attention_implementation
        if scorer.info.padded:
            print(f"{kernel}: not packed ({impl}); see the warning above")
            continue
        ids = workload("mixed", 16, rng)
        diff = (scores(scorer, ids, False) - scores(scorer, ids, True)).abs().max().item()
        print(f"{impl} vs padded scores, 16 mixed pairs: max |diff| = {diff:.3g} (bf16)")
        if kernel == "flash_attention_2":
            modes.append(("padded (transformers flash_attention_2)", scorer, False, False))
        modes.append((impl, scorer, True, False))
        if kernel == "packed":
            modes.append((f"{impl}, synced per batch", scorer, True, True))
    print("\n| workload | mode | pairs | pairs/s | tokens/s | peak GiB | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("128", "256", "512", "mixed"):
        ids = workload(kind, args.pairs, rng)
        tokens = sum(len(r) for r in ids)
        for mode, scorer, packed, sync in modes:
            try:
                rate, mem, flops = run_one(scorer, args.shape, ids, packed, sync)
            except torch.OutOfMemoryError:
                print(f"| {kind} | {mode} | {len(ids)} | OOM | | | | |")
                torch.cuda.empty_cache()
                continue
            print(
                f"| {kind} | {mode} | {len(ids)} | {rate:,.0f} | {rate * tokens / len(ids):,.0f} "
                f"| {mem:.1f} | {flops / 1e12:.0f} | {flops / peak:.1%} |"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
