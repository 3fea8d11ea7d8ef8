// The client retries UNAVAILABLE through gRPC's own retry policy (service_config.json, beside
// the .proto), up to its maxAttempts, against an in-process server that refuses the first calls.
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { Client, Graph, PROTO_ROOT, SERVICE_CONFIG } from "../gradserve.js";

const definition = protoLoader.loadSync(path.join("gradserve", "v1", "gradserve.proto"), {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
});
const { GradientService } = grpc.loadPackageDefinition(definition).gradserve.v1;

/** A server whose Evaluate refuses the first `failures` calls; `attempts` counts them all. */
async function flakyServer(failures) {
  const server = new grpc.Server();
  const seen = { attempts: 0 };
  server.addService(GradientService.service, {
    Evaluate(call, callback) {
      seen.attempts += 1;
      if (seen.attempts <= failures) {
        callback({ code: grpc.status.UNAVAILABLE, details: "draining" });
        return;
      }
      const last = call.request.graph.node_ops.length - 1;
      callback(null, { node_ids: [last], values: [1], grads: [1] });
    },
  });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound)));
  return { seen, target: `127.0.0.1:${port}`, stop: () => server.forceShutdown() };
}

async function evaluateOnce(target) {
  const client = new Client(target, { timeoutMs: 30_000 });
  try {
    const g = new Graph();
    return await client.evaluate(g, { outputs: [g.leaf(0.5).tanh()] });
  } finally {
    client.close();
  }
}

test("a call refused twice succeeds on the third attempt", async () => {
  const flaky = await flakyServer(2);
  try {
    await evaluateOnce(flaky.target);
    assert.equal(flaky.seen.attempts, 3);
  } finally {
    flaky.stop();
  }
});

test("retries stop at the policy's maxAttempts", async () => {
  const flaky = await flakyServer(100);
  const { maxAttempts } = JSON.parse(SERVICE_CONFIG).methodConfig[0].retryPolicy;
  try {
    await assert.rejects(evaluateOnce(flaky.target), (error) => error.code === grpc.status.UNAVAILABLE);
    assert.equal(flaky.seen.attempts, maxAttempts);
  } finally {
    flaky.stop();
  }
});
