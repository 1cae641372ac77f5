//! ctcluster's test machinery, kept out of the production crates: the check of a tensor backend
//! against the pure-Rust one (used by `ctcluster-gpu-check` and the LibTorch tests) and burn's
//! own Adam, the reference the coordinator's fused Adam must equal.

// Every public item says what it is for (denied in CI, like every warning).
#![warn(missing_docs)]

pub mod backend_check;
pub mod reference_adam;
