//! What the integration tests share: a `gradserve serve` of their own, the servers that
//! tests/test_rust_client.py starts and names in the environment, and the notebook's neuron.

#![allow(dead_code)] // each test binary uses a part

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use gradserve::{Client, Graph, Node};

/// A `gradserve serve --port 0` subprocess, stopped (SIGTERM, then waited for) when dropped.
pub struct Server {
    child: Child,
    pub target: String,
}

impl Server {
    /// Starts `$GRADSERVE_BIN serve` (default: the repository's `.venv/bin/gradserve`) with
    /// these flags, and waits for its "serving on HOST:PORT" log line.
    pub fn start(flags: &[&str]) -> Server {
        let repository = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let gradserve = std::env::var_os("GRADSERVE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository.join(".venv/bin/gradserve"));
        let mut child = Command::new(&gradserve)
            .args(["serve", "--port", "0"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {}: {error} (`uv sync` makes it, or set GRADSERVE_BIN)",
                    gradserve.display()
                )
            });
        let (found, target) = mpsc::channel();
        let log = BufReader::new(child.stderr.take().unwrap());
        thread::spawn(move || {
            // Keep draining the server's log after the line we wait for.
            for line in log.lines().map_while(Result::ok) {
                if let Some(at) = line.split("serving on ").nth(1) {
                    let address = at.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'));
                    let _ = found.send(address.take(1).collect());
                }
            }
        });
        let target = target.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("{} serve did not log \"serving on\" within 60 s", gradserve.display())
        });
        Server { child, target }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let stopped =
            Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// An environment variable that tests/test_rust_client.py sets.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `python3 -m uv run pytest tests/test_rust_client.py`, which starts the servers")
    })
}

/// A plaintext client of the conformance server, with its token.
pub fn conformance_client() -> Client {
    Client::builder(env("GRADSERVE_CONFORMANCE_TARGET"))
        .token(env("GRADSERVE_CONFORMANCE_TOKEN"))
        .build()
        .unwrap()
}

/// A client of the mutual-TLS server, with its CA, the client certificate and its token.
pub fn mtls_client() -> Client {
    Client::builder(env("GRADSERVE_MTLS_TARGET"))
        .tls_ca(env("GRADSERVE_TLS_CA"))
        .client_certificate(env("GRADSERVE_CLIENT_CERT"), env("GRADSERVE_CLIENT_KEY"))
        .token(env("GRADSERVE_MTLS_TOKEN"))
        .build()
        .unwrap()
}

/// b, chosen so that the neuron's output is 1/sqrt(2) (the notebook's number).
pub const B: f64 = 6.881_373_587_019_543;

/// The notebook's o = tanh(x1*w1 + x2*w2 + b): the graph, its leaves, n and o.
pub struct Neuron {
    pub graph: Graph,
    pub x1: Node,
    pub x2: Node,
    pub w1: Node,
    pub w2: Node,
    pub b: Node,
    pub n: Node,
    pub o: Node,
}

pub fn neuron() -> Neuron {
    let graph = Graph::new();
    let x1 = graph.leaf(2.0).label("x1");
    let x2 = graph.leaf(0.0).label("x2");
    let w1 = graph.leaf(-3.0).label("w1");
    let w2 = graph.leaf(1.0).label("w2");
    let b = graph.leaf(B).label("b");
    let n = (&x1 * &w1 + &x2 * &w2 + &b).label("n");
    let o = n.tanh().label("o");
    Neuron { graph, x1, x2, w1, w2, b, n, o }
}

/// Asserts `got` is within 1e-12 (relative) of `want`.
#[track_caller]
pub fn near(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= 1e-12 * (1.0 + want.abs()), "{what} = {got}, expected {want}");
}
