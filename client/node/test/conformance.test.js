// The conformance suite (conformance/cases.json) through this client: graphs built with the
// builder, calls made with evaluate and stream, errors read as GradserveError. Raw graphs
// and explicit plan digests go through evaluateRaw. tests/test_node_client.py starts the
// suite's server and names it in GRADSERVE_CONFORMANCE_TARGET.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { once } from "node:events";
import { Client, Graph, GradserveError } from "../gradserve.js";
import { needs } from "../testing/servers.js";

const env = process.env;
const skip = needs("GRADSERVE_CONFORMANCE_TARGET", "GRADSERVE_CONFORMANCE_CASES");
const suite = skip ? { cases: [] } : JSON.parse(readFileSync(env.GRADSERVE_CONFORMANCE_CASES, "utf8"));

/** The case's graph: {graph, nodes} from the builder, or {raw} columns as they are. */
function build(spec) {
  if (spec.raw) return { raw: spec.raw };
  const graph = new Graph();
  const nodes = [];
  const add = (node) => {
    if ("leaf" in node) {
      nodes.push(graph.leaf(node.leaf, node.label ?? ""));
      return;
    }
    const inputs = node.inputs.map((id) => nodes[id < 0 ? nodes.length + id : id]);
    nodes.push(graph.apply(node.op, ...inputs).label(node.label ?? ""));
  };
  if (spec.nodes) spec.nodes.forEach(add);
  if (spec.chain) {
    spec.chain.leaves.forEach(add);
    for (let i = 0; i < spec.chain.repeat; i++) spec.chain.steps.forEach(add);
  }
  return { graph, nodes };
}

async function unusedTarget() {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return `127.0.0.1:${port}`;
}

function close(got, want, what) {
  assert.equal(got.length, want.length, `${what}: ${got.length} results, expected ${want.length}`);
  const { absolute, relative } = suite.tolerance;
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]) <= absolute + relative * Math.abs(want[i]), `${what}[${i}]: ${g} != ${want[i]}`));
}

const sum = (xs) => xs.reduce((total, x) => total + x, 0);

function checkError(error, expect) {
  assert.ok(error instanceof GradserveError, `expected ${expect.status}, got ${error}`);
  assert.equal(error.codeName, expect.status, error.details);
  for (const text of expect.message_contains) assert.ok(error.details.includes(text), `${text} not in ${error.details}`);
  if ("field" in expect) assert.equal(error.field, expect.field);
  if ("node" in expect) assert.equal(error.node, expect.node, error.details);
}

function checkResults(result, chunks, expect) {
  if (expect.node_ids) {
    assert.deepEqual(result.node_ids, expect.node_ids);
    close(result.values, expect.values, "values");
    close(result.grads, expect.grads, "grads");
  }
  if (expect.samples) {
    const position = new Map(result.node_ids.map((id, i) => [id, i]));
    const picks = expect.samples.node_ids.map((id) => position.get(id));
    close(picks.map((i) => result.values[i]), expect.samples.values, "sample values");
    close(picks.map((i) => result.grads[i]), expect.samples.grads, "sample grads");
    close([sum(result.values)], [expect.value_sum], "value sum");
    close([sum(result.grads)], [expect.grad_sum], "grad sum");
  }
  if (expect.total_nodes) assert.equal(result.node_ids.length, expect.total_nodes);
  if (expect.chunks) assert.equal(chunks, expect.chunks);
  if (expect.rows) assert.equal(result.rows, expect.rows);
  if (expect.plan_digest_length) assert.equal(result.plan_digest.length, expect.plan_digest_length);
}

async function run(built, call, client) {
  const spec = call.request;
  const options = spec.deadline_ms ? { deadlineMs: spec.deadline_ms } : {};
  if (call.rpc === "ListOps") {
    const ops = await client.listOps(options);
    const names = ops.map((op) => op.name);
    assert.deepEqual(names, [...names].sort());
    for (const want of call.expect.ops) {
      const op = ops.find((o) => o.name === want.name);
      assert.deepEqual([op?.arity, op?.variadic], [want.arity, want.variadic], want.name);
    }
    return;
  }
  const { graph, nodes, raw } = built;
  const pick = (ids) => ids?.map((id) => nodes[id]);
  let result;
  let chunks = 1;
  try {
    if (raw || spec.plan_digest) {
      const message = { graph: raw ?? graph.toProto() };
      if (spec.plan_digest) {
        message.plan_digest = Buffer.from(spec.plan_digest, "hex");
        message.graph = { leaf_values: spec.leaf_values ?? message.graph.leaf_values };
      }
      result = await client.evaluateRaw(message, options);
    } else {
      if (spec.plan === "previous") assert.ok(graph.planDigest, "the graph has no plan digest to reuse");
      const leaves = nodes.filter((node) => graph.node_ops[node.id] === 0);
      (spec.leaf_values ?? []).forEach((value, i) => graph.setLeaf(leaves[i], value));
      const request = {
        outputs: pick(spec.outputs), seeds: spec.seeds, selection: spec.selection, nodes: pick(spec.nodes),
        rows: spec.rows, allow_non_finite: spec.allow_non_finite, chunk_size: spec.chunk_size,
      };
      if (call.rpc === "Evaluate") {
        result = await client.evaluate(graph, request, options);
      } else {
        const abort = new AbortController();
        result = { node_ids: [], values: [], grads: [] };
        chunks = 0;
        for await (const chunk of client.stream(graph, request, { ...options, signal: abort.signal })) {
          chunks++;
          assert.ok(chunk.total_nodes > 0);
          result.node_ids.push(...chunk.node_ids);
          result.values.push(...chunk.values);
          result.grads.push(...chunk.grads);
          Object.assign(result, { rows: chunk.rows, plan_digest: chunk.plan_digest });
          if (chunks === spec.cancel_after_chunks) abort.abort();
        }
      }
    }
  } catch (error) {
    if (call.expect.status === "OK" || !(error instanceof GradserveError)) throw error;
    checkError(error, call.expect);
    return;
  }
  assert.equal(call.expect.status, "OK", `expected ${call.expect.status}, the call succeeded`);
  checkResults(result, chunks, call.expect);
}

test("the conformance suite", { skip }, async (t) => {
  const client = new Client(env.GRADSERVE_CONFORMANCE_TARGET, { token: env.GRADSERVE_CONFORMANCE_TOKEN, timeoutMs: 60_000 });
  const started = performance.now();
  try {
    for (const testCase of suite.cases) {
      await t.test(testCase.name, async () => {
        const built = testCase.graph ? build(testCase.graph) : {};
        for (const call of testCase.calls) {
          const { token, target } = call.request;
          let other = null;
          if (token !== undefined) {
            other = new Client(env.GRADSERVE_CONFORMANCE_TARGET, { token, timeoutMs: 60_000 });
          } else if (target === "unreachable") {
            other = new Client(await unusedTarget(), { timeoutMs: 60_000 });
          }
          try {
            await run(built, call, other ?? client);
          } finally {
            other?.close();
          }
        }
      });
    }
  } finally {
    client.close();
  }
  t.diagnostic(`conformance suite: ${suite.cases.length} cases in ${((performance.now() - started) / 1000).toFixed(2)} s`);
});
