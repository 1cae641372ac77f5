//! `ctctl demo`: a whole cluster inside the `ctctl` process. The only place `ctctl` links the
//! coordinator and the worker (everything else speaks to them over gRPC); the test harness
//! uses the same embedding.

mod cluster;
mod local_tls;

pub use cluster::run;
pub use local_tls::{LocalTls, local_tls};
