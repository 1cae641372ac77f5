//! Choosing the burn device (and so the backend) from the `--device` flag.

use burn::tensor::Device;

use crate::WorkerError;

// burn 0.22 marks its LibTorch backend deprecated in favour of CubeCL; the design names LibTorch
// for GPU workers (burn-cuda's build downloads LLVM, which cannot happen here), so it stays.
#[allow(deprecated)]
/// The device for a `--device` value: `cpu` (pure-Rust burn-flex), and with the `tch` feature
/// `libtorch` (LibTorch on the CPU) and `cuda:N` (LibTorch on GPU N).
pub fn parse_device(name: &str) -> Result<Device, WorkerError> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "tch")]
        "libtorch" => Ok(Device::libtorch()),
        #[cfg(feature = "tch")]
        cuda if cuda.starts_with("cuda:") => cuda[5..]
            .parse::<usize>()
            .map(Device::libtorch_cuda)
            .map_err(|_| WorkerError::Config(format!("--device {cuda:?}: expected cuda:N"))),
        other => Err(WorkerError::Config(format!(
            "--device {other:?} is not available in this build (available: {})",
            if cfg!(feature = "tch") {
                "cpu, libtorch, cuda:N"
            } else {
                "cpu; build with --features tch for libtorch and cuda:N"
            }
        ))),
    }
}
