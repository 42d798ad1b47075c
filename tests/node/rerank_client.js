#!/usr/bin/env node
// A rerankd client in Node.js that knows only proto/rerankd/v1/rerank.proto, loaded at run time.
//
// It proves the .proto alone is enough for another language: no generated code, no Python. The
// integration test (tests/integration/test_node_client.py) runs it against a real server and checks
// the JSON it prints.
//
// Usage: node rerank_client.js HOST:PORT
//
// Prints one JSON object on stdout:
//   request      the RerankRequest sent (so the test scores the same pairs itself)
//   rerank       the RerankResponse
//   modelInfo    the GetModelInfoResponse
//   emptyQuery   {code, name, details} of a Rerank with an empty query, which must fail
//                (code 3, INVALID_ARGUMENT); code 0 if it wrongly succeeded
// Exits 1 with the status on stderr if Rerank or GetModelInfo fails.
//
// proto-loader options: field names are camelCase as protobuf.js converts them (keepCase: false:
// topN, returnDocuments, maxInputTokens); 64-bit integers become strings (longs: String) so no
// precision is lost; enums print by name; defaults: true so zero values (index 0, an empty id)
// appear instead of vanishing.

"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.join(__dirname, "..", "..", "proto");
const DEADLINE_MS = 30_000;

const REQUEST = {
  query: "how do I list files in a directory",
  documents: [
    { id: "a", text: "Use ls to list the files in a directory; ls -la also shows hidden files." },
    { id: "b", text: "Bake the bread in a hot oven for forty minutes until the crust is brown." },
    { id: "c", text: "Python can list a directory with os.listdir or pathlib.Path.iterdir." },
  ],
  topN: 2,
  returnDocuments: true,
};

function loadService() {
  const definition = protoLoader.loadSync("rerankd/v1/rerank.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: false,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).rerankd.v1.RerankService;
}

// Promise wrapper for a unary call with a deadline.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function statusOf(err) {
  return { code: err.code, name: grpc.status[err.code], details: err.details };
}

async function main(target) {
  const RerankService = loadService();
  const client = new RerankService(target, grpc.credentials.createInsecure());
  try {
    const rerank = await call(client, "Rerank", REQUEST);
    const modelInfo = await call(client, "GetModelInfo", {});
    let emptyQuery;
    try {
      await call(client, "Rerank", { ...REQUEST, query: "" });
      emptyQuery = { code: grpc.status.OK, name: "OK", details: "the call succeeded" };
    } catch (err) {
      emptyQuery = statusOf(err);
    }
    process.stdout.write(`${JSON.stringify({ request: REQUEST, rerank, modelInfo, emptyQuery })}\n`);
  } finally {
    client.close();
  }
}

if (process.argv.length !== 3) {
  process.stderr.write("usage: node rerank_client.js HOST:PORT\n");
  process.exit(2);
}
main(process.argv[2]).catch((err) => {
  const status = err.code === undefined ? { error: String(err) } : statusOf(err);
  process.stderr.write(`rerank_client.js: ${JSON.stringify(status)}\n`);
  process.exit(1);
});
