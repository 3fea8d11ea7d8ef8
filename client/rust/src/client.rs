//! The calls: ListOps, Evaluate, EvaluateStream and Backward, each bounded by its deadline
//! and cancellation, each retried on UNAVAILABLE (`retry.rs`), each sending a graph's
//! structure once (its plan digest after that).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::channel::{ClientBuilder, Stub};
use crate::error::Error;
use crate::graph::{Graph, Node};
use crate::messages::Context;
use crate::pb;
use crate::request::{Chunk, Evaluation, Request};
use crate::retry::with_retries;

/// Above this many nodes, [`Client::backward`] receives the results through EvaluateStream,
/// whose chunks never approach a message limit.
pub const STREAM_ABOVE: usize = 1 << 20;

/// A connection to a gradserve server. Cloning it is cheap and shares the connection; it is
/// safe to use from many tasks at once.
#[derive(Clone, Debug)]
pub struct Client {
    stub: Stub,
    context: Context, // the target, TLS or not, the client's timeout
}

/// When a call must end, and what can end it early.
#[derive(Clone)]
struct Bounds {
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
}

impl Client {
    /// Settings for a client of the server at `target` ("host:port"; "" for the
    /// GRADSERVE_TARGET environment variable, else [`crate::DEFAULT_TARGET`]): TLS, a token,
    /// a timeout. `Client::builder(target).build()` is a plaintext client.
    pub fn builder(target: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(target.into())
    }

    pub(crate) fn new(stub: Stub, context: Context) -> Client {
        Client { stub, context }
    }

    /// The target the client calls ("host:port").
    pub fn target(&self) -> &str {
        &self.context.target
    }

    /// The generated stub on this connection, for calls this crate does not wrap (its calls
    /// are not retried).
    pub fn stub(&self) -> Stub {
        self.stub.clone()
    }

    /// The [`Error`] for a status that a call through [`Client::stub`] ended with.
    pub fn error(&self, status: tonic::Status) -> Error {
        Error::from_status(status, &Context { timeout: None, ..self.context.clone() })
    }

    /// The server's ops, sorted by name.
    pub async fn list_ops(&self) -> Result<Vec<pb::OpInfo>, Error> {
        let bounds = self.bounds(None, None);
        let call = |message| {
            let (mut stub, request) = (self.stub(), bounds.request(message));
            async move { stub.list_ops(request).await }
        };
        let reply = bounds.guard(with_retries(pb::ListOpsRequest {}, call)).await;
        Ok(reply.map_err(|status| bounds.error(status, &self.context))?.into_inner().ops)
    }

    /// Evaluates `graph` and returns the selected nodes' results in one message. The
    /// structure goes over the wire once: later calls send its plan digest and the leaf
    /// values, and the whole graph again only if the server answers NOT_FOUND.
    pub async fn evaluate(&self, graph: &Graph, request: &Request) -> Result<Evaluation, Error> {
        let bounds = self.bounds(request.timeout, request.cancel.clone());
        let attempt = |wire| {
            let (mut stub, request) = (self.stub(), bounds.request(wire));
            async move { stub.evaluate(request).await }
        };
        let call = async |wire| {
            let reply = bounds.guard(with_retries(wire, attempt)).await?;
            Ok(Evaluation::from(reply.into_inner()))
        };
        let results = self.with_plan(graph, request, &bounds, call).await?;
        remember_digest(graph, &results.plan_digest);
        Ok(results)
    }

    /// Evaluates `graph` like [`Client::evaluate`], but receives the results in bounded
    /// chunks: read them with [`Chunks::next`]. Dropping the `Chunks` cancels the call.
    pub async fn stream(&self, graph: &Graph, request: &Request) -> Result<Chunks, Error> {
        let bounds = self.bounds(request.timeout, request.cancel.clone());
        let attempt = |wire| {
            let (mut stub, request) = (self.stub(), bounds.request(wire));
            async move { stub.evaluate_stream(request).await }
        };
        let call = async |wire| {
            // Retried until the server answers with headers, as gRPC does: then the call is
            // committed.
            let mut messages = bounds.guard(with_retries(wire, attempt)).await?.into_inner();
            // NOT_FOUND comes before the first chunk: read it here, where the graph can be
            // sent again.
            let first = bounds.guard(messages.message()).await?;
            Ok((messages, first))
        };
        let (messages, first) = self.with_plan(graph, request, &bounds, call).await?;
        if let Some(chunk) = &first {
            remember_digest(graph, &chunk.plan_digest);
        }
        let done = first.is_none(); // a stream with no chunk at all
        Ok(Chunks { messages, first, bounds, context: self.context.clone(), done })
    }

    /// Evaluates `loss`'s graph and differentiates `loss`, then fills every node's value and
    /// gradient (read them with [`Node::value`] and [`Node::grad`]). Graphs above
    /// [`STREAM_ABOVE`] nodes are received through EvaluateStream.
    pub async fn backward(&self, loss: &Node) -> Result<(), Error> {
        let graph = loss.graph();
        let request = Request {
            outputs: vec![loss.clone()],
            selection: pb::Selection::All,
            ..Request::default()
        };
        let nodes = graph.len();
        let (mut values, mut grads) = (vec![f64::NAN; nodes], vec![f64::NAN; nodes]);
        let mut keep = |results: &Evaluation| {
            for (j, &id) in results.node_ids.iter().enumerate() {
                values[id as usize] = results.values[j];
                grads[id as usize] = results.grads[j];
            }
        };
        if nodes > STREAM_ABOVE {
            let mut chunks = self.stream(graph, &request).await?;
            while let Some(chunk) = chunks.next().await {
                keep(&chunk?.results);
            }
        } else {
            keep(&self.evaluate(graph, &request).await?);
        }
        let mut tape = graph.tape();
        (tape.values, tape.grads) = (values, grads);
        Ok(())
    }

    /// Makes `call` with the graph's plan digest when it has one, and again with the whole
    /// graph if the server no longer holds that plan.
    async fn with_plan<T>(
        &self,
        graph: &Graph,
        request: &Request,
        bounds: &Bounds,
        mut call: impl AsyncFnMut(pb::EvaluateRequest) -> Result<T, tonic::Status>,
    ) -> Result<T, Error> {
        let wire = request.wire(graph, true)?;
        let sent_digest = !wire.plan_digest.is_empty();
        let reply = match call(wire).await {
            Err(status) if sent_digest && status.code() == Code::NotFound => {
                graph.tape().digest = None;
                call(request.wire(graph, false)?).await
            }
            reply => reply,
        };
        reply.map_err(|status| bounds.error(status, &self.context))
    }

    fn bounds(&self, timeout: Option<Duration>, cancel: Option<CancellationToken>) -> Bounds {
        let timeout = timeout.or(self.context.timeout);
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        Bounds { timeout, deadline, cancel }
    }
}

fn remember_digest(graph: &Graph, digest: &[u8]) {
    if !digest.is_empty() {
        graph.tape().digest = Some(digest.to_vec());
    }
}

impl Bounds {
    /// The error for a status the call ended with, naming its timeout.
    fn error(&self, status: tonic::Status, context: &Context) -> Error {
        Error::from_status(status, &Context { timeout: self.timeout, ..context.clone() })
    }

    /// The message as a call that tells the server its deadline (grpc-timeout).
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(deadline) = self.deadline {
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        request
    }

    /// Runs `step` of a call until it ends, the deadline passes (DEADLINE_EXCEEDED) or the
    /// token is cancelled (CANCELLED); the step's future is dropped, which cancels the call.
    async fn guard<T>(
        &self,
        step: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        let deadline = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            match &self.cancel {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased; // a cancelled call ends, even with a chunk already received
            _ = cancelled => Err(tonic::Status::cancelled("the caller cancelled the call")),
            _ = deadline => Err(tonic::Status::deadline_exceeded("the call's timeout passed")),
            result = step => result,
        }
    }
}

/// The chunks of an EvaluateStream call, in order; from [`Client::stream`].
pub struct Chunks {
    messages: tonic::Streaming<pb::GradientChunk>,
    first: Option<pb::GradientChunk>,
    bounds: Bounds,
    context: Context,
    done: bool,
}

impl Chunks {
    /// The next chunk, `None` after the last, or the error that ended the stream (then
    /// `None`).
    pub async fn next(&mut self) -> Option<Result<Chunk, Error>> {
        if self.done {
            return None;
        }
        let message = match self.first.take() {
            Some(first) => Ok(Some(first)),
            None => self.bounds.guard(self.messages.message()).await,
        };
        match message {
            Ok(Some(chunk)) => Some(Ok(Chunk::from(chunk))),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(status) => {
                self.done = true;
                Some(Err(self.bounds.error(status, &self.context)))
            }
        }
    }
}
