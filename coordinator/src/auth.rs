//! Who is calling: bearer tokens for `ctctl` users on the client service, cluster-signed
//! certificates for workers on the worker service. Each service's interceptor puts the
//! caller's [`Principal`] into the request, or refuses it.

use std::collections::HashMap;
use std::sync::Arc;

use ctcluster_common::auth::{UsersFile, hash_token};
use tonic::{Request, Status};

use crate::tls::{ClientCert, PeerInfo};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A `ctctl` user.
    User {
        /// Their name (job owner).
        name: String,
        /// Admins see and cancel every job.
        admin: bool,
    },
    /// A worker, named by its certificate.
    Worker {
        /// The certificate's common name.
        name: String,
    },
}

impl Principal {
    /// Whether this caller may see and cancel a job owned by `owner`.
    pub fn may_access(&self, owner: &str) -> bool {
        match self {
            Principal::User { name, admin } => *admin || name == owner,
            Principal::Worker { .. } => false,
        }
    }

    /// The name jobs are recorded under.
    pub fn name(&self) -> &str {
        match self {
            Principal::User { name, .. } | Principal::Worker { name } => name,
        }
    }
}

/// The user everybody is in `--insecure` mode.
pub const ANONYMOUS: &str = "anonymous";

/// How the coordinator authenticates.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plain text, no authentication: every caller is an admin user and a worker.
    Insecure,
    /// TLS: tokens for users, certificates for workers.
    Tls {
        /// sha256 of token -> (name, admin).
        users: Arc<HashMap<String, (String, bool)>>,
    },
}

impl Security {
    /// TLS security with the users of a users file.
    pub fn tls(users: &UsersFile) -> Self {
        let map = users
            .users
            .iter()
            .map(|u| {
                (
                    u.token_sha256.to_ascii_lowercase(),
                    (u.name.clone(), u.admin),
                )
            })
            .collect();
        Security::Tls {
            users: Arc::new(map),
        }
    }

    fn user(&self, req: &Request<()>) -> Result<Option<Principal>, Status> {
        let Security::Tls { users } = self else {
            return Ok(None);
        };
        let Some(value) = req.metadata().get("authorization") else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be 'Bearer <token>'"))?;
        let (name, admin) = users
            .get(&hash_token(token))
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        Ok(Some(Principal::User {
            name: name.clone(),
            admin: *admin,
        }))
    }
}

fn peer_cert(req: &Request<()>) -> ClientCert {
    req.extensions()
        .get::<PeerInfo>()
        .map_or(ClientCert::None, |p| p.cert.clone())
}

/// The client service's gate: a known bearer token, and no worker certificate.
pub fn client_gate(
    security: Security,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let principal = match &security {
            Security::Insecure => Principal::User {
                name: ANONYMOUS.into(),
                admin: true,
            },
            Security::Tls { .. } => {
                if let ClientCert::Valid { name } = peer_cert(&req) {
                    return Err(Status::permission_denied(format!(
                        "worker certificate {name} cannot use the client API"
                    )));
                }
                security.user(&req)?.ok_or_else(|| {
                    Status::unauthenticated(
                        "no bearer token: pass ctctl --token-file or set CTCTL_TOKEN",
                    )
                })?
            }
        };
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The worker service's gate: a client certificate the cluster CA signed.
pub fn worker_gate(
    security: Security,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let principal = match &security {
            Security::Insecure => Principal::Worker {
                name: ANONYMOUS.into(),
            },
            Security::Tls { .. } => match peer_cert(&req) {
                ClientCert::Valid { name } => Principal::Worker { name },
                ClientCert::Invalid { reason } => {
                    return Err(Status::unauthenticated(format!(
                        "client certificate refused: {reason}"
                    )));
                }
                ClientCert::None => {
                    if let Ok(Some(user)) = security.user(&req) {
                        return Err(Status::permission_denied(format!(
                            "user {} cannot use the worker API",
                            user.name()
                        )));
                    }
                    return Err(Status::unauthenticated(
                        "workers must present a client certificate signed by the cluster CA",
                    ));
                }
            },
        };
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The caller of a request that passed a gate.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request did not pass authentication"))
}
