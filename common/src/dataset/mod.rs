//! The dataset format: a prefix holding Arrow IPC shards and a `manifest.json` written last.

mod head_ct;
mod manifest;
mod npz;
mod patch;
mod shard;
mod synth;
mod writer;

pub use head_ct::{HEAD_CT_CLASSES, HeadCtOptions, render_head_ct, write_head_ct};
pub use manifest::{
    Deidentification, FORMAT, ImageInfo, MANIFEST_FILE, MAX_ID_BYTES, MAX_SIDE, Manifest,
    PixelStats, PixelType, ShardInfo, SplitInfo, load_manifest, load_manifest_with_sha,
    shard_columns, verify_shard_sizes,
};
pub use npz::{NpyArray, read_npz, read_npz_bytes};
pub use patch::{PATCH_CLASSES, PatchSample, patch_sample, patch_side, write_patches};
pub use shard::{DecodedShard, decode_shard, encode_shard, load_shard};
pub use synth::{SynthOptions, write_synthetic, write_synthetic_sealed};
pub use writer::DatasetWriter;
