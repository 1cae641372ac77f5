//! Domain types shared by ctcluster's coordinator, workers and `ctctl`: ids, the job spec, the
//! dataset format and its Arrow codec, the CNN model, the optimizer, checkpoints and storage URLs.

// Every public item says what it is for (denied in CI, like every warning).
#![warn(missing_docs)]

pub mod addr_file;
pub mod alloc;
pub mod audit;
pub mod auth;
pub mod card;
pub mod checkpoint;
pub mod dataset;
pub mod dtype;
pub mod error;
pub mod evaluate;
pub mod health;
pub mod ids;
pub mod job;
pub mod local_file;
pub mod model;
pub mod optim;
pub mod preprocess;
pub mod reduce_tree;
pub mod rng;
pub mod seal;
pub mod selection;
pub mod shards;
pub mod spec;
pub mod storage;
pub mod task;
pub mod telemetry;
pub mod tensor_bytes;
pub mod wire;

pub use error::{Error, ErrorClass, Result};
pub use ids::{JobId, Step, TaskId, WorkerId};
