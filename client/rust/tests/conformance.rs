//! The conformance suite (conformance/cases.json, see conformance/README.md) through this
//! client: graphs built with the builder, calls made with `evaluate` and `stream`, errors
//! read as `Error`. Graphs given as raw columns, and explicit plan digests, go through the
//! generated stub (`Client::stub`). One line per case, then "N passed, N failed".

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::env;
use gradserve::pb::{self, Selection};
use gradserve::{code_name, CancellationToken, Client, Error, Evaluation, Graph, Node, Request};
use serde::Deserialize;

#[derive(Deserialize)]
struct Suite {
    tolerance: Tolerance,
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone, Copy)]
struct Tolerance {
    absolute: f64,
    relative: f64,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    graph: Option<GraphSpec>,
    calls: Vec<Call>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum GraphSpec {
    Nodes(Vec<NodeSpec>),
    Raw(RawGraph),
    Chain { leaves: Vec<NodeSpec>, repeat: usize, steps: Vec<NodeSpec> },
}

/// The Graph message's columns as they are, for graphs a builder would refuse to make.
#[derive(Deserialize, Clone)]
struct RawGraph {
    op_names: Vec<String>,
    node_ops: Vec<u32>,
    input_counts: Vec<u32>,
    input_ids: Vec<u32>,
    leaf_values: Vec<f64>,
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Deserialize)]
struct NodeSpec {
    leaf: Option<f64>,
    #[serde(default)]
    op: String,
    #[serde(default)]
    inputs: Vec<i64>,
    #[serde(default)]
    label: String,
}

#[derive(Deserialize)]
struct Call {
    rpc: String,
    request: CallRequest,
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CallRequest {
    outputs: Vec<usize>,
    seeds: Vec<f64>,
    selection: Option<String>,
    nodes: Vec<usize>,
    chunk_size: u32,
    allow_non_finite: bool,
    rows: Vec<Vec<f64>>,
    leaf_values: Option<Vec<f64>>,
    plan: Option<String>,
    plan_digest: Option<String>,
    token: Option<String>,
    deadline_ms: Option<u64>,
    cancel_after_chunks: Option<usize>,
    target: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Expect {
    status: String,
    node_ids: Option<Vec<u32>>,
    values: Vec<f64>,
    grads: Vec<f64>,
    rows: Option<u32>,
    plan_digest_length: Option<usize>,
    chunks: Option<usize>,
    total_nodes: Option<usize>,
    samples: Option<Samples>,
    value_sum: Option<f64>,
    grad_sum: Option<f64>,
    message_contains: Vec<String>,
    field: Option<String>,
    node: Option<u32>,
    ops: Vec<OpSpec>,
}

#[derive(Deserialize, Default)]
struct Samples {
    node_ids: Vec<u32>,
    values: Vec<f64>,
    grads: Vec<f64>,
}

#[derive(Deserialize)]
struct OpSpec {
    name: String,
    arity: u32,
    variadic: bool,
}

/// One case's state: its graph (built, or raw columns) and the clients it calls through.
struct Runner {
    client: Client,
    target: String,
    token: String,
    tolerance: Tolerance,
    graph: Graph,
    nodes: Vec<Node>,
    raw: Option<pb::Graph>,
}

/// A call's results, whichever way it was made: the results (chunks joined) and the count
/// of messages.
type Outcome = Result<(Evaluation, usize), Error>;

fn main() {
    let target = env("GRADSERVE_CONFORMANCE_TARGET");
    let token = env("GRADSERVE_CONFORMANCE_TOKEN");
    let cases = std::fs::read_to_string(env("GRADSERVE_CONFORMANCE_CASES")).unwrap();
    let suite: Suite = serde_json::from_str(&cases).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let (mut passed, mut failed) = (0, 0);
    for case in &suite.cases {
        let outcome = runtime.block_on(run_case(case, &target, &token, suite.tolerance));
        match outcome {
            Ok(()) => passed += 1,
            Err(_) => failed += 1,
        }
        let verdict = outcome.err().map_or("ok".to_owned(), |why| format!("FAILED: {why}"));
        println!("test conformance::{} ... {verdict}", case.name);
    }
    println!(
        "conformance suite: {} cases in {:.2} s",
        suite.cases.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 && passed > 0 { 0 } else { 1 });
}

async fn run_case(
    case: &Case,
    target: &str,
    token: &str,
    tolerance: Tolerance,
) -> Result<(), String> {
    let client = Client::builder(target).token(token).build().map_err(|e| e.to_string())?;
    let mut runner = Runner {
        client,
        target: target.to_owned(),
        token: token.to_owned(),
        tolerance,
        graph: Graph::new(),
        nodes: Vec::new(),
        raw: None,
    };
    match &case.graph {
        None => {}
        Some(GraphSpec::Raw(raw)) => {
            let raw = raw.clone();
            runner.raw = Some(pb::Graph {
                op_names: raw.op_names,
                node_ops: raw.node_ops,
                input_counts: raw.input_counts,
                input_ids: raw.input_ids,
                leaf_values: raw.leaf_values,
                labels: raw.labels,
            });
        }
        Some(GraphSpec::Nodes(nodes)) => nodes.iter().for_each(|node| runner.add(node)),
        Some(GraphSpec::Chain { leaves, repeat, steps }) => {
            leaves.iter().for_each(|node| runner.add(node));
            for _ in 0..*repeat {
                steps.iter().for_each(|node| runner.add(node));
            }
        }
    }
    for (i, call) in case.calls.iter().enumerate() {
        runner.run(call).await.map_err(|why| format!("call {i} ({}): {why}", call.rpc))?;
    }
    Ok(())
}

impl Runner {
    fn add(&mut self, spec: &NodeSpec) {
        let node = match spec.leaf {
            Some(value) => self.graph.leaf(value),
            None => {
                let count = self.nodes.len() as i64;
                let inputs: Vec<&Node> = spec
                    .inputs
                    .iter()
                    .map(|&id| &self.nodes[(if id < 0 { id + count } else { id }) as usize])
                    .collect();
                self.graph.apply(&spec.op, inputs)
            }
        };
        self.nodes.push(node.label(&spec.label));
    }

    async fn run(&mut self, call: &Call) -> Result<(), String> {
        let spec = &call.request;
        let mut client = self.client.clone();
        if let Some(token) = &spec.token {
            let builder = Client::builder(&self.target);
            let builder = if token.is_empty() { builder } else { builder.token(token) };
            client = builder.build().map_err(|e| e.to_string())?;
        }
        if spec.target.as_deref() == Some("unreachable") {
            client = Client::builder(unused_target())
                .token(&self.token)
                .build()
                .map_err(|e| e.to_string())?;
        }
        if call.rpc == "ListOps" {
            return check_ops(&client, &call.expect).await;
        }
        let outcome = if self.raw.is_some() || spec.plan_digest.is_some() {
            self.raw_call(&client, spec).await?
        } else if call.rpc == "Evaluate" {
            let request = self.request(spec)?;
            client.evaluate(&self.graph, &request).await.map(|results| (results, 1))
        } else {
            self.stream(&client, spec).await?
        };
        self.check(&call.expect, outcome)
    }

    fn request(&self, spec: &CallRequest) -> Result<Request, String> {
        if spec.plan.as_deref() == Some("previous") && self.graph.plan_digest().is_none() {
            return Err("the graph has no plan digest to reuse".into());
        }
        let leaves = self.graph.leaves();
        for (leaf, &value) in leaves.iter().zip(spec.leaf_values.iter().flatten()) {
            self.graph.set_leaf(leaf, value);
        }
        let selection = spec
            .selection
            .as_deref()
            .map_or(Some(Selection::Unspecified), Selection::from_str_name);
        Ok(Request {
            outputs: spec.outputs.iter().map(|&id| self.nodes[id].clone()).collect(),
            seeds: spec.seeds.clone(),
            selection: selection.ok_or("an unknown selection")?,
            nodes: spec.nodes.iter().map(|&id| self.nodes[id].clone()).collect(),
            rows: spec.rows.clone(),
            allow_non_finite: spec.allow_non_finite,
            chunk_size: spec.chunk_size,
            timeout: spec.deadline_ms.map(Duration::from_millis),
            ..Request::default()
        })
    }

    /// A stream's chunks joined into one result, cancelled after `cancel_after_chunks`.
    async fn stream(&self, client: &Client, spec: &CallRequest) -> Result<Outcome, String> {
        let cancel = CancellationToken::new();
        let request = Request { cancel: Some(cancel.clone()), ..self.request(spec)? };
        let mut chunks = match client.stream(&self.graph, &request).await {
            Ok(chunks) => chunks,
            Err(error) => return Ok(Err(error)),
        };
        let (mut all, mut count) = (Evaluation::default(), 0);
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => return Ok(Err(error)),
            };
            count += 1;
            if chunk.total_nodes == 0 {
                return Err(format!("chunk {count} has total_nodes 0"));
            }
            all.node_ids.extend(chunk.results.node_ids);
            all.values.extend(chunk.results.values);
            all.grads.extend(chunk.results.grads);
            (all.rows, all.plan_digest) = (chunk.results.rows, chunk.results.plan_digest);
            if spec.cancel_after_chunks == Some(count) {
                cancel.cancel();
            }
        }
        Ok(Ok((all, count)))
    }

    /// The case's request through the generated stub: a raw graph, or an explicit digest.
    async fn raw_call(&self, client: &Client, spec: &CallRequest) -> Result<Outcome, String> {
        let mut graph = self.raw.clone().unwrap_or_else(|| self.graph.to_proto());
        let mut plan_digest = Vec::new();
        if let Some(hex) = &spec.plan_digest {
            plan_digest = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            graph = pb::Graph { leaf_values: graph.leaf_values, ..Default::default() };
        }
        if let Some(values) = &spec.leaf_values {
            graph.leaf_values = values.clone();
        }
        let request = pb::EvaluateRequest { graph: Some(graph), plan_digest, ..Default::default() };
        Ok(match client.stub().evaluate(request).await {
            Ok(reply) => Ok((Evaluation::from(reply.into_inner()), 1)),
            Err(status) => Err(client.error(status)),
        })
    }

    fn check(&self, expect: &Expect, outcome: Outcome) -> Result<(), String> {
        if expect.status != "OK" {
            let error = match outcome {
                Ok(_) => return Err(format!("expected {}, the call succeeded", expect.status)),
                Err(error) => error,
            };
            let status =
                error.status().ok_or_else(|| format!("expected {}, got {error}", expect.status))?;
            if code_name(status.code) != expect.status {
                return Err(format!("expected {}, got {error:?}", expect.status));
            }
            for text in &expect.message_contains {
                if !status.message.contains(text.as_str()) {
                    return Err(format!("{text:?} not in the message {:?}", status.message));
                }
            }
            if expect.field.is_some() && status.field() != expect.field.as_deref() {
                return Err(format!("field {:?}, expected {:?}", status.field(), expect.field));
            }
            if expect.node.is_some() && status.node != expect.node {
                return Err(format!(
                    "node {:?}, expected {:?} ({})",
                    status.node, expect.node, status.message
                ));
            }
            return Ok(());
        }
        let (results, chunks) = outcome.map_err(|error| format!("the call failed: {error}"))?;
        if let Some(ids) = &expect.node_ids {
            if &results.node_ids != ids {
                return Err(format!("node ids {:?}, expected {ids:?}", results.node_ids));
            }
            self.close("values", &results.values, &expect.values)?;
            self.close("grads", &results.grads, &expect.grads)?;
        }
        if let Some(samples) = &expect.samples {
            let position: HashMap<u32, usize> =
                results.node_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
            let at = |xs: &[f64]| -> Vec<f64> {
                samples.node_ids.iter().map(|id| xs[position[id]]).collect()
            };
            self.close("sample values", &at(&results.values), &samples.values)?;
            self.close("sample grads", &at(&results.grads), &samples.grads)?;
            let sum = |xs: &[f64]| xs.iter().sum::<f64>();
            self.close("value sum", &[sum(&results.values)], &[expect.value_sum.unwrap()])?;
            self.close("grad sum", &[sum(&results.grads)], &[expect.grad_sum.unwrap()])?;
        }
        let counts = [
            ("nodes", expect.total_nodes, results.node_ids.len()),
            ("chunks", expect.chunks, chunks),
            ("rows", expect.rows.map(|rows| rows as usize), results.rows as usize),
            ("plan digest bytes", expect.plan_digest_length, results.plan_digest.len()),
        ];
        for (what, want, got) in counts {
            if want.is_some_and(|want| want != got) {
                return Err(format!("{got} {what}, expected {}", want.unwrap()));
            }
        }
        Ok(())
    }

    fn close(&self, what: &str, got: &[f64], want: &[f64]) -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!("{what}: {} results, expected {}", got.len(), want.len()));
        }
        let Tolerance { absolute, relative } = self.tolerance;
        match got.iter().zip(want).position(|(g, w)| (g - w).abs() > absolute + relative * w.abs())
        {
            Some(i) => Err(format!("{what}[{i}]: {}, expected {}", got[i], want[i])),
            None => Ok(()),
        }
    }
}

async fn check_ops(client: &Client, expect: &Expect) -> Result<(), String> {
    let ops = client.list_ops().await.map_err(|error| error.to_string())?;
    if !ops.windows(2).all(|pair| pair[0].name < pair[1].name) {
        return Err("the ops are not sorted by name".into());
    }
    for want in &expect.ops {
        let listed = ops.iter().find(|op| op.name == want.name);
        if !listed.is_some_and(|op| op.arity == want.arity && op.variadic == want.variadic) {
            return Err(format!("op {}: listed as {listed:?}", want.name));
        }
    }
    Ok(())
}

/// An address where nothing listens (a port that was free a moment ago).
fn unused_target() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}
