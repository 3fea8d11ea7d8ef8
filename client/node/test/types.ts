// Compiled, not run: `tsc` checks gradserve.d.ts against the README's usage and the API
// (test/types.test.js runs it).
import { Client, Graph, GradserveError, type EvaluateResponse } from "../gradserve.js";

async function main(): Promise<number> {
  const client = new Client("localhost:50051", { ca: "ca.pem", token: "secret", timeoutMs: 5000 });
  const g = new Graph();
  const x = g.leaf(2, "x");
  const w = g.leaf(-3).label("w");
  const y = x.mul(w).add(1).tanh().label("y");
  await client.backward(y);
  const grad: number = x.grad;
  const result: EvaluateResponse = await client.evaluate(g, { outputs: [y], rows: [[1, 2], [3, 4]] }, { deadlineMs: 100 });
  for await (const chunk of client.stream(g, { selection: "SELECTION_ALL", chunk_size: 4 })) {
    const total: number = chunk.total_nodes;
    void total;
  }
  try {
    await client.evaluate(g);
  } catch (error) {
    if (error instanceof GradserveError && error.field !== null) console.log(error.codeName, error.node);
  }
  g.setLeaf(x, 3);
  const digest: Uint8Array | null = g.planDigest;
  void digest;
  client.close();
  return grad + result.values[0] + g.sum(x, w, y).id;
}

void main;
