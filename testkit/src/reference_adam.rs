//! burn's own Adam over one flat f32 vector: the reference the coordinator's fused
//! `FlatAdam` (`ctcluster_common::optim`) must equal bit for bit, and the benchmark's baseline.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamState, AdaptiveMomentumState, Optimizer};
use burn::tensor::{Device, Tensor, TensorData};
use ctcluster_common::optim::AdamSnapshot;
use ctcluster_common::spec::AdamSpec;
use ctcluster_common::{Error, Result};

/// burn's Adam over one flat f32 vector, on the pure-Rust CPU backend (the reference).
pub struct BurnAdam {
    adam: burn::optim::Adam,
    lr: f64,
    state: Option<AdamState<1>>,
    device: Device,
}

fn to_vec(t: Tensor<1>, what: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Compute(format!("{what}: {e:?}")))
}

impl BurnAdam {
    /// A fresh optimizer from the job's hyper-parameters.
    pub fn new(spec: &AdamSpec) -> Self {
        let mut config = AdamConfig::new()
            .with_beta_1(spec.beta1 as f32)
            .with_beta_2(spec.beta2 as f32)
            .with_epsilon(spec.eps as f32);
        if spec.weight_decay > 0.0 {
            config =
                config.with_weight_decay(Some(WeightDecayConfig::new(spec.weight_decay as f32)));
        }
        BurnAdam {
            adam: config.build(),
            lr: spec.lr,
            state: None,
            device: Device::flex(),
        }
    }

    /// An optimizer continuing from saved state.
    pub fn restore(spec: &AdamSpec, snap: AdamSnapshot) -> Result<Self> {
        let mut opt = Self::new(spec);
        if snap.time > 0 {
            if snap.moment_1.len() != snap.moment_2.len() {
                return Err(Error::invalid("adam state", "moments differ in length"));
            }
            let n = snap.moment_1.len();
            let m1 = Tensor::<1>::from_data(TensorData::new(snap.moment_1, vec![n]), &opt.device);
            let m2 = Tensor::<1>::from_data(TensorData::new(snap.moment_2, vec![n]), &opt.device);
            let time = usize::try_from(snap.time)
                .map_err(|_| Error::invalid("adam state", "time too large"))?;
            opt.state = Some(AdamState::new(AdaptiveMomentumState::new(time, m1, m2)));
        }
        Ok(opt)
    }

    /// Applies one update: returns the new parameters.
    pub fn step(&mut self, params: Vec<f32>, grad: Vec<f32>) -> Result<Vec<f32>> {
        let n = params.len();
        if grad.len() != n {
            return Err(Error::invalid(
                "gradient",
                format!("{} values for {n} parameters", grad.len()),
            ));
        }
        if let Some(state) = &self.state
            && state.momentum.moment_1.dims()[0] != n
        {
            return Err(Error::invalid(
                "adam state",
                "does not match the parameter count",
            ));
        }
        let p = Tensor::<1>::from_data(TensorData::new(params, vec![n]), &self.device);
        let g = Tensor::<1>::from_data(TensorData::new(grad, vec![n]), &self.device);
        let (p, state) = self.adam.step(self.lr, p, g, self.state.take());
        self.state = state;
        to_vec(p, "parameters")
    }

    /// The state as plain vectors (empty before the first step).
    pub fn snapshot(&self) -> Result<AdamSnapshot> {
        match &self.state {
            None => Ok(AdamSnapshot {
                time: 0,
                moment_1: vec![],
                moment_2: vec![],
            }),
            Some(s) => Ok(AdamSnapshot {
                time: s.momentum.time as u64,
                moment_1: to_vec(s.momentum.moment_1.clone(), "moment_1")?,
                moment_2: to_vec(s.momentum.moment_2.clone(), "moment_2")?,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use ctcluster_common::optim::FlatAdam;

    use super::*;

    #[test]
    fn the_fused_pass_gives_burns_adam_bit_for_bit() {
        // A small vector (one pass on one core) and a large one (split across cores).
        for (weight_decay, n) in [(0.0, 4099), (0.05, 4099), (0.0, 300_007)] {
            let spec = AdamSpec {
                lr: 3e-3,
                weight_decay,
                ..AdamSpec::default()
            };
            let mut rng = ctcluster_common::rng::KeyedRng::new(9);
            let mut p: Vec<f32> = (0..n).map(|_| rng.next_f32() - 0.5).collect();
            let mut q = p.clone();
            let (mut fused, mut burn) = (FlatAdam::new(&spec), BurnAdam::new(&spec));
            for step in 0..30 {
                let scale = 10f32.powi(-(step % 7));
                let g: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * scale).collect();
                p = fused.step(p, g.clone()).unwrap();
                q = burn.step(q, g).unwrap();
                assert!(
                    p == q,
                    "step {step}: parameters differ (weight decay {weight_decay})"
                );
            }
            assert_eq!(fused.snapshot().unwrap(), burn.snapshot().unwrap());
        }
    }
}
