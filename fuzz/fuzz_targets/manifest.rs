//! A dataset's manifest.json, parsed and validated as the coordinator and workers do before
//! trusting any of its numbers.
#![no_main]

use ctcluster_common::dataset::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data)
        && m.validate("fuzz").is_ok()
    {
        // A manifest that validates must be safe to use.
        let _ = m.image.bytes();
        for split in m.splits.keys() {
            let _ = m.split(split, "fuzz");
        }
    }
});
