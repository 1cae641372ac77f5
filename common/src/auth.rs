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
    /// URL prefixes this user's jobs may read datasets and checkpoints from, on top of the
    /// coordinator's `--allow-read`/`--allow-write` (both must allow a URL). Empty: no
    /// per-user restriction on reads beyond `write`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// URL prefixes this user's jobs may write under (and read from).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
    /// When the token stops working: `YYYY-MM-DD` (midnight UTC) or
    /// `YYYY-MM-DDTHH:MM:SSZ`. None: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl UserEntry {
    /// Seconds since the Unix epoch at which the token expires, if it does.
    pub fn expires_at(&self) -> Result<Option<u64>> {
        self.expires
            .as_deref()
            .map(|t| {
                parse_utc(t).ok_or_else(|| {
                    Error::invalid(
                        "users file",
                        format!(
                            "{}: expires {t:?} is not YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ",
                            self.name
                        ),
                    )
                })
            })
            .transpose()
    }
}

/// Largest users file read.
pub const MAX_USERS_FILE_BYTES: u64 = 1 << 20;

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` as seconds since the Unix epoch (UTC).
pub fn parse_utc(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let num = |s: &str, len: usize| -> Option<u32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut parts = date.split('-');
    let (y, m, d) = (
        num(parts.next()?, 4)?,
        num(parts.next()?, 2)?,
        num(parts.next()?, 2)?,
    );
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (hh, mm, ss) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let mut p = t.split(':');
            let v = (num(p.next()?, 2)?, num(p.next()?, 2)?, num(p.next()?, 2)?);
            if p.next().is_some() || v.0 > 23 || v.1 > 59 || v.2 > 60 {
                return None;
            }
            v
        }
    };
    let days = days_from_civil(i64::from(y), m, d);
    let secs = days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss);
    u64::try_from(secs).ok()
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
        let f: UsersFile = serde_norway::from_str(text)
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
            u.expires_at()?;
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
            serde_norway::to_string(self).unwrap_or_default()
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
                read: vec!["s3://data/alice".into()],
                write: vec![],
                expires: Some("2031-02-03".into()),
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
        let e = UsersFile::from_yaml(
            &format!(
                "users:\n  - name: x\n    token_sha256: {}\n    expires: next week\n",
                "a".repeat(64)
            ),
            "u.yaml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("next week"), "{e}");
    }

    #[test]
    fn expiry_dates_are_utc_seconds() {
        assert_eq!(parse_utc("1970-01-01"), Some(0));
        assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_utc("2024-02-29T12:30:05Z"), Some(1_709_209_805));
        for bad in [
            "2024-13-01",
            "2024-1-01",
            "2024-01-01T10:00:00",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
