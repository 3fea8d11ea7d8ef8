// Against a real server: the notebook's neuron through Evaluate and EvaluateStream, checked
// against the closed-form derivatives of tanh. The server is `uv run gradserve serve --port 0`,
// or "$GRADSERVE_BIN serve --port 0" when GRADSERVE_BIN names a gradserve executable.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import grpc from "@grpc/grpc-js";
import { connect, evaluate, evaluateStream } from "../gradserve.js";
import { LABELS, neuronRequest } from "../neuron.js";

const NEURON_JS = fileURLToPath(new URL("../neuron.js", import.meta.url));
let server;
let target;
let client;

async function startServer() {
  const [command, ...args] = process.env.GRADSERVE_BIN
    ? [process.env.GRADSERVE_BIN]
    : ["uv", "run", "gradserve"];
  const child = spawn(command, [...args, "serve", "--port", "0"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  for await (const data of child.stderr) {
    log += data;
    const match = log.match(/serving on ([\d.]+:\d+)/);
    if (match) {
      child.stderr.resume(); // keep draining the server's log
      return { child, target: match[1] };
    }
  }
  throw new Error(`the server did not start:\n${log}`);
}

before(async () => {
  ({ child: server, target } = await startServer());
  client = connect(target);
});

after(async () => {
  client?.close();
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await once(server, "exit");
  }
});

/** The expected value and gradient of each node, from the leaves, by hand. */
function closedForm() {
  const [x1, x2, w1, w2, b] = neuronRequest().graph.leaf_values;
  const n = x1 * w1 + x2 * w2 + b;
  const o = Math.tanh(n);
  const dn = 1 - o * o; // d tanh(n) / dn
  return {
    x1: [x1, w1 * dn],
    x2: [x2, w2 * dn],
    w1: [w1, x1 * dn],
    w2: [w2, x2 * dn],
    b: [b, dn],
    "x1*w1": [x1 * w1, dn],
    "x2*w2": [x2 * w2, dn],
    "x1w1+x2w2": [x1 * w1 + x2 * w2, dn],
    n: [n, dn],
    o: [o, 1],
  };
}

function assertNeuron(result) {
  assert.deepEqual(result.node_ids, [...LABELS.keys()]);
  const expected = closedForm();
  result.node_ids.forEach((id, i) => {
    const [value, grad] = expected[LABELS[id]];
    assert.ok(Math.abs(result.values[i] - value) < 1e-12, `${LABELS[id]} value`);
    assert.ok(Math.abs(result.grads[i] - grad) < 1e-12, `${LABELS[id]} grad`);
  });
  // The notebook's numbers: o = 0.7071, do/dx1 = -1.5, do/dw1 = 1, do/dx2 = 0.5, do/dw2 = 0.
  const grad = Object.fromEntries(result.node_ids.map((id, i) => [LABELS[id], result.grads[i]]));
  assert.ok(Math.abs(result.values[9] - Math.SQRT1_2) < 1e-6);
  for (const [name, want] of [["x1", -1.5], ["w1", 1], ["x2", 0.5], ["w2", 0], ["n", 0.5]]) {
    assert.ok(Math.abs(grad[name] - want) < 1e-6, `${name}: ${grad[name]} != ${want}`);
  }
}

test("Evaluate returns the neuron's values and gradients", async () => {
  assertNeuron(await evaluate(client, neuronRequest()));
});

test("EvaluateStream returns the same, in chunks", async () => {
  const chunks = [];
  const stream = client.EvaluateStream({ ...neuronRequest(), chunk_size: 4 });
  for await (const chunk of stream) chunks.push(chunk.node_ids.length);
  assert.deepEqual(chunks, [4, 4, 2]);
  assertNeuron(await evaluateStream(client, { ...neuronRequest(), chunk_size: 4 }));
});

test("a bad graph is INVALID_ARGUMENT naming the node", async () => {
  const request = neuronRequest();
  request.graph.op_names = ["mul", "add", "sinh"];
  await assert.rejects(evaluate(client, request), (error) => {
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.match(error.details, /node 9: unknown op 'sinh'/);
    return true;
  });
});

test("neuron.js prints every node's value and gradient", async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [NEURON_JS, target]);
  assert.match(stdout, /^Evaluate\n/);
  assert.match(stdout, /\nEvaluateStream\n/);
  assert.match(stdout, /x1 +value +2\.0000 +grad +-1\.5000/);
  assert.match(stdout, /o +value +0\.7071 +grad +1\.0000/);
});

test("leaf_tangents bring value and gradient tangents (JVP, HVP)", async () => {
  // Along b: d o/d b = 1 - o^2, and the gradient of b moves by d2 o / d b2 = -2 o (1 - o^2).
  const request = { ...neuronRequest(), leaf_tangents: [0, 0, 0, 0, 1], chunk_size: 4 };
  const o = Math.SQRT1_2;
  for (const result of [await evaluate(client, request), await evaluateStream(client, request)]) {
    assert.ok(Math.abs(result.value_tangents[9] - (1 - o * o)) < 1e-9);
    assert.ok(Math.abs(result.grad_tangents[4] - -2 * o * (1 - o * o)) < 1e-9);
  }
});
