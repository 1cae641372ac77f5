//! ctcluster's gRPC protocol: the generated tonic/prost code for `ctcluster.v1`.

/// Generated code, lints off: it is not ours to tidy.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v1 {
    tonic::include_proto!("ctcluster.v1");
}

pub use v1::*;

/// Bumped on every incompatible change of the worker protocol; checked at `Register`. 2: tasks
/// of sharded jobs send their gradient to aggregators (`TaskJob.shards`), not the coordinator.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest chunk of tensor bytes in one message (1 MiB), well under gRPC's 4 MiB default.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest message either side accepts or sends (8 MiB): a tensor chunk with room to spare;
/// specs and headers are far smaller.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
