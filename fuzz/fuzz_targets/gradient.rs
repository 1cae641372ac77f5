//! Gradient payloads as `PushResult` streams them: chunks of little-endian f32, appended to a
//! buffer of announced length and checked for NaN/Inf.
#![no_main]

use ctcluster_common::tensor_bytes::{extend_f32_from_le_bytes, first_non_finite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let chunk = 1 + usize::from(data[0]);
    let mut out = Vec::new();
    let mut ok = true;
    for c in data[1..].chunks(chunk) {
        if extend_f32_from_le_bytes(&mut out, c, "gradient").is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        assert_eq!(out.len() * 4, data.len() - 1);
        if let Some(i) = first_non_finite(&out) {
            assert!(!out[i].is_finite());
        } else {
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }
});
