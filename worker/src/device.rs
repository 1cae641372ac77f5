//! Choosing the burn device (and so the backend) from the `--device` flag.

use burn::tensor::Device;

use crate::WorkerError;

/// The device for a `--device` value.
pub fn parse_device(name: &str) -> Result<Device, WorkerError> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        other => Err(WorkerError::Config(format!(
            "--device {other:?} is not available in this build (available: cpu)"
        ))),
    }
}
