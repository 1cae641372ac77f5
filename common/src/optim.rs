//! Adam over a job's flat parameter vector, with its state exportable for checkpoints. Adam is
//! element-wise, so one flat vector is the same as one tensor per layer.
//!
//! [`FlatAdam`] is one fused pass in place (read p, g, m, v; write p, m, v), doing burn's Adam
//! arithmetic element by element in the same order, so it gives burn's results bit for bit
//! (`ctcluster-testkit`'s `BurnAdam`, burn's own optimizer, checks this and is the
//! benchmark's baseline) at a fraction of the memory traffic: burn's tensor ops make about a
//! dozen passes with temporaries.

use rayon::prelude::*;

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

/// Matching pieces of the parameters, gradient, first and second moments.
type AdamChunk<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);

/// The per-step scalars of Adam.
struct AdamConstants {
    b1: f32,
    b2: f32,
    f1: f32,
    f2: f32,
    combined: f32,
    eps: f32,
    lr: f32,
    penalty: f32,
}

/// burn's AdaptiveMomentum and Adam update on one piece, element by element in burn's order.
fn adam_chunk<const FIRST: bool, const DECAY: bool>(
    (((p, g), m), v): AdamChunk<'_>,
    k: &AdamConstants,
) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = if DECAY { *p * k.penalty + g } else { g };
        if FIRST {
            *m = g * k.f1;
            *v = (g * g) * k.f2;
        } else {
            *m = *m * k.b1 + g * k.f1;
            *v = *v * k.b2 + (g * g) * k.f2;
        }
        let step = (*m * k.combined) / (v.sqrt() + k.eps);
        *p -= step * k.lr;
    }
}

/// Adam in one fused pass over the parameters, in place.
#[derive(Clone, Debug)]
pub struct FlatAdam {
    beta1: f32,
    beta2: f32,
    eps: f32,
    penalty: Option<f32>,
    lr: f32,
    time: u64,
    moment_1: Vec<f32>,
    moment_2: Vec<f32>,
}

impl FlatAdam {
    /// A fresh optimizer from the job's hyper-parameters.
    pub fn new(spec: &AdamSpec) -> Self {
        FlatAdam {
            beta1: spec.beta1 as f32,
            beta2: spec.beta2 as f32,
            eps: spec.eps as f32,
            penalty: (spec.weight_decay > 0.0).then_some(spec.weight_decay as f32),
            lr: spec.lr as f32,
            time: 0,
            moment_1: Vec::new(),
            moment_2: Vec::new(),
        }
    }

    /// An optimizer continuing from saved state.
    pub fn restore(spec: &AdamSpec, snap: AdamSnapshot) -> Result<Self> {
        let mut opt = Self::new(spec);
        if snap.time > 0 {
            if snap.moment_1.len() != snap.moment_2.len() {
                return Err(Error::invalid("adam state", "moments differ in length"));
            }
            i32::try_from(snap.time).map_err(|_| Error::invalid("adam state", "time too large"))?;
            opt.time = snap.time;
            opt.moment_1 = snap.moment_1;
            opt.moment_2 = snap.moment_2;
        }
        Ok(opt)
    }

    /// Applies one update: returns the new parameters (the same buffer, updated in place).
    pub fn step(&mut self, mut params: Vec<f32>, grad: Vec<f32>) -> Result<Vec<f32>> {
        self.step_in_place(&mut params, &grad)?;
        Ok(params)
    }

    /// Applies one update to `params` in place.
    pub fn step_in_place(&mut self, params: &mut [f32], grad: &[f32]) -> Result<()> {
        let n = params.len();
        if grad.len() != n {
            return Err(Error::invalid(
                "gradient",
                format!("{} values for {n} parameters", grad.len()),
            ));
        }
        if self.time > 0 && self.moment_1.len() != n {
            return Err(Error::invalid(
                "adam state",
                "does not match the parameter count",
            ));
        }
        if self.time == 0 {
            self.moment_1 = vec![0.0; n];
            self.moment_2 = vec![0.0; n];
        }
        self.time += 1;
        let t =
            i32::try_from(self.time).map_err(|_| Error::invalid("adam state", "time too large"))?;
        // burn's AdaptiveMomentum, scalar for scalar.
        let (b1, b2) = (self.beta1, self.beta2);
        let (f1, f2) = (1.0 - b1, 1.0 - b2);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let combined = bc2_sqrt / (1.0 - b1.powi(t));
        let eps = self.eps * bc2_sqrt;
        let lr = self.lr;
        let first = t == 1;
        let penalty = self.penalty;
        let k = AdamConstants {
            b1,
            b2,
            f1,
            f2,
            combined,
            eps,
            lr,
            penalty: penalty.unwrap_or(0.0),
        };
        // The branches are decided once per call, so the inner loop has none and vectorises.
        let update = |chunk: AdamChunk<'_>| match (first, penalty.is_some()) {
            (true, true) => adam_chunk::<true, true>(chunk, &k),
            (true, false) => adam_chunk::<true, false>(chunk, &k),
            (false, true) => adam_chunk::<false, true>(chunk, &k),
            (false, false) => adam_chunk::<false, false>(chunk, &k),
        };
        // Element-wise: splitting the vector across cores gives the same bits.
        let chunk = ADAM_BLOCK;
        if n >= PARALLEL_ELEMENTS / 4 {
            params
                .par_chunks_mut(chunk)
                .zip(grad.par_chunks(chunk))
                .zip(self.moment_1.par_chunks_mut(chunk))
                .zip(self.moment_2.par_chunks_mut(chunk))
                .for_each(update);
        } else {
            update((
                ((params, grad), &mut self.moment_1[..]),
                &mut self.moment_2[..],
            ));
        }
        Ok(())
    }

    /// The state as plain vectors (empty before the first step).
    pub fn snapshot(&self) -> Result<AdamSnapshot> {
        Ok(AdamSnapshot {
            time: self.time,
            moment_1: if self.time > 0 {
                self.moment_1.clone()
            } else {
                Vec::new()
            },
            moment_2: if self.time > 0 {
                self.moment_2.clone()
            } else {
                Vec::new()
            },
        })
    }
}

/// Elements updated at a time by one thread.
const ADAM_BLOCK: usize = 1 << 15;
/// Below this many elements touched, threads cost more than they save.
const PARALLEL_ELEMENTS: usize = 1 << 20;

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
