//! A training task of several micro-batches: each micro-batch's gradient is computed on its own
//! (the same bits as if another worker had computed it as a task of its own) and they are summed
//! in the step's fixed reduction tree (`crate::reduce_tree`), holding one gradient per level of
//! the tree at most.

use burn::tensor::Device;

use super::ModelConfig;
use super::compute::{BatchInput, TrainOutput, train_batch};
use crate::reduce_tree::{Partial, TreeFold};
use crate::{Error, Result};

impl BatchInput {
    /// Images `start..end` of the batch, as a batch of their own.
    fn images(&self, cfg: &ModelConfig, start: usize, end: usize) -> BatchInput {
        let per = cfg.channels * cfg.height * cfg.width;
        let features = cfg.dropout_features();
        BatchInput {
            pixels: self.pixels[start * per..end * per].to_vec(),
            labels: self.labels[start..end].to_vec(),
            keep_mask: self
                .keep_mask
                .as_ref()
                .map(|m| m[start * features..end * features].to_vec()),
        }
    }
}

/// The summed gradient, loss and correct count of a batch cut into micro-batches of
/// `micro_batch` images (the last may be shorter), summed in the reduction tree over them.
/// With one micro-batch this is [`train_batch`].
pub fn train_micro_batches(
    cfg: &ModelConfig,
    params: &[f32],
    batch: &BatchInput,
    micro_batch: usize,
    device: &Device,
) -> Result<TrainOutput> {
    let n = batch.labels.len();
    if micro_batch == 0 || micro_batch >= n {
        return train_batch(cfg, params, batch, device);
    }
    let per = cfg.channels * cfg.height * cfg.width;
    if batch.pixels.len() != n * per {
        return Err(Error::invalid(
            "batch",
            format!("{} pixels for {n} images of {per}", batch.pixels.len()),
        ));
    }
    let leaves = u32::try_from(n.div_ceil(micro_batch))
        .map_err(|_| Error::invalid("batch", "too many micro-batches"))?;
    let mut fold = TreeFold::new(leaves)?;
    for leaf in 0..leaves {
        let start = leaf as usize * micro_batch;
        let part = batch.images(cfg, start, (start + micro_batch).min(n));
        let out = train_batch(cfg, params, &part, device)?;
        let sum = Partial {
            grad: out.grad,
            loss_sum: out.loss_sum,
            samples: part.labels.len() as u64,
            correct: u64::from(out.correct),
        };
        fold.push_leaf(leaf, sum)?;
    }
    let sum = fold.finish()?;
    Ok(TrainOutput {
        grad: sum.grad,
        loss_sum: sum.loss_sum,
        correct: u32::try_from(sum.correct).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{dropout_keep_mask, test_image};
    use crate::reduce_tree::tree_sum;

    #[test]
    fn a_block_is_the_tree_sum_of_its_micro_batches_computed_alone() {
        let cfg = ModelConfig::seed_cnn(&test_image(12), 3, 0.5, 100.0, 50.0).unwrap();
        let params = cfg.init_params(5);
        let device = Device::flex();
        let n = 11;
        let b = BatchInput {
            pixels: (0..n * 144).map(|i| ((i * 37) % 251) as f32).collect(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            keep_mask: Some(
                (0..n)
                    .flat_map(|i| {
                        dropout_keep_mask(0.5, cfg.dropout_features(), 1, 0, 0, &format!("s{i}"))
                    })
                    .collect(),
            ),
        };
        let block = train_micro_batches(&cfg, &params, &b, 4, &device).unwrap();
        let leaves: Vec<Partial> = [(0, 4), (4, 8), (8, 11)]
            .iter()
            .map(|&(s, e)| {
                let out = train_batch(&cfg, &params, &b.images(&cfg, s, e), &device).unwrap();
                Partial {
                    grad: out.grad,
                    loss_sum: out.loss_sum,
                    samples: (e - s) as u64,
                    correct: u64::from(out.correct),
                }
            })
            .collect();
        let want = tree_sum(leaves).unwrap();
        assert!(block.grad == want.grad, "not the tree sum's bits");
        assert_eq!(block.loss_sum.to_bits(), want.loss_sum.to_bits());
        assert_eq!(u64::from(block.correct), want.correct);
        // One micro-batch: the whole batch's gradient, as before.
        let whole = train_micro_batches(&cfg, &params, &b, 11, &device).unwrap();
        assert!(whole.grad == train_batch(&cfg, &params, &b, &device).unwrap().grad);
        assert!(whole.grad != block.grad);
    }
}
