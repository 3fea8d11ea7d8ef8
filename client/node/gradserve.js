// A gradserve client for Node.js: a graph builder, a Client with TLS, mutual TLS, bearer
// tokens and deadlines, plan-digest reuse, and typed errors carrying the server's
// google.rpc.BadRequest details. The service definition is loaded from the .proto files
// at run time (no generated code). Types: gradserve.d.ts.
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

// The installed package carries the .proto files beside this file (npm pack copies them,
// scripts/bundle-protos.js); in the repository they are its protos/ folder.
const BUNDLED_PROTOS = fileURLToPath(new URL("./protos", import.meta.url));
export const PROTO_ROOT = existsSync(BUNDLED_PROTOS)
  ? BUNDLED_PROTOS
  : fileURLToPath(new URL("../../protos", import.meta.url));
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024; // the server's default limit
/** Where `new Client()` connects without a target or GRADSERVE_TARGET. */
export const DEFAULT_TARGET = "localhost:50051";
/** Graphs above this many nodes come back through EvaluateStream in backward(). */
export const STREAM_ABOVE = 1 << 20;

const definition = protoLoader.loadSync(path.join("gradserve", "v1", "gradserve.proto"), {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names as in the .proto: node_ops, leaf_values, ...
  longs: Number,
  enums: String,
  defaults: true,
});
const { GradientService } = grpc.loadPackageDefinition(definition).gradserve.v1;
/** gRPC's service config for every gradserve client: retry UNAVAILABLE with backoff (every
 * call is a pure function of its request). The one copy lives beside the .proto. */
export const SERVICE_CONFIG = readFileSync(path.join(PROTO_ROOT, "gradserve", "v1", "service_config.json"), "utf8");

// --- errors ------------------------------------------------------------------------------

// google.rpc.Status and BadRequest, the two messages of the grpc-status-details-bin trailer.
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: "int32", id: 1 },
                message: { type: "string", id: 2 },
                details: { rule: "repeated", type: "Any", id: 3 },
              },
            },
            Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } },
            QuotaFailure: {
              fields: { violations: { rule: "repeated", type: "Violation", id: 1 } },
              nested: {
                Violation: {
                  fields: {
                    subject: { type: "string", id: 1 },
                    description: { type: "string", id: 2 },
                    quota_dimensions: { keyType: "string", type: "string", id: 6 },
                    quota_value: { type: "int64", id: 7 },
                  },
                },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: "repeated", type: "FieldViolation", id: 1 } },
              nested: {
                FieldViolation: {
                  fields: {
                    field: { type: "string", id: 1 },
                    description: { type: "string", id: 2 },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
});
const RpcStatus = rpcTypes.lookupType("google.rpc.Status");
const BadRequest = rpcTypes.lookupType("google.rpc.BadRequest");
const QuotaFailure = rpcTypes.lookupType("google.rpc.QuotaFailure");
const BAD_REQUEST_URL = "type.googleapis.com/google.rpc.BadRequest";
const QUOTA_FAILURE_URL = "type.googleapis.com/google.rpc.QuotaFailure";

// One line that says what to do, in the same words as the Python and Go clients
// (client/gradserve/client/unreachable.py and errors.py; tests/test_client_messages.py).
const MESSAGES = {
  noServer: (target) => `no gradserve server answers at ${target}: start one with \`gradserve serve\`, or set GRADSERVE_TARGET`,
  serverWantsTls: (target) =>
    `the server at ${target} expects TLS and this client connects in plaintext: give the client the CA certificate that signed the server's`,
  serverWantsPlaintext: (target) =>
    `the server at ${target} speaks plaintext and this client connects with TLS: connect without TLS, or start the server with --tls-cert and --tls-key`,
  serverWantsCertificate: (target) =>
    `the server at ${target} refused the TLS connection: it requires a client certificate signed by a CA it trusts (mutual TLS): give the client its certificate and key`,
  serverNotTrusted: (target) =>
    `the server at ${target} presented a certificate this client does not trust: give the client the CA certificate that signed it`,
  deadline: (seconds) => `the call took longer than its timeout of ${formatG(seconds)} s: pass a larger timeout, or send a smaller graph`,
};

/** A number as Python's "{:g}" writes it (6 significant digits; 1e-05, 1e+06). */
function formatG(x) {
  const exponent = x === 0 ? 0 : Math.floor(Math.log10(Math.abs(x)));
  if (exponent < -4 || exponent >= 6) {
    const [mantissa, power] = Number(x.toPrecision(6)).toExponential().split("e");
    const sign = power.startsWith("-") ? "-" : "+";
    return `${mantissa}e${sign}${power.replace(/^[-+]/, "").padStart(2, "0")}`;
  }
  return String(Number(x.toPrecision(6)));
}

/**
 * What went wrong when no call got through (UNAVAILABLE), told apart by grpc-js's words and
 * whether the channel uses TLS; null when the words say none of these.
 */
function unavailable(details, target, tls) {
  const words = details.toLowerCase();
  if (/econnrefused|name resolution failed|enotfound|eai_again/.test(words)) return MESSAGES.noServer(target);
  if (tls && words.includes("wrong version number")) return MESSAGES.serverWantsPlaintext(target);
  if (tls && /unable to verify|unable to get local issuer|self[- ]signed|certificate verify failed/.test(words)) {
    return MESSAGES.serverNotTrusted(target);
  }
  if (words.includes("failed to connect")) {
    return tls ? MESSAGES.serverWantsCertificate(target) : MESSAGES.serverWantsTls(target);
  }
  return null;
}

/** grpc-js's details without its empty trailing "Resolution note: ". */
function cleaned(details) {
  return details.replace(/\.? ?Resolution note: ?$/, "").trimEnd();
}
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/**
 * A failed call. `code` is the gRPC status code (compare with `grpc.status.NOT_FOUND` or
 * read `codeName`), `details` the server's message; client errors carry the BadRequest's
 * `violations`, the first one's `field` ("graph.input_ids[7]"), and `node`, the id the
 * message names (null if none). See the error model in gradserve.proto.
 *
 * When the client can say what to do, `message` is that one line alone, in the Python and
 * Go clients' words: nothing at the target, TLS on one side only, a client certificate the
 * server refused (`auth` true), a server certificate the client does not trust, a deadline.
 * RESOURCE_EXHAUSTED carries the QuotaFailure's `subject`, `limit` and `estimate` (bytes,
 * for the memory budget; null when the server did not say).
 */
export class GradserveError extends Error {
  constructor(code, details, violations = [], { explained = null, auth = false, quota = null } = {}) {
    super(explained ?? `${CODE_NAMES[code] ?? code}: ${details}`);
    this.name = "GradserveError";
    this.code = code;
    this.codeName = CODE_NAMES[code] ?? String(code);
    this.details = details;
    this.violations = violations;
    this.field = violations[0]?.field ?? null;
    const node = /^node (\d+)[ :]/.exec(details);
    this.node = node ? Number(node[1]) : null;
    this.auth = auth;
    this.subject = quota?.subject ?? null;
    this.limit = quota?.limit ?? null;
    this.estimate = quota?.estimate ?? null;
  }

  /**
   * A GradserveError from a grpc-js ServiceError; `where` ({target, tls, timeoutMs}) lets the
   * message name the target and the timeout.
   */
  static from(error, where = {}) {
    if (error instanceof GradserveError || error?.code === undefined) return error;
    const violations = [];
    let quota = null;
    for (const raw of error.metadata?.get("grpc-status-details-bin") ?? []) {
      for (const detail of RpcStatus.decode(raw).details) {
        if (detail.type_url === BAD_REQUEST_URL) {
          for (const v of BadRequest.decode(detail.value).field_violations) {
            violations.push({ field: v.field, description: v.description });
          }
        } else if (detail.type_url === QUOTA_FAILURE_URL) {
          const [v] = QuotaFailure.decode(detail.value).violations;
          if (v) {
            const estimate = v.quota_dimensions?.estimate_bytes;
            quota = { subject: v.subject, limit: Number(v.quota_value) || null, estimate: estimate ? Number(estimate) : null };
          }
        }
      }
    }
    const details = cleaned(error.details ?? "");
    if (error.code === grpc.status.RESOURCE_EXHAUSTED && !quota && violations.length) {
      quota = { subject: violations[0].field, limit: null, estimate: null };
    }
    let explained = null;
    let auth = false;
    if (error.code === grpc.status.UNAVAILABLE && where.target) {
      explained = unavailable(details, where.target, where.tls) ?? `the server at ${where.target} is unavailable: ${details}`;
      auth = explained === MESSAGES.serverWantsCertificate(where.target);
    } else if (error.code === grpc.status.DEADLINE_EXCEEDED && where.timeoutMs !== undefined) {
      explained = MESSAGES.deadline(where.timeoutMs / 1000);
    } else if (error.code === grpc.status.RESOURCE_EXHAUSTED) {
      explained = details;
    }
    return new GradserveError(error.code, details, violations, { explained, auth, quota });
  }
}

// --- the graph builder -----------------------------------------------------------------

/** A node of a Graph; its methods add op nodes that read it: x.mul(w).add(b).tanh(). */
export class Node {
  constructor(graph, id) {
    this.graph = graph;
    this.id = id;
  }

  /** Names the node in error messages; returns the node. */
  label(text) {
    this.graph._label(this.id, text);
    return this;
  }

  /** The forward value from the last Client.backward (NaN before). */
  get value() {
    return this.graph._values?.[this.id] ?? NaN;
  }

  /** d(loss)/d(node) from the last Client.backward (NaN before). */
  get grad() {
    return this.graph._grads?.[this.id] ?? NaN;
  }

  /** The node combined with `other`, a node or a number (a new constant leaf). */
  _with(op, other) {
    return this.graph.apply(op, this, other instanceof Node ? other : this.graph.const(other));
  }
}

const BINARY = ["add", "sub", "mul", "div", "pow", "max", "min"];
const UNARY = ["neg", "exp", "log", "sqrt", "tanh", "sigmoid", "softplus", "relu", "abs", "sin", "cos"];
for (const op of BINARY) {
  Node.prototype[op] = function (other) {
    return this._with(op, other);
  };
}
for (const op of UNARY) {
  Node.prototype[op] = function () {
    return this.graph.apply(op, this);
  };
}

/**
 * A computation graph built in topological order: every method returns the new Node, and a
 * node reads only earlier nodes. The graph keeps the server's plan digest for its structure:
 * later calls send leaf values only, until a node or label is added.
 */
export class Graph {
  constructor() {
    this.op_names = [];
    this.node_ops = [];
    this.input_counts = [];
    this.input_ids = [];
    this.leaf_values = [];
    this.labels = [];
    this.planDigest = null;
    this._opIndex = new Map();
    this._leafOf = new Map(); // node id -> position in leaf_values
  }

  get size() {
    return this.node_ops.length;
  }

  /** A leaf: a value the client gives. */
  leaf(value, label = "") {
    this._leafOf.set(this.size, this.leaf_values.length);
    this.leaf_values.push(value);
    return this._add(0, []).label(label);
  }

  /** A constant: on the wire, a leaf. */
  const(value) {
    return this.leaf(value);
  }

  /** A node applying the op `name` (any op ListOps shows) to `inputs`, in order. */
  apply(name, ...inputs) {
    if (!this._opIndex.has(name)) {
      this.op_names.push(name);
      this._opIndex.set(name, this.op_names.length);
    }
    for (const input of inputs) {
      if (!(input instanceof Node) || input.graph !== this) {
        throw new TypeError(`an input of ${name} is not a node of this graph`);
      }
    }
    return this._add(this._opIndex.get(name), inputs.map((input) => input.id));
  }

  /** x1 + x2 + ... + xn (the variadic op "sum"). */
  sum(...inputs) {
    return this.apply("sum", ...inputs);
  }

  /** Change a leaf's value; the structure and its plan digest stay. */
  setLeaf(node, value) {
    const position = this._leafOf.get(node.id);
    if (position === undefined || node.graph !== this) throw new TypeError(`node ${node.id} is not a leaf`);
    this.leaf_values[position] = value;
  }

  /** The number of leaves (the length of one row of leaf values). */
  get leafCount() {
    return this.leaf_values.length;
  }

  /** The Graph message, with the current leaf values. */
  toProto() {
    const { op_names, node_ops, input_counts, input_ids, leaf_values } = this;
    const labels = this.labels.some(Boolean) ? this.labels : [];
    return { op_names, node_ops, input_counts, input_ids, leaf_values, labels };
  }

  _add(op, inputs) {
    this.planDigest = null; // the structure changed
    this.node_ops.push(op);
    this.input_counts.push(inputs.length);
    for (const id of inputs) this.input_ids.push(id);
    this.labels.push("");
    return new Node(this, this.size - 1);
  }

  _label(id, text) {
    if (this.labels[id] !== text) {
      this.labels[id] = text;
      this.planDigest = null; // labels are part of the structure
    }
  }
}

// --- the client ------------------------------------------------------------------------

function read(file) {
  return file ? readFileSync(file) : null;
}

/**
 * A connection to a gradserve server at `target` ("host:port"; without one, the
 * GRADSERVE_TARGET environment variable, else localhost:50051). Options: `ca` (a PEM file: connect over TLS trusting
 * it), `cert` and `key` (PEM files: a client certificate, mutual TLS), `tls: true` (TLS with
 * the system's roots), `token` (sent as "authorization: Bearer <token>"; use it over TLS),
 * `timeoutMs` (the deadline of calls that set none; otherwise the server's default of
 * 300 s applies), `maxMessageBytes` (default 64 MiB, the server's).
 */
export class Client {
  constructor(target, { ca, cert, key, tls = false, token, timeoutMs, maxMessageBytes = MAX_MESSAGE_BYTES } = {}) {
    target ||= process.env.GRADSERVE_TARGET?.trim() || DEFAULT_TARGET;
    const secure = Boolean(tls || ca || cert);
    this.target = target;
    this.secure = secure;
    const credentials = secure
      ? grpc.credentials.createSsl(read(ca), read(key), read(cert))
      : grpc.credentials.createInsecure();
    this.stub = new GradientService(target, credentials, {
      "grpc.max_receive_message_length": maxMessageBytes,
      "grpc.max_send_message_length": maxMessageBytes,
      "grpc.service_config": SERVICE_CONFIG,
      // gRPC retries only a request it still holds: 256 KiB by default.
      "grpc.per_rpc_retry_buffer_size": maxMessageBytes,
    });
    this.token = token;
    this.timeoutMs = timeoutMs;
  }

  close() {
    this.stub.close();
  }

  /** Call metadata (the token) and options (the deadline) for one call. */
  _call({ deadlineMs, signal } = {}) {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    const timeout = deadlineMs ?? this.timeoutMs;
    const where = { target: this.target, tls: this.secure, timeoutMs: timeout };
    return { metadata, options: timeout === undefined ? {} : { deadline: Date.now() + timeout }, signal, where };
  }

  /** ListOps: the server's ops, sorted by name. */
  async listOps(options) {
    return (await this.evaluateRaw({}, options, "ListOps")).ops;
  }

  /** A unary call with a request message as it is (protocol level): Evaluate by default. */
  evaluateRaw(request, options, method = "Evaluate") {
    const { metadata, options: callOptions, where } = this._call(options);
    return new Promise((resolve, reject) => {
      this.stub[method](request, metadata, callOptions, (error, response) =>
        error ? reject(GradserveError.from(error, where)) : resolve(response),
      );
    });
  }

  /**
   * EvaluateStream with a request message as it is: yields GradientChunk messages. Abort
   * `signal` (an AbortSignal) to cancel the call.
   */
  async *streamRaw(request, options) {
    const { metadata, options: callOptions, signal, where } = this._call(options);
    const call = this.stub.EvaluateStream(request, metadata, callOptions);
    const cancel = () => call.cancel();
    signal?.addEventListener("abort", cancel);
    try {
      for await (const chunk of call) yield chunk;
    } catch (error) {
      throw GradserveError.from(error, where);
    } finally {
      signal?.removeEventListener("abort", cancel);
      call.cancel(); // a no-op once the call has ended; stops it when the caller breaks
    }
  }

  /**
   * Evaluate `graph` and return {node_ids, values, grads, rows, plan_digest}, values and
   * grads row by row. `request`: outputs, seeds (per output), selection ("SELECTION_ALL",
   * ...), nodes, rows (arrays of leaf values, one per leaf), allow_non_finite, and
   * leaf_tangents (one per leaf, or one array per row: the reply then also has
   * value_tangents and grad_tangents, JVPs and HVPs; see the .proto). The graph's
   * structure is sent once; then its plan digest, and the whole graph again if the server
   * answers NOT_FOUND.
   */
  async evaluate(graph, request = {}, options) {
    return this._withPlan(graph, request, (message) => this.evaluateRaw(message, options));
  }

  /** EvaluateStream: yields each chunk {node_ids, values, grads, total_nodes, rows, ...}. */
  async *stream(graph, request = {}, options) {
    let message = wire(graph, request);
    let received = false;
    try {
      for await (const chunk of this.streamRaw(message, options)) {
        received = true;
        keepDigest(graph, chunk);
        yield chunk;
      }
    } catch (error) {
      if (received || !message.plan_digest?.length || error.code !== grpc.status.NOT_FOUND) throw error;
      graph.planDigest = null;
      message = wire(graph, request);
      for await (const chunk of this.streamRaw(message, options)) {
        keepDigest(graph, chunk);
        yield chunk;
      }
    }
  }

  /** Differentiate `loss`; then every node of its graph has .value and .grad. */
  async backward(loss, options) {
    const graph = loss.graph;
    const request = { outputs: [loss], selection: "SELECTION_ALL" };
    const values = new Float64Array(graph.size);
    const grads = new Float64Array(graph.size);
    const keep = (part) =>
      part.node_ids.forEach((id, j) => {
        values[id] = part.values[j];
        grads[id] = part.grads[j];
      });
    if (graph.size > STREAM_ABOVE) {
      for await (const chunk of this.stream(graph, request, options)) keep(chunk);
    } else {
      keep(await this.evaluate(graph, request, options));
    }
    graph._values = values;
    graph._grads = grads;
  }

  async _withPlan(graph, request, call) {
    const message = wire(graph, request);
    let response;
    try {
      response = await call(message);
    } catch (error) {
      if (!message.plan_digest?.length || error.code !== grpc.status.NOT_FOUND) throw error;
      graph.planDigest = null;
      response = await call(wire(graph, request));
    }
    keepDigest(graph, response);
    return response;
  }
}

function keepDigest(graph, reply) {
  if (reply.plan_digest?.length) graph.planDigest = reply.plan_digest;
}

const ids = (graph, nodes = []) =>
  nodes.map((node) => {
    if (!(node instanceof Node) || node.graph !== graph) throw new TypeError("a requested node is not a node of this graph");
    return node.id;
  });

/** The EvaluateRequest for `graph`: its structure, or its plan digest and leaf values. */
function wire(graph, { outputs, seeds = [], selection, nodes, rows, allow_non_finite = false, chunk_size = 0, leaf_tangents = [] }) {
  if (graph.size === 0) throw new TypeError("the graph is empty");
  for (const row of rows ?? []) {
    if (row.length !== graph.leafCount) {
      throw new TypeError(`a row has ${row.length} values; the graph has ${graph.leafCount} leaves`);
    }
  }
  const leaf_values = rows ? rows.flat() : graph.leaf_values;
  return {
    graph: graph.planDigest ? { leaf_values } : { ...graph.toProto(), leaf_values },
    plan_digest: graph.planDigest ?? Buffer.alloc(0),
    outputs: ids(graph, outputs),
    seeds,
    selection: selection ?? "SELECTION_UNSPECIFIED",
    nodes: ids(graph, nodes),
    rows: rows ? rows.length : 0,
    allow_non_finite,
    chunk_size,
    leaf_tangents: leaf_tangents.flat(),
  };
}
