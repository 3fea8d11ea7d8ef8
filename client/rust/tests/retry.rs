//! The client retries UNAVAILABLE with the retryPolicy of protos/gradserve/v1/service_config.json,
//! as far as its maxAttempts, against an in-process server that refuses the first calls (the
//! Go, Node.js, Java and Python clients' retry tests do the same).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gradserve::pb::{self, EvaluateRequest, EvaluateResponse, GradientChunk};
use gradserve::{Client, Code, Error, Graph, Request};
use tokio::net::TcpListener;
use tonic::codegen::BoxStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Response, Status};

mod server {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/server/gradserve.v1.rs"));
}
use server::gradient_service_server::{GradientService, GradientServiceServer};

/// Refuses the first `failures` calls with `code`, then answers; counts every attempt.
struct Flaky {
    failures: u32,
    code: Code,
    attempts: Arc<AtomicU32>,
}

impl Flaky {
    fn attempt(&self) -> Result<(), Status> {
        if self.attempts.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(Status::new(self.code, "draining"));
        }
        Ok(())
    }
}

/// The request's last node, whose results (value 1, gradient 1) the server answers.
fn last_node(request: &tonic::Request<EvaluateRequest>) -> Vec<u32> {
    vec![request.get_ref().graph.as_ref().map_or(0, |graph| graph.node_ops.len() as u32 - 1)]
}

#[tonic::async_trait]
impl GradientService for Flaky {
    async fn evaluate(
        &self,
        request: tonic::Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        self.attempt()?;
        let (values, grads) = (vec![1.0], vec![1.0]);
        let node_ids = last_node(&request);
        Ok(Response::new(EvaluateResponse { node_ids, values, grads, ..Default::default() }))
    }

    async fn evaluate_stream(
        &self,
        request: tonic::Request<EvaluateRequest>,
    ) -> Result<Response<BoxStream<GradientChunk>>, Status> {
        self.attempt()?;
        let (values, grads) = (vec![1.0], vec![1.0]);
        let node_ids = last_node(&request);
        let chunk = GradientChunk { node_ids, values, grads, total_nodes: 1, ..Default::default() };
        let chunks: BoxStream<GradientChunk> = Box::pin(tokio_stream::iter([Ok(chunk)]));
        Ok(Response::new(chunks))
    }

    async fn list_ops(
        &self,
        _: tonic::Request<pb::ListOpsRequest>,
    ) -> Result<Response<pb::ListOpsResponse>, Status> {
        self.attempt()?;
        Ok(Response::new(pb::ListOpsResponse::default()))
    }
}

/// A server refusing its first `failures` calls with `code`: its attempt counter and a
/// client of it.
async fn flaky(failures: u32, code: Code) -> (Arc<AtomicU32>, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let attempts = Arc::new(AtomicU32::new(0));
    let service = GradientServiceServer::new(Flaky { failures, code, attempts: attempts.clone() });
    let serve = tonic::transport::Server::builder()
        .serve_with_incoming(service, TcpIncoming::from(listener));
    tokio::spawn(serve); // ends with the test's runtime
    let client = Client::builder(target).timeout(Duration::from_secs(30)).build().unwrap();
    (attempts, client)
}

/// The service config's maxAttempts, read here on its own.
fn max_attempts() -> u32 {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../protos/gradserve/v1/service_config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["methodConfig"][0]["retryPolicy"]["maxAttempts"].as_u64().unwrap() as u32
}

fn tanh_graph() -> Graph {
    let g = Graph::new();
    g.leaf(0.5).tanh();
    g
}

/// The node ids of the stream's first chunk.
async fn first_chunk(client: &Client) -> Result<Vec<u32>, Error> {
    let mut chunks = client.stream(&tanh_graph(), &Request::default()).await?;
    Ok(chunks.next().await.expect("one chunk")?.results.node_ids)
}

#[tokio::test]
async fn an_evaluate_refused_twice_succeeds_on_the_third_attempt() {
    let (attempts, client) = flaky(2, Code::Unavailable).await;
    let results = client.evaluate(&tanh_graph(), &Request::default()).await.unwrap();
    assert_eq!((results.node_ids, results.values), (vec![1], vec![1.0]));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_evaluate_stream_refused_twice_succeeds_on_the_third_attempt() {
    let (attempts, client) = flaky(2, Code::Unavailable).await;
    assert_eq!(first_chunk(&client).await.unwrap(), vec![1]);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn list_ops_refused_once_succeeds_on_the_second_attempt() {
    let (attempts, client) = flaky(1, Code::Unavailable).await;
    assert_eq!(client.list_ops().await.unwrap(), vec![]);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn retries_stop_at_the_policys_max_attempts() {
    let (attempts, client) = flaky(100, Code::Unavailable).await;
    let error = client.evaluate(&tanh_graph(), &Request::default()).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), max_attempts());

    let streamed = first_chunk(&client).await.unwrap_err();
    assert!(matches!(streamed, Error::Unavailable(_)), "{streamed:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 2 * max_attempts());
}

#[tokio::test]
async fn other_statuses_are_not_retried() {
    let (attempts, client) = flaky(100, Code::Internal).await;
    let error = client.evaluate(&tanh_graph(), &Request::default()).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::Internal), "{error:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_calls_timeout_bounds_the_retries_too() {
    let (attempts, client) = flaky(100, Code::Unavailable).await;
    let request = Request { timeout: Some(Duration::from_millis(1)), ..Request::default() };
    let error = client.evaluate(&tanh_graph(), &request).await.unwrap_err();
    assert!(matches!(error, Error::DeadlineExceeded(_)), "{error:?}");
    assert!(attempts.load(Ordering::SeqCst) < max_attempts());
}
