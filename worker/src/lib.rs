//! ctcluster's worker: registers with the coordinator, streams its micro-batches' shards from
//! object storage, preprocesses them and computes CNN gradients on a dedicated thread.

// Every public item says what it is for (denied in CI, like every warning).
#![warn(missing_docs)]

mod aggregators;
mod cache;
pub mod compute;
pub mod config;
pub mod device;
mod error;
mod health;
pub mod runner;

pub use config::{Args, Faults, WorkerConfig, WorkerTls};
pub use error::WorkerError;
pub use runner::run_worker;
