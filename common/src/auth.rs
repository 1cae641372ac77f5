//! Bearer tokens of `ctctl` users, as the coordinator stores them: a YAML file of names, admin
//! flags and the sha256 of each token (never the token itself).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// Name, recorded as the owner of the jobs they submit.
    pub name: String,
    /// sha256 of the token, lowercase hex.
    pub token_sha256: String,
    /// Admins see and cancel every job.
    #[serde(default)]
    pub admin: bool,
}

/// The coordinator's users file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The users.
    pub users: Vec<UserEntry>,
}

/// Tokens start with this, so they are recognisable in a leaked file or log.
pub const TOKEN_PREFIX: &str = "ctc_";

/// A fresh random token (244 bits from the OS generator).
pub fn generate_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{TOKEN_PREFIX}{a}{b}")
}

/// sha256 of a token, lowercase hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

impl UsersFile {
    /// Parses and checks a users file; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let f: UsersFile = serde_yaml::from_str(text)
            .map_err(|e| Error::invalid("users file", format!("{origin}: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        for u in &f.users {
            if u.name.is_empty() || u.name.len() > 64 {
                return Err(Error::invalid(
                    "users file",
                    format!("{origin}: user names are 1 to 64 characters"),
                ));
            }
            if u.token_sha256.len() != 64 || !u.token_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(Error::invalid(
                    "users file",
                    format!("{origin}: {}: token_sha256 is not 64 hex digits", u.name),
                ));
            }
            if !seen.insert(u.token_sha256.to_ascii_lowercase()) {
                return Err(Error::invalid(
                    "users file",
                    format!("{origin}: {}: two users share a token", u.name),
                ));
            }
        }
        Ok(f)
    }

    /// The file as YAML.
    pub fn to_yaml(&self) -> String {
        format!(
            "# ctcluster users: bearer tokens stored as sha256 (made by `ctctl certs init`).\n{}",
            serde_yaml::to_string(self).unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_stably() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 68);
        assert_eq!(hash_token(&a), hash_token(&format!("{a}\n")));
        let f = UsersFile {
            users: vec![UserEntry {
                name: "alice".into(),
                token_sha256: hash_token(&a),
                admin: false,
            }],
        };
        assert_eq!(UsersFile::from_yaml(&f.to_yaml(), "t").unwrap(), f);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let e = UsersFile::from_yaml("users:\n  - name: x\n    token_sha256: abc\n", "u.yaml")
            .unwrap_err();
        assert!(e.to_string().contains("u.yaml") && e.to_string().contains("64 hex"));
        assert!(UsersFile::from_yaml("users: 3", "u.yaml").is_err());
    }
}
