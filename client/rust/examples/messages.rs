//! Prints the one-line message of each failed call described in GRADSERVE_MESSAGE_CASES (a
//! JSON list of {name, target, tls, ca, cert, key, timeout_s, chain}), as JSON lines
//! `[name, message, whether the error is Error::Auth]`, for tests/test_rust_client.py to
//! compare with the Python SDK's words.

use std::time::Duration;

use gradserve::{Client, Error, Graph};
use serde_json::Value;

#[tokio::main]
async fn main() {
    let cases = std::env::var("GRADSERVE_MESSAGE_CASES").expect("GRADSERVE_MESSAGE_CASES");
    let cases: Vec<Value> = serde_json::from_str(&cases).expect("a JSON list of cases");
    for case in cases {
        let text = |key: &str| case[key].as_str().unwrap_or_default().to_owned();
        let mut builder = Client::builder(text("target"))
            .timeout(Duration::from_secs_f64(case["timeout_s"].as_f64().unwrap_or(30.0)));
        if case["tls"].as_bool().unwrap_or(false) {
            builder = match text("ca").as_str() {
                "" => builder.tls(),
                ca => builder.tls_ca(ca),
            };
        }
        if !text("cert").is_empty() {
            builder = builder.client_certificate(text("cert"), text("key"));
        }
        let client = builder.build().expect("the client's settings");
        let chain = case["chain"].as_u64().unwrap_or(0);
        let outcome = match chain {
            0 => client.list_ops().await.map(drop),
            _ => {
                let graph = Graph::new();
                let mut y = graph.leaf(0.5);
                for _ in 0..chain {
                    y = y.tanh();
                }
                client.backward(&y).await
            }
        };
        let error = outcome.expect_err("the call should fail");
        let auth = matches!(error, Error::Auth(_));
        println!("{}", serde_json::json!([text("name"), error.to_string(), auth]));
    }
}
