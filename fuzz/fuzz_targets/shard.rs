//! Arrow IPC shard bytes, as a worker reads them from object storage. The manifest entry's
//! sha256 is made to match so the decoder itself is exercised; the first bytes choose the
//! declared image shape, type and class count.
#![no_main]

use ctcluster_common::dataset::{ImageInfo, PixelType, ShardInfo, decode_shard};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(init: {
    // The decoder turns panics inside arrow-ipc into errors; libfuzzer-sys's hook would abort
    // on them before they unwind. Panics the decoder does not catch still end the run.
    std::panic::set_hook(Box::new(|_| {}));
}, |data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, body) = data.split_at(4);
    let pixel_type = match head[0] % 4 {
        0 => PixelType::U8,
        1 => PixelType::U16,
        2 => PixelType::I16,
        _ => PixelType::F32,
    };
    let image = ImageInfo {
        height: u32::from(head[1] % 64),
        width: u32::from(head[2] % 64),
        channels: 1 + u32::from(head[3] % 3),
        pixel_type,
    };
    let info = ShardInfo {
        file: "train-00000.arrow".into(),
        rows: u64::from(head[1]),
        sha256: hex::encode(Sha256::digest(body)),
        per_class: vec![0; 2],
    };
    let _ = decode_shard(body, &info, &image, 1 + usize::from(head[3] % 5), "fuzz");
});
