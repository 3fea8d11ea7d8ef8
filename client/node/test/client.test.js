// The client against live servers: the notebook's neuron checked against closed forms,
// streams, typed errors, plan-digest reuse, TLS, mutual TLS, tokens and deadlines.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import grpc from "@grpc/grpc-js";
import { Client, Graph, GradserveError } from "../gradserve.js";
import { neuron } from "../neuron.js";
import { needs, startServer } from "../testing/servers.js";

const NEURON_JS = fileURLToPath(new URL("../neuron.js", import.meta.url));
const env = process.env;
let server;
let client;

before(async () => {
  server = await startServer();
  client = new Client(server.target, { timeoutMs: 60_000 });
});

after(async () => {
  client?.close();
  await server?.stop();
});

const near = (got, want, what) => assert.ok(Math.abs(got - want) <= 1e-12 * (1 + Math.abs(want)), `${what}: ${got} != ${want}`);

/** The neuron's nodes by label, and their closed-form values and gradients. */
function closedForm(g) {
  const [x1, x2, w1, w2, b] = g.leaf_values;
  const n = x1 * w1 + x2 * w2 + b;
  const o = Math.tanh(n);
  const dn = 1 - o * o;
  return {
    x1: [x1, w1 * dn], x2: [x2, w2 * dn], w1: [w1, x1 * dn], w2: [w2, x2 * dn], b: [b, dn],
    "x1*w1": [x1 * w1, dn], "x2*w2": [x2 * w2, dn], "x1w1+x2w2": [x1 * w1 + x2 * w2, dn], n: [n, dn], o: [o, 1],
  };
}

function assertNeuron(g, result) {
  assert.deepEqual(result.node_ids, [...g.labels.keys()]);
  const expected = closedForm(g);
  result.node_ids.forEach((id, i) => {
    const [value, grad] = expected[g.labels[id]];
    near(result.values[i], value, `${g.labels[id]} value`);
    near(result.grads[i], grad, `${g.labels[id]} grad`);
  });
}

test("backward fills every node's value and gradient (the notebook's numbers)", async () => {
  const { g, x1, x2, w1, w2, b, o } = neuron();
  await client.backward(o);
  const expected = closedForm(g);
  for (const [name, node] of Object.entries({ x1, x2, w1, w2, b, o })) {
    near(node.value, expected[name][0], `${name} value`);
    near(node.grad, expected[name][1], `${name} grad`);
  }
  // The notebook's numbers: o = 0.7071, do/dx1 = -1.5, do/dw1 = 1, do/dx2 = 0.5, do/dw2 = 0.
  assert.ok(Math.abs(o.value - Math.SQRT1_2) < 1e-6);
  for (const [node, want] of [[x1, -1.5], [w1, 1], [x2, 0.5], [w2, 0], [b, 0.5]]) {
    assert.ok(Math.abs(node.grad - want) < 1e-6, `${node.id}: ${node.grad} != ${want}`);
  }
});

test("evaluate and stream return the same results; the stream in chunks", async () => {
  const { g } = neuron();
  assertNeuron(g, await client.evaluate(g, { selection: "SELECTION_ALL" }));
  const chunks = [];
  for await (const chunk of client.stream(g, { selection: "SELECTION_ALL", chunk_size: 4 })) chunks.push(chunk);
  assert.deepEqual(chunks.map((chunk) => chunk.node_ids.length), [4, 4, 2]);
  assert.deepEqual(chunks.map((chunk) => chunk.total_nodes), [10, 10, 10]);
  assertNeuron(g, {
    node_ids: chunks.flatMap((c) => c.node_ids), values: chunks.flatMap((c) => c.values), grads: chunks.flatMap((c) => c.grads),
  });
});

test("rows evaluate several leaf-value rows in one call", async () => {
  const { g } = neuron();
  const rows = [g.leaf_values.slice(), [1, 1, 1, 1, 0]];
  const result = await client.evaluate(g, { selection: "SELECTION_LEAVES", rows });
  assert.equal(result.rows, 2);
  const dn = 1 - Math.tanh(2) ** 2; // row 2: n = 1 + 1 + 0
  [1, 1, 1, 1, 1].forEach((w, j) => near(result.grads[5 + j], w * dn, `row 2 leaf ${j}`));
});

test("leaf_tangents bring value and gradient tangents (JVP, HVP)", async () => {
  // Along b: do/db = 1 - o^2, and the gradient of b moves by d2o/db2 = -2 o (1 - o^2).
  const { g, b, o } = neuron();
  const request = { selection: "SELECTION_ALL", leaf_tangents: [0, 0, 0, 0, 1], chunk_size: 4 };
  const value = Math.SQRT1_2;
  const chunks = [];
  for await (const chunk of client.stream(g, request)) chunks.push(chunk);
  const streamed = { value_tangents: chunks.flatMap((c) => c.value_tangents), grad_tangents: chunks.flatMap((c) => c.grad_tangents) };
  for (const result of [await client.evaluate(g, request), streamed]) {
    assert.ok(Math.abs(result.value_tangents[o.id] - (1 - value * value)) < 1e-9);
    assert.ok(Math.abs(result.grad_tangents[b.id] - -2 * value * (1 - value * value)) < 1e-9);
  }
});

test("a bad graph is a GradserveError with the BadRequest details and the label", async () => {
  const g = new Graph();
  const x = g.leaf(1, "x");
  x.tanh().label("t");
  g.apply("sinh", x).label("s");
  await assert.rejects(client.evaluate(g), (error) => {
    assert.ok(error instanceof GradserveError);
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.match(error.details, /^node 2 \('s'\): unknown op 'sinh'/);
    assert.equal(error.field, "graph.op_names[1]");
    assert.equal(error.node, 2);
    assert.equal(error.violations.length, 1);
    return true;
  });
});

/** The server behind `c` answers g's digest with NOT_FOUND: a call that then succeeds resent the graph. */
async function assertLacks(c, g) {
  const request = { graph: { leaf_values: g.leaf_values }, plan_digest: g.planDigest };
  await assert.rejects(c.evaluateRaw(request), (error) => error.code === grpc.status.NOT_FOUND);
}

const conformance = () =>
  new Client(env.GRADSERVE_CONFORMANCE_TARGET, { token: env.GRADSERVE_CONFORMANCE_TOKEN, timeoutMs: 60_000 });

test("the structure goes once, then the digest; NOT_FOUND elsewhere resends it", { skip: needs("GRADSERVE_CONFORMANCE_TARGET") }, async () => {
  const { g, x1, o } = neuron();
  const first = await client.evaluate(g);
  assert.equal(g.planDigest.length, 16);
  assert.deepEqual(Buffer.from(g.planDigest), Buffer.from(first.plan_digest));
  g.setLeaf(x1, 1); // a new value keeps the structure...
  assert.ok(g.planDigest, "a leaf value change dropped the digest");
  const second = await client.evaluate(g, { nodes: [o] });
  near(second.values[0], Math.tanh(1 * -3 + 6.8813735870195432), "o at x1 = 1");
  // The conformance server never compiled this structure: NOT_FOUND, and the graph is resent.
  const other = conformance();
  try {
    await assertLacks(other, g);
    const third = await other.evaluate(g, { nodes: [o] });
    near(third.values[0], second.values[0], "o on the other server");
  } finally {
    other.close();
  }
  // stream does the same: this test's own server holds the digest now, a new one would not.
  const fresh = await startServer();
  const another = new Client(fresh.target, { timeoutMs: 60_000 });
  try {
    await assertLacks(another, g);
    const streamed = [];
    for await (const chunk of another.stream(g, { nodes: [o] })) streamed.push(...chunk.values);
    assert.equal(streamed.length, 1);
    near(streamed[0], second.values[0], "o streamed from a third server");
  } finally {
    another.close();
    await fresh.stop();
  }
  o.label("output"); // ...a label is structure
  assert.equal(g.planDigest, null);
});

test("a token is sent with every call; a wrong one is UNAUTHENTICATED", { skip: needs("GRADSERVE_CONFORMANCE_TARGET") }, async () => {
  const ok = conformance();
  const wrong = new Client(env.GRADSERVE_CONFORMANCE_TARGET, { token: "wrong", timeoutMs: 60_000 });
  try {
    assert.ok((await ok.listOps()).some((op) => op.name === "tanh"));
    await assert.rejects(wrong.listOps(), (error) => error.code === grpc.status.UNAUTHENTICATED);
  } finally {
    ok.close();
    wrong.close();
  }
});

test("TLS trusts the given CA; plaintext to a TLS server is UNAVAILABLE", { skip: needs("GRADSERVE_TLS_TARGET", "GRADSERVE_TLS_CA") }, async () => {
  const tls = new Client(env.GRADSERVE_TLS_TARGET, { ca: env.GRADSERVE_TLS_CA, timeoutMs: 60_000 });
  const plain = new Client(env.GRADSERVE_TLS_TARGET, { timeoutMs: 60_000 });
  try {
    const { g, o } = neuron();
    await tls.backward(o);
    near(o.value, Math.tanh(2 * -3 + 6.8813735870195432), "o over TLS");
    await assert.rejects(
      plain.evaluate(g),
      (error) => error.code === grpc.status.UNAVAILABLE && error.message.startsWith(`the server at ${env.GRADSERVE_TLS_TARGET} expects TLS`),
    );
  } finally {
    tls.close();
    plain.close();
  }
});

test("mutual TLS needs the client certificate, and the token", { skip: needs("GRADSERVE_MTLS_TARGET", "GRADSERVE_CLIENT_CERT") }, async () => {
  const base = { ca: env.GRADSERVE_TLS_CA, timeoutMs: 60_000 };
  const pair = { cert: env.GRADSERVE_CLIENT_CERT, key: env.GRADSERVE_CLIENT_KEY };
  const full = new Client(env.GRADSERVE_MTLS_TARGET, { ...base, ...pair, token: env.GRADSERVE_MTLS_TOKEN });
  const noToken = new Client(env.GRADSERVE_MTLS_TARGET, { ...base, ...pair });
  const noCert = new Client(env.GRADSERVE_MTLS_TARGET, { ...base, token: env.GRADSERVE_MTLS_TOKEN });
  try {
    const { g, o } = neuron();
    await full.backward(o);
    near(o.grad, 1, "do/do over mutual TLS");
    await assert.rejects(noToken.evaluate(g), (error) => error.code === grpc.status.UNAUTHENTICATED);
    await assert.rejects(
      noCert.evaluate(g),
      (error) => error.code === grpc.status.UNAVAILABLE && error.auth && error.message.includes("requires a client certificate"),
    );
  } finally {
    for (const c of [full, noToken, noCert]) c.close();
  }
});

test("the client's timeout applies; a call's own deadline wins", async () => {
  const short = new Client(server.target, { timeoutMs: 0 });
  try {
    const { g } = neuron();
    await assert.rejects(
      short.evaluate(g),
      (error) =>
        error instanceof GradserveError &&
        error.code === grpc.status.DEADLINE_EXCEEDED &&
        error.message === "the call took longer than its timeout of 0 s: pass a larger timeout, or send a smaller graph",
    );
    assert.equal((await short.evaluate(g, {}, { deadlineMs: 60_000 })).values.length, 10);
  } finally {
    short.close();
  }
});

test("nothing at the target: one line that says what to do, no empty resolution note", async () => {
  const nowhere = new Client("127.0.0.1:1", { timeoutMs: 60_000 });
  try {
    await assert.rejects(nowhere.listOps(), (error) => {
      assert.equal(error.message, "no gradserve server answers at 127.0.0.1:1: start one with `gradserve serve`, or set GRADSERVE_TARGET");
      assert.ok(!error.details.includes("Resolution note"), error.details);
      return true;
    });
  } finally {
    nowhere.close();
  }
});

test("without a target the client reads GRADSERVE_TARGET, else localhost:50051", () => {
  const saved = process.env.GRADSERVE_TARGET;
  try {
    process.env.GRADSERVE_TARGET = "example.invalid:7";
    const fromEnv = new Client();
    assert.equal(fromEnv.target, "example.invalid:7");
    fromEnv.close();
    delete process.env.GRADSERVE_TARGET;
    const fallback = new Client();
    assert.equal(fallback.target, "localhost:50051");
    fallback.close();
  } finally {
    if (saved === undefined) delete process.env.GRADSERVE_TARGET;
    else process.env.GRADSERVE_TARGET = saved;
  }
});

test("neuron.js prints every node's value and gradient", async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [NEURON_JS, server.target]);
  assert.match(stdout, /^Evaluate\n/);
  assert.match(stdout, /\nEvaluateStream\n/);
  assert.match(stdout, /x1 +value +2\.0000 +grad +-1\.5000/);
  assert.match(stdout, /o +value +0\.7071 +grad +1\.0000/);
});
