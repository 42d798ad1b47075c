"""Convert the shared man-page set into a BEIR folder and a TREC run of its BM25 candidates.

``rerankd eval`` reads BEIR datasets and TREC runs, the formats most relevance data comes in;
this turns ``../shared/data/manpages`` (its own JSON layout) into them, so the evaluation of
the real model in docs/quality.md can be repeated::

    python scripts/manpages_to_beir.py /tmp/manpages-beir
    rerankd eval /tmp/manpages-beir --run /tmp/manpages-beir/bm25_test_top30.trec --depth 30

Writes ``corpus.jsonl`` (``_id``, empty ``title``: the texts have none), ``queries.jsonl`` (all
queries), ``qrels/train.tsv`` and ``qrels/test.tsv`` (each query's own page, grade 1) and
``bm25_test_top30.trec`` (BM25's top 30 of each test query, tag ``bm25``). The texts stay
under their packages' licences: write them outside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "manpages"
RUN_NAME = "bm25_test_top30.trec"


def convert(data: Path, out: Path) -> dict[str, int]:
    """Write the BEIR folder and the run under ``out``; returns counts of what was written."""
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    counts = {"documents": 0, "queries": 0, "train": 0, "test": 0, "run_lines": 0}
    with (
        (data / "corpus.jsonl").open(encoding="utf-8") as source,
        (out / "corpus.jsonl").open("w", encoding="utf-8") as corpus,
    ):
        for line in source:
            if line.strip():
                row = json.loads(line)
                record = {"_id": row["id"], "title": "", "text": row["text"]}
                corpus.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts["documents"] += 1
    qrels = {
        split: (out / "qrels" / f"{split}.tsv").open("w", encoding="utf-8")
        for split in ("train", "test")
    }
    try:
        for handle in qrels.values():
            handle.write("query-id\tcorpus-id\tscore\n")
        with (
            (data / "queries.jsonl").open(encoding="utf-8") as source,
            (out / "queries.jsonl").open("w", encoding="utf-8") as queries,
        ):
            for line in source:
                if not line.strip():
                    continue
                row = json.loads(line)
                record = {"_id": row["qid"], "text": row["query"]}
                queries.write(json.dumps(record, ensure_ascii=False) + "\n")
                qrels[row["split"]].write(f"{row['qid']}\t{row['doc_id']}\t1\n")
                counts["queries"] += 1
                counts[row["split"]] += 1
    finally:
        for handle in qrels.values():
            handle.close()
    bm25: dict[str, list[list[object]]] = json.loads(
        (data / "bm25_test_top30.json").read_text(encoding="utf-8")
    )
    with (out / RUN_NAME).open("w", encoding="utf-8") as run:
        for qid, hits in bm25.items():
            for rank, (doc, score) in enumerate(hits, start=1):
                run.write(f"{qid} Q0 {doc} {rank} {score} bm25\n")
                counts["run_lines"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    """Convert; print what was written as JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (outside the repository)")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="man-page data (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if not (args.data / "corpus.jsonl").is_file():
        parser.error(f"{args.data} holds no corpus.jsonl: point --data at the man-page folder")
    counts = convert(args.data, args.out)
    print(json.dumps({"out": str(args.out), "run": str(args.out / RUN_NAME), **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
