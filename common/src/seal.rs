//! Encryption at rest: files sealed with AES-256-GCM under a named key.
//!
//! A sealed file is `CTCSEAL1` | key id length (1 byte) | key id | 96-bit random nonce |
//! ciphertext and tag. The additional data binds it to its place (a dataset's id and the
//! shard's file name; a checkpoint's job, step and file name), so sealed files cannot be
//! swapped unnoticed, within a dataset or checkpoint or between them. Keys never travel:
//! each process finds a key by its id in its own environment, `CT_KEY_<ID>` (64 hex digits;
//! the id upper-cased, other characters as `_`) or the file `<id>.key` in the folder
//! `CT_KEYRING`.

use std::path::PathBuf;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// First bytes of every sealed file.
pub const SEALED_MAGIC: &[u8; 8] = b"CTCSEAL1";
/// The algorithm name recorded in manifests.
pub const ALGORITHM: &str = "AES-256-GCM";
/// Environment variable naming the keyring folder.
pub const KEYRING_ENV: &str = "CT_KEYRING";

/// What a manifest says about its files' encryption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// [`ALGORITHM`].
    pub algorithm: String,
    /// The id of the key the files are sealed with.
    pub key_id: String,
    /// What the files are bound to besides their names (a dataset's random id; a checkpoint's
    /// `<job id>/checkpoints/step-N`): part of each file's additional data, so that files
    /// cannot be swapped between datasets or jobs sealed with the same key. Absent in data
    /// sealed before binding existed (bound to the file name alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

impl Encryption {
    /// The record for a key, with the files bound to `binding`.
    pub fn bound(key: &DataKey, binding: &str) -> Self {
        Encryption {
            algorithm: ALGORITHM.into(),
            key_id: key.id.clone(),
            binding: Some(binding.to_string()),
        }
    }

    /// The additional data a file named `file` is sealed with.
    pub fn aad(&self, file: &str) -> String {
        aad(self.binding.as_deref(), file)
    }
}

/// The additional data of a sealed file: its binding and name.
pub fn aad(binding: Option<&str>, file: &str) -> String {
    match binding {
        Some(b) => format!("{b}/{file}"),
        None => file.to_string(),
    }
}

/// A named 256-bit key.
#[derive(Clone)]
pub struct DataKey {
    id: String,
    key: [u8; 32],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id)
    }
}

/// Checks a key id: 1 to 64 letters, digits, `-` or `_`.
pub fn check_key_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::invalid(
            "key id",
            format!("{id:?}: use 1 to 64 letters, digits, - or _"),
        ));
    }
    Ok(())
}

impl DataKey {
    /// A key from 64 hex digits.
    pub fn from_hex(id: &str, text: &str) -> Result<Self> {
        check_key_id(id)?;
        let bytes = hex::decode(text.trim())
            .map_err(|e| Error::invalid("key", format!("key {id}: not hex: {e}")))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            Error::invalid(
                "key",
                format!("key {id}: {} bytes, AES-256 needs 32", b.len()),
            )
        })?;
        Ok(DataKey {
            id: id.to_string(),
            key,
        })
    }

    /// A fresh random key.
    pub fn generate(id: &str) -> Result<Self> {
        check_key_id(id)?;
        let key: [u8; 32] = Aes256Gcm::generate_key(&mut OsRng).into();
        Ok(DataKey {
            id: id.to_string(),
            key,
        })
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as hex, for a key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key)
    }

    /// Finds a key by id in this process's environment (see the module docs); `purpose`
    /// says what needs it, for the error.
    pub fn from_env(id: &str, purpose: &str) -> Result<Self> {
        check_key_id(id)?;
        let var = format!(
            "CT_KEY_{}",
            id.to_ascii_uppercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        if let Ok(hex) = std::env::var(&var) {
            return Self::from_hex(id, &hex);
        }
        if let Some(dir) = std::env::var_os(KEYRING_ENV) {
            let path = PathBuf::from(dir).join(format!("{id}.key"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Self::from_hex(id, &text);
            }
        }
        Err(Error::KeyMissing {
            what: purpose.to_string(),
            key_id: id.to_string(),
            hint: format!("set {var} or put {id}.key in the folder ${KEYRING_ENV}"),
        })
    }

    /// Seals `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new(&self.key.into());
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Compute("AES-GCM sealing failed".into()))?;
        let mut out = Vec::with_capacity(8 + 1 + self.id.len() + 12 + sealed.len());
        out.extend_from_slice(SEALED_MAGIC);
        out.push(self.id.len() as u8);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a sealed file bound to `aad`; `what` names it in errors. A wrong key or an
    /// altered file is an error, never garbage.
    pub fn open(&self, aad: &str, sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        let bad = |reason: String| Error::Sealed {
            what: what.to_string(),
            key_id: self.id.clone(),
            reason,
        };
        let rest = sealed
            .strip_prefix(SEALED_MAGIC.as_slice())
            .ok_or_else(|| bad("not a sealed file (no CTCSEAL1 header)".into()))?;
        let (&n, rest) = rest
            .split_first()
            .ok_or_else(|| bad("truncated header".into()))?;
        if rest.len() < usize::from(n) + 12 + 16 {
            return Err(bad("truncated".into()));
        }
        let (id, rest) = rest.split_at(usize::from(n));
        if id != self.id.as_bytes() {
            return Err(bad(format!(
                "sealed with key {:?}",
                String::from_utf8_lossy(id)
            )));
        }
        let (nonce, body) = rest.split_at(12);
        Aes256Gcm::new(&self.key.into())
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| bad("authentication failed: wrong key, or the file was altered".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_and_hides_the_plaintext() {
        let key = DataKey::generate("site-a").unwrap();
        let plain = b"pixels pixels pixels pixels".repeat(10);
        let sealed = key.seal("train-00000.arrow", &plain).unwrap();
        assert!(
            !sealed
                .windows(16)
                .any(|w| plain.windows(16).any(|p| p == w))
        );
        assert_eq!(
            key.open("train-00000.arrow", &sealed, "shard").unwrap(),
            plain
        );
        // Two seals of the same bytes differ (fresh nonce).
        assert_ne!(sealed, key.seal("train-00000.arrow", &plain).unwrap());
    }

    #[test]
    fn wrong_key_moved_file_or_flipped_bit_are_errors() {
        let key = DataKey::generate("site-a").unwrap();
        let sealed = key.seal("a.arrow", b"secret scan").unwrap();
        let other = DataKey::from_hex("site-a", &"11".repeat(32)).unwrap();
        let e = other
            .open("a.arrow", &sealed, "dataset d shard a")
            .unwrap_err();
        assert!(
            e.to_string().contains("site-a") && e.to_string().contains("wrong key"),
            "{e}"
        );
        assert!(
            key.open("b.arrow", &sealed, "x").is_err(),
            "bound to its name"
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(key.open("a.arrow", &flipped, "x").is_err());
        let e = DataKey::generate("site-b")
            .unwrap()
            .open("a.arrow", &sealed, "x")
            .unwrap_err();
        assert!(e.to_string().contains("sealed with key \"site-a\""), "{e}");
        assert!(key.open("a.arrow", &sealed[..20], "x").is_err());
    }

    #[test]
    fn keys_come_from_hex_only() {
        assert!(DataKey::from_hex("k", "abcd").is_err());
        assert!(DataKey::from_hex("bad id", &"00".repeat(32)).is_err());
        let e = DataKey::from_env("never-set-anywhere", "dataset x").unwrap_err();
        assert!(e.to_string().contains("CT_KEY_NEVER_SET_ANYWHERE"), "{e}");
    }
}
