//! Who is calling: bearer tokens for `ctctl` users on the client service, cluster-signed
//! certificates for workers on the worker service. Each service's interceptor puts the
//! caller's [`Principal`] into the request, or refuses it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ctcluster_common::auth::{MAX_USERS_FILE_BYTES, UsersFile, hash_token};
use ctcluster_common::{Error, Result};
use tonic::{Request, Status};

use crate::scope::StorageScope;
use crate::tls::{ClientCert, PeerInfo};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A `ctctl` user.
    User {
        /// Their name (job owner).
        name: String,
        /// Admins see and cancel every job and may read any job's checkpoints; they are
        /// bound by the cluster's storage scope like everybody.
        admin: bool,
        /// Where this user's jobs may read and write, on top of the cluster's scope
        /// (unrestricted when the users file gives no prefixes).
        scope: StorageScope,
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
            Principal::User { name, admin, .. } => *admin || name == owner,
            Principal::Worker { .. } => false,
        }
    }

    /// Whether this caller is an admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::User { admin: true, .. })
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

/// A user as the coordinator holds them (from the users file).
#[derive(Clone, Debug)]
struct KnownUser {
    name: String,
    admin: bool,
    expires: Option<(u64, String)>,
    scope: StorageScope,
}

/// The users file, by token hash; reloaded when the file changes, so that tokens can be
/// added, revoked (their entry removed) or given an expiry without a restart.
#[derive(Debug)]
pub struct UsersTable {
    path: Option<PathBuf>,
    by_token: RwLock<HashMap<String, KnownUser>>,
    loaded: Mutex<Vec<u8>>,
}

fn table_of(users: &UsersFile, origin: &str) -> Result<HashMap<String, KnownUser>> {
    users
        .users
        .iter()
        .map(|u| {
            let scope = StorageScope::new(&u.read, &u.write)
                .map_err(|e| Error::invalid("users file", format!("{origin}: {}: {e}", u.name)))?;
            let expires = u.expires_at()?.zip(u.expires.clone());
            Ok((
                u.token_sha256.to_ascii_lowercase(),
                KnownUser {
                    name: u.name.clone(),
                    admin: u.admin,
                    expires,
                    scope,
                },
            ))
        })
        .collect()
}

/// Reads a users file, refusing one over [`MAX_USERS_FILE_BYTES`] before reading it.
fn read_users_file(path: &Path) -> Result<(Vec<u8>, UsersFile)> {
    let origin = path.display().to_string();
    let bytes =
        ctcluster_common::local_file::read_limited(path, MAX_USERS_FILE_BYTES, "the users file")
            .map_err(|e| Error::invalid("users file", e.to_string()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::invalid("users file", format!("{origin}: {e}")))?;
    let users = UsersFile::from_yaml(text, &origin)?;
    Ok((bytes, users))
}

impl UsersTable {
    /// A fixed table (tests, the demo).
    pub fn fixed(users: &UsersFile) -> Result<Self> {
        Ok(UsersTable {
            path: None,
            by_token: RwLock::new(table_of(users, "users")?),
            loaded: Mutex::new(Vec::new()),
        })
    }

    /// The table of a users file, which [`UsersTable::reload`] reads again.
    pub fn from_file(path: &Path) -> Result<Self> {
        let (bytes, users) = read_users_file(path)?;
        Ok(UsersTable {
            by_token: RwLock::new(table_of(&users, &path.display().to_string())?),
            path: Some(path.to_path_buf()),
            loaded: Mutex::new(bytes),
        })
    }

    /// Whether there is a file to reload.
    pub fn reloads(&self) -> bool {
        self.path.is_some()
    }

    /// Reads the file again and takes it if it changed; returns whether it did. A file that
    /// does not parse is an error and the table stays as it was (a typo never locks
    /// everybody out, nor lets anybody in).
    pub fn reload(&self) -> Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let (bytes, users) = read_users_file(path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == bytes {
            return Ok(false);
        }
        let table = table_of(&users, &path.display().to_string())?;
        *self.by_token.write().unwrap_or_else(|p| p.into_inner()) = table;
        *loaded = bytes;
        Ok(true)
    }

    fn lookup(&self, token_hash: &str) -> Option<KnownUser> {
        self.by_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token_hash)
            .cloned()
    }
}

/// How the coordinator authenticates.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plain text, no authentication: every caller is an admin user and a worker.
    Insecure,
    /// TLS: tokens for users, certificates for workers.
    Tls {
        /// The users, by the sha256 of their token.
        users: Arc<UsersTable>,
    },
}

impl Security {
    /// TLS security with the users of a users file (fixed: not reloaded).
    pub fn tls(users: &UsersFile) -> Result<Self> {
        Ok(Security::Tls {
            users: Arc::new(UsersTable::fixed(users)?),
        })
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
        let user = users
            .lookup(&hash_token(token))
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        if let Some((at, text)) = &user.expires {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if now >= *at {
                return Err(Status::unauthenticated(format!(
                    "token expired at {text}; ask an admin for a new one"
                )));
            }
        }
        Ok(Some(Principal::User {
            name: user.name,
            admin: user.admin,
            scope: user.scope,
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
                scope: StorageScope::default(),
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
