//! The CNN models: configuration and parameter layout (plain Rust), and the burn computation.

mod batch;
mod compute;
mod for_job;
mod seed_cnn;

pub use batch::BatchBuilder;
pub use compute::{
    BatchInput, EvalOutput, Precision, TrainOutput, argmax, dropout_keep_mask, eval_batch,
    train_batch, train_batch_in,
};
pub use for_job::model_for_job;
pub use seed_cnn::{ModelConfig, ParamSpec, SEED_CNN};
