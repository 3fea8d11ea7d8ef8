//! The one place a connection is made: target, TLS, mutual TLS, bearer token and message
//! limits become a tonic channel and the generated stub on it. (The calls' retries are in
//! `retry.rs`.)

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::client::Client;
use crate::error::Error;
use crate::messages::Context;
use crate::pb::gradient_service_client::GradientServiceClient;

/// Where a client connects when its target is "" and GRADSERVE_TARGET is not set.
pub const DEFAULT_TARGET: &str = "localhost:50051";

/// The server's default message limit, which the client matches by default (gRPC's own
/// default receive limit is 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The generated client on a gradserve connection, for calls this crate does not wrap;
/// TLS, the token and the message limits apply to it too.
pub type Stub = GradientServiceClient<InterceptedService<Channel, Bearer>>;

/// Settings for a [`Client`]; from [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    target: String,
    tls: bool,
    ca_file: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    token: Option<String>,
    timeout: Option<Duration>,
    max_message_bytes: usize,
}

impl ClientBuilder {
    pub(crate) fn new(target: String) -> ClientBuilder {
        let target = match target.trim() {
            "" => {
                std::env::var("GRADSERVE_TARGET").map(|t| t.trim().to_owned()).unwrap_or_default()
            }
            given => given.to_owned(),
        };
        ClientBuilder {
            target: if target.is_empty() { DEFAULT_TARGET.to_owned() } else { target },
            tls: false,
            ca_file: None,
            identity: None,
            token: None,
            timeout: None,
            max_message_bytes: MAX_MESSAGE_BYTES,
        }
    }

    /// Connects over TLS, trusting the system's root certificates.
    pub fn tls(mut self) -> ClientBuilder {
        self.tls = true;
        self
    }

    /// Connects over TLS, trusting the CA certificates in this PEM file.
    pub fn tls_ca(mut self, ca_file: impl Into<PathBuf>) -> ClientBuilder {
        self.ca_file = Some(ca_file.into());
        self.tls()
    }

    /// Presents this certificate and key (PEM files) to the server: mutual TLS. Combine
    /// with [`ClientBuilder::tls_ca`] to choose the CA.
    pub fn client_certificate(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> ClientBuilder {
        self.identity = Some((cert_file.into(), key_file.into()));
        self.tls()
    }

    /// Sends `authorization: Bearer <token>` with every call. Use it with TLS: on a
    /// plaintext connection anyone on the path can read the token.
    pub fn token(mut self, token: impl Into<String>) -> ClientBuilder {
        self.token = Some(token.into());
        self
    }

    /// Bounds every call whose [`crate::Request`] has no timeout of its own (the request's
    /// always wins). Without one, the server's default deadline (300 s) applies.
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = Some(timeout);
        self
    }

    /// The largest message sent or received (default [`MAX_MESSAGE_BYTES`]).
    pub fn max_message_bytes(mut self, bytes: usize) -> ClientBuilder {
        self.max_message_bytes = bytes;
        self
    }

    /// The client. It does not wait for the server: a server that is down makes calls
    /// fail with [`Error::Unavailable`]. Call it inside a Tokio runtime.
    pub fn build(self) -> Result<Client, Error> {
        let scheme = if self.tls { "https" } else { "http" };
        let uri = format!("{scheme}://{}", self.target);
        let bad_target = |error: &dyn std::fmt::Display| {
            Error::Config(format!("{:?} is not a host:port target: {error}", self.target))
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| bad_target(&e))?;
        if self.tls {
            endpoint = endpoint.tls_config(self.tls_config()?).map_err(|e| bad_target(&e))?;
        }
        let token = match &self.token {
            None => None,
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                Error::Config("the token must be printable ASCII (it is sent as metadata)".into())
            })?),
        };
        let stub = GradientServiceClient::with_interceptor(endpoint.connect_lazy(), Bearer(token))
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let context = Context { target: self.target, tls: self.tls, timeout: self.timeout };
        Ok(Client::new(stub, context))
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, Error> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|error| Error::Config(format!("{what} {}: {error}", path.display())))
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_file {
            Some(ca_file) => {
                config.ca_certificate(Certificate::from_pem(read(ca_file, "CA file")?))
            }
            None => config.with_native_roots(),
        };
        if let Some((cert_file, key_file)) = &self.identity {
            let (cert, key) =
                (read(cert_file, "client certificate")?, read(key_file, "client key")?);
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(config)
    }
}

/// Adds the bearer token, when there is one, to every call's metadata.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}
