//! End-to-end tests: real gRPC over loopback, real data, real processes.

mod bad_input;
mod chaos;
mod containers;
mod deploy;
mod exactness;
mod explain;
mod health;
mod hostile;
mod ingest;
mod learning;
mod lifecycle;
mod limits;
mod observability;
mod partition;
mod predict;
mod preemption;
mod processes;
mod resume;
mod security;
mod selection;
mod status_codes;
mod storage;
mod tenants;
