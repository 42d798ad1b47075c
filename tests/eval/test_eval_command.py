"""``rerankd eval`` end to end against a real rerankd server whose right answer is known.

The server runs GradeScorer: a document's logit is the grade written into its text
(``grade2`` -> 2.0, ``grade1`` -> 1.0, else 0.0), so reranking must put the judged documents
in grade order, and every metric after reranking is known exactly. The first stage is a
deliberately bad run file (relevant documents low), so the numbers before are known too.
"""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from osmem_server import OsmemServer

from rerankd.evaluate import Progress, engine_search, main, query_metrics
from rerankd_server.process import free_port
from rerankd_server.settings import Settings
from support.certs import write_tls_files
from support.fake_scorer import FakeScorer, token_id
from support.sidecar import RunningSidecar, run_sidecar

GRADES = {token_id("grade1"): 1.0, token_id("grade2"): 2.0}


@dataclass
class GradeScorer(FakeScorer):
    """FakeScorer whose logit is the highest grade token in the pair, 0.0 without one."""

    def forward(self, batch: Any) -> Any:
        self.batches.append(batch)
        return np.asarray([max(GRADES.get(i, 0.0) for i in row) for row in batch], np.float32)


CORPUS = {
    "a1": "alpha page grade2",
    "a2": "alpha page grade1",
    "a3": "alpha filler three",
    "a4": "alpha filler four",
    "a5": "alpha filler five",
    "a6": "alpha filler six",
    "b1": "beta page grade1",
    "b2": "beta filler two",
    "b3": "beta filler three",
    "b9": "beta page never retrieved",
    "c1": "gamma filler",
    "e1": "epsilon page",
    "long": "beta grade1 " + "padding " * 60,  # 492 bytes: clipped to the server's limit
}
QUERIES = {
    "q1": "alpha",
    "q2": "beta",
    "q3": "unjudged query",
    "q4": "gamma",
    "q5": "epsilon",
}
QRELS = [
    ("q1", "a1", 2),
    ("q1", "a2", 1),
    ("q1", "a3", 0),
    ("q2", "b1", 1),
    ("q2", "b9", 1),  # relevant, judged, never retrieved: recall 1/2 at best
    ("q4", "c1", 0),  # judged, nothing relevant: skipped
    ("q5", "e1", 1),  # the run has nothing for q5: evaluated, scores 0
    ("q7", "e1", 1),  # no query text: skipped
]
BAD_RUN = {  # relevant documents deliberately low
    "q1": ["a3", "a4", "a5", "a6", "a2", "a1"],
    "q2": ["b2", "ghost", "b1", "b3"],  # ghost is not in the corpus
    "q3": ["a1"],  # no judgements: ignored
}

LOG = math.log2
Q1_IDEAL = 2 + 1 / LOG(3)  # a1 (2) then a2 (1)
Q2_IDEAL = 1 + 1 / LOG(3)  # b1 and b9
BEFORE = {
    "q1": {"ndcg@10": (1 / LOG(6) + 2 / LOG(7)) / Q1_IDEAL, "mrr@10": 1 / 5, "recall@10": 1.0},
    "q2": {"ndcg@10": (1 / LOG(4)) / Q2_IDEAL, "mrr@10": 1 / 3, "recall@10": 0.5},
    "q5": {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@10": 0.0},
}
AFTER = {
    "q1": {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@10": 1.0},  # a1, a2, then ties in run order
    "q2": {"ndcg@10": 1 / Q2_IDEAL, "mrr@10": 1.0, "recall@10": 0.5},  # b9 still missing
    "q5": {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@10": 0.0},
}


def write_dataset(root: Path, run: dict[str, list[str]]) -> tuple[Path, Path]:
    """A BEIR folder and a TREC run (descending scores in list order) under ``root``."""
    data = root / "beir"
    (data / "qrels").mkdir(parents=True)
    with (data / "corpus.jsonl").open("w") as out:
        for doc, text in CORPUS.items():
            out.write(json.dumps({"_id": doc, "title": "", "text": text}) + "\n")
    with (data / "queries.jsonl").open("w") as out:
        for qid, text in QUERIES.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = [f"{q}\t{d}\t{g}\n" for q, d, g in QRELS]
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))
    run_file = root / "first.trec"
    run_file.write_text(
        "".join(
            f"{qid} Q0 {doc} {rank} {10.0 - rank} bad\n"
            for qid, docs in run.items()
            for rank, doc in enumerate(docs, start=1)
        )
    )
    return data, run_file


@pytest.fixture(scope="module")
def sidecar() -> Iterator[RunningSidecar]:
    words = {w for text in [*CORPUS.values(), *QUERIES.values()] for w in text.split()}
    clashes = {w for w in words if token_id(w) in GRADES and not w.startswith("grade")}
    assert not clashes, f"words whose token ids collide with a grade token: {clashes}"
    settings = Settings(model="fake", warmup=False, max_document_bytes=300, max_documents=100)
    with run_sidecar(settings, lambda _: GradeScorer()) as running:
        yield running


def run_eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_reports_exact_metrics_before_and_after(
    sidecar: RunningSidecar, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run_file = write_dataset(tmp_path, BAD_RUN)
    out_run = tmp_path / "reranked.trec"
    code, out, err = run_eval(
        capsys,
        str(data),
        "--run", str(run_file),
        "--target", sidecar.target,
        "--json",
        "--output-run", str(out_run),
        "--concurrency", "2",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == "fake"
    assert report["queries"] == {
        "evaluated": 3,
        "no_candidates": 1,  # q5
        "skipped": {"no_judgements": 1, "no_relevant_judgement": 1, "judged_without_query_text": 1},
        "run_queries_ignored": 1,  # q3
    }
    assert report["documents"] == {"reranked": 9, "not_in_corpus": 1, "clipped": 0}
    per_query = {q["qid"]: q for q in report["per_query"]}
    assert list(per_query) == ["q1", "q2", "q5"]
    for qid in per_query:
        for metric, value in BEFORE[qid].items():
            assert per_query[qid]["before"][metric] == pytest.approx(value), (qid, metric)
        for metric, value in AFTER[qid].items():
            assert per_query[qid]["after"][metric] == pytest.approx(value), (qid, metric)
        assert per_query[qid]["after"]["recall@100"] == per_query[qid]["before"]["recall@100"]
    for metric in ("ndcg@10", "mrr@10", "recall@10"):
        before = sum(BEFORE[q][metric] for q in BEFORE) / 3
        after = sum(AFTER[q][metric] for q in AFTER) / 3
        assert report["metrics"][metric]["before"] == pytest.approx(before)
        assert report["metrics"][metric]["after"] == pytest.approx(after)
        assert report["metrics"][metric]["delta"] == pytest.approx(after - before)
    assert report["per_query_ndcg@10"] == {"improved": 2, "regressed": 0, "unchanged": 1}
    assert [q["qid"] for q in report["top_improvements"]] == ["q1", "q2"]  # q1 gained more
    assert report["top_regressions"] == []

    # The reranked run: grade order, ties in first-stage order, scores from the reranker;
    # the document missing from the corpus was never scored, so it is not in the run.
    lines = [line.split() for line in out_run.read_text().splitlines()]
    assert [(q, d, r, s, t) for q, _, d, r, s, t in lines] == [
        ("q1", "a1", "1", "2", "rerankd"),
        ("q1", "a2", "2", "1", "rerankd"),
        ("q1", "a3", "3", "0", "rerankd"),
        ("q1", "a4", "4", "0", "rerankd"),
        ("q1", "a5", "5", "0", "rerankd"),
        ("q1", "a6", "6", "0", "rerankd"),
        ("q2", "b1", "1", "1", "rerankd"),
        ("q2", "b2", "2", "0", "rerankd"),
        ("q2", "b3", "3", "0", "rerankd"),
    ]


def test_eval_reaches_a_sidecar_behind_mutual_tls_and_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The connection options of every rerankd command: mTLS, a server name, a token file."""
    tls = write_tls_files(tmp_path / "tls")
    tokens = tmp_path / "tokens"
    tokens.write_text("# eval\nrdk-eval-token\n")
    settings = Settings(
        model="fake",
        warmup=False,
        max_document_bytes=300,
        tls_cert=str(tls.server.cert),
        tls_key=str(tls.server.key),
        tls_client_ca=str(tls.ca_cert),
        auth_token_file=str(tokens),
    )
    data, run_file = write_dataset(tmp_path, BAD_RUN)
    with run_sidecar(settings, lambda _: GradeScorer()) as running:
        code, out, err = run_eval(
            capsys, str(data), "--run", str(run_file), "--json",
            "--target", running.target, "--tls-server-name", "localhost",
            "--tls-ca", str(tls.ca_cert),
            "--tls-cert", str(tls.client.cert), "--tls-key", str(tls.client.key),
            "--token-file", str(tokens),
        )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    after = sum(AFTER[q]["ndcg@10"] for q in AFTER) / 3
    assert metrics["ndcg@10"]["after"] == pytest.approx(after)


def test_depth_limits_what_is_reranked_and_keeps_the_tail(
    sidecar: RunningSidecar, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # depth 4: q1's window (a3..a6) holds nothing relevant, so nothing can improve for q1
    data, run_file = write_dataset(tmp_path, BAD_RUN)
    code, out, err = run_eval(
        capsys, str(data), "--run", str(run_file), "--target", sidecar.target, "--depth", "4",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    q1 = json.loads(out)["per_query"][0]
    assert q1["qid"] == "q1"
    assert q1["after"] == q1["before"]
    assert q1["after"]["recall@4"] == 0.0
    assert q1["after"]["recall@10"] == 1.0  # a2, a1 kept their places after the window


def test_human_table(
    sidecar: RunningSidecar, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run_file = write_dataset(tmp_path, BAD_RUN)
    code, out, err = run_eval(
        capsys, str(data), "--run", str(run_file), "--target", sidecar.target, "--depth", "20"
    )
    assert code == 0, err
    before = sum(BEFORE[q]["ndcg@10"] for q in BEFORE) / 3
    after = sum(AFTER[q]["ndcg@10"] for q in AFTER) / 3
    assert f"NDCG@10     {before:>12.4f}{after:>12.4f}{after - before:>+10.4f}" in out
    assert "queries: 3 evaluated; skipped: 1 no judgements, 1 no relevant judgement" in out
    assert "1 evaluated queries got no candidates" in out
    assert "NDCG@10 per query: 2 improved, 0 regressed, 1 unchanged" in out
    assert "q1  'alpha'" in out


def test_over_long_documents_are_clipped_to_the_server_limit(
    sidecar: RunningSidecar, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run_file = write_dataset(tmp_path, {"q2": ["b2", "long", "b1"]})
    code, out, err = run_eval(
        capsys, str(data), "--run", str(run_file), "--target", sidecar.target, "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["documents"]["clipped"] == 1
    q2 = next(q for q in report["per_query"] if q["qid"] == "q2")
    # the clipped text still carries its grade: "long" and b1 tie at 1, "long" came first
    assert q2["after"]["mrr@10"] == 0.5
    assert q2["before"]["mrr@10"] == pytest.approx(1 / 3)


def test_input_and_server_errors_exit_nonzero(
    sidecar: RunningSidecar, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run_file = write_dataset(tmp_path, BAD_RUN)
    bad_run = tmp_path / "bad.trec"
    bad_run.write_text("q1 Q0 a1 one 1.0 x\n")
    code, _, err = run_eval(capsys, str(data), "--run", str(bad_run), "--target", sidecar.target)
    assert (code, err.strip()) == (
        2,
        f"error: {bad_run}:1: expected 'qid Q0 docid rank score tag' (6 fields)",
    )

    code, _, err = run_eval(
        capsys, str(data), "--run", str(run_file), "--target", sidecar.target, "--depth", "101"
    )
    assert code == 2
    assert "exceeds the server's limit of 100 documents" in err

    code, _, err = run_eval(capsys, str(data), "--run", str(run_file), "--split", "dev")
    assert code == 2
    assert "cannot read" in err and "dev.tsv" in err

    dead = f"127.0.0.1:{free_port()}"
    code, _, err = run_eval(
        capsys, str(data), "--run", str(run_file), "--target", dead, "--timeout", "3"
    )
    assert code == 1
    assert err.startswith("error: reranker: UNAVAILABLE") or "DEADLINE_EXCEEDED" in err


def test_engine_first_stage(
    sidecar: RunningSidecar, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first stage from a real OpenSearch-API server (osmem-server) on loopback."""
    data, _ = write_dataset(tmp_path, {})
    server = OsmemServer.start(addr="127.0.0.1:0", japanese=False)
    try:
        server.request("PUT", "/docs", {"mappings": {"properties": {"text": {"type": "text"}}}})
        for doc, text in CORPUS.items():
            server.request("PUT", f"/docs/_doc/{doc}", {"text": text})
        server.request("POST", "/docs/_refresh")
        hits = {q: engine_search(server.url, "docs", "text", QUERIES[q], 5, 10) for q in QUERIES}
        code, out, err = run_eval(
            capsys, str(data), "--engine", server.url, "--index", "docs", "--depth", "5",
            "--target", sidecar.target, "--json",
        )  # fmt: skip
    finally:
        server.close()
        for stream in (server.process.stdin, server.process.stdout):
            if stream is not None:
                stream.close()
    assert code == 0, err
    report = json.loads(out)
    assert report["first_stage"] == f"{server.url} index docs"
    judged = {q: {d: g for qq, d, g in QRELS if qq == q} for q in ("q1", "q2", "q5")}
    for query in report["per_query"]:
        qid = query["qid"]
        first = [doc for doc, _ in hits[qid]]
        assert first, f"the engine found nothing for {qid}"
        assert query["before"] == pytest.approx(query_metrics(first, judged[qid], 5))
    after = {q["qid"]: q["after"] for q in report["per_query"]}
    assert after["q1"]["ndcg@10"] == 1.0  # a1 and a2 are among the 5 "alpha" hits
    assert after["q5"]["ndcg@10"] == 1.0


def test_python_dash_m_runs_the_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rerankd.evaluate", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: rerankd eval" in proc.stdout


def test_progress_goes_to_stderr_unless_quiet(
    sidecar: RunningSidecar, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run_file = write_dataset(tmp_path, BAD_RUN)
    argv = (str(data), "--run", str(run_file), "--target", sidecar.target, "--json")
    code, out, err = run_eval(capsys, *argv)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == "reranked 0/3 queries"  # at once, before the first answer
    assert re.fullmatch(r"reranked 3/3 queries, [\d.]+ queries/s", lines[-1]), lines
    json.loads(out)  # stdout holds the report only
    code, out, err = run_eval(capsys, *argv, "--quiet")
    assert (code, err) == (0, "")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_log_is_a_line_every_interval_and_at_the_end() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, interval=10.0, clock=clock)
    for now, done in [(100, 0), (105, 10), (110, 20), (115, 30), (121, 40), (160, 100)]:
        clock.now = now
        progress(done, 100)
    assert stream.getvalue().splitlines() == [
        "reranked 0/100 queries",
        "reranked 20/100 queries, 2.0 queries/s, about 40 s left",
        "reranked 40/100 queries, 1.9 queries/s, about 32 s left",
        "reranked 100/100 queries, 1.7 queries/s",
    ]


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream, clock = Terminal(), Clock()
    progress = Progress(stream, clock=clock)
    for now, done in [(100, 0), (101, 1), (400, 2), (700, 3)]:
        clock.now = now
        progress(done, 3)
    assert stream.getvalue() == (
        "\rreranked 0/3 queries\033[K"
        "\rreranked 1/3 queries, 1.0 queries/s, about 2 s left\033[K"
        "\rreranked 2/3 queries, 0.0 queries/s, about 2 min 30 s left\033[K"
        "\rreranked 3/3 queries, 0.0 queries/s\033[K\n"
    )
