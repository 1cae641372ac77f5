//! `ctctl certs init DIR`: a cluster CA, the coordinator's certificate, worker and aggregator
//! certificates and user tokens, so a new cluster is secure from its first start.

use std::path::Path;

use ctcluster_common::auth::{UserEntry, UsersFile, generate_token, hash_token};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::CtlError;

/// One file of the bundle.
pub struct BundleFile {
    /// Name inside the folder.
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
    /// Written readable by the owner only (keys, tokens).
    pub secret: bool,
}

/// Everything `certs init` writes.
pub struct Bundle {
    /// The files.
    pub files: Vec<BundleFile>,
}

impl Bundle {
    /// A file's contents by name.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.bytes.as_slice())
    }
}

fn err(e: rcgen::Error) -> CtlError {
    CtlError::Usage(format!("certificate generation: {e}"))
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "ctcluster");
    dn
}

/// What `certs init` makes.
#[derive(Clone, Debug, Default)]
pub struct BundleSpec {
    /// Extra names (DNS names or IPs) the coordinator and the aggregators are reached by;
    /// `localhost` and `127.0.0.1` are always included.
    pub hosts: Vec<String>,
    /// Worker certificates to make.
    pub workers: usize,
    /// Aggregator certificates to make (sharded aggregation over TLS).
    pub aggregators: usize,
    /// Users besides `admin`.
    pub users: Vec<String>,
}

/// A certificate signed by the CA, for a server reached by `names`.
fn server_cert(
    cn: &str,
    names: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), CtlError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(names.to_vec()).map_err(err)?;
    p.distinguished_name = named(cn);
    p.extended_key_usages = usages;
    let cert = p.signed_by(&key, issuer).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The common name of the coordinator's certificate: aggregators let only it install, step,
/// read and drop shards (`ctcluster-coordinator --role aggregator --coordinator-name`).
pub const COORDINATOR_NAME: &str = "ctcluster coordinator";

/// Generates the bundle: `ca.pem` (+ key); `coordinator.pem` (+ key) valid for `localhost`,
/// `127.0.0.1` and the hosts, for serving and as the client identity it shows aggregators;
/// `worker-N.pem` (+ key) per worker; `aggregator-N.pem` (+ key) per aggregator, valid for the
/// same names; and a token per user (`admin` first, an admin) with `users.yaml` holding their
/// hashes.
pub fn generate(spec: &BundleSpec) -> Result<Bundle, CtlError> {
    let BundleSpec {
        hosts,
        workers,
        aggregators,
        users,
    } = spec;
    let mut files = Vec::new();
    let mut push = |name: String, bytes: Vec<u8>, secret: bool| {
        files.push(BundleFile {
            name,
            bytes,
            secret,
        })
    };
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name = named("ctcluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    push("ca.pem".into(), ca_cert.pem().into_bytes(), false);
    push(
        "ca-key.pem".into(),
        ca_key.serialize_pem().into_bytes(),
        true,
    );
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(hosts.iter().cloned());
    let (cert, key) = server_cert(
        COORDINATOR_NAME,
        &names,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        &issuer,
    )?;
    push("coordinator.pem".into(), cert.into_bytes(), false);
    push("coordinator-key.pem".into(), key.into_bytes(), true);
    for i in 0..*aggregators {
        let (cert, key) = server_cert(
            &format!("aggregator-{i}"),
            &names,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            &issuer,
        )?;
        push(format!("aggregator-{i}.pem"), cert.into_bytes(), false);
        push(format!("aggregator-{i}-key.pem"), key.into_bytes(), true);
    }

    for i in 0..*workers {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name = named(&format!("worker-{i}"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        push(format!("worker-{i}.pem"), cert.pem().into_bytes(), false);
        push(
            format!("worker-{i}-key.pem"),
            key.serialize_pem().into_bytes(),
            true,
        );
    }

    let mut entries = Vec::new();
    let mut all = vec!["admin".to_string()];
    all.extend(users.iter().filter(|u| u.as_str() != "admin").cloned());
    for (i, name) in all.iter().enumerate() {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(CtlError::Usage(format!(
                "--users: {name:?} is not a user name (letters, digits, - _ .)"
            )));
        }
        let token = generate_token();
        entries.push(UserEntry {
            name: name.clone(),
            token_sha256: hash_token(&token),
            admin: i == 0,
            read: Vec::new(),
            write: Vec::new(),
            expires: None,
        });
        push(
            format!("{name}.token"),
            format!("{token}\n").into_bytes(),
            true,
        );
    }
    push(
        "users.yaml".into(),
        UsersFile { users: entries }.to_yaml().into_bytes(),
        false,
    );
    Ok(Bundle { files })
}

fn write(dir: &Path, f: &BundleFile) -> Result<(), CtlError> {
    let path = dir.join(&f.name);
    let io = |e: std::io::Error| CtlError::write(&path)(e);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if f.secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options
        .open(&path)
        .map_err(io)?
        .write_all(&f.bytes)
        .map_err(io)
}

/// `ctctl certs init`: writes the bundle into `dir` (which must not hold one already).
pub fn init(dir: &Path, spec: &BundleSpec) -> Result<String, CtlError> {
    if dir.join("ca.pem").exists() {
        return Err(CtlError::Usage(format!(
            "{} already holds a cluster CA (ca.pem); choose another folder",
            dir.display()
        )));
    }
    let bundle = generate(spec)?;
    std::fs::create_dir_all(dir).map_err(CtlError::write(dir))?;
    for f in &bundle.files {
        write(dir, f)?;
    }
    let d = dir.display();
    Ok(format!(
        "wrote {} files to {d} (keys and tokens readable by you only)\n\n\
         coordinator: ctcluster-coordinator --tls-cert {d}/coordinator.pem --tls-key {d}/coordinator-key.pem \\\n\
         \x20            --client-ca {d}/ca.pem --users {d}/users.yaml\n\
         worker:      ctcluster-worker --coordinator https://HOST:50051 --ca {d}/ca.pem \\\n\
         \x20            --cert {d}/worker-0.pem --key {d}/worker-0-key.pem\n\
         ctctl:       export CTCTL_CA={d}/ca.pem CTCTL_TOKEN_FILE={d}/admin.token\n\
         \x20            ctctl --coordinator https://HOST:50051 list\n{}\
         Keep ca-key.pem offline: it signs new worker certificates.\n",
        bundle.files.len(),
        if spec.aggregators > 0 {
            format!(
                "aggregator:  ctcluster-coordinator --role aggregator --listen 0.0.0.0:50061 \\\n\
                 \x20            --tls-cert {d}/aggregator-0.pem --tls-key {d}/aggregator-0-key.pem --client-ca {d}/ca.pem\n\
                 \x20            (and the coordinator with --aggregators https://HOST:50061,...)\n"
            )
        } else {
            String::new()
        }
    ))
}
