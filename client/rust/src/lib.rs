//! Call a gradserve server from Rust: build a graph of scalar ops, then evaluate it and get
//! every node's value and gradient.
//!
//! ```no_run
//! # async fn run() -> Result<(), gradserve::Error> {
//! use gradserve::{Client, Graph};
//!
//! let client = Client::builder("localhost:50051").build()?;
//! let g = Graph::new();
//! let (x, w) = (g.leaf(2.0).label("x"), g.leaf(-3.0).label("w"));
//! let y = (&x * &w).tanh();
//! client.backward(&y).await?; // then x.grad() is dy/dx
//! # Ok(()) }
//! ```
//!
//! Every call returns [`Error`] on failure, a variant per cause, carrying the status and
//! the server's BadRequest and QuotaFailure details. The generated stubs are in [`pb`].

mod channel;
mod client;
mod error;
mod graph;
mod messages;
mod request;
mod retry;

pub use channel::{Bearer, ClientBuilder, Stub, DEFAULT_TARGET, MAX_MESSAGE_BYTES};
pub use client::{Chunks, Client, STREAM_ABOVE};
pub use error::{code_name, Error, Status};
pub use graph::{Graph, Node, Operand};
pub use request::{Chunk, Evaluation, Request};
pub use tokio_util::sync::CancellationToken;
pub use tonic::Code;
pub use tonic_types::{FieldViolation, QuotaViolation};

/// The messages and the client stub generated from `protos/gradserve/v1/gradserve.proto`
/// (package `gradserve.v1`) by build.rs.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("gradserve.v1");
}
