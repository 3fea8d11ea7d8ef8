//! Retries a call that failed with a retryable status (UNAVAILABLE), as gRPC's service config
//! makes the Python, Go, Node.js and Java clients do: the same `retryPolicy`, read from the
//! same file, `protos/gradserve/v1/service_config.json`. tonic has no service config, so
//! tower's `Retry` applies it, around each call this crate makes (all of them pure functions
//! of their request, so a retry is always safe).
//!
//! As in gRPC, the call is committed once the server answers with headers: a refusal comes
//! as a status alone (gRPC's Trailers-Only), which tonic returns before any message. The
//! call's deadline bounds every attempt and backoff together (the caller's `guard`).

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use tonic::{Code, Status};
use tower::retry::{Policy, Retry};
use tower::util::rng::{HasherRng, Rng};
use tower::ServiceExt;

use crate::error::code_name;

/// gRPC's service config for every gradserve client; one file for all languages.
const SERVICE_CONFIG: &str = include_str!("../../../protos/gradserve/v1/service_config.json");

/// The service whose methods the policy covers (gRPC matches a `name` without `method`
/// against all of them).
const SERVICE: &str = "gradserve.v1.GradientService";

/// The service config's `retryPolicy` for [`SERVICE`], parsed once.
pub(crate) static RETRY_POLICY: LazyLock<RetryPolicy> = LazyLock::new(|| {
    RetryPolicy::from_service_config(SERVICE_CONFIG)
        .unwrap_or_else(|error| panic!("service_config.json (built into the crate): {error}"))
});

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceConfig {
    method_config: Vec<MethodConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodConfig {
    name: Vec<MethodName>,
    retry_policy: Option<RetryPolicyJson>,
}

#[derive(Deserialize)]
struct MethodName {
    service: String,
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetryPolicyJson {
    max_attempts: u32,
    initial_backoff: String,
    max_backoff: String,
    backoff_multiplier: f64,
    retryable_status_codes: Vec<String>,
}

/// gRPC's `retryPolicy`: how many attempts in all, the backoff before each retry, and the
/// statuses worth another attempt.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_multiplier: f64,
    pub retryable: Vec<Code>,
}

impl RetryPolicy {
    /// The `retryPolicy` of the method config that names the whole [`SERVICE`].
    fn from_service_config(json: &str) -> Result<RetryPolicy, String> {
        let config: ServiceConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let names_service =
            |c: &MethodConfig| c.name.iter().any(|n| n.service == SERVICE && n.method.is_none());
        let policy = config
            .method_config
            .into_iter()
            .find(names_service)
            .and_then(|c| c.retry_policy)
            .ok_or(format!("no retryPolicy for the whole {SERVICE}"))?;
        let retryable = policy
            .retryable_status_codes
            .iter()
            .map(|name| status_code(name).ok_or(format!("{name:?} is not a gRPC status code")))
            .collect::<Result<_, _>>()?;
        Ok(RetryPolicy {
            max_attempts: policy.max_attempts,
            initial_backoff: duration(&policy.initial_backoff)?,
            max_backoff: duration(&policy.max_backoff)?,
            backoff_multiplier: policy.backoff_multiplier,
            retryable,
        })
    }

    /// The longest backoff before the `retry`-th retry (1 for the first): gRPC's
    /// min(initialBackoff * backoffMultiplier^(retry - 1), maxBackoff). The wait is a
    /// uniform draw below it. (tower's `ExponentialBackoff` doubles and jitters otherwise.)
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powi(exponent);
        Duration::try_from_secs_f64(seconds).unwrap_or(self.max_backoff).min(self.max_backoff)
    }
}

/// A status code from its name in the service config ("UNAVAILABLE").
fn status_code(name: &str) -> Option<Code> {
    (0..=16).map(Code::from_i32).find(|&code| code_name(code) == name)
}

/// A protobuf JSON Duration ("0.2s") as a std Duration.
fn duration(text: &str) -> Result<Duration, String> {
    let parsed: prost_types::Duration = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    Duration::try_from(parsed).map_err(|e| format!("{text:?}: {e}"))
}

/// One call's retries under a [`RetryPolicy`]: tower's `Policy`, cloned fresh for each call.
#[derive(Clone)]
struct Attempts {
    policy: RetryPolicy,
    made: u32,
    rng: HasherRng,
}

impl<Req: Clone, Res> Policy<Req, Res, Status> for Attempts {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, Status>) -> Option<Self::Future> {
        let status = result.as_ref().err()?;
        if !self.policy.retryable.contains(&status.code()) || self.made >= self.policy.max_attempts
        {
            return None;
        }
        let ceiling = self.policy.backoff_ceiling(self.made);
        self.made += 1;
        Some(tokio::time::sleep(ceiling.mul_f64(self.rng.next_f64())))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// `call(message)`, and again with a copy of `message` after a backoff while it fails with
/// a retryable status, up to the policy's maxAttempts in all.
pub(crate) async fn with_retries<M, T, F>(
    message: M,
    call: impl FnMut(M) -> F + Clone,
) -> Result<T, Status>
where
    M: Clone,
    F: Future<Output = Result<T, Status>>,
{
    let attempts = Attempts { policy: RETRY_POLICY.clone(), made: 1, rng: HasherRng::new() };
    Retry::new(attempts, tower::service_fn(call)).oneshot(message).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_the_service_configs() {
        let json: serde_json::Value = serde_json::from_str(SERVICE_CONFIG).unwrap();
        let config = &json["methodConfig"][0];
        assert_eq!(
            config["name"],
            serde_json::json!([{"service": "gradserve.v1.GradientService"}])
        );
        let policy = &config["retryPolicy"];
        assert_eq!(
            *RETRY_POLICY,
            RetryPolicy {
                max_attempts: policy["maxAttempts"].as_u64().unwrap() as u32,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(2),
                backoff_multiplier: policy["backoffMultiplier"].as_f64().unwrap(),
                retryable: vec![Code::Unavailable],
            }
        );
        assert_eq!(policy["initialBackoff"], "0.2s");
        assert_eq!(policy["maxBackoff"], "2s");
    }

    #[test]
    fn the_backoff_grows_by_the_multiplier_up_to_its_maximum() {
        let policy = RetryPolicy {
            max_attempts: 9,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            backoff_multiplier: 3.0,
            retryable: vec![Code::Unavailable],
        };
        let ceilings: Vec<_> = (1..=5).map(|retry| policy.backoff_ceiling(retry)).collect();
        let millis = [100, 300, 900, 1000, 1000].map(Duration::from_millis);
        for (ceiling, expected) in ceilings.iter().zip(millis) {
            assert!(ceiling.abs_diff(expected) < Duration::from_micros(1), "{ceilings:?}");
        }
        assert_eq!(policy.backoff_ceiling(10_000), policy.max_backoff);
    }

    #[test]
    fn a_bad_service_config_is_named() {
        let bad_code = SERVICE_CONFIG.replace("\"UNAVAILABLE\"", "\"SOMETIMES\"");
        let error = RetryPolicy::from_service_config(&bad_code).unwrap_err();
        assert!(error.contains("\"SOMETIMES\" is not a gRPC status code"), "{error}");
        let bad_duration = SERVICE_CONFIG.replace("\"0.2s\"", "\"0.2\"");
        let error = RetryPolicy::from_service_config(&bad_duration).unwrap_err();
        assert!(error.contains("\"0.2\""), "{error}");
    }
}
