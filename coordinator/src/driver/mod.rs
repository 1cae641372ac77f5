//! A job's driver: plans each step, hands micro-batches to workers, reduces their gradients in
//! a fixed order, applies Adam, evaluates at epoch ends and checkpoints.

mod evaluation;
mod export;
mod pace;
mod persist;
mod rounds;
mod run;
mod shards;
mod start;

pub use run::run;
