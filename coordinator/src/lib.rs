//! ctcluster's coordinator: job lifecycle, data plan, task scheduling, gradient all-reduce,
//! Adam and checkpoints, served over gRPC.

// Every public item says what it is for (denied in CI, like every warning).
#![warn(missing_docs)]

pub mod access;
pub mod admission;
pub mod aggregator;
pub mod auth;
pub mod client_api;
pub mod config;
pub mod connections;
pub mod driver;
pub mod error;
pub mod ewma;
pub mod job;
pub mod plan;
pub mod records;
pub mod retry;
pub mod scheduler;
pub mod scope;
pub mod server;
pub mod state;
pub mod tls;
pub mod worker_api;
pub mod workers;

pub use aggregator::serve_aggregator;
pub use config::{Args, CoordinatorConfig};
pub use error::CoordError;
pub use server::serve;
