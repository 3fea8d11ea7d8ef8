//! The one error type of every call, and the one place a gRPC status becomes it.
//!
//! A variant per status the server uses (see the error model in `gradserve.proto`), each
//! carrying the server's message and the `google.rpc` details it attached: the BadRequest
//! field violations of a client error, the QuotaFailure of a server at capacity.

use tonic::Code;
use tonic_types::{FieldViolation, QuotaViolation, StatusExt};

use crate::messages::{self, Context};

/// What a failed call returns. Match on the variant to branch on the cause; [`Error::status`]
/// has the server's message and details for every variant that came from a call. `Display`
/// is one line: the server's message, or what to do where the client can tell (no server
/// at the target, TLS on one side only, the call's timeout), in the other clients' words.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT: the graph or the request is not a valid evaluation (an unknown op,
    /// a value outside an op's domain, a bad selection...). Do not retry.
    #[error("{}", .0.summary)]
    InvalidArgument(Box<Status>),
    /// RESOURCE_EXHAUSTED: beyond the server's limits, its own size (BadRequest details) or
    /// the server's capacity (QuotaFailure details: retrying later may work).
    #[error("{}", .0.summary)]
    ResourceExhausted(Box<Status>),
    /// NOT_FOUND: a plan digest the server does not hold. The client resends the graph by
    /// itself, so this reaches a caller only through the raw stub.
    #[error("{}", .0.summary)]
    NotFound(Box<Status>),
    /// The server refused the caller: UNAUTHENTICATED (no or a wrong bearer token),
    /// PERMISSION_DENIED, or UNAVAILABLE when the TLS handshake refused the client's
    /// certificate (mutual TLS).
    #[error("{}", .0.summary)]
    Auth(Box<Status>),
    /// DEADLINE_EXCEEDED: the call's timeout, or the server's default deadline, passed.
    #[error("{}", .0.summary)]
    DeadlineExceeded(Box<Status>),
    /// CANCELLED: the caller cancelled (see [`crate::Request::cancel`]) or the server
    /// abandoned a reply nobody read.
    #[error("{}", .0.summary)]
    Cancelled(Box<Status>),
    /// UNAVAILABLE: no answer from the target (no server, TLS on one side only, a server
    /// certificate the client does not trust) or the server is draining for shutdown; the
    /// last of the retry policy's attempts (see docs/clients/rust.md).
    #[error("{}", .0.summary)]
    Unavailable(Box<Status>),
    /// INTERNAL (an op plugin failed; the message names the op, the node and an error id
    /// to find in the server log) or any other status.
    #[error("{}", .0.summary)]
    Server(Box<Status>),
    /// The client refused the request before sending it (an empty graph, a row of the
    /// wrong length, a node of another graph).
    #[error("{0}")]
    Request(String),
    /// The client's settings are unusable: an unreadable CA or key file, a bad target.
    #[error("{0}")]
    Config(String),
}

/// A call's status, with what the client read out of it.
#[derive(Debug, Clone)]
pub struct Status {
    /// The gRPC status code.
    pub code: Code,
    /// The status message, e.g. `node 1 ('log(x)'): log needs x > 0, got -1`.
    pub message: String,
    /// The one line the error displays: the message, or what to do.
    pub summary: String,
    /// The node the message starts with (`node 7 ...`), if any.
    pub node: Option<u32>,
    /// The google.rpc.BadRequest field violations: `field` is the request field at fault,
    /// e.g. `graph.input_ids[7]`.
    pub violations: Vec<FieldViolation>,
    /// The google.rpc.QuotaFailure violations: `subject` names the server limit, e.g.
    /// `max-concurrent-calls`.
    pub quota_violations: Vec<QuotaViolation>,
}

impl Status {
    /// The first BadRequest violation's field, e.g. `graph.input_ids[7]`.
    pub fn field(&self) -> Option<&str> {
        self.violations.first().map(|violation| violation.field.as_str())
    }
}

impl Error {
    /// The call's status, for every variant but [`Error::Request`] and [`Error::Config`].
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::InvalidArgument(status)
            | Error::ResourceExhausted(status)
            | Error::NotFound(status)
            | Error::Auth(status)
            | Error::DeadlineExceeded(status)
            | Error::Cancelled(status)
            | Error::Unavailable(status)
            | Error::Server(status) => Some(status),
            Error::Request(_) | Error::Config(_) => None,
        }
    }

    /// The gRPC status code, when the error is a status.
    pub fn code(&self) -> Option<Code> {
        self.status().map(|status| status.code)
    }

    /// The error for a status that a call in `context` ended with.
    pub(crate) fn from_status(status: tonic::Status, context: &Context) -> Error {
        let details = status.get_error_details();
        let (code, transport) = code_of(&status);
        let message = status.message().to_owned();
        let mut refused_identity = false;
        let summary = match code {
            Code::InvalidArgument | Code::ResourceExhausted | Code::NotFound => message.clone(),
            Code::Unavailable => {
                let (summary, refused) = messages::unavailable(&message, &transport, context);
                refused_identity = refused;
                summary
            }
            Code::DeadlineExceeded if context.timeout.is_some() => {
                messages::timed_out(context.timeout.unwrap_or_default())
            }
            _ => format!("{}: {message}", code_name(code)),
        };
        let read = Box::new(Status {
            code,
            node: node_of(&message),
            message,
            summary,
            violations: details
                .bad_request()
                .map(|bad| bad.field_violations.clone())
                .unwrap_or_default(),
            quota_violations: details
                .quota_failure()
                .map(|quota| quota.violations.clone())
                .unwrap_or_default(),
        });
        match code {
            Code::InvalidArgument => Error::InvalidArgument(read),
            Code::ResourceExhausted => Error::ResourceExhausted(read),
            Code::NotFound => Error::NotFound(read),
            Code::Unauthenticated | Code::PermissionDenied => Error::Auth(read),
            Code::Unavailable if refused_identity => Error::Auth(read),
            Code::DeadlineExceeded => Error::DeadlineExceeded(read),
            Code::Cancelled => Error::Cancelled(read),
            Code::Unavailable => Error::Unavailable(read),
            _ => Error::Server(read),
        }
    }
}

/// The status's code and the words of the transport errors behind it ("" when the server
/// sent the status). A failure of the client's own transport (the server never answered,
/// the connection or the TLS handshake failed), which tonic reports as UNKNOWN or
/// CANCELLED, is UNAVAILABLE; tonic's own enforcement of the call's timeout, which it
/// reports as CANCELLED, is DEADLINE_EXCEEDED.
fn code_of(status: &tonic::Status) -> (Code, String) {
    let mut words = Vec::new();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return (Code::DeadlineExceeded, String::new());
        }
        words.push(error.to_string());
        source = error.source();
    }
    match words.is_empty() {
        true => (status.code(), String::new()),
        false => (Code::Unavailable, words.join(": ")),
    }
}

/// The node a server message starts with: `node 7 ('x1*w1'): ...` or `node 7: ...`.
fn node_of(message: &str) -> Option<u32> {
    let rest = message.strip_prefix("node ")?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    match rest[digits..].chars().next() {
        Some(' ') | Some(':') if digits > 0 => rest[..digits].parse().ok(),
        _ => None,
    }
}

/// The status code's name as the .proto and the other clients spell it, e.g.
/// `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_read_from_the_start_of_the_message() {
        assert_eq!(node_of("node 7 ('x1*w1'): log needs x > 0"), Some(7));
        assert_eq!(node_of("node 12: not earlier"), Some(12));
        assert_eq!(node_of("node x: nothing"), None);
        assert_eq!(node_of("node 7x"), None);
        assert_eq!(node_of("the graph is empty"), None);
    }

    #[test]
    fn each_status_the_server_uses_has_its_variant() {
        let context = Context { target: "host:1".into(), tls: false, timeout: None };
        let error = |code| Error::from_status(tonic::Status::new(code, "why"), &context);
        assert!(matches!(error(Code::InvalidArgument), Error::InvalidArgument(_)));
        assert!(matches!(error(Code::PermissionDenied), Error::Auth(_)));
        assert!(matches!(error(Code::Internal), Error::Server(_)));
        assert!(matches!(error(Code::Unknown), Error::Server(_)));
        assert!(matches!(error(Code::Unavailable), Error::Unavailable(_)));
        assert_eq!(
            error(Code::Unavailable).to_string(),
            "the server at host:1 is unavailable: why"
        );
        assert_eq!(error(Code::InvalidArgument).to_string(), "why");
        assert_eq!(error(Code::Internal).to_string(), "INTERNAL: why");
        assert_eq!(error(Code::DeadlineExceeded).to_string(), "DEADLINE_EXCEEDED: why");
        assert_eq!(error(Code::Internal).code(), Some(Code::Internal));
        assert_eq!(Error::Request("empty".into()).code(), None);
        let timed = Context { timeout: Some(std::time::Duration::from_millis(1)), ..context };
        let late = Error::from_status(tonic::Status::deadline_exceeded("late"), &timed);
        assert!(late.to_string().starts_with("the call took longer than its timeout of 0.001 s: "));
    }
}
