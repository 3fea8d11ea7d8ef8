// A gradserve client for Node.js: loads the service definition straight from the repository's
// protos/ folder (no generated code) and wraps the two evaluation calls in promises.
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

export const PROTO_ROOT = fileURLToPath(new URL("../../protos", import.meta.url));
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024; // the server's default limit

const definition = protoLoader.loadSync(path.join("gradserve", "v1", "gradserve.proto"), {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names as in the .proto: node_ops, leaf_values, ...
  longs: Number,
  enums: String,
  defaults: true,
});
const { GradientService } = grpc.loadPackageDefinition(definition).gradserve.v1;

/** A GradientService client on an insecure channel to `target` ("host:port"). */
export function connect(target) {
  return new GradientService(target, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  });
}

/** Evaluate: one EvaluateResponse {node_ids, values, grads}, and value_tangents and
 * grad_tangents (JVPs, HVPs) when the request has leaf_tangents. */
export function evaluate(client, request, { deadlineMs = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    client.Evaluate(request, { deadline: Date.now() + deadlineMs }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** EvaluateStream: the chunks' node_ids, values, grads, value_tangents and grad_tangents
 * (empty without leaf_tangents) joined into one result (one row per chunk). */
export async function evaluateStream(client, request, { deadlineMs = 30_000 } = {}) {
  const fields = ["node_ids", "values", "grads", "value_tangents", "grad_tangents"];
  const result = Object.fromEntries(fields.map((field) => [field, []]));
  const stream = client.EvaluateStream(request, { deadline: Date.now() + deadlineMs });
  for await (const chunk of stream) {
    for (const field of fields) result[field].push(...chunk[field]);
  }
  return result;
}
