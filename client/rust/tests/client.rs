//! The client against live servers: two it starts itself (`gradserve serve`), and those
//! tests/test_rust_client.py starts: the conformance server (plaintext, bearer token), a TLS
//! server and a mutual-TLS server with a token. Expected numbers are closed forms.

mod common;

use std::time::Duration;

use common::{conformance_client, env, mtls_client, near, neuron, Server, B};
use gradserve::pb::{self, Selection};
use gradserve::{CancellationToken, Client, Code, Error, Graph, Request};

/// n = x1*w1 + x2*w2 + b at the neuron's leaves, and d tanh(n)/dn.
fn neuron_closed_form(x1: f64, x2: f64, w1: f64, w2: f64, b: f64) -> (f64, f64) {
    let n = x1 * w1 + x2 * w2 + b;
    (n, 1.0 - n.tanh().powi(2))
}

#[tokio::test]
async fn backward_fills_every_value_and_gradient() {
    let server = Server::start(&["--workers", "1"]);
    let client = Client::builder(&server.target).timeout(Duration::from_secs(60)).build().unwrap();
    let neuron = neuron();
    client.backward(&neuron.o).await.unwrap();
    let (n, dn) = neuron_closed_form(2.0, 0.0, -3.0, 1.0, B);
    near("o", neuron.o.value(), n.tanh());
    near("n", neuron.n.value(), n);
    near("do/dx1", neuron.x1.grad(), -3.0 * dn);
    near("do/dw1", neuron.w1.grad(), 2.0 * dn);
    near("do/dx2", neuron.x2.grad(), dn);
    near("do/dw2", neuron.w2.grad(), 0.0);
    near("do/db", neuron.b.grad(), dn);
    near("do/do", neuron.o.grad(), 1.0);
}

#[tokio::test]
async fn the_structure_is_sent_once_and_resent_when_the_server_lacks_it() {
    let client = conformance_client();
    let neuron = neuron();
    // A structure of this test's own: the other tests run at the same time on the servers.
    let o = neuron.o.clone().label("the structure is sent once");
    let request = Request { nodes: vec![o.clone()], ..Default::default() };
    let first = client.evaluate(&neuron.graph, &Request::default()).await.unwrap();
    let digest = neuron.graph.plan_digest().expect("the graph keeps the reply's digest");
    assert_eq!((digest.len(), &digest), (16, &first.plan_digest));

    neuron.graph.set_leaf(&neuron.x1, 1.0); // a new value keeps the structure...
    assert_eq!(neuron.graph.plan_digest(), Some(digest.clone()));
    let second = client.evaluate(&neuron.graph, &request).await.unwrap();
    near("o at x1 = 1", second.values[0], (1.0 * -3.0 + B).tanh());

    // Another server process never compiled this structure: it answers the digest with
    // NOT_FOUND, and the client sends the whole graph instead.
    let other = mtls_client();
    assert_lacks(&other, &neuron.graph).await;
    let third = other.evaluate(&neuron.graph, &request).await.unwrap();
    near("o from another server", third.values[0], second.values[0]);

    // Stream does the same.
    let tls = Client::builder(env("GRADSERVE_TLS_TARGET"))
        .tls_ca(env("GRADSERVE_TLS_CA"))
        .build()
        .unwrap();
    assert_lacks(&tls, &neuron.graph).await;
    let mut chunks = tls.stream(&neuron.graph, &request).await.unwrap();
    let chunk = chunks.next().await.unwrap().unwrap();
    assert!(chunks.next().await.is_none());
    near("o streamed from a third server", chunk.results.values[0], second.values[0]);
    assert_eq!(chunk.total_nodes, 1);

    let _ = o.label("output"); // ...a label is structure
    assert_eq!(neuron.graph.plan_digest(), None);
}

/// Checks that the server behind `client` answers the graph's digest with NOT_FOUND, so
/// that a call that then succeeds must have sent the whole graph again.
async fn assert_lacks(client: &Client, graph: &Graph) {
    let request = pb::EvaluateRequest {
        graph: Some(pb::Graph { leaf_values: graph.to_proto().leaf_values, ..Default::default() }),
        plan_digest: graph.plan_digest().unwrap(),
        ..Default::default()
    };
    let status = client.stub().evaluate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "the server should not hold the plan yet");
}

#[tokio::test]
async fn tls_trusts_the_given_ca_and_a_mismatch_says_what_to_do() {
    let target = env("GRADSERVE_TLS_TARGET");
    let tls = Client::builder(&target).tls_ca(env("GRADSERVE_TLS_CA")).build().unwrap();
    let ops = tls.list_ops().await.unwrap();
    assert!(ops.iter().any(|op| op.name == "tanh"), "ListOps over TLS: {ops:?}");

    let unavailable = async |client: Client| match client.list_ops().await {
        Err(Error::Unavailable(status)) => status.summary,
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    };
    let plain = Client::builder(&target).build().unwrap();
    assert_eq!(
        unavailable(plain).await,
        format!(
            "the server at {target} expects TLS and this client connects in plaintext: give the \
             client the CA certificate that signed the server's"
        )
    );
    let system_roots = Client::builder(&target).tls().build().unwrap();
    assert_eq!(
        unavailable(system_roots).await,
        format!(
            "the server at {target} presented a certificate this client does not trust: give \
             the client the CA certificate that signed it"
        )
    );
    let plaintext_server = env("GRADSERVE_CONFORMANCE_TARGET");
    let tls_client = Client::builder(&plaintext_server).tls_ca(env("GRADSERVE_TLS_CA"));
    assert_eq!(
        unavailable(tls_client.build().unwrap()).await,
        format!(
            "the server at {plaintext_server} speaks plaintext and this client connects with \
             TLS: connect without TLS, or start the server with --tls-cert and --tls-key"
        )
    );
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate_and_the_token() {
    let target = env("GRADSERVE_MTLS_TARGET");
    let neuron = neuron();
    let client = mtls_client();
    let token = env("GRADSERVE_MTLS_TOKEN");
    assert!(!format!("{client:?}").contains(&token), "Debug shows the token: {client:?}");
    client.backward(&neuron.o).await.unwrap();
    near("o", neuron.o.value(), (2.0 * -3.0 + B).tanh());

    let with_ca = || Client::builder(&target).tls_ca(env("GRADSERVE_TLS_CA"));
    let certificate = (env("GRADSERVE_CLIENT_CERT"), env("GRADSERVE_CLIENT_KEY"));
    let no_token = with_ca().client_certificate(&certificate.0, &certificate.1).build().unwrap();
    let error = no_token.evaluate(&neuron.graph, &Request::default()).await.unwrap_err();
    assert!(
        matches!(&error, Error::Auth(status) if status.code == Code::Unauthenticated),
        "{error:?}"
    );

    let no_certificate = with_ca().token(env("GRADSERVE_MTLS_TOKEN")).build().unwrap();
    let error = no_certificate.evaluate(&neuron.graph, &Request::default()).await.unwrap_err();
    let Error::Auth(status) = &error else { panic!("without a client certificate: {error:?}") };
    assert_eq!(status.code, Code::Unavailable);
    assert_eq!(
        status.summary,
        format!(
            "the server at {target} refused the TLS connection: it requires a client certificate \
             signed by a CA it trusts (mutual TLS): give the client its certificate and key"
        )
    );
}

#[tokio::test]
async fn a_bad_graph_is_invalid_argument_with_its_node_and_field() {
    let graph = Graph::new();
    let x = graph.leaf(-1.0).label("x");
    let _ = x.log().label("log(x)");
    let error = conformance_client().evaluate(&graph, &Request::default()).await.unwrap_err();
    let Error::InvalidArgument(status) = &error else {
        panic!("expected INVALID_ARGUMENT: {error:?}")
    };
    assert_eq!((status.node, status.field()), (Some(1), Some("graph.leaf_values")));
    assert_eq!(status.violations.len(), 1);
    assert!(error.to_string().starts_with("node 1 ('log(x)'): "), "{error}");
    assert_eq!(error.code(), Some(Code::InvalidArgument));
}

#[tokio::test]
async fn a_server_at_capacity_names_the_limit_in_a_quota_failure() {
    let server = Server::start(&["--workers", "1", "--max-memory-mb", "1"]);
    let client = Client::builder(&server.target).build().unwrap();
    let graph = Graph::new();
    let _ = graph.leaf(1.0) + graph.leaf(2.0);
    let rows = vec![vec![1.0, 2.0]; 100_000]; // about 8 MiB to evaluate, against a 1 MiB budget
    let request = Request { rows, selection: Selection::Leaves, ..Default::default() };
    let error = client.evaluate(&graph, &request).await.unwrap_err();
    let Error::ResourceExhausted(status) = &error else {
        panic!("expected RESOURCE_EXHAUSTED: {error:?}")
    };
    let subjects: Vec<&str> = status.quota_violations.iter().map(|v| v.subject.as_str()).collect();
    assert_eq!(subjects, ["max-memory-mb"], "{error}");
    assert!(status.violations.is_empty());
    assert!(error.to_string().contains("max-memory-mb = 1"), "{error}");
}

#[tokio::test]
async fn the_client_timeout_applies_and_a_request_timeout_wins() {
    let short = Client::builder(env("GRADSERVE_CONFORMANCE_TARGET"))
        .token(env("GRADSERVE_CONFORMANCE_TOKEN"))
        .timeout(Duration::from_nanos(1))
        .build()
        .unwrap();
    let neuron = neuron();
    let error = short.evaluate(&neuron.graph, &Request::default()).await.unwrap_err();
    assert!(matches!(error, Error::DeadlineExceeded(_)), "a 1 ns client timeout: {error:?}");
    assert_eq!(
        error.to_string(),
        "the call took longer than its timeout of 1e-09 s: pass a larger timeout, or send \
         a smaller graph"
    );
    let minute = Request { timeout: Some(Duration::from_secs(60)), ..Default::default() };
    short.evaluate(&neuron.graph, &minute).await.expect("the request's minute wins");
}

#[tokio::test]
async fn a_cancelled_token_ends_a_stream_with_cancelled() {
    let graph = Graph::new();
    let mut x = graph.leaf(0.5);
    for _ in 0..20_000 {
        x = x.sin();
    }
    let cancel = CancellationToken::new();
    let request = Request { chunk_size: 100, cancel: Some(cancel.clone()), ..Default::default() };
    let mut chunks = conformance_client().stream(&graph, &request).await.unwrap();
    assert_eq!(chunks.next().await.unwrap().unwrap().results.node_ids.len(), 100);
    cancel.cancel();
    let mut after = 0;
    let error = loop {
        match chunks.next().await {
            Some(Ok(_)) => after += 1,
            Some(Err(error)) => break error,
            None => panic!("the stream ended without an error after {after} more chunks"),
        }
    };
    assert!(matches!(error, Error::Cancelled(_)), "{error:?}");
    assert_eq!(after, 0, "chunks after the cancellation");
    assert!(chunks.next().await.is_none());
}

#[tokio::test]
async fn chunks_hold_the_same_results_as_one_reply() {
    let client = conformance_client();
    let neuron = neuron();
    let request = Request { chunk_size: 3, selection: Selection::All, ..Default::default() };
    let whole = client.evaluate(&neuron.graph, &request).await.unwrap();
    let mut chunks = client.stream(&neuron.graph, &request).await.unwrap();
    let (mut ids, mut values, mut grads, mut count) = (vec![], vec![], vec![], 0);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.total_nodes, neuron.graph.len() as u64);
        ids.extend(chunk.results.node_ids);
        values.extend(chunk.results.values);
        grads.extend(chunk.results.grads);
        count += 1;
    }
    assert_eq!(count, 4); // 10 nodes, 3 per chunk
    assert_eq!((ids, values, grads), (whole.node_ids, whole.values, whole.grads));
}

#[tokio::test]
async fn rows_evaluate_the_graph_at_each_row_of_leaf_values() {
    let neuron = neuron();
    let rows = vec![vec![2.0, 0.0, -3.0, 1.0, B], vec![1.0, -2.0, 0.5, 0.25, -0.3], vec![0.0; 5]];
    let request = Request {
        rows: rows.clone(),
        nodes: vec![neuron.o.clone(), neuron.w1.clone()],
        ..Default::default()
    };
    let results = conformance_client().evaluate(&neuron.graph, &request).await.unwrap();
    assert_eq!((results.rows, results.node_ids.clone()), (3, vec![9, 2]));
    for (r, row) in rows.iter().enumerate() {
        let (n, dn) = neuron_closed_form(row[0], row[1], row[2], row[3], row[4]);
        near("o", results.value(r, 0), n.tanh());
        near("do/dw1", results.grad(r, 1), row[0] * dn);
    }
    let short_row = Request { rows: vec![vec![1.0]], ..Default::default() };
    let error = conformance_client().evaluate(&neuron.graph, &short_row).await.unwrap_err();
    assert!(
        matches!(&error, Error::Request(why) if why == "a row has 1 values; the graph has 5 leaves")
    );
}

#[tokio::test]
async fn leaf_tangents_bring_jvps_and_hvps() {
    let neuron = neuron();
    // Along b: do/db = 1 - o^2, and b's gradient moves by d2o/db2 = -2 o (1 - o^2).
    let request = Request {
        nodes: vec![neuron.o.clone(), neuron.b.clone()],
        leaf_tangents: vec![0.0, 0.0, 0.0, 0.0, 1.0],
        ..Default::default()
    };
    let results = conformance_client().evaluate(&neuron.graph, &request).await.unwrap();
    let o = (2.0 * -3.0 + B).tanh();
    near("value tangent of o", results.value_tangents[0], 1.0 - o * o);
    near("gradient tangent of b", results.grad_tangents[1], -2.0 * o * (1.0 - o * o));
}

#[tokio::test]
async fn list_ops_names_the_standard_ops_sorted() {
    let ops = conformance_client().list_ops().await.unwrap();
    let names: Vec<&str> = ops.iter().map(|op| op.name.as_str()).collect();
    assert!(names.windows(2).all(|pair| pair[0] < pair[1]), "{names:?}");
    let sum = ops.iter().find(|op| op.name == "sum").unwrap();
    assert!(sum.variadic && sum.arity == 0);
    assert_eq!(ops.iter().find(|op| op.name == "mul").unwrap().arity, 2);
}

#[tokio::test]
async fn no_server_is_unavailable_with_an_actionable_message() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    drop(listener); // free a moment ago: nothing listens there
    let graph = Graph::new();
    let _ = graph.leaf(1.0).exp();
    let client = Client::builder(&target).build().unwrap();
    let error = client.evaluate(&graph, &Request::default()).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "no gradserve server answers at {target}: start one with `gradserve serve`, or set \
             GRADSERVE_TARGET"
        )
    );
}

#[tokio::test]
async fn operators_constants_and_the_standard_ops_match_closed_forms() {
    let graph = Graph::new();
    let x = graph.leaf(0.3);
    let y = x.sigmoid() * x.sin() - x.cos() / x.exp()
        + (2.0 * &x - 1.0).relu()
        + (-&x).abs().sqrt()
        + x.softplus().log()
        + x.pow(3.0)
        + x.max(0.5)
        + x.min(0.5)
        + (1.0 - &x);
    conformance_client().backward(&y).await.unwrap();
    let (v, e) = (0.3f64, (-0.3f64).exp());
    let (s, softplus) = (1.0 / (1.0 + e), (1.0 + v.exp()).ln());
    let value = s * v.sin() - v.cos() * e
        + 0.0
        + v.sqrt()
        + softplus.ln()
        + v.powi(3)
        + 0.5
        + v
        + (1.0 - v);
    let slope = s * (1.0 - s) * v.sin() + s * v.cos() // sigmoid(x) sin(x)
        + (v.sin() + v.cos()) * e // -cos(x) / exp(x)
        + 0.0 // relu(2x - 1) at -0.4
        + 0.5 / v.sqrt() // sqrt(|-x|)
        + s / softplus // log(softplus(x))
        + 3.0 * v * v // x^3
        + 0.0 + 1.0
        - 1.0; // max(x, 0.5), min(x, 0.5), 1 - x
    near("y", y.value(), value);
    near("dy/dx", x.grad(), slope);
}
