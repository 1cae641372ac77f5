//! De-identification of DICOM headers, following the DICOM Basic Application Level
//! Confidentiality Profile (PS3.15 E.1) as an allow-list: only technical attributes known to
//! be safe are kept; patient ids and names become keyed pseudonyms (HMAC-SHA256), instance UIDs
//! are re-mapped under 2.25, and everything else (names, dates, addresses, institution,
//! accession, private attributes, sequences) is removed. The audit lists what was removed,
//! never the values.

use std::collections::BTreeMap;
use std::path::Path;

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_object::InMemDicomObject;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::CtlError;

/// Technical attributes kept as they are.
const KEEP: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::IMAGE_TYPE,
    tags::SOP_CLASS_UID,
    tags::MODALITY,
    tags::MANUFACTURER,
    tags::BODY_PART_EXAMINED,
    tags::SLICE_THICKNESS,
    tags::KVP,
    tags::CONVOLUTION_KERNEL,
    tags::PATIENT_POSITION,
    tags::INSTANCE_NUMBER,
    tags::IMAGE_POSITION_PATIENT,
    tags::IMAGE_ORIENTATION_PATIENT,
    tags::SLICE_LOCATION,
    tags::SAMPLES_PER_PIXEL,
    tags::PHOTOMETRIC_INTERPRETATION,
    tags::NUMBER_OF_FRAMES,
    tags::ROWS,
    tags::COLUMNS,
    tags::PIXEL_SPACING,
    tags::BITS_ALLOCATED,
    tags::BITS_STORED,
    tags::HIGH_BIT,
    tags::PIXEL_REPRESENTATION,
    tags::WINDOW_CENTER,
    tags::WINDOW_WIDTH,
    tags::RESCALE_INTERCEPT,
    tags::RESCALE_SLOPE,
    tags::RESCALE_TYPE,
];

/// Instance UIDs: re-mapped, so references between objects of a study still match.
const REMAP_UID: &[Tag] = &[
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SOP_INSTANCE_UID,
    tags::FRAME_OF_REFERENCE_UID,
];

/// The key behind pseudonyms: only someone holding it can link a pseudonym to a patient id.
pub struct DeidKey {
    key: Vec<u8>,
}

impl DeidKey {
    /// A key of at least 16 bytes.
    pub fn from_bytes(key: &[u8]) -> Result<Self, CtlError> {
        if key.len() < 16 {
            return Err(CtlError::Usage(
                "the pseudonym key must have at least 16 bytes (32 hex digits)".into(),
            ));
        }
        Ok(DeidKey { key: key.to_vec() })
    }

    /// The key from a file of hex digits (what `ctctl keys new` writes), or from CT_DEID_KEY
    /// (hex).
    pub fn load(file: Option<&Path>) -> Result<Self, CtlError> {
        let text = match file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| CtlError::Usage(format!("pseudonym key {}: {e}", f.display())))?,
            None => std::env::var("CT_DEID_KEY").map_err(|_| {
                CtlError::Usage(
                    "DICOM ingest de-identifies and needs a pseudonym key: give --deid-key FILE \
                     (make one with `ctctl keys new deid --dir keys`) or set CT_DEID_KEY to hex \
                     digits; --keep-identifiers turns de-identification off"
                        .into(),
                )
            })?,
        };
        let bytes = hex::decode(text.trim())
            .map_err(|e| CtlError::Usage(format!("pseudonym key: not hex digits: {e}")))?;
        Self::from_bytes(&bytes)
    }

    fn mac(&self, domain: &str, value: &str) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        m.update(domain.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// A short, stable id for a value in a domain (`sop`, ...).
    pub fn short(&self, domain: &str, value: &str) -> String {
        hex::encode(&self.mac(domain, value)[..8])
    }

    /// A UID under 2.25 (UUID-derived UIDs) for an original UID.
    pub fn uid(&self, uid: &str) -> String {
        let m = self.mac("uid", uid);
        let n = u128::from_be_bytes(m[..16].try_into().unwrap_or([0; 16])) >> 1;
        format!("2.25.{n}")
    }

    /// sha256 of the key, shortened: shows which key made a dataset without revealing it.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(&self.key)[..8])
    }
}

/// The pseudonym of a patient id under `key`: `P-` and 16 hex digits.
pub fn pseudonym(key: &DeidKey, patient_id: &str) -> String {
    format!("P-{}", key.short("patient", patient_id.trim()))
}

/// One attribute taken out or replaced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    /// `(gggg,eeee)`.
    pub tag: String,
    /// The dictionary keyword (`private` for private attributes).
    pub keyword: String,
    /// `removed`, `pseudonymised` or `uid-remapped`.
    pub action: &'static str,
}

/// What de-identification leaves of one header, and what it took.
pub struct Deidentified {
    /// Kept and replaced attributes, keyword -> value.
    pub kept: BTreeMap<String, String>,
    /// What was removed or replaced.
    pub audit: Vec<AuditEntry>,
    /// The patient's pseudonym (or the raw id when not de-identifying).
    pub patient: String,
}

fn keyword(tag: Tag) -> String {
    if tag.group() % 2 == 1 {
        return "private".into();
    }
    StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.alias().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(['\0', ' ']).to_string())
}

/// De-identifies one header (`key` None keeps every attribute: for already-anonymous data).
pub fn deidentify(obj: &InMemDicomObject, key: Option<&DeidKey>) -> Deidentified {
    let patient_id = text(obj, tags::PATIENT_ID).unwrap_or_default();
    let patient = match key {
        Some(k) => pseudonym(k, &patient_id),
        None => patient_id.clone(),
    };
    let mut kept = BTreeMap::new();
    let mut audit = Vec::new();
    for elem in obj.iter() {
        let tag = elem.header().tag;
        if tag == tags::PIXEL_DATA {
            continue;
        }
        let name = keyword(tag);
        let value = || {
            elem.to_str()
                .map(|s| {
                    s.trim_matches(['\0', ' '])
                        .chars()
                        .take(256)
                        .collect::<String>()
                })
                .unwrap_or_default()
        };
        let Some(key) = key else {
            kept.insert(name, value());
            continue;
        };
        let action = if KEEP.contains(&tag) {
            kept.insert(name, value());
            continue;
        } else if tag == tags::PATIENT_ID || tag == tags::PATIENT_NAME {
            kept.insert(name.clone(), patient.clone());
            "pseudonymised"
        } else if REMAP_UID.contains(&tag) {
            kept.insert(name.clone(), key.uid(&value()));
            "uid-remapped"
        } else {
            "removed"
        };
        audit.push(AuditEntry {
            tag: format!("({:04X},{:04X})", tag.group(), tag.element()),
            keyword: name,
            action,
        });
    }
    if key.is_some() {
        kept.insert("PatientIdentityRemoved".into(), "YES".into());
        kept.insert(
            "DeidentificationMethod".into(),
            "ctcluster: DICOM PS3.15 basic profile as an allow-list; HMAC-SHA256 pseudonyms".into(),
        );
    }
    Deidentified {
        kept,
        audit,
        patient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_differ_across_keys() {
        let a = DeidKey::from_bytes(&[1; 32]).unwrap();
        let b = DeidKey::from_bytes(&[2; 32]).unwrap();
        assert_eq!(pseudonym(&a, "12345"), pseudonym(&a, "12345 "));
        assert_ne!(pseudonym(&a, "12345"), pseudonym(&b, "12345"));
        assert_ne!(pseudonym(&a, "12345"), pseudonym(&a, "12346"));
        let uid = a.uid("1.2.840.113619.2.1.1.322987881.621.736170080.681");
        assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
        assert!(DeidKey::from_bytes(&[0; 8]).is_err());
    }
}
