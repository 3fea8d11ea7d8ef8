// Types for gradserve.js. Messages use the .proto's field names (keepCase).

/** The root folder of the .proto files. */
export const PROTO_ROOT: string;
/** The server's default message limit, which the client matches: 64 MiB. */
export const MAX_MESSAGE_BYTES: number;
/** gRPC's service config (JSON) every client uses: retry UNAVAILABLE with backoff. */
export const SERVICE_CONFIG: string;
/** Where `new Client()` connects without a target or GRADSERVE_TARGET. */
export const DEFAULT_TARGET: string;
/** Graphs above this many nodes come back through EvaluateStream in backward(). */
export const STREAM_ABOVE: number;

export type Selection = "SELECTION_UNSPECIFIED" | "SELECTION_ALL" | "SELECTION_LEAVES" | "SELECTION_NODES";

/** The Graph message in columnar form. */
export interface GraphMessage {
  op_names?: string[];
  node_ops?: number[];
  input_counts?: number[];
  input_ids?: number[];
  leaf_values?: number[];
  labels?: string[];
}

/** The EvaluateRequest message, for evaluateRaw and streamRaw. */
export interface EvaluateRequestMessage {
  graph?: GraphMessage;
  outputs?: number[];
  seeds?: number[];
  selection?: Selection;
  nodes?: number[];
  chunk_size?: number;
  plan_digest?: Uint8Array;
  rows?: number;
  allow_non_finite?: boolean;
  leaf_tangents?: number[];
}

/** The results of Evaluate; values and grads row by row. */
export interface EvaluateResponse {
  node_ids: number[];
  values: number[];
  grads: number[];
  plan_digest: Uint8Array;
  rows: number;
  /** With leaf_tangents: each selected node's value tangent (JVP), laid out as values. */
  value_tangents: number[];
  /** With leaf_tangents: each selected node's gradient tangent (HVP), laid out as grads. */
  grad_tangents: number[];
}

/** One EvaluateStream chunk. */
export interface GradientChunk extends EvaluateResponse {
  total_nodes: number;
  /** The first row this chunk holds (0 unless the rows came in blocks). */
  first_row: number;
}

export interface OpInfo {
  name: string;
  arity: number;
  variadic: boolean;
  doc: string;
  distribution: string;
  version: string;
  entry_point: string;
  second_order: boolean;
}

export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call, with the status code and the server's BadRequest details. */
export class GradserveError extends Error {
  /** The gRPC status code (grpc.status.INVALID_ARGUMENT, ...). */
  code: number;
  /** Its name: "INVALID_ARGUMENT", "NOT_FOUND", ... */
  codeName: string;
  /** The server's message. */
  details: string;
  violations: FieldViolation[];
  /** The first violation's field, e.g. "graph.input_ids[7]", or null. */
  field: string | null;
  /** The node the message names ("node 7 ..."), or null. */
  node: number | null;
  /** True when the server refused the client's TLS identity (no or a foreign certificate). */
  auth: boolean;
  /** RESOURCE_EXHAUSTED: the limit's name ("max-memory-mb", a request field), or null. */
  subject: string | null;
  /** RESOURCE_EXHAUSTED: the limit (bytes for the memory budget), or null. */
  limit: number | null;
  /** RESOURCE_EXHAUSTED: the server's estimate of what the call needs (bytes), or null. */
  estimate: number | null;
  constructor(
    code: number,
    details: string,
    violations?: FieldViolation[],
    extra?: { explained?: string | null; auth?: boolean; quota?: { subject: string; limit: number | null; estimate: number | null } | null },
  );
  static from(error: unknown, where?: { target?: string; tls?: boolean; timeoutMs?: number }): unknown;
}

type Operand = Node | number;

/** A node of a Graph; its methods add op nodes that read it. */
export class Node {
  readonly graph: Graph;
  readonly id: number;
  label(text: string): this;
  /** The forward value from the last Client.backward (NaN before). */
  readonly value: number;
  /** d(loss)/d(node) from the last Client.backward (NaN before). */
  readonly grad: number;
  add(other: Operand): Node;
  sub(other: Operand): Node;
  mul(other: Operand): Node;
  div(other: Operand): Node;
  pow(other: Operand): Node;
  max(other: Operand): Node;
  min(other: Operand): Node;
  neg(): Node;
  exp(): Node;
  log(): Node;
  sqrt(): Node;
  tanh(): Node;
  sigmoid(): Node;
  softplus(): Node;
  relu(): Node;
  abs(): Node;
  sin(): Node;
  cos(): Node;
}

/** A computation graph built in topological order; keeps its plan digest between calls. */
export class Graph {
  readonly op_names: string[];
  readonly node_ops: number[];
  readonly input_counts: number[];
  readonly input_ids: number[];
  readonly leaf_values: number[];
  readonly labels: string[];
  /** The server's digest of the current structure, or null. */
  planDigest: Uint8Array | null;
  readonly size: number;
  readonly leafCount: number;
  leaf(value: number, label?: string): Node;
  const(value: number): Node;
  apply(name: string, ...inputs: Node[]): Node;
  sum(...inputs: Node[]): Node;
  setLeaf(node: Node, value: number): void;
  toProto(): Required<GraphMessage>;
}

export interface Request {
  outputs?: Node[];
  seeds?: number[];
  selection?: Selection;
  nodes?: Node[];
  /** Rows of leaf values, one value per leaf each: the graph is evaluated at every row. */
  rows?: number[][];
  allow_non_finite?: boolean;
  chunk_size?: number;
  /** A tangent per leaf (or an array per row): the reply then has JVPs and HVPs. */
  leaf_tangents?: number[] | number[][];
}

export interface CallOptions {
  /** This call's deadline, in milliseconds from now (wins over the client's timeoutMs). */
  deadlineMs?: number;
  /** Aborting it cancels a stream. */
  signal?: AbortSignal;
}

export interface ClientOptions {
  /** A PEM file of CA certificates to trust: connect over TLS. */
  ca?: string;
  /** PEM files of a client certificate and its key: mutual TLS. */
  cert?: string;
  key?: string;
  /** TLS with the system's roots. */
  tls?: boolean;
  /** Sent as "authorization: Bearer <token>"; use it over TLS. */
  token?: string;
  /** The deadline of calls that set none (otherwise the server's 300 s applies). */
  timeoutMs?: number;
  maxMessageBytes?: number;
}

export class Client {
  /** `target` "host:port"; without one, GRADSERVE_TARGET, else DEFAULT_TARGET. */
  constructor(target?: string, options?: ClientOptions);
  readonly target: string;
  /** Whether the channel uses TLS. */
  readonly secure: boolean;
  close(): void;
  listOps(options?: CallOptions): Promise<OpInfo[]>;
  evaluate(graph: Graph, request?: Request, options?: CallOptions): Promise<EvaluateResponse>;
  stream(graph: Graph, request?: Request, options?: CallOptions): AsyncGenerator<GradientChunk>;
  backward(loss: Node, options?: CallOptions): Promise<void>;
  evaluateRaw(request: EvaluateRequestMessage, options?: CallOptions): Promise<EvaluateResponse>;
  evaluateRaw(request: Record<string, never>, options: CallOptions | undefined, method: "ListOps"): Promise<{ ops: OpInfo[] }>;
  streamRaw(request: EvaluateRequestMessage, options?: CallOptions): AsyncGenerator<GradientChunk>;
}
