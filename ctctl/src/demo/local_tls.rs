//! A `ctctl certs` bundle as the settings of a coordinator and workers in this process.

use ctcluster_common::auth::UsersFile;

use crate::CtlError;
use crate::certs::Bundle;

/// A bundle's pieces for a cluster in one process (the demo, the tests).
pub struct LocalTls {
    /// The coordinator's TLS files.
    pub coordinator: ctcluster_coordinator::tls::TlsFiles,
    /// Its users.
    pub users: UsersFile,
    /// One identity per worker certificate.
    pub workers: Vec<ctcluster_worker::WorkerTls>,
    /// The CA, for clients.
    pub ca_pem: Vec<u8>,
    /// The admin's token.
    pub admin_token: String,
}

/// The bundle as in-memory settings.
pub fn local_tls(bundle: &Bundle) -> Result<LocalTls, CtlError> {
    let need = |name: &str| {
        bundle
            .get(name)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| CtlError::Usage(format!("the bundle has no {name}")))
    };
    let ca_pem = need("ca.pem")?;
    let users = UsersFile::from_yaml(&String::from_utf8_lossy(&need("users.yaml")?), "users.yaml")?;
    let workers = (0..)
        .map_while(|i| {
            Some(ctcluster_worker::WorkerTls {
                ca_pem: ca_pem.clone(),
                cert_pem: bundle.get(&format!("worker-{i}.pem"))?.to_vec(),
                key_pem: bundle.get(&format!("worker-{i}-key.pem"))?.to_vec(),
            })
        })
        .collect();
    Ok(LocalTls {
        coordinator: ctcluster_coordinator::tls::TlsFiles {
            cert_pem: need("coordinator.pem")?,
            key_pem: need("coordinator-key.pem")?,
            client_ca_pem: ca_pem.clone(),
        },
        users,
        workers,
        admin_token: String::from_utf8_lossy(&need("admin.token")?)
            .trim()
            .to_string(),
        ca_pem,
    })
}
