#!/usr/bin/env node
// The notebook's neuron, o = tanh(x1*w1 + x2*w2 + b), evaluated by a gradserve server.
//   node neuron.js [host:port]        (default localhost:50051)
import { pathToFileURL } from "node:url";
import { connect, evaluate, evaluateStream } from "./gradserve.js";

export const LABELS = ["x1", "x2", "w1", "w2", "b", "x1*w1", "x2*w2", "x1w1+x2w2", "n", "o"];

/** The graph in columnar form: node i reads only nodes before it. */
export function neuronRequest() {
  return {
    graph: {
      op_names: ["mul", "add", "tanh"], // node_ops: 0 = leaf, k = op_names[k - 1]
      node_ops: [0, 0, 0, 0, 0, 1, 1, 2, 2, 3],
      input_counts: [0, 0, 0, 0, 0, 2, 2, 2, 2, 1],
      input_ids: [0, 2, 1, 3, 5, 6, 7, 4, 8],
      leaf_values: [2.0, 0.0, -3.0, 1.0, 6.8813735870195432], // x1, x2, w1, w2, b
      labels: LABELS,
    },
    selection: "SELECTION_ALL",
  };
}

function show(title, result) {
  console.log(title);
  result.node_ids.forEach((id, i) => {
    const value = result.values[i].toFixed(4).padStart(8);
    const grad = result.grads[i].toFixed(4).padStart(8);
    console.log(`  ${LABELS[id].padEnd(10)} value ${value}  grad ${grad}`);
  });
}

async function main(target = "localhost:50051") {
  const client = connect(target);
  try {
    show("Evaluate", await evaluate(client, neuronRequest()));
    show("EvaluateStream", await evaluateStream(client, { ...neuronRequest(), chunk_size: 4 }));
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
