"""``python -m bench run``: run one scenario and print its figures side by side.

Everything in one table was measured in the same run on the same pairs, and the ratio columns
divide by peers of that run, so a faster or slower machine shifts the absolute columns but not
the ratios. See docs/benchmarks.md for the scenarios and how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.load import LoadResult, closed_loop, open_loop
from bench.models import ETTIN, MODEL_NAMES, model_path
from bench.serving import (
    FloorProcess,
    InfinityProcess,
    RerankdProcess,
    ScorerSpec,
    ServerStats,
    infinity_problem,
)
from bench.workloads import SHAPES, Request, Workload, make

SCENARIOS = (*SHAPES, "manpages", "grpc", "simgpu", "sweep", "tokenize")


@dataclass
class Row:
    """One line of the printed table."""

    system: str
    pairs_per_s: float
    tokens_per_s: float
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    padding: float = math.nan
    busy: float = math.nan
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def _peer_row(system: str, peer: Any, note: str) -> Row:
    """A row for an in-process peer (``bench.peers.PeerResult``); latency columns when it has
    per-call latencies (the p99 column then holds the slowest call)."""
    lat = peer.latencies
    return Row(
        system,
        peer.pairs_per_s,
        peer.tokens_per_s,
        statistics.median(lat) * 1e3 if lat else math.nan,
        max(lat) * 1e3 if lat else math.nan,
        peer.padding_efficiency,
        note=note,
    )


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def print_table(title: str, rows: Sequence[Row], per_query: float, ceiling: float) -> None:
    """A Markdown table: absolute figures, then ratios to the same run's peers."""
    print(f"\n### {title}\n")
    head = (
        "| system | pairs/s | tokens/s | x per-query predict | x ceiling | p50 ms | p99 ms "
        "| padding eff. | model busy | note |"
    )
    print(head)
    print("|" + "---|" * 10)
    for r in rows:
        print(
            f"| {r.system} | {_fmt(r.pairs_per_s, 1)} | {_fmt(r.tokens_per_s)} "
            f"| {_fmt(r.pairs_per_s / per_query, 2)} | {_fmt(r.pairs_per_s / ceiling, 2)} "
            f"| {_fmt(r.p50_ms, 1)} | {_fmt(r.p99_ms, 1)} | {_fmt(r.padding, 2)} "
            f"| {_fmt(r.busy, 2)} | {r.note} |"
        )
    sys.stdout.flush()


def _row(name: str, res: LoadResult, stats: ServerStats | None = None, note: str = "") -> Row:
    failed = f"{res.failed} failed; " if res.failed else ""
    if stats and stats.batches:
        shape = f"{stats.batches} batches of {stats.computed_tokens / stats.batches:,.0f} tokens"
        note = f"{note}; {shape}" if note else shape
    return Row(
        name,
        res.pairs_per_s,
        res.tokens_per_s,
        res.quantile(0.5) * 1e3,
        res.quantile(0.99) * 1e3,
        stats.padding_efficiency if stats else math.nan,
        stats.busy_s / res.wall_s if stats else math.nan,
        failed + note,
    )


def _tokens(model: str, workload: Workload) -> list[list[int]]:
    """Pair lengths in tokens as rerankd's scorer counts them (truncated at max length)."""
    from rerankd_server.scoring.base import Truncation
    from rerankd_server.scoring.hf import HFCrossEncoder, Placement

    scorer = HFCrossEncoder(model, Placement("cpu", "float32", "sdpa"))
    return [
        scorer.tokenize([(r.query, d) for d in r.documents], Truncation.DEFAULT).lengths()
        for r in workload.requests
    ]


def _cycle(requests: Sequence[Request], tokens: Sequence[int], count: int) -> tuple[Any, Any]:
    reqs = [requests[i % len(requests)] for i in range(count)]
    toks = [tokens[i % len(tokens)] for i in range(count)]
    return reqs, toks


async def _warm(target: Any, requests: Sequence[Request]) -> None:
    await target.open(1)
    for req in requests[:2]:
        await target.send(0, req.query, req.documents, None)
    await target.close()


def _loadavg() -> str:
    """Other work on the machine blurs absolute figures; the table states how much there was."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def describe_machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads)"
    )


def _server_settings(args: argparse.Namespace, model: str, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "model": model,
        "device": args.device,
        "dtype": args.dtype,
        "max_batch_tokens": args.max_batch_tokens,
        "lookahead_pairs": args.lookahead,
        "lookahead_batches": args.reach,
        "max_batch_size": args.max_batch_size,
        "tokenizer_threads": args.tokenizer_threads,
        "warmup": True,
        "max_documents": 1000,
    }
    settings.update(overrides)
    return settings


async def _measure_rerankd(
    proc: RerankdProcess,
    requests: Sequence[Request],
    tokens: Sequence[int],
    concurrency: int,
    timeouts: Sequence[float | None] | None = None,
) -> tuple[LoadResult, ServerStats]:
    await _warm(proc, requests)
    before = proc.stats()
    res = await closed_loop(proc, requests, tokens, concurrency, timeouts)
    return res, proc.stats().minus(before)


def scenario_serving(args: argparse.Namespace) -> None:
    """Peers and rerankd on one workload: throughput, latency, padding, serving efficiency."""
    model = str(model_path(args.model, args.max_length))
    workload = make(args.scenario, args.requests, args.seed)
    lengths = _tokens(model, workload)
    flat = [n for lens in lengths for n in lens]
    per_request_tokens = [sum(lens) for lens in lengths]
    print(
        f"\nworkload {workload.name}: {len(workload.requests)} requests, {len(flat)} pairs, "
        f"{statistics.mean(flat):.0f} tokens/pair on average ({min(flat)}-{max(flat)}); "
        f"model {args.model} ({model}), {args.dtype}; clients {args.concurrency}"
    )
    from bench.peers import (
        direct_batched,
        direct_per_request,
        load_cross_encoder,
        predict_per_query,
        predict_whole,
    )
    from rerankd_server.app import default_batch_tokens

    device = args.device
    ce = load_cross_encoder(model, args.dtype, device)
    per_query = predict_per_query(ce, workload, lengths)
    # The ceiling is a best case: take the faster of two tries of each offline peer.
    whole = max(
        (predict_whole(ce, workload, lengths) for _ in range(2)), key=lambda r: r.pairs_per_s
    )
    del ce
    budget = max(args.max_batch_tokens or default_batch_tokens(device), max(flat))
    direct = max(
        (direct_batched(model, args.dtype, workload, budget, device=device) for _ in range(2)),
        key=lambda r: r.pairs_per_s,
    )
    ceiling = max(whole.pairs_per_s, direct.pairs_per_s)
    alone = direct_per_request(model, args.dtype, workload, budget, device=device)
    rows = [
        _peer_row(
            "CrossEncoder.predict per query",
            per_query,
            "sequential, batch_size 32; latency = service time",
        ),
        _peer_row("CrossEncoder.predict whole workload", whole, "offline, batch_size 32"),
        _peer_row(
            "direct token-budget batches",
            direct,
            f"offline, rerankd scorer, sorted, budget {budget}",
        ),
        _peer_row(
            "direct token-budget batches, one call at a time",
            alone,
            "offline; latency = the call's own tokenization and forward",
        ),
    ]
    on = RerankdProcess(_server_settings(args, model)).start()
    try:
        closed, stats = asyncio.run(
            _measure_rerankd(on, workload.requests, per_request_tokens, args.concurrency)
        )
        rows.append(
            _row(
                f"rerankd, {args.concurrency} clients",
                closed,
                stats,
                "x ceiling here = serving efficiency",
            )
        )
        capacity_rps = len(closed.latencies) / closed.wall_s
        # Low load: one call at a time, each against its own offline forward (same order).
        before = on.stats()
        single = asyncio.run(closed_loop(on, workload.requests, per_request_tokens, 1))
        ratios = [got / own for got, own in zip(single.latencies, alone.latencies, strict=True)]
        rows.append(
            _row(
                "rerankd, one call at a time",
                single,
                on.stats().minus(before),
                f"latency / the call's offline forward: p50 {statistics.median(ratios):.2f}, "
                f"max {max(ratios):.2f}",
            )
        )
        open_reqs, open_toks = _cycle(
            workload.requests, per_request_tokens, args.open_requests or 2 * args.requests
        )
        open_results: dict[float, Row] = {}
        for load in (0.5, 0.8):
            before = on.stats()
            res = asyncio.run(
                open_loop(on, open_reqs, open_toks, load * capacity_rps, seed=args.seed)
            )
            open_results[load] = _row(
                f"rerankd, Poisson {load:.0%} of capacity",
                res,
                on.stats().minus(before),
                f"{res.offered_rps:.2f} req/s offered",
            )
            rows.append(open_results[load])
        # Cancelled work: half the calls get a deadline of half the median closed-loop latency.
        cut = closed.quantile(0.5) / 2
        timeouts = [cut if i % 2 else None for i in range(len(workload.requests))]
        cres, cstats = asyncio.run(
            _measure_rerankd(on, workload.requests, per_request_tokens, args.concurrency, timeouts)
        )
        completed = cres.pairs
        wasted_pairs = max(0, cstats.pairs_scored - completed)
        wasted_s = cstats.busy_s * wasted_pairs / max(1, cstats.pairs_scored)
        rows.append(
            _row(
                f"rerankd, half the calls with a {cut * 1e3:.0f} ms deadline",
                cres,
                cstats,
                f"cancelled work: {wasted_pairs} pairs, {wasted_s:.2f} s "
                f"= {wasted_s / max(cstats.busy_s, 1e-9):.1%} of model time; "
                f"{cstats.pairs_expired + cstats.pairs_cancelled} pairs skipped",
            )
        )
    finally:
        on.stop()
    off = RerankdProcess(_server_settings(args, model, cross_request_batching=False)).start()
    try:
        res, stats = asyncio.run(
            _measure_rerankd(off, workload.requests, per_request_tokens, args.concurrency)
        )
        name = f"rerankd, no cross-request batching, {args.concurrency} clients"
        rows.append(_row(name, res, stats))
    finally:
        off.stop()
    problem = None if args.infinity else "--no-infinity given"
    problem = problem or infinity_problem()
    if problem is None:
        try:
            inf = InfinityProcess(
                model, batch_size=32, dtype=args.dtype, device=args.device
            ).start()
        except RuntimeError as exc:
            problem = f"infinity-emb failed to start: {str(exc)[-300:]}"
        else:
            try:
                asyncio.run(_warm(inf, workload.requests))
                res = asyncio.run(
                    closed_loop(inf, workload.requests, per_request_tokens, args.concurrency)
                )
                rows.append(_row(f"infinity-emb /rerank, {args.concurrency} clients", res))
                for load in (0.5, 0.8):
                    rate = load * capacity_rps
                    res = asyncio.run(open_loop(inf, open_reqs, open_toks, rate, seed=args.seed))
                    rows.append(
                        _row(
                            f"infinity-emb, Poisson at rerankd's {load:.0%}",
                            res,
                            note=f"{rate:.2f} req/s offered",
                        )
                    )
            finally:
                inf.stop()
    if problem is not None:
        rows.append(Row("infinity-emb /rerank", math.nan, math.nan, note=f"SKIPPED: {problem}"))
    # Measure the ceiling again at the end: a change in machine load during the run shows here,
    # and the ratios use the better of the two.
    again = direct_batched(model, args.dtype, workload, budget, device=device)
    rows.append(
        _peer_row(
            "direct token-budget batches, again at the end",
            again,
            "drift check: differs from the first when the machine's load changed",
        )
    )
    ceiling = max(ceiling, again.pairs_per_s)
    print_table(
        f"{workload.name} on {args.model} ({args.dtype})", rows, per_query.pairs_per_s, ceiling
    )
    print(
        f"\nceiling = max(whole-workload predict, direct batches) = {ceiling:.1f} pairs/s; "
        f"rerankd serving efficiency {closed.pairs_per_s / ceiling:.2f}, "
        f"{closed.pairs_per_s / whole.pairs_per_s:.2f}x whole-workload predict, "
        f"{closed.pairs_per_s / per_query.pairs_per_s:.2f}x per-query predict"
    )


def _us_per_call(rounds: Sequence[ServerStats], field: str, calls: int) -> float:
    """The median round's CPU seconds ``field`` (a ``ServerStats`` one), in µs per call."""
    return float(statistics.median(getattr(stats, field) for stats in rounds)) / calls * 1e6


def scenario_grpc(args: argparse.Namespace) -> None:
    """rerankd's own path (gRPC + servicer + scheduler, a no-op scorer) against the raw gRPC
    floor (a bare grpc.aio servicer of the same ``.proto``, on asyncio's own event loop), both
    in a child process and called by the same client; rounds alternate between them and
    medians are compared, with the spread of each round's own ratio beside them. rerankd runs
    on the loop ``--event-loop auto`` picks (uvloop where installed), so the floor also runs on
    uvloop, as a column of its own. ``--layers`` adds rerankd without its scheduler (zero
    scores at once), which splits the path's cost into gRPC with the servicer and the
    scheduler."""
    from rerankd_server.app import loop_factory

    settings = _server_settings(args, "noop", max_batch_tokens=65536, max_batch_size=1024)
    proc = RerankdProcess(settings, ScorerSpec("noop")).start()
    floor = FloorProcess({}).start()
    servers = {"floor": floor, "rerankd": proc}
    if loop_factory("auto") is not None:  # rerankd runs on uvloop
        servers["floor on uvloop"] = FloorProcess({}, event_loop="uvloop").start()
    if args.layers:
        servers["no scheduler"] = RerankdProcess(
            settings, ScorerSpec("noop", no_scheduler=True)
        ).start()
    rows = []
    try:
        for docs, concurrency in ((1, 1), (1, 8), (1, 32), (100, 8)):
            reqs = [Request("q", ["d"] * docs)] * args.calls
            toks = [docs] * len(reqs)
            runs: dict[str, list[LoadResult]] = {name: [] for name in servers}
            costs: dict[str, list[ServerStats]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    res, stats = asyncio.run(_measure_rerankd(server, reqs, toks, concurrency))
                    runs[name].append(res)
                    costs[name].append(stats)
            batches = sum(stats.batches for stats in costs["rerankd"])
            rounds = {
                name: [len(r.latencies) / r.wall_s for r in results]
                for name, results in runs.items()
            }
            rate = {name: statistics.median(rates) for name, rates in rounds.items()}
            # Each round's ratio to the floor served just before it: the spread says how far
            # one run's ratio can be trusted on a machine this noisy.
            pairs = zip(rounds["rerankd"], rounds["floor"], strict=True)
            paired = [ours / floor for ours, floor in pairs]
            p50 = {
                name: statistics.median(r.quantile(0.5) for r in results) * 1e6
                for name, results in runs.items()
            }
            p99 = statistics.median(r.quantile(0.99) for r in runs["rerankd"]) * 1e6
            failed = sum(r.failed for results in runs.values() for r in results)
            on_uvloop = rate.get("floor on uvloop")
            uv = f"{rate['rerankd'] / on_uvloop:.2f}" if on_uvloop else "-"
            layer = f"| {rate['no scheduler'] / rate['floor']:.2f} " if args.layers else ""
            floor_cpu, ours = costs["floor"], costs["rerankd"]
            cpu = (
                f"{_us_per_call(floor_cpu, 'cpu_s', args.calls):,.0f} / "
                f"{_us_per_call(ours, 'cpu_s', args.calls):,.0f} "
                f"({_us_per_call(ours, 'loop_cpu_s', args.calls):,.0f}, "
                f"{_us_per_call(ours, 'loop_kernel_cpu_s', args.calls):,.0f})"
            )
            rows.append(
                f"| {docs} | {concurrency} | {rate['floor']:,.0f} | {rate['rerankd']:,.0f} "
                f"| {rate['rerankd'] / rate['floor']:.2f} | {min(paired):.2f}-{max(paired):.2f} "
                f"| {uv} | {1e6 / rate['rerankd']:,.0f} "
                f"| {p50['floor']:,.0f} | {p50['rerankd']:,.0f} | {p99:,.0f} "
                f"| {batches / args.rounds:,.0f} | {cpu} | {failed} {layer}|"
            )
            sys.stdout.flush()
    finally:
        for server in servers.values():
            server.stop()
    print(
        f"\n### rerankd's path against the raw gRPC floor, no-op scorer "
        f"({args.calls} calls per row, median of {args.rounds} alternating rounds)\n"
    )
    print(
        "| docs/call | clients | floor calls/s | rerankd calls/s | x floor "
        "| x floor, rounds' spread | x floor on uvloop | rerankd us/call "
        "| floor p50 us | rerankd p50 us | rerankd p99 us | batches "
        "| server CPU us/call: floor / rerankd (its event loop, of that in the kernel) | failed |"
        + (" x floor without the scheduler |" if args.layers else "")
    )
    print("|---" * 14 + "|" + ("---|" if args.layers else ""))
    print("\n".join(rows))


def scenario_tokenize(args: argparse.Namespace) -> None:
    """Host-side tokenization of every workload, per request as a server meets it, three
    ways timed alternately: the tokenizer call ``CrossEncoder.predict`` makes (batches of
    32, padded tensors), the tokenizers library's ``encode_batch`` (offsets tracked), and
    rerankd's scorer (offsets only for clipped texts). Pairs/s and the ratio to the first."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from rerankd_server.scoring.base import Truncation
    from rerankd_server.scoring.hf import HFCrossEncoder, resolve_placement
    from rerankd_server.scoring.packed import pack

    model = model_path(args.model, args.max_length)
    scorer = HFCrossEncoder(str(model), resolve_placement("cpu", "float32", "sdpa"))
    max_len = scorer.info.max_input_tokens
    reference = AutoTokenizer.from_pretrained(str(model))
    backend = Tokenizer.from_file(str(model / "tokenizer.json"))
    backend.enable_truncation(max_len)

    def predict_call(query: str, docs: list[str]) -> None:
        for i in range(0, len(docs), 32):
            chunk = docs[i : i + 32]
            reference(
                [query] * len(chunk),
                chunk,
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )

    def collated(query: str, docs: list[str], collate: Any) -> None:
        tokens = scorer.tokenize([(query, t) for t in docs], Truncation.END)
        collate(tokens.ids, tokens.type_ids)

    ways = {
        "CrossEncoder.predict's tokenizer call": predict_call,
        "tokenizers encode_batch": lambda q, d: backend.encode_batch([(q, t) for t in d]),
        "rerankd scorer.tokenize": lambda q, d: scorer.tokenize(
            [(q, t) for t in d], Truncation.END
        ),
        # With the model's input made from the ids, as CrossEncoder's call makes tensors:
        # padded as on the CPU, packed as a ModernBERT on CUDA runs (without pinned memory).
        "rerankd tokenize + padded batch": lambda q, d: collated(q, d, scorer.collate_padded),
        "rerankd tokenize + packed batch": lambda q, d: collated(
            q, d, lambda ids, _: pack(ids, pin=False)
        ),
    }
    print(f"\ntokenization on {args.model} (max {max_len} tokens), {args.requests} requests")
    print("per workload, median of 5 alternating rounds\n")
    print("| workload | pairs | way | pairs/s | x CrossEncoder's call |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        workload = make(shape, args.requests, args.seed)
        pairs = sum(len(r.documents) for r in workload.requests)
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(5):
            for way, tokenize in ways.items():
                started = time.perf_counter()
                for request in workload.requests:
                    tokenize(request.query, request.documents)
                times[way].append(time.perf_counter() - started)
        base = statistics.median(times["CrossEncoder.predict's tokenizer call"])
        for way, seconds in times.items():
            median = statistics.median(seconds)
            print(f"| {shape} | {pairs} | {way} | {pairs / median:,.0f} | {base / median:.2f} |")
        sys.stdout.flush()


def scenario_simgpu(args: argparse.Namespace) -> None:
    """Does the host keep a fast device busy? Busy fraction per simulated device rate."""
    tok_model = str(model_path("ettin-17m", args.max_length))
    workload = make(args.sim_workload, args.requests, args.seed)
    lengths = _tokens(tok_model, workload)
    per_request_tokens = [sum(lens) for lens in lengths]
    flat = [n for lens in lengths for n in lens]
    reqs, toks = _cycle(workload.requests, per_request_tokens, args.requests * args.sim_repeat)
    print(
        f"\nsimulated GPU on {workload.name}: {len(reqs)} requests, "
        f"{sum(len(r.documents) for r in reqs)} pairs, {statistics.mean(flat):.0f} tokens/pair; "
        f"{args.concurrency} clients; budget {args.sim_budget} tokens, packed (unpadded) cost"
    )
    print(
        "\n| device | device pairs/s at NQ lengths | served pairs/s "
        "| device busy: whole run / all clients waiting "
        "| p50 ms | p99 ms | server CPU µs/pair: loop / tokenize / model / native / gRPC / other "
        "| load generator CPU µs/pair |"
    )
    print("|---|---|---|---|---|---|---|---|")
    devices = [(n, s.h100_pairs_per_s) for n, s in ETTIN.items()] + [("free (host only)", 0.0)]
    for name, rate in devices:
        spec = ScorerSpec("sim", rate, args.sim_padded, tok_model)
        proc = RerankdProcess(
            _server_settings(args, tok_model, max_batch_tokens=args.sim_budget), spec
        ).start()
        try:
            res, stats = asyncio.run(_measure_rerankd(proc, reqs, toks, args.concurrency))
            steady = math.nan
            if res.steady is not None:  # the ramp-up and the drain left out
                start, end = res.steady
                steady = proc.busy_between(start, end) / (end - start)
        finally:
            proc.stop()
        label = f"{name} on H100" if rate else name
        per_pair = " / ".join(
            f"{seconds / stats.pairs_scored * 1e6:.0f}" for seconds in stats.thread_cpu_s
        )
        print(
            f"| {label} | {_fmt(rate)} | {res.pairs_per_s:,.0f} "
            f"| {stats.busy_s / res.wall_s:.2f} / {_fmt(steady, 2)} "
            f"| {res.quantile(0.5) * 1e3:,.1f} | {res.quantile(0.99) * 1e3:,.1f} | {per_pair} "
            f"| {res.client_cpu_s / res.pairs * 1e6:.0f} |"
        )
        sys.stdout.flush()


def scenario_sweep(args: argparse.Namespace) -> None:
    """rerankd alone over a grid of token budgets and look-aheads: how to choose the defaults."""
    model = str(model_path(args.model, args.max_length))
    workload = make(args.sweep_workload, args.requests, args.seed)
    lengths = _tokens(model, workload)
    per_request_tokens = [sum(lens) for lens in lengths]
    flat = [n for lens in lengths for n in lens]
    print(
        f"\nsweep on {workload.name}: {len(flat)} pairs, {statistics.mean(flat):.0f} tokens/pair "
        f"({min(flat)}-{max(flat)}); model {args.model}, {args.dtype}; {args.concurrency} clients"
    )
    print(
        "\n| budget | look-ahead pairs | reach (budgets) | pairs/s | p50 ms | p99 ms "
        "| padding eff. | model busy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for budget, lookahead, reach in itertools.product(args.budgets, args.lookaheads, args.reaches):
        settings = _server_settings(
            args,
            model,
            max_batch_tokens=max(budget, max(flat)),
            lookahead_pairs=lookahead,
            lookahead_batches=reach,
        )
        proc = RerankdProcess(settings).start()
        try:
            res, stats = asyncio.run(
                _measure_rerankd(proc, workload.requests, per_request_tokens, args.concurrency)
            )
        finally:
            proc.stop()
        print(
            f"| {budget} | {lookahead} | {reach} | {res.pairs_per_s:,.1f} "
            f"| {res.quantile(0.5) * 1e3:,.0f} | {res.quantile(0.99) * 1e3:,.0f} "
            f"| {stats.padding_efficiency:.2f} | {stats.busy_s / res.wall_s:.2f} |"
        )
        sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario and print its table")
    run.add_argument("--scenario", choices=SCENARIOS, required=True)
    run.add_argument("--model", choices=MODEL_NAMES, default="tiny")
    run.add_argument("--requests", type=int, default=16, help="requests in the workload")
    run.add_argument(
        "--max-length",
        type=int,
        default=1024,
        help="max tokens per pair of the Ettin-shaped models (pairs longer than the token "
        "budget run in batches of their own)",
    )
    run.add_argument("--open-requests", type=int, default=0, help="open-loop requests (0: 2x)")
    run.add_argument("--concurrency", type=int, default=8, help="closed-loop clients")
    run.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    run.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the peers and rerankd run (serving scenarios; cuda: one GPU)",
    )
    run.add_argument("--max-batch-tokens", type=int, default=0, help="rerankd budget (0: auto)")
    run.add_argument("--max-batch-size", type=int, default=128)
    run.add_argument("--lookahead", type=int, default=512)
    run.add_argument("--reach", type=int, default=4, help="rerankd --lookahead-batches")
    run.add_argument(
        "--tokenizer-threads", type=int, default=0, help="rerankd --tokenizer-threads (0: auto)"
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--no-infinity", dest="infinity", action="store_false")
    run.add_argument("--calls", type=int, default=2000, help="grpc: calls per row")
    run.add_argument("--rounds", type=int, default=3, help="grpc: alternating rounds per row")
    run.add_argument(
        "--layers", action="store_true", help="grpc: also rerankd without its scheduler"
    )
    run.add_argument("--sim-workload", choices=tuple(SHAPES), default="short")
    run.add_argument("--sim-repeat", type=int, default=4, help="simgpu: workload repetitions")
    run.add_argument("--sim-budget", type=int, default=16384)
    run.add_argument("--sim-padded", action="store_true", help="simgpu: padded cost model")
    run.add_argument("--sweep-workload", choices=tuple(SHAPES), default="short")
    run.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    run.add_argument("--lookaheads", type=int, nargs="+", default=[512])
    run.add_argument("--reaches", type=int, nargs="+", default=[4, 8], help="sweep: reaches")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scenario == "manpages":
        args.model = "manpages"
    print(f"# rerankd bench: {args.scenario}\n\nmachine: {describe_machine()}")
    print("command: python -m bench " + " ".join(sys.argv[1:] if argv is None else argv))
    load_before = _loadavg()
    print(f"load average (1/5/15 min) at start: {load_before}")
    started = time.perf_counter()
    try:
        if args.scenario == "grpc":
            scenario_grpc(args)
        elif args.scenario == "simgpu":
            scenario_simgpu(args)
        elif args.scenario == "sweep":
            scenario_sweep(args)
        elif args.scenario == "tokenize":
            scenario_tokenize(args)
        else:
            scenario_serving(args)
    except FileNotFoundError as exc:
        print(f"SKIPPED: {exc}")
        return 0
    print(
        f"\n({time.perf_counter() - started:.0f} s; load average before/after: "
        f"{load_before} / {_loadavg()})"
    )
    return 0
