//! burn's Adam applied to a job's flat parameter vector, with its state exportable for
//! checkpoints. Adam is element-wise, so one flat tensor is the same as one tensor per layer.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamState, AdaptiveMomentumState, Optimizer};
use burn::tensor::{Device, Tensor, TensorData};

use crate::spec::AdamSpec;
use crate::{Error, Result};

/// Adam's state in plain vectors: what a checkpoint stores.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamSnapshot {
    /// Updates applied so far.
    pub time: u64,
    /// First moment.
    pub moment_1: Vec<f32>,
    /// Second moment.
    pub moment_2: Vec<f32>,
}

/// burn's Adam over one flat f32 vector, on the pure-Rust CPU backend.
pub struct FlatAdam {
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

impl FlatAdam {
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
        FlatAdam {
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
    use super::*;

    /// Adam as PyTorch documents it, in f64.
    fn reference(spec: &AdamSpec, mut p: Vec<f64>, grads: &[Vec<f64>]) -> Vec<f64> {
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            for i in 0..p.len() {
                let g = g[i] + spec.weight_decay * p[i];
                m[i] = spec.beta1 * m[i] + (1.0 - spec.beta1) * g;
                v[i] = spec.beta2 * v[i] + (1.0 - spec.beta2) * g * g;
                let mh = m[i] / (1.0 - spec.beta1.powi(t));
                let vh = v[i] / (1.0 - spec.beta2.powi(t));
                p[i] -= spec.lr * mh / (vh.sqrt() + spec.eps);
            }
        }
        p
    }

    #[test]
    fn matches_pytorch_formula_and_resumes_exactly() {
        let spec = AdamSpec {
            lr: 0.01,
            weight_decay: 0.01,
            ..AdamSpec::default()
        };
        let p0 = vec![0.5f32, -1.0, 2.0, 0.0];
        let grads: Vec<Vec<f32>> = (0..5)
            .map(|t| vec![0.1 * t as f32, -0.3, 1.0 / (t as f32 + 1.0), 1e-3])
            .collect();
        let mut opt = FlatAdam::new(&spec);
        let mut p = p0.clone();
        for g in &grads {
            p = opt.step(p, g.clone()).unwrap();
        }
        let want = reference(
            &spec,
            p0.iter().map(|&x| f64::from(x)).collect(),
            &grads
                .iter()
                .map(|g| g.iter().map(|&x| f64::from(x)).collect())
                .collect::<Vec<_>>(),
        );
        for (a, b) in p.iter().zip(&want) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Save after 2 steps, restore, continue: bit-identical to the uninterrupted run.
        let mut first = FlatAdam::new(&spec);
        let mut q = p0.clone();
        for g in &grads[..2] {
            q = first.step(q, g.clone()).unwrap();
        }
        let mut resumed = FlatAdam::restore(&spec, first.snapshot().unwrap()).unwrap();
        for g in &grads[2..] {
            q = resumed.step(q, g.clone()).unwrap();
        }
        assert_eq!(q, p);
        assert_eq!(resumed.snapshot().unwrap(), opt.snapshot().unwrap());
        assert!(opt.step(p, vec![0.0; 3]).is_err());
    }
}
