#!/usr/bin/env node
// The notebook's neuron, o = tanh(x1*w1 + x2*w2 + b), evaluated by a gradserve server.
//   node neuron.js [host:port]        (default localhost:50051)
import { pathToFileURL } from "node:url";
import { Client, Graph } from "./gradserve.js";

/** The neuron, built node by node: the graph, its leaves and its output. */
export function neuron() {
  const g = new Graph();
  const [x1, x2] = [g.leaf(2.0, "x1"), g.leaf(0.0, "x2")];
  const [w1, w2] = [g.leaf(-3.0, "w1"), g.leaf(1.0, "w2")];
  const b = g.leaf(6.8813735870195432, "b");
  const sum = x1.mul(w1).label("x1*w1").add(x2.mul(w2).label("x2*w2")).label("x1w1+x2w2");
  const o = sum.add(b).label("n").tanh().label("o");
  return { g, x1, x2, w1, w2, b, o };
}

function show(title, g, parts) {
  console.log(title);
  for (const part of parts) {
    part.node_ids.forEach((id, i) => {
      const value = part.values[i].toFixed(4).padStart(8);
      const grad = part.grads[i].toFixed(4).padStart(8);
      console.log(`  ${g.labels[id].padEnd(10)} value ${value}  grad ${grad}`);
    });
  }
}

async function main(target = "localhost:50051") {
  const client = new Client(target, { timeoutMs: 30_000 });
  const { g } = neuron();
  try {
    show("Evaluate", g, [await client.evaluate(g, { selection: "SELECTION_ALL" })]);
    const chunks = [];
    for await (const chunk of client.stream(g, { selection: "SELECTION_ALL", chunk_size: 4 })) chunks.push(chunk);
    show("EvaluateStream", g, chunks);
  } finally {
    client.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv[2]).catch((error) => {
    console.error(`gradserve: ${error.details ?? error.message}`);
    process.exitCode = 1;
  });
}
