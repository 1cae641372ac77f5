//! Weights read from the flat f32 vector, in layout order, as burn tensors and burn layers.
//! On an autodiff device every tensor is a tracked leaf and [`Weights::grads`] gathers their
//! gradients back into the flat layout.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, PaddingConfig2d};
use burn::tensor::{DType, Device, Gradients, Tensor, TensorData};

use super::ParamSpec;
use crate::{Error, Result};

type GradOf = Box<dyn Fn(&Gradients) -> Option<TensorData>>;

/// A cursor over a flat parameter vector and its layout.
pub struct Weights<'a> {
    layout: Vec<ParamSpec>,
    flat: &'a [f32],
    next: usize,
    offset: usize,
    device: Device,
    dtype: DType,
    track: bool,
    grads: Vec<(String, GradOf)>,
}

impl<'a> Weights<'a> {
    /// Weights for `layout` from `flat`, on `device` in `dtype`; `track` makes every tensor a
    /// leaf whose gradient is kept (the device must then be an autodiff device).
    pub fn new(
        layout: Vec<ParamSpec>,
        flat: &'a [f32],
        device: &Device,
        dtype: DType,
        track: bool,
    ) -> Result<Self> {
        let want: usize = layout.iter().map(ParamSpec::len).sum();
        if flat.len() != want {
            return Err(Error::invalid(
                "parameters",
                format!("{} values, the model has {want}", flat.len()),
            ));
        }
        Ok(Weights {
            layout,
            flat,
            next: 0,
            offset: 0,
            device: device.clone(),
            dtype,
            track,
            grads: Vec::new(),
        })
    }

    /// The next tensor's values and shape, checked to be `name` of rank `rank`.
    fn take(&mut self, name: &str, rank: usize) -> Result<(&'a [f32], Vec<usize>)> {
        let spec = self.layout.get(self.next).ok_or_else(|| {
            Error::Compute(format!("the forward pass reads {name} past the layout"))
        })?;
        if spec.name != name || spec.shape.len() != rank {
            return Err(Error::Compute(format!(
                "the forward pass reads {name} (rank {rank}) where the layout has {} {:?}",
                spec.name, spec.shape
            )));
        }
        let values = &self.flat[self.offset..self.offset + spec.len()];
        self.offset += spec.len();
        self.next += 1;
        Ok((values, spec.shape.clone()))
    }

    fn leaf<const D: usize>(&self, values: Vec<f32>, shape: Vec<usize>) -> Tensor<D> {
        let t = Tensor::<D>::from_data(TensorData::new(values, shape), (&self.device, self.dtype));
        if self.track { t.require_grad() } else { t }
    }

    /// The tensor `name`, in its layout shape.
    pub fn tensor<const D: usize>(&mut self, name: &str) -> Result<Tensor<D>> {
        let (values, shape) = self.take(name, D)?;
        let t = self.leaf::<D>(values.to_vec(), shape);
        if self.track {
            let kept = t.clone();
            self.grads.push((
                name.to_string(),
                Box::new(move |g| kept.grad(g).map(Tensor::into_data)),
            ));
        }
        Ok(t)
    }

    /// The matrix `name` (`[rows, cols]` in the layout) stored transposed, `[cols, rows]`: burn's
    /// `Linear` keeps `[inputs, outputs]` where PyTorch keeps `[outputs, inputs]`. The gradient
    /// is transposed back into the layout's order.
    pub fn transposed(&mut self, name: &str) -> Result<Tensor<2>> {
        let (values, shape) = self.take(name, 2)?;
        let (rows, cols) = (shape[0], shape[1]);
        let mut t = vec![0f32; values.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = values[r * cols + c];
            }
        }
        let t = self.leaf::<2>(t, vec![cols, rows]);
        if self.track {
            let kept = t.clone();
            self.grads.push((
                name.to_string(),
                Box::new(move |g| kept.grad(g).map(|g| g.transpose().into_data())),
            ));
        }
        Ok(t)
    }

    /// A burn `Conv2d` from `{prefix}.weight` (and `{prefix}.bias` when `bias`).
    pub fn conv2d(
        &mut self,
        prefix: &str,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Conv2d> {
        let weight: Tensor<4> = self.tensor(&format!("{prefix}.weight"))?;
        let [_, _, kh, kw] = weight.dims();
        let bias = if bias {
            Some(Param::from_tensor(self.tensor(&format!("{prefix}.bias"))?))
        } else {
            None
        };
        Ok(Conv2d {
            weight: Param::from_tensor(weight),
            bias,
            stride: [stride, stride],
            kernel_size: [kh, kw],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Explicit(padding, padding, padding, padding),
        })
    }

    /// A burn `GroupNorm` of `groups` groups from `{prefix}.weight` and `{prefix}.bias`.
    pub fn group_norm(&mut self, prefix: &str, groups: usize) -> Result<GroupNorm> {
        let gamma: Tensor<1> = self.tensor(&format!("{prefix}.weight"))?;
        let beta: Tensor<1> = self.tensor(&format!("{prefix}.bias"))?;
        let channels = gamma.dims()[0];
        Ok(GroupNorm {
            gamma: Some(Param::from_tensor(gamma)),
            beta: Some(Param::from_tensor(beta)),
            num_groups: groups,
            num_channels: channels,
            epsilon: 1e-5,
            affine: true,
        })
    }

    /// A burn `Linear` from `{prefix}.weight` (`[outputs, inputs]`) and `{prefix}.bias`.
    pub fn linear(&mut self, prefix: &str) -> Result<Linear> {
        let weight = self.transposed(&format!("{prefix}.weight"))?;
        let bias: Tensor<1> = self.tensor(&format!("{prefix}.bias"))?;
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        })
    }

    /// Checks the forward pass read every tensor of the layout.
    pub fn finish(&self) -> Result<()> {
        if self.next != self.layout.len() {
            return Err(Error::Compute(format!(
                "the forward pass read {} of the layout's {} tensors",
                self.next,
                self.layout.len()
            )));
        }
        Ok(())
    }

    /// The gradient of every tensor, in the flat layout.
    pub fn grads(&self, grads: &Gradients) -> Result<Vec<f32>> {
        self.finish()?;
        let mut out = Vec::with_capacity(self.flat.len());
        for (name, grad) in &self.grads {
            let g = grad(grads).ok_or_else(|| Error::Compute(format!("no gradient for {name}")))?;
            let g = g
                .try_into_vec_as::<f32>()
                .map_err(|e| Error::Compute(format!("{name}: {e:?}")))?;
            out.extend_from_slice(&g);
        }
        Ok(out)
    }
}
