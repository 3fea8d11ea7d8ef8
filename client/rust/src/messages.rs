//! The one-line messages for a call that did not get through, in the words of the Python,
//! Node.js and Go clients (client/gradserve/client/unreachable.py): what went wrong and what
//! to do, told apart by the transport's errors and by whether the channel uses TLS.

use std::time::Duration;

/// Where a call went, over what, and the timeout that bounded it: what its messages name.
#[derive(Clone, Debug)]
pub(crate) struct Context {
    pub(crate) target: String,
    pub(crate) tls: bool,
    pub(crate) timeout: Option<Duration>,
}

/// The words of the transport's errors (lower-cased) for each cause, as rustls, hyper and
/// the OS say them.
const NOTHING_LISTENS: [&str; 3] = ["connection refused", "dns error", "failed to lookup address"];
const WRONG_RECORD: [&str; 2] = ["invalidcontenttype", "corrupt message"];
const NOT_TRUSTED: [&str; 1] = ["invalid peer certificate"];
const CLOSED: [&str; 4] = ["connection closed", "broken pipe", "connection reset", "alert"];

/// The message for a call that got no answer (UNAVAILABLE), from the transport's errors
/// (`transport`, empty when the server itself answered UNAVAILABLE with `message`), and
/// whether the server refused this client's TLS identity (an authentication problem rather
/// than a server that is not there).
pub(crate) fn unavailable(message: &str, transport: &str, context: &Context) -> (String, bool) {
    let words = transport.to_lowercase();
    let says = |causes: &[&str]| causes.iter().any(|cause| words.contains(cause));
    let target = &context.target;
    let message = if says(&NOTHING_LISTENS) {
        format!(
            "no gradserve server answers at {target}: start one with `gradserve serve`, \
             or set GRADSERVE_TARGET"
        )
    } else if context.tls && says(&WRONG_RECORD) {
        format!(
            "the server at {target} speaks plaintext and this client connects with TLS: \
             connect without TLS, or start the server with --tls-cert and --tls-key"
        )
    } else if context.tls && says(&NOT_TRUSTED) {
        format!(
            "the server at {target} presented a certificate this client does not trust: \
             give the client the CA certificate that signed it"
        )
    } else if context.tls && says(&CLOSED) {
        let refused = format!(
            "the server at {target} refused the TLS connection: it requires a client \
             certificate signed by a CA it trusts (mutual TLS): give the client its \
             certificate and key"
        );
        return (refused, true);
    } else if says(&CLOSED) {
        format!(
            "the server at {target} expects TLS and this client connects in plaintext: \
             give the client the CA certificate that signed the server's"
        )
    } else {
        format!("the server at {target} is unavailable: {message}")
    };
    (message, false)
}

/// The message for a call that its own timeout ended.
pub(crate) fn timed_out(timeout: Duration) -> String {
    format!(
        "the call took longer than its timeout of {} s: pass a larger timeout, or send a \
         smaller graph",
        general(timeout.as_secs_f64())
    )
}

/// `x` as C's and Python's `%g` write it (6 significant digits, an exponent below 1e-4
/// and from 1e6): the other clients' way of writing the timeout.
fn general(x: f64) -> String {
    let scientific = format!("{x:.5e}"); // "1.00000e-9": rounded to 6 digits
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |digits: String| match digits.contains('.') {
        true => digits.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => digits,
    };
    if (-4..6).contains(&exponent) {
        trim(format!("{x:.*}", (5 - exponent) as usize))
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa.to_owned()), exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transport's words in each case, as tonic 0.14 with rustls and hyper report them.
    #[test]
    fn each_cause_has_its_message() {
        let plain = Context { target: "h:1".into(), tls: false, timeout: None };
        let tls = Context { tls: true, ..plain.clone() };
        let says = |transport: &str, context: &Context| unavailable("m", transport, context);
        let refused = "transport error: tcp connect error: Connection refused (os error 111)";
        assert!(says(refused, &plain).0.starts_with("no gradserve server answers at h:1: "));
        assert!(says("dns error: failed to lookup address information", &tls).0.starts_with("no "));
        let pipe = "transport error: connection error: stream closed because of a broken pipe";
        assert!(says(pipe, &plain).0.contains("expects TLS and this client connects in plaintext"));
        assert_eq!(says(pipe, &tls), (says("connection closed", &tls).0, true));
        assert!(says(pipe, &tls).0.contains("requires a client certificate"));
        let record = "received corrupt message of type InvalidContentType";
        assert!(says(record, &tls)
            .0
            .contains("speaks plaintext and this client connects with TLS"));
        let issuer = "invalid peer certificate: UnknownIssuer";
        assert!(says(issuer, &tls).0.contains("a certificate this client does not trust"));
        assert_eq!(says("", &plain).0, "the server at h:1 is unavailable: m");
    }

    #[test]
    fn timeouts_are_written_as_percent_g_writes_them() {
        let cases = [(1e-9, "1e-09"), (0.001, "0.001"), (1e-4, "0.0001"), (2.5, "2.5")];
        let more = [(30.0, "30"), (300.0, "300"), (123456.7, "123457"), (1e6, "1e+06")];
        for (x, written) in cases.into_iter().chain(more) {
            assert_eq!(general(x), written, "{x}");
        }
    }
}
