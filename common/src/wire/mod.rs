//! The gRPC edge: conversions between the wire types of `ctcluster-proto` and the domain types
//! of this crate. Incoming messages are checked here (missing fields, unknown enum values, ids
//! that do not parse) and refused with an [`crate::Error::Invalid`] naming the field; nothing
//! past the edge handles a `pb::` type.

mod job_state;
mod result;
mod task;
