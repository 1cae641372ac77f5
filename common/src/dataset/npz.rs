//! A reader for numpy's `.npy` arrays and `.npz` archives (MedMNIST's distribution format).

use std::collections::BTreeMap;
use std::io::Read;

use crate::{Error, Result};

/// Most elements accepted in one array (a guard against a corrupt header's giant shape).
const MAX_ELEMENTS: u64 = 1 << 34;

/// One numpy array: its shape, its dtype descriptor and its raw little-endian C-order bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// numpy's descriptor, e.g. `|u1`, `<i2`, `<f4`.
    pub descr: String,
    /// The elements, little-endian, C order.
    pub data: Vec<u8>,
}

impl NpyArray {
    /// Bytes per element for the descriptors we read.
    pub fn item_size(descr: &str) -> Option<usize> {
        match descr {
            "|u1" | "|i1" | "|b1" | "u1" | "i1" => Some(1),
            "<u2" | "<i2" => Some(2),
            "<u4" | "<i4" | "<f4" => Some(4),
            "<u8" | "<i8" | "<f8" => Some(8),
            _ => None,
        }
    }

    /// A float32 array of `shape` holding `values` (C order).
    pub fn f32(shape: &[usize], values: &[f32]) -> Self {
        NpyArray {
            shape: shape.to_vec(),
            descr: "<f4".into(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The `.npy` file (format 1.0) holding this array, which `numpy.load` reads as it is.
    pub fn to_npy(&self) -> Vec<u8> {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut header = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
            self.descr
        );
        // The header ends with a newline and pads the data's start to a multiple of 64.
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// The elements as i64 (for label arrays); fails for float descriptors.
    pub fn to_i64(&self, what: &str) -> Result<Vec<i64>> {
        let d = &self.data;
        Ok(match self.descr.as_str() {
            "|u1" | "u1" | "|b1" => d.iter().map(|&b| i64::from(b)).collect(),
            "|i1" | "i1" => d.iter().map(|&b| i64::from(b as i8)).collect(),
            "<u2" => d
                .chunks_exact(2)
                .map(|b| i64::from(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            "<i2" => d
                .chunks_exact(2)
                .map(|b| i64::from(i16::from_le_bytes([b[0], b[1]])))
                .collect(),
            "<u4" => d
                .chunks_exact(4)
                .map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            "<i4" => d
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            "<i8" | "<u8" => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect(),
            other => {
                return Err(Error::invalid(
                    what,
                    format!("dtype {other} is not an integer type"),
                ));
            }
        })
    }

    /// Parses one `.npy` file; `what` names it in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<NpyArray> {
        let bad =
            |reason: &str| Error::invalid(what, format!("not a readable .npy array: {reason}"));
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad("missing the \\x93NUMPY magic"));
        }
        let (header_len, start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => return Err(bad(&format!("unsupported version {v}"))),
        };
        let header = bytes
            .get(start..start + header_len)
            .ok_or_else(|| bad("header truncated"))?;
        let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
        let field = |key: &str| -> Option<&str> {
            let at = header.find(&format!("'{key}'"))?;
            let rest = &header[at + key.len() + 2..];
            Some(rest[rest.find(':')? + 1..].trim_start())
        };
        let descr = field("descr").ok_or_else(|| bad("no descr"))?;
        let descr = descr
            .strip_prefix('\'')
            .and_then(|d| d.split('\'').next())
            .ok_or_else(|| bad("descr is not a string"))?
            .to_string();
        if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
            return Err(bad("Fortran-order arrays are not supported"));
        }
        let shape_text = field("shape").ok_or_else(|| bad("no shape"))?;
        let shape_text = shape_text
            .strip_prefix('(')
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| bad("shape is not a tuple"))?;
        let shape = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| bad(&format!("bad dimension {s:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let item =
            Self::item_size(&descr).ok_or_else(|| bad(&format!("unsupported dtype {descr}")))?;
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| bad("shape is too large"))?;
        let data = &bytes[start + header_len..];
        let need = elements as usize * item;
        if data.len() < need {
            return Err(bad(&format!(
                "data truncated: {} of {need} bytes",
                data.len()
            )));
        }
        Ok(NpyArray {
            shape,
            descr,
            data: data[..need].to_vec(),
        })
    }
}

/// Reads every array of an in-memory `.npz` archive, keyed by name without `.npy`.
pub fn read_npz_bytes(bytes: &[u8], what: &str) -> Result<BTreeMap<String, NpyArray>> {
    unpack_npz(bytes, what, crate::local_file::MAX_ARRAY_FILE_BYTES)
}

/// [`read_npz_bytes`], refusing an archive whose entries unpack to more than `limit` bytes.
fn unpack_npz(bytes: &[u8], what: &str, limit: u64) -> Result<BTreeMap<String, NpyArray>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| Error::invalid(what, format!("not an npz (zip) archive: {e}")))?;
    let mut out = BTreeMap::new();
    // What the entries unpack to is counted as they are read, never taken from their headers:
    // a small archive that unpacks to more than this (a zip bomb) is refused.
    let mut left = limit;
    for i in 0..archive.len() {
        let mut file = archive
            .by_index(i)
            .map_err(|e| Error::invalid(what, format!("unreadable entry {i}: {e}")))?;
        let name = file.name().trim_end_matches(".npy").to_string();
        let mut buf = Vec::with_capacity(
            usize::try_from(file.size().min(left))
                .unwrap_or(0)
                .min(1 << 30),
        );
        (&mut file)
            .take(left + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::invalid(what, format!("entry {name}: {e}")))?;
        if buf.len() as u64 > left {
            return Err(Error::invalid(
                what,
                format!("entry {name}: the archive unpacks to more than {limit} bytes"),
            ));
        }
        left -= buf.len() as u64;
        let array = NpyArray::parse(&buf, &format!("{what}:{name}"))?;
        out.insert(name, array);
    }
    Ok(out)
}

/// Reads every array of a `.npz` file.
pub fn read_npz(path: &std::path::Path) -> Result<BTreeMap<String, NpyArray>> {
    let bytes = crate::local_file::read_limited(
        path,
        crate::local_file::MAX_ARRAY_FILE_BYTES,
        "an .npz archive",
    )?;
    read_npz_bytes(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let shape = shape
            .trim_matches(['(', ')'])
            .split(',')
            .filter(|d| !d.trim().is_empty())
            .map(|d| d.trim().parse().unwrap())
            .collect();
        NpyArray {
            shape,
            descr: descr.into(),
            data: data.to_vec(),
        }
        .to_npy()
    }

    #[test]
    fn written_arrays_read_back() {
        let a = NpyArray::f32(&[2, 3], &[1.0, -2.5, 3.0, 0.0, 1e-3, 7.0]);
        let back = NpyArray::parse(&a.to_npy(), "a").unwrap();
        assert_eq!(back, a);
        assert_eq!(a.to_npy().len() % 64, 24);
    }

    #[test]
    fn an_archive_that_unpacks_past_the_limit_is_refused_while_reading() {
        let mut buf = Vec::new();
        {
            let mut z = zip::ZipWriter::new(std::io::Cursor::new(&mut buf));
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            z.start_file("images.npy", opts).unwrap();
            std::io::Write::write_all(&mut z, &npy("|u1", "(1048576,)", &vec![0u8; 1 << 20]))
                .unwrap();
            z.finish().unwrap();
        }
        assert!(buf.len() < 16 << 10, "{} bytes packed", buf.len());
        let e = unpack_npz(&buf, "bomb.npz", 64 << 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unpacks to more than 65536 bytes"), "{e}");
        assert_eq!(
            unpack_npz(&buf, "bomb.npz", 2 << 20).unwrap()["images"]
                .data
                .len(),
            1 << 20
        );
    }

    #[test]
    fn parses_numpy_headers_and_rejects_truncation() {
        let a = NpyArray::parse(&npy("|u1", "(2, 3)", &[1, 2, 3, 4, 5, 6]), "a").unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_i64("a").unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let b = NpyArray::parse(&npy("<i2", "(2,)", &[0xff, 0xff, 2, 0]), "b").unwrap();
        assert_eq!(b.to_i64("b").unwrap(), vec![-1, 2]);
        let err = NpyArray::parse(&npy("|u1", "(2, 3)", &[1, 2]), "labels.npy").unwrap_err();
        assert!(err.to_string().contains("labels.npy") && err.to_string().contains("truncated"));
        assert!(NpyArray::parse(b"PK\x03\x04junk", "x").is_err());
        let err = NpyArray::parse(&npy("|u1", "(99999999999, 99999999999)", &[]), "g").unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }
}
