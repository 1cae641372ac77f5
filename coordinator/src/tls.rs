//! TLS on the coordinator's listener. Client certificates are optional at the TLS layer (ctctl
//! authenticates with a bearer token) and checked against the cluster CA right after the
//! handshake, so that a worker with a foreign or expired certificate gets a gRPC
//! `Unauthenticated` that says why instead of a dropped connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

/// PEM files of the coordinator's TLS setup.
#[derive(Clone)]
pub struct TlsFiles {
    /// The coordinator's certificate chain.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// The CA that signs worker certificates.
    pub client_ca_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

/// What the peer showed at the handshake.
#[derive(Clone, Debug)]
pub enum ClientCert {
    /// No certificate (a `ctctl` client).
    None,
    /// A certificate the cluster CA signed; `name` is its common name.
    Valid {
        /// The certificate's common name.
        name: String,
    },
    /// A certificate that does not check out, and why.
    Invalid {
        /// Why it was refused.
        reason: String,
    },
}

/// Connection facts every request on the connection carries (tonic puts them in the
/// request's extensions).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// Its client certificate.
    pub cert: ClientCert,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any client certificate at the TLS layer (the possession proof is still checked);
/// [`TlsAcceptor::accept`] verifies the chain afterwards.
#[derive(Debug)]
struct DeferredClientAuth {
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeferredClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Terminates TLS for the coordinator.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    verifier: Arc<dyn ClientCertVerifier>,
}

fn pem_error(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl TlsAcceptor {
    /// Builds the acceptor; errors name the file content that is wrong.
    pub fn new(files: &TlsFiles) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error("--tls-cert", e))?;
        if certs.is_empty() {
            return Err("--tls-cert: no certificate in the file".into());
        }
        let key =
            PrivateKeyDer::from_pem_slice(&files.key_pem).map_err(|e| pem_error("--tls-key", e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&files.client_ca_pem) {
            roots
                .add(ca.map_err(|e| pem_error("--client-ca", e))?)
                .map_err(|e| pem_error("--client-ca", e))?;
        }
        if roots.is_empty() {
            return Err("--client-ca: no certificate in the file".into());
        }
        let provider = provider();
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| pem_error("--client-ca", e))?;
        let deferred = DeferredClientAuth {
            hints: roots.subjects(),
            provider: provider.clone(),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(deferred))
            .with_single_cert(certs, key)
            .map_err(|e| pem_error("--tls-cert/--tls-key", e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            verifier,
        })
    }

    /// Runs the handshake on an accepted connection and checks the client certificate.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<(TlsStream, PeerInfo)> {
        let remote = tcp.peer_addr().ok();
        let _ = tcp.set_nodelay(true);
        let stream = self.acceptor.accept(tcp).await?;
        let cert = match stream.get_ref().1.peer_certificates() {
            None | Some([]) => ClientCert::None,
            Some([end, intermediates @ ..]) => {
                match self
                    .verifier
                    .verify_client_cert(end, intermediates, UnixTime::now())
                {
                    Ok(_) => ClientCert::Valid {
                        name: common_name(end).unwrap_or_else(|| "unnamed".into()),
                    },
                    Err(e) => ClientCert::Invalid {
                        reason: e.to_string(),
                    },
                }
            }
        };
        Ok((stream, PeerInfo { remote, cert }))
    }
}

/// A server-side TLS stream over TCP.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The subject's common name of a DER certificate.
fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(|s| s.chars().take(128).collect())
}
