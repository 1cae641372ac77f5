//! MedMNIST-style .npz files, as `ctctl dataset from-npz` reads them.
#![no_main]

use ctcluster_common::dataset::read_npz_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_npz_bytes(data, "fuzz.npz");
});
