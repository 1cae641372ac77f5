//! Whether a backend computes the same training steps as another, judged by what holds for
//! every correct implementation on any CPU or GPU.
//!
//! In single precision two correct backends need not end close after Adam steps: the seed
//! CNN's max-pool picks the larger of two values that can lie within f32 rounding of each other,
//! kernels that add in another order pick the other one, that window's gradient goes to another
//! element, and Adam moves every parameter by about its learning rate whatever the gradient's
//! size. Which side a kernel takes depends on the CPU it runs on (PyTorch's own two CPU
//! convolutions end 3.2e-4 apart on these steps). So the verdict rests on:
//! - the first gradient and 20 Adam steps computed in double precision on both backends (the
//!   parameters, their sum and Adam stay f32), where rounding is far below any near-tie: the
//!   same maths gives the same parameters, a wrong gradient does not;
//! - 20 steps of plain gradient descent in single precision, where a near-tie moves one weight
//!   by the learning rate times one gradient entry, not by the learning rate;
//! - the single-precision loss curve against the double-precision one, step by step.
//!
//! The single-precision first gradient and Adam run are measured and printed, not judged.

use burn::tensor::Device;
use ctcluster_common::model::{ModelConfig, Precision, train_batch_in};

use super::{GradientFault, MICRO, Trainer, Update, batch, run_steps};

/// Steps of each run (the LibTorch test and gpu-check).
pub const STEPS: u64 = 20;
/// Learning rate of the gradient-descent run.
const SGD_LR: f32 = 0.05;

/// The bounds of the verdict (relative L2 distance of parameter or gradient vectors, absolute
/// difference of mean losses). The first gradient in f64: just above every element being one
/// f32 rounding (2^-24 relative) apart when the f64 results are stored as f32.
pub const MAX_GRAD_F64: f64 = 1e-7;
/// 20 Adam steps in double precision.
pub const MAX_ADAM_F64: f64 = 1e-6;
/// 20 gradient-descent steps in single precision.
pub const MAX_SGD_F32: f64 = 1e-4;
/// Every step's single-precision loss against the double-precision reference's.
pub const MAX_LOSS_F32: f64 = 1e-4;

/// Relative L2 distance of `a` from `b`.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

/// What backend `b` made of the steps, measured against backend `a`.
#[derive(Clone, Debug)]
pub struct Agreement {
    /// First gradient, both in f64.
    pub grad_f64: f64,
    /// Parameters after 20 Adam steps, both in f64.
    pub adam_f64: f64,
    /// Parameters after 20 gradient-descent steps, both in f32.
    pub sgd_f32: f64,
    /// Largest difference of a step's mean loss: `b` in f32 against `a` in f64.
    pub loss_f32: f64,
    /// First gradient, both in f32 (measured only).
    pub grad_f32: f64,
    /// Parameters after 20 Adam steps, both in f32 (measured only).
    pub adam_f32: f64,
    /// Parameters after 20 Adam steps, `b` in f32 against `a` in f64 (measured only).
    pub adam_f32_vs_f64: f64,
    /// Mean loss of the first and last step of `b`'s f32 Adam run.
    pub loss_first_last: (f64, f64),
}

/// Runs [`STEPS`] steps of each kind on both backends.
pub fn compare(model: &ModelConfig, a: &Device, b: &Device) -> Agreement {
    compare_with(model, a, b, STEPS, None)
}

/// [`compare`] over `steps` steps; `fault`, when given, is applied to every gradient `b`
/// returns (the checker's own test plants an error with it).
pub fn compare_with(
    model: &ModelConfig,
    a: &Device,
    b: &Device,
    steps: u64,
    fault: Option<GradientFault>,
) -> Agreement {
    let run = |device: &Device, update: Update, precision: Precision, fault| {
        let mut trainer = Trainer::new(model, device, update, precision);
        trainer.fault = fault;
        run_steps(trainer, steps)
    };
    let params = model.init_params(1);
    let first = batch(0, 0, MICRO);
    let grad = |device: &Device, precision: Precision, fault: Option<GradientFault>| {
        let mut g = train_batch_in(model, &params, &first, device, precision)
            .expect("train step")
            .grad;
        if let Some(fault) = fault {
            fault(&mut g);
        }
        g
    };
    let (ref_losses, a_adam64) = run(a, Update::Adam, Precision::F64, None);
    let (_, b_adam64) = run(b, Update::Adam, Precision::F64, fault);
    let (_, a_adam32) = run(a, Update::Adam, Precision::F32, None);
    let (b_losses, b_adam32) = run(b, Update::Adam, Precision::F32, fault);
    let (_, a_sgd) = run(a, Update::Sgd(SGD_LR), Precision::F32, None);
    let (_, b_sgd) = run(b, Update::Sgd(SGD_LR), Precision::F32, fault);
    let loss_f32 = ref_losses
        .iter()
        .zip(&b_losses)
        .map(|(r, l)| (r - l).abs())
        .fold(0.0, f64::max);
    Agreement {
        grad_f64: rel_l2(
            &grad(b, Precision::F64, fault),
            &grad(a, Precision::F64, None),
        ),
        adam_f64: rel_l2(&b_adam64, &a_adam64),
        sgd_f32: rel_l2(&b_sgd, &a_sgd),
        loss_f32,
        grad_f32: rel_l2(
            &grad(b, Precision::F32, fault),
            &grad(a, Precision::F32, None),
        ),
        adam_f32: rel_l2(&b_adam32, &a_adam32),
        adam_f32_vs_f64: rel_l2(&b_adam32, &a_adam64),
        loss_first_last: (b_losses[0], b_losses[b_losses.len() - 1]),
    }
}

impl Agreement {
    /// `Ok` when every judged figure is within its bound; otherwise each one that is not.
    pub fn verdict(&self) -> Result<(), String> {
        let checks = [
            ("first gradient in f64", self.grad_f64, MAX_GRAD_F64),
            ("Adam steps in f64", self.adam_f64, MAX_ADAM_F64),
            ("gradient-descent steps in f32", self.sgd_f32, MAX_SGD_F32),
            ("f32 loss against the f64 run", self.loss_f32, MAX_LOSS_F32),
        ];
        let failed: Vec<String> = checks
            .iter()
            .filter(|(_, value, bound)| value.is_nan() || value > bound)
            .map(|(what, value, bound)| format!("{what}: {value:e} > {bound:e}"))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "judged: first gradient f64 {:e}, 20 Adam steps f64 {:e}, 20 gradient-descent steps f32 {:e}, f32 loss vs f64 {:e}",
            self.grad_f64, self.adam_f64, self.sgd_f32, self.loss_f32
        )?;
        write!(
            f,
            "measured: first gradient f32 {:e}, 20 Adam steps f32 {:e} (vs the f64 run {:e}); loss {:.4} -> {:.4}",
            self.grad_f32,
            self.adam_f32,
            self.adam_f32_vs_f64,
            self.loss_first_last.0,
            self.loss_first_last.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend_check::seed_cnn_28;

    /// A wrong gradient fails the check: the checker compared with itself passes, and with a
    /// planted kernel error (the gradient scaled by 1%, or a block of it lost) does not. Five
    /// steps of each kind keep the test short; the bounds are the 20-step ones.
    #[test]
    fn a_planted_gradient_error_fails_the_check() {
        let model = seed_cnn_28();
        let flex = Device::flex();
        let same = compare_with(&model, &flex, &flex, 5, None);
        eprintln!("flex against itself:\n{same}");
        same.verdict().expect("a backend agrees with itself");
        assert!(
            same.loss_first_last.1 < same.loss_first_last.0,
            "the model did not learn"
        );
        let scaled = compare_with(
            &model,
            &flex,
            &flex,
            5,
            Some(|g| g.iter_mut().for_each(|x| *x *= 1.01)),
        );
        eprintln!("gradient scaled by 1.01:\n{scaled}");
        let err = scaled.verdict().expect_err("a scaled gradient is wrong");
        assert!(err.contains("first gradient in f64"), "{err}");
        let lost = compare_with(&model, &flex, &flex, 5, Some(|g| g[..64].fill(0.0)));
        eprintln!("first 64 gradient entries lost:\n{lost}");
        let err = lost
            .verdict()
            .expect_err("a lost block of the gradient is wrong");
        assert!(err.contains("Adam steps in f64"), "{err}");
    }
}
