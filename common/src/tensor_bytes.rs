//! Tensors on the wire: raw little-endian f32 bytes, cut into chunks.

use crate::Error;

/// Encodes floats as little-endian bytes (one memory copy on little-endian machines).
pub fn f32_to_le_bytes(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice::<f32, u8>(values).to_vec();
    }
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes little-endian bytes into floats, appending to `out`; the length must be a multiple of 4.
pub fn extend_f32_from_le_bytes(out: &mut Vec<f32>, bytes: &[u8], what: &str) -> Result<(), Error> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::invalid(
            what,
            format!("{} bytes is not a whole number of f32 values", bytes.len()),
        ));
    }
    // One memory copy when the bytes happen to be aligned for f32 on a little-endian machine.
    if cfg!(target_endian = "little")
        && let Ok(floats) = bytemuck::try_cast_slice::<u8, f32>(bytes)
    {
        out.extend_from_slice(floats);
        return Ok(());
    }
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    Ok(())
}

/// Decodes little-endian bytes into floats.
pub fn f32_from_le_bytes(bytes: &[u8], what: &str) -> Result<Vec<f32>, Error> {
    let mut out = Vec::with_capacity(bytes.len() / 4);
    extend_f32_from_le_bytes(&mut out, bytes, what)?;
    Ok(out)
}

/// The index of the first NaN or infinite value, if any.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    values.iter().position(|v| !v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_ragged_bytes() {
        let v = vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.0e38];
        let bytes = f32_to_le_bytes(&v);
        assert_eq!(bytes.len(), 16);
        assert_eq!(bytes[..4], 1.5f32.to_le_bytes());
        assert_eq!(f32_from_le_bytes(&bytes, "g").unwrap(), v);
        let err = f32_from_le_bytes(&bytes[..7], "gradient").unwrap_err();
        assert!(err.to_string().contains("gradient"), "{err}");
        assert_eq!(first_non_finite(&[0.0, f32::NAN]), Some(1));
        assert_eq!(first_non_finite(&v), None);
    }
}
