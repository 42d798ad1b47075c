"""A Node.js client that knows only rerank.proto talks to the real server.

Non-Python callers get nothing but the .proto, so this checks the contract end to end from another
language: field names and types, ordering, returned texts, scores equal to Sentence Transformers',
model info, and the mapping of a bad request to INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from sentence_transformers import CrossEncoder

from rerankd_server.process import ServerProcess

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "rerank_client.js"


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, or skip when node or the client's packages are missing."""
    executable = shutil.which("node")
    if executable is None:
        pytest.skip("node is not installed; the Node.js client test needs it")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"{NODE_DIR}/node_modules is missing; run: npm ci --prefix tests/node")
    return executable


@pytest.fixture(scope="module")
def node_output(node: str, tiny_server_process: ServerProcess) -> dict[str, Any]:
    """What rerank_client.js printed after talking to the server (once per module)."""
    result = subprocess.run(
        [node, str(SCRIPT), tiny_server_process.target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"node exited {result.returncode}: {result.stderr}\n"
        f"server output:\n{tiny_server_process.output()}"
    )
    output: dict[str, Any] = json.loads(result.stdout)
    return output


@pytest.fixture(scope="module")
def reference(tiny_models: dict[str, Path]) -> CrossEncoder:
    model: CrossEncoder = CrossEncoder(str(tiny_models["modernbert"]), device="cpu")
    return model


def test_rerank_returns_top_n_best_first(
    node_output: dict[str, Any], reference: CrossEncoder
) -> None:
    request, results = node_output["request"], node_output["rerank"]["results"]
    documents = request["documents"]
    expected = [
        float(s) for s in reference.predict([(request["query"], d["text"]) for d in documents])
    ]
    best_first = sorted(range(len(documents)), key=lambda i: (-expected[i], i))

    assert len(results) == request["topN"] == 2
    assert [r["index"] for r in results] == best_first[:2]
    for result in results:
        document = documents[result["index"]]
        assert result["id"] == document["id"]
        assert result["id"] in {"a", "b", "c"}
        assert result["text"] == document["text"]
        assert math.isclose(result["score"], expected[result["index"]], abs_tol=1e-5)
    assert results[0]["score"] >= results[1]["score"]


def test_usage_and_model_are_reported(node_output: dict[str, Any]) -> None:
    response = node_output["rerank"]
    assert response["model"] == node_output["modelInfo"]["model"]["name"]
    # uint64 fields arrive as strings (proto-loader longs: String): no precision lost in JS.
    assert int(response["usage"]["inputTokens"]) > 0


def test_model_info_matches_the_model(node_output: dict[str, Any], reference: CrossEncoder) -> None:
    info = node_output["modelInfo"]["model"]
    assert info["maxInputTokens"] == reference.max_seq_length


def test_empty_query_is_invalid_argument(node_output: dict[str, Any]) -> None:
    empty = node_output["emptyQuery"]
    assert empty["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0] == 3, empty
    assert empty["name"] == "INVALID_ARGUMENT"
