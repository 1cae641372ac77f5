//! A checkpoint's files, as a resuming coordinator reads them: the input is cut into
//! manifest.json, state.json, params.bin, adam_m1.bin and adam_m2.bin (2-byte length
//! prefixes). Decoded once with the input's own manifest, once with a manifest whose sha256s
//! match, so state.json and the tensors are reached.
#![no_main]

use std::collections::BTreeMap;

use bytes::Bytes;
use ctcluster_common::checkpoint::{
    CHECKPOINT_FORMAT, Checkpoint, CheckpointManifest, parse_manifest, sha,
};
use libfuzzer_sys::fuzz_target;

fn cut(mut data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while parts.len() < 4 && data.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        parts.push(&data[2..2 + n]);
        data = &data[2 + n..];
    }
    parts.push(data);
    parts
}

fuzz_target!(|data: &[u8]| {
    let parts = cut(data);
    let names = ["manifest.json", "state.json", "params.bin", "adam_m1.bin", "adam_m2.bin"];
    let mut files: BTreeMap<&str, Bytes> = BTreeMap::new();
    for (name, part) in names.iter().zip(&parts).skip(1) {
        files.insert(name, Bytes::copy_from_slice(part));
    }
    if let Ok(m) = parse_manifest(parts[0], "fuzz") {
        let _ = Checkpoint::decode(&m, &files, "fuzz");
    }
    let matching = CheckpointManifest {
        format: CHECKPOINT_FORMAT.into(),
        step: 1,
        files: files.iter().map(|(k, v)| (k.to_string(), sha(v))).collect(),
        encryption: None,
    };
    let _ = Checkpoint::decode(&matching, &files, "fuzz");
});
