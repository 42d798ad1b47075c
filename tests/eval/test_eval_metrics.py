"""The pure parts of ``rerankd eval``: metrics against hand-computed values, parsing, ordering.

Every expected number is worked out in the comment beside it (log2(3) = 1.5849625,
log2(5) = 2.3219281, log2(6) = 2.5849625, log2(7) = 2.8073549), not by calling the code under
test a second way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rerankd.evaluate import (
    Dataset,
    InputError,
    QueryResult,
    Report,
    dcg,
    format_report,
    format_trec_run,
    mean,
    metric_names,
    mrr_at,
    ndcg_at,
    order_by_score,
    query_metrics,
    read_qrels,
    read_trec_run,
    recall_at,
    rerank_window,
    select_queries,
)

approx = pytest.approx


# --- NDCG ----------------------------------------------------------------------------------


def test_dcg_uses_the_log2_discount() -> None:
    # 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.2618595 + 0.5
    assert dcg([3, 2, 1]) == approx(4.7618595)
    assert dcg([]) == 0.0


def test_ndcg_binary_relevance() -> None:
    # the one relevant doc at rank 2: (1/log2(3)) / 1 = 0.6309298
    assert ndcg_at(["a", "b", "c"], {"b": 1}) == approx(0.6309298)
    assert ndcg_at(["b", "a", "c"], {"b": 1}) == 1.0


def test_ndcg_graded_labels_use_linear_gain() -> None:
    # DCG = 0 + 2/log2(3) + 1/log2(4) = 1.2618595 + 0.5 = 1.7618595
    # ideal (a:2, b:1) = 2 + 1/log2(3) = 2.6309298; NDCG = 0.6696718
    assert ndcg_at(["c", "a", "b"], {"a": 2, "b": 1, "c": 0}) == approx(0.6696718)
    # grades in the wrong order still lose: (1 + 2/log2(3)) / 2.6309298 = 0.8597186
    assert ndcg_at(["b", "a"], {"a": 2, "b": 1}) == approx(0.8597186)
    assert ndcg_at(["a", "b"], {"a": 2, "b": 1}) == 1.0


def test_ndcg_ideal_counts_judged_documents_the_ranking_missed() -> None:
    # "z" is relevant but never retrieved: 1 / (1 + 1/log2(3)) = 1 / 1.6309298 = 0.6131472
    assert ndcg_at(["a", "x"], {"a": 1, "z": 1}) == approx(0.6131472)


def test_ndcg_cutoff_and_unjudged_and_negative_grades() -> None:
    eleven = [f"d{i}" for i in range(1, 12)]
    assert ndcg_at(eleven, {"d11": 1}) == 0.0  # rank 11 is past @10
    # a -1 grade gains 0 and is not in the ideal: doc at rank 2 -> 1/log2(3)
    assert ndcg_at(["spam", "a"], {"spam": -1, "a": 1}) == approx(0.6309298)
    # cutoff 3 keeps only ranks 1-3 of the ideal too: 1/log2(4) / (1 + 1/log2(3) + 1/log2(4))
    judged = {"a": 1, "b": 1, "c": 1, "d": 1}
    assert ndcg_at(["x", "y", "a", "b"], judged, k=3) == approx(0.5 / 2.1309298)


def test_empty_rankings_and_queries_without_relevant_documents_score_zero() -> None:
    for metric in (ndcg_at, mrr_at):
        assert metric([], {"a": 1}) == 0.0
        assert metric(["a"], {"a": 0}) == 0.0
        assert metric(["a"], {}) == 0.0
    assert recall_at([], {"a": 1}, 10) == 0.0
    assert recall_at(["a"], {"a": 0}, 10) == 0.0


def test_a_repeated_document_counts_once() -> None:
    # [a, a, b] is read as [a, b]: a perfect ranking, not a at ranks 1 and 2
    assert ndcg_at(["a", "a", "b"], {"a": 1, "b": 1}) == 1.0
    assert recall_at(["a", "a", "a"], {"a": 1, "b": 1}, 2) == 0.5


# --- MRR and recall ------------------------------------------------------------------------


def test_mrr_counts_any_positive_grade_as_relevant() -> None:
    assert mrr_at(["x", "y", "a"], {"a": 1}) == approx(1 / 3)
    assert mrr_at(["x", "b", "a"], {"a": 3, "b": 1, "x": 0}) == 0.5  # graded: first > 0 wins
    assert mrr_at([f"d{i}" for i in range(1, 12)], {"d11": 1}) == 0.0  # past @10
    assert mrr_at(["x", "a"], {"a": 1}, k=1) == 0.0


def test_recall_at_k() -> None:
    judged = {"a": 2, "b": 1, "c": 0, "z": 1}  # relevant: a, b, z
    assert recall_at(["a", "c", "b"], judged, 10) == approx(2 / 3)
    assert recall_at(["a", "c", "b"], judged, 2) == approx(1 / 3)


def test_query_metrics_and_names() -> None:
    assert metric_names(100) == ["ndcg@10", "mrr@10", "recall@10", "recall@100"]
    assert metric_names(10) == ["ndcg@10", "mrr@10", "recall@10"]
    got = query_metrics(["x", "a"], {"a": 1}, depth=1)
    assert got == {
        "ndcg@10": approx(0.6309298),
        "mrr@10": 0.5,
        "recall@10": 1.0,
        "recall@1": 0.0,
    }
    assert mean([]) == 0.0
    assert mean([0.25, 0.75]) == 0.5


# --- ordering: ties, missing documents, the rerank window ----------------------------------


def test_order_by_score_breaks_ties_by_input_order() -> None:
    scored = [("a", 1.0), ("b", 2.0), ("c", 1.0), ("d", 2.0), ("b", 0.5)]
    assert order_by_score(scored) == ["b", "d", "a", "c"]
    assert order_by_score([]) == []


def test_rerank_window_keeps_unscored_documents_and_the_tail() -> None:
    first = ["a", "b", "c", "d", "e"]
    # window a, b, c; b has no text so only a, c were sent; the reranker put c first
    assert rerank_window(first, 3, ["a", "c"], [1, 0]) == ["c", "a", "b", "d", "e"]
    assert rerank_window(first, 10, first, [4, 3, 2, 1, 0]) == ["e", "d", "c", "b", "a"]
    assert rerank_window(first, 2, [], []) == first


# --- files ---------------------------------------------------------------------------------


def test_read_trec_run_orders_by_score_then_rank(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    path.write_text(
        "q1 Q0 low 3 1.0 bm25\n"
        "q1 Q0 tie-second 2 5.0 bm25\n"
        "q1 Q0 tie-first 1 5.0 bm25\n"
        "\n"
        "q2 Q0 only 1 -2.5 bm25\n"
        "q1 Q0 low 4 0.5 bm25\n"  # repeated doc: its best entry counts
    )
    run = read_trec_run(path)
    assert run == {
        "q1": [("tie-first", 5.0), ("tie-second", 5.0), ("low", 1.0)],
        "q2": [("only", -2.5)],
    }


@pytest.mark.parametrize(
    "line", ["q1 Q0 d1 1 high bm25", "q1 Q0 d1 1 1.0", "q1 Q0 d1 1 1.0 bm25 extra"]
)
def test_read_trec_run_names_a_bad_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "run.trec"
    path.write_text(f"q1 Q0 d0 1 2.0 bm25\n{line}\n")
    with pytest.raises(InputError, match=r"run\.trec:2: expected 'qid Q0 docid rank score tag'"):
        read_trec_run(path)


def test_read_qrels(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\ta\t2\nq1\tb\t0\nq2\tc\t1\n")
    assert read_qrels(path) == {"q1": {"a": 2, "b": 0}, "q2": {"c": 1}}
    path.write_text("query-id\tcorpus-id\tscore\nq1\ta\tvery\n")
    with pytest.raises(InputError, match=r"test\.tsv:2"):
        read_qrels(path)
    with pytest.raises(InputError, match="cannot read"):
        read_qrels(tmp_path / "absent.tsv")


def test_format_trec_run() -> None:
    lines = list(format_trec_run([("q1", [("a", 0.9), ("b", 0.25)])], "rr"))
    assert lines == ["q1 Q0 a 1 0.9 rr\n", "q1 Q0 b 2 0.25 rr\n"]


def test_select_queries_skips_and_counts() -> None:
    dataset = Dataset(
        corpus={},
        queries={"q1": "one", "q2": "two", "q3": "three", "q4": "four"},
        qrels={"q1": {"a": 1}, "q2": {"b": 0}, "q4": {"c": 2}, "q9": {"d": 1}},
    )
    selected, skipped = select_queries(dataset)
    assert [q.qid for q in selected] == ["q1", "q4"]
    assert skipped == {
        "no_judgements": 1,  # q3
        "no_relevant_judgement": 1,  # q2
        "judged_without_query_text": 1,  # q9
    }
    selected, skipped = select_queries(dataset, max_queries=1)
    assert [q.qid for q in selected] == ["q1"]
    assert skipped["over_max_queries"] == 1


def test_max_queries_spreads_the_sample_over_the_set() -> None:
    qids = [f"q{i}" for i in range(10)]
    dataset = Dataset({}, {q: q for q in qids}, {q: {"d": 1} for q in qids})
    selected, skipped = select_queries(dataset, max_queries=4)
    assert [q.qid for q in selected] == ["q0", "q2", "q5", "q7"]  # indexes 10 * i // 4
    assert skipped["over_max_queries"] == 6
    assert len(select_queries(dataset, max_queries=50)[0]) == 10


def test_report_deltas_and_table() -> None:
    def result(qid: str, before: float, after: float) -> QueryResult:
        metrics = {"ndcg@10": before, "mrr@10": before, "recall@10": 1.0, "recall@20": 1.0}
        return QueryResult(qid, f"query {qid}", 20, metrics, {**metrics, "ndcg@10": after})

    report = Report("data", "test", "run.trec", 20, "t:1", "m", metric_names(20))
    report.queries = [
        result("up-small", 0.5, 0.6),
        result("up-big", 0.0, 1.0),
        result("down", 1.0, 0.5),
        result("same", 0.3, 0.3),
    ]
    gains, losses = report.deltas(top=1)
    assert [q.qid for q in gains] == ["up-big"]
    assert [q.qid for q in losses] == ["down"]
    assert report.changed() == {"improved": 2, "regressed": 1, "unchanged": 1}
    # (0.5 + 0 + 1 + 0.3) / 4 = 0.45 before, (0.6 + 1 + 0.5 + 0.3) / 4 = 0.6 after
    assert report.mean("ndcg@10", "before") == approx(0.45)
    assert report.to_json(top=1)["metrics"]["ndcg@10"]["delta"] == approx(0.15)
    table = format_report(report, top=1)
    assert "NDCG@10           0.4500      0.6000   +0.1500" in table
    assert "Recall@20" in table and "cannot change" in table
    assert "+1.0000  0.0000 -> 1.0000  up-big" in table
