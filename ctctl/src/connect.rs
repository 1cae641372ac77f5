//! Connecting to the coordinator's client service: TLS checked against the cluster CA and a
//! bearer token, or plain text when asked for with `--insecure`.

use std::time::Duration;

use ctcluster_proto::client_service_client::ClientServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::CtlError;

/// Where the coordinator is and how to prove who we are.
#[derive(Clone)]
pub struct Target {
    /// `https://host:port` (or `http://` with `insecure`).
    pub url: String,
    /// The cluster CA (PEM), to check the coordinator's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// The bearer token.
    pub token: Option<String>,
    /// Plain text, no token.
    pub insecure: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A plain-text coordinator (`--insecure`).
    pub fn insecure(url: &str) -> Self {
        Target {
            url: url.to_string(),
            ca_pem: None,
            token: None,
            insecure: true,
        }
    }

    /// A TLS coordinator whose certificate the CA signed, with a user's token.
    pub fn secure(url: &str, ca_pem: Vec<u8>, token: &str) -> Self {
        Target {
            url: url.to_string(),
            ca_pem: Some(ca_pem),
            token: Some(token.trim().to_string()),
            insecure: false,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header for a token (nothing if it cannot be a header value).
    pub fn new(token: &str) -> Self {
        Bearer(format!("Bearer {}", token.trim()).parse().ok())
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connected client.
pub type Client = ClientServiceClient<InterceptedService<Channel, Bearer>>;

/// A client for the coordinator of `target`.
pub async fn connect(target: &Target) -> Result<Client, CtlError> {
    let url = &target.url;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| CtlError::Usage(format!("--coordinator {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let bearer = if target.insecure {
        if !url.starts_with("http://") {
            return Err(CtlError::Usage(format!(
                "--insecure talks plain text: --coordinator {url:?} must be http://"
            )));
        }
        Bearer(None)
    } else {
        if !url.starts_with("https://") {
            return Err(CtlError::Usage(format!(
                "--coordinator {url:?} is plain text: use https://, or pass --insecure"
            )));
        }
        let ca = target.ca_pem.as_ref().ok_or_else(|| {
            CtlError::Usage("no CA certificate: pass --ca or set CTCTL_CA".into())
        })?;
        let token = target.token.as_ref().ok_or_else(|| {
            CtlError::Usage("no token: pass --token-file or set CTCTL_TOKEN".into())
        })?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .map_err(|e| CtlError::Usage(format!("TLS: {e}")))?;
        let value = format!("Bearer {token}").parse().map_err(|_| {
            CtlError::Usage("the token has characters a header cannot carry".into())
        })?;
        Bearer(Some(value))
    };
    let channel = endpoint.connect().await.map_err(|e| CtlError::Connect {
        url: url.to_string(),
        reason: error_chain(&e),
    })?;
    Ok(ClientServiceClient::with_interceptor(channel, bearer))
}

/// An error and its causes on one line (TLS failures hide the useful part in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
