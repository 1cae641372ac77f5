//! The number format of gradients on the wire: f32 (exact), or bfloat16 (half the bytes).
//!
//! A bf16 gradient is the worker's f32 gradient rounded to the nearest bf16 (ties to even), a
//! pure function of its bits; the coordinator widens it back to f32 (exactly) and sums in f32 in
//! the usual fixed order. So results stay bit-identical whatever the number of workers: only
//! each micro-batch's gradient is rounded, the same way wherever it is computed.

use serde::{Deserialize, Serialize};

use crate::Error;

/// How gradient values travel from workers to the coordinator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradientDtype {
    /// 4 bytes a value, exact.
    #[default]
    F32,
    /// 2 bytes a value: f32's exponent range, 8 significant bits.
    Bf16,
}

impl GradientDtype {
    /// Bytes of one value on the wire.
    pub fn bytes_per_value(self) -> usize {
        match self {
            GradientDtype::F32 => 4,
            GradientDtype::Bf16 => 2,
        }
    }

    /// The name used in job specs.
    pub fn as_str(self) -> &'static str {
        match self {
            GradientDtype::F32 => "f32",
            GradientDtype::Bf16 => "bf16",
        }
    }

    /// Encodes values as little-endian bytes of this format.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            GradientDtype::F32 => crate::tensor_bytes::f32_to_le_bytes(values),
            GradientDtype::Bf16 => values
                .iter()
                .flat_map(|&v| bf16_from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// Decodes little-endian bytes of this format, appending f32 values to `out`; the length
    /// must be a whole number of values.
    pub fn extend_decoded(self, out: &mut Vec<f32>, bytes: &[u8], what: &str) -> crate::Result<()> {
        match self {
            GradientDtype::F32 => crate::tensor_bytes::extend_f32_from_le_bytes(out, bytes, what),
            GradientDtype::Bf16 => {
                if !bytes.len().is_multiple_of(2) {
                    return Err(Error::invalid(
                        what,
                        format!("{} bytes is not a whole number of bf16 values", bytes.len()),
                    ));
                }
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| f32_from_bf16(u16::from_le_bytes([b[0], b[1]]))),
                );
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for GradientDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bf16 nearest to `v`, ties to even (IEEE 754's default rounding); NaN stays a (quiet)
/// NaN, infinities stay infinite, and values beyond bf16's largest finite round to infinity
/// as IEEE rounding says.
pub fn bf16_from_f32(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        // Keep the sign, force a quiet NaN whatever the payload's low bits were.
        return ((bits >> 16) as u16) | 0x0040;
    }
    // Add half of the dropped part's range, minus one unless the kept part is odd (ties to
    // even); the carry ripples into the exponent exactly when rounding up overflows.
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7fff + lsb);
    (rounded >> 16) as u16
}

/// The f32 of a bf16 value (exact: bf16 is f32's upper half).
pub fn f32_from_bf16(v: u16) -> f32 {
    f32::from_bits(u32::from(v) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_ties_to_even() {
        // Exactly representable values are kept.
        for v in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            0.15625,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(
                f32_from_bf16(bf16_from_f32(v)).to_bits(),
                v.to_bits(),
                "{v}"
            );
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even one, 1.
        assert_eq!(f32_from_bf16(bf16_from_f32(1.0 + 2f32.powi(-8))), 1.0);
        // (1 + 2^-7) + 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
        let odd_tie = 1.0 + 2f32.powi(-7) + 2f32.powi(-8);
        assert_eq!(f32_from_bf16(bf16_from_f32(odd_tie)), 1.0 + 2f32.powi(-6));
        // Just above half rounds up, just below rounds down.
        let above = f32::from_bits((1.0f32).to_bits() + 0x8001);
        assert_eq!(f32_from_bf16(bf16_from_f32(above)), 1.0 + 2f32.powi(-7));
        let below = f32::from_bits((1.0f32).to_bits() + 0x7fff);
        assert_eq!(f32_from_bf16(bf16_from_f32(below)), 1.0);
        // The largest f32 rounds past bf16's largest finite: infinity, as IEEE says.
        assert_eq!(f32_from_bf16(bf16_from_f32(f32::MAX)), f32::INFINITY);
        // NaN stays NaN (a payload only in the low bits would otherwise become infinity).
        let nan = f32::from_bits(0x7f80_0001);
        assert!(f32_from_bf16(bf16_from_f32(nan)).is_nan());
        // Subnormals round like the rest.
        let tiny = f32::from_bits(0x0000_8000);
        assert_eq!(bf16_from_f32(tiny), 0x0000);
        assert_eq!(bf16_from_f32(f32::from_bits(0x0001_8000)), 0x0002);
    }

    #[test]
    fn the_error_is_within_half_a_bf16_ulp() {
        let mut x = 0x1234_5678u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x & 0xbfff_ffff); // finite: exponent's top bit cleared
            if v.abs() < f32::MIN_POSITIVE {
                continue; // subnormal: a fixed ulp, checked above
            }
            let r = f32_from_bf16(bf16_from_f32(v));
            // bf16's ulp in v's binade: 2^(exponent - 7), in f64 to keep the tiny ones.
            let exponent = ((v.to_bits() >> 23) & 0xff) as i32 - 127;
            let ulp = 2f64.powi(exponent - 7);
            let err = (f64::from(r) - f64::from(v)).abs();
            assert!(err <= ulp / 2.0, "{v} -> {r}");
        }
    }

    #[test]
    fn encoding_round_trips_and_halves_the_bytes() {
        let v = [1.0f32, -3.0, 0.5, 1e-3];
        for dtype in [GradientDtype::F32, GradientDtype::Bf16] {
            let bytes = dtype.encode(&v);
            assert_eq!(bytes.len(), v.len() * dtype.bytes_per_value());
            let mut back = Vec::new();
            dtype.extend_decoded(&mut back, &bytes, "g").unwrap();
            let expect: Vec<f32> = match dtype {
                GradientDtype::F32 => v.to_vec(),
                GradientDtype::Bf16 => v.iter().map(|&x| f32_from_bf16(bf16_from_f32(x))).collect(),
            };
            assert_eq!(back, expect);
        }
        let e = GradientDtype::Bf16
            .extend_decoded(&mut Vec::new(), &[1, 2, 3], "gradient")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gradient") && e.contains("3 bytes"), "{e}");
        let yaml: GradientDtype = serde_norway::from_str("bf16").unwrap();
        assert_eq!(yaml, GradientDtype::Bf16);
        assert!(serde_norway::from_str::<GradientDtype>("f16").is_err());
    }
}
