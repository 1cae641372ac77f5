//! The fixed reduction tree of a step: its micro-batch gradients ("leaves", indexed 0..M in
//! batch order) are summed in one binary tree over those indices, whoever computed them.
//!
//! The tree is the aligned one: the node at level `l` and index `i` covers leaves
//! `[i * 2^l, (i + 1) * 2^l)` (cut at M); its sum is its left child's plus its right child's,
//! or its left child's alone when the right one covers no leaf. Any aligned block of leaves
//! (it starts at a multiple of its size rounded up to a power of two, and only the step's last
//! block may be shorter) is one node of that tree, and a tree over the block's leaves alone has
//! the node's shape. So a worker handed such a block sums it locally with a [`TreeFold`] of its
//! own and pushes one gradient, the coordinator folds that subtree sum in as it arrives, and
//! the step's sum has the same bits for every worker count, block size and arrival order.
//! Float addition is commutative (`a + b` and `b + a` are the same bits); only the grouping is
//! fixed, and the tree fixes it.
//!
//! Folding as results arrive keeps one buffer per subtree whose sibling has not arrived: in
//! arrival order that is at most the tree's depth, never one per micro-batch.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::{Error, Result};

/// Most leaves (micro-batches) one step's tree may have.
pub const MAX_LEAVES: u32 = 1 << 16;

/// Elements added at a time by one thread.
const BLOCK: usize = 1 << 15;
/// Below this many elements, threads cost more than they save.
const PARALLEL_ELEMENTS: usize = 1 << 18;

/// The sum over a node of the tree: the gradient of the summed loss over its samples, that loss
/// and the counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Partial {
    /// Summed (not mean) gradient.
    pub grad: Vec<f32>,
    /// Summed loss.
    pub loss_sum: f64,
    /// Samples.
    pub samples: u64,
    /// Correct predictions.
    pub correct: u64,
}

impl Partial {
    /// `left + right`, element by element, in `left`'s buffer (`right`'s is dropped); the
    /// lengths are equal (checked by [`TreeFold::push`]).
    fn combine(mut left: Partial, right: Partial) -> Partial {
        add_into(&mut left.grad, &right.grad);
        left.loss_sum += right.loss_sum;
        left.samples += right.samples;
        left.correct += right.correct;
        left
    }
}

/// `acc[i] += x[i]` for every element, on all cores for long vectors (each element is one
/// addition either way, so the bits do not depend on the threads).
fn add_into(acc: &mut [f32], x: &[f32]) {
    let add = |(a, b): (&mut [f32], &[f32])| {
        for (s, v) in a.iter_mut().zip(b) {
            *s += *v;
        }
    };
    if acc.len() >= PARALLEL_ELEMENTS {
        acc.par_chunks_mut(BLOCK)
            .zip(x.par_chunks(BLOCK))
            .for_each(add);
    } else {
        add((acc, x));
    }
}

/// Levels of the tree over `leaves` leaves: the smallest `l` with `2^l >= leaves`.
fn depth(leaves: u32) -> u32 {
    leaves.next_power_of_two().trailing_zeros()
}

/// Where an aligned block of leaves sits in the tree: `(level, index)`.
///
/// # Errors
/// A block that is empty, runs past the step's leaves, is not aligned to its size, or is
/// shorter than its size without being the step's last block.
pub fn node_of(first: u32, count: u32, leaves: u32) -> Result<(u32, u32)> {
    let fail = |why: &str| {
        Err(Error::invalid(
            "reduction block",
            format!(
                "micro-batches {first}..{} of {leaves}: {why}",
                u64::from(first) + u64::from(count)
            ),
        ))
    };
    if count == 0 {
        return fail("empty");
    }
    let end = u64::from(first) + u64::from(count);
    if end > u64::from(leaves) {
        return fail("past the step's last micro-batch");
    }
    let size = count.next_power_of_two();
    if !first.is_multiple_of(size) {
        return fail("not aligned to its size");
    }
    if count != size && end != u64::from(leaves) {
        return fail("shorter than a power of two but not the step's last block");
    }
    Ok((size.trailing_zeros(), first / size))
}

/// One step's fold: subtree sums pushed in any order, combined as soon as their sibling is
/// there.
#[derive(Debug)]
pub struct TreeFold {
    leaves: u32,
    depth: u32,
    /// Subtree sums waiting for their sibling, by (level, index).
    pending: HashMap<(u32, u32), Partial>,
    /// Which leaves have been pushed (a block is refused if it overlaps one already in).
    seen: Vec<bool>,
    /// The gradient length, from the first sum pushed.
    len: Option<usize>,
    root: Option<Partial>,
    /// Most sums held at once, for the benchmark and the tests.
    peak_pending: usize,
}

impl TreeFold {
    /// A fold over `leaves` micro-batches.
    pub fn new(leaves: u32) -> Result<Self> {
        if leaves == 0 || leaves > MAX_LEAVES {
            return Err(Error::invalid(
                "reduction",
                format!("{leaves} micro-batches; a step has 1 to {MAX_LEAVES}"),
            ));
        }
        Ok(TreeFold {
            leaves,
            depth: depth(leaves),
            pending: HashMap::new(),
            seen: vec![false; leaves as usize],
            len: None,
            root: None,
            peak_pending: 0,
        })
    }

    /// Adds the sum of the aligned block `first..first + count` (see [`node_of`]), combining it
    /// with every sibling already here.
    pub fn push(&mut self, first: u32, count: u32, sum: Partial) -> Result<()> {
        let (mut level, mut index) = node_of(first, count, self.leaves)?;
        if let Some(len) = self.len
            && len != sum.grad.len()
        {
            return Err(Error::invalid(
                "gradient",
                format!(
                    "micro-batches {first}..{}: {} values where the others have {len}",
                    first + count,
                    sum.grad.len()
                ),
            ));
        }
        self.len = Some(sum.grad.len());
        let block = &mut self.seen[first as usize..(first + count) as usize];
        if block.iter().any(|&s| s) {
            return Err(Error::invalid(
                "reduction block",
                format!(
                    "micro-batches {first}..{} overlap ones already reduced",
                    first + count
                ),
            ));
        }
        block.iter_mut().for_each(|s| *s = true);
        let mut sum = sum;
        loop {
            if level == self.depth {
                self.root = Some(sum);
                return Ok(());
            }
            let sibling = index ^ 1;
            let sibling_first = u64::from(sibling) << level;
            if sibling_first >= u64::from(self.leaves) {
                // The right child of the parent covers no leaf: the parent is this node.
            } else if let Some(other) = self.pending.remove(&(level, sibling)) {
                sum = if index % 2 == 0 {
                    Partial::combine(sum, other)
                } else {
                    Partial::combine(other, sum)
                };
            } else {
                self.pending.insert((level, index), sum);
                self.peak_pending = self.peak_pending.max(self.pending.len());
                return Ok(());
            }
            level += 1;
            index /= 2;
        }
    }

    /// Adds one micro-batch's result.
    pub fn push_leaf(&mut self, leaf: u32, sum: Partial) -> Result<()> {
        self.push(leaf, 1, sum)
    }

    /// Whether every leaf is in.
    pub fn is_complete(&self) -> bool {
        self.root.is_some()
    }

    /// Leaves not pushed yet.
    pub fn missing(&self) -> usize {
        self.seen.iter().filter(|&&s| !s).count()
    }

    /// Most subtree sums held at once so far.
    pub fn peak_pending(&self) -> usize {
        self.peak_pending
    }

    /// The sum over every leaf.
    ///
    /// # Errors
    /// While some leaves are missing.
    pub fn finish(self) -> Result<Partial> {
        self.root.ok_or_else(|| {
            let missing = self.seen.iter().filter(|&&s| !s).count();
            Error::invalid(
                "reduction",
                format!("{missing} of {} micro-batches are missing", self.leaves),
            )
        })
    }
}

/// The sum of `leaves` in the fixed tree, pushed in order (a convenience for one process that
/// has every leaf).
pub fn tree_sum(leaves: Vec<Partial>) -> Result<Partial> {
    let n = u32::try_from(leaves.len())
        .map_err(|_| Error::invalid("reduction", "too many micro-batches"))?;
    let mut fold = TreeFold::new(n)?;
    for (i, leaf) in leaves.into_iter().enumerate() {
        fold.push_leaf(i as u32, leaf)?;
    }
    fold.finish()
}

/// The mean gradient: a step's summed gradient divided by its batch size, in place.
pub fn into_mean(mut grad: Vec<f32>, batch: u32) -> Vec<f32> {
    let b = batch as f32;
    let div = |c: &mut [f32]| c.iter_mut().for_each(|s| *s /= b);
    if grad.len() >= PARALLEL_ELEMENTS {
        grad.par_chunks_mut(BLOCK).for_each(div);
    } else {
        div(&mut grad);
    }
    grad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::KeyedRng;

    fn leaves(m: usize, n: usize, seed: u64) -> Vec<Partial> {
        let mut rng = KeyedRng::new(seed);
        (0..m)
            .map(|i| Partial {
                // Values of very different magnitudes, so that the grouping shows in the bits.
                grad: (0..n)
                    .map(|_| (rng.next_f32() - 0.5) * 10f32.powi((rng.next_f32() * 8.0) as i32))
                    .collect(),
                loss_sum: f64::from(rng.next_f32()) * 1e3,
                samples: 8 + i as u64,
                correct: i as u64,
            })
            .collect()
    }

    /// The tree written out recursively: the definition the fold must meet.
    fn by_definition(leaves: &[Partial], level: u32, index: u32) -> Option<Partial> {
        let first = (index as usize) << level;
        if first >= leaves.len() {
            return None;
        }
        if level == 0 {
            return Some(leaves[first].clone());
        }
        let left = by_definition(leaves, level - 1, 2 * index).unwrap();
        match by_definition(leaves, level - 1, 2 * index + 1) {
            None => Some(left),
            Some(right) => Some(Partial::combine(left, right)),
        }
    }

    /// Blocks of `size` leaves (aligned, the last cut short) and their local sums, as a worker
    /// would push them.
    fn blocks(all: &[Partial], size: usize) -> Vec<(u32, u32, Partial)> {
        all.chunks(size)
            .enumerate()
            .map(|(b, chunk)| {
                let sum = tree_sum(chunk.to_vec()).unwrap();
                ((b * size) as u32, chunk.len() as u32, sum)
            })
            .collect()
    }

    #[test]
    fn any_block_size_and_arrival_order_gives_the_definition_s_bits() {
        let n = PARALLEL_ELEMENTS + 1000;
        for m in [1usize, 2, 3, 5, 8, 13, 32] {
            let all = leaves(m, if m == 13 { n } else { 257 }, m as u64);
            let want = by_definition(&all, depth(m as u32), 0).unwrap();
            for size in [1usize, 2, 4, 8, 16, 32] {
                let mut pushes = blocks(&all, size);
                for shuffle in 0..3u64 {
                    KeyedRng::new(shuffle + 100 * m as u64).shuffle(&mut pushes);
                    let mut fold = TreeFold::new(m as u32).unwrap();
                    for (first, count, sum) in pushes.clone() {
                        assert!(!fold.is_complete());
                        fold.push(first, count, sum).unwrap();
                    }
                    let got = fold.finish().unwrap();
                    assert!(
                        got == want,
                        "{m} leaves, blocks of {size}, shuffle {shuffle}"
                    );
                }
            }
        }
        // The grouping matters: a left-to-right sum of these leaves has other bits.
        let all = leaves(5, 257, 9);
        let mut seq = all[0].grad.clone();
        for l in &all[1..] {
            add_into(&mut seq, &l.grad);
        }
        assert_ne!(seq, tree_sum(all).unwrap().grad);
    }

    #[test]
    fn in_order_folding_holds_at_most_the_depth_in_sums() {
        let all = leaves(1024, 4, 1);
        let mut fold = TreeFold::new(1024).unwrap();
        for (i, l) in all.into_iter().enumerate() {
            fold.push_leaf(i as u32, l).unwrap();
        }
        assert!(fold.peak_pending() <= 10, "{}", fold.peak_pending());
        let sum = fold.finish().unwrap();
        assert_eq!(sum.samples, (0..1024u64).map(|i| 8 + i).sum::<u64>());
    }

    #[test]
    fn misaligned_overlapping_and_missing_blocks_are_refused() {
        let err = |r: Result<(u32, u32)>| r.unwrap_err().to_string();
        assert!(err(node_of(2, 4, 8)).contains("not aligned"));
        assert!(err(node_of(4, 3, 8)).contains("not the step's last block"));
        assert!(err(node_of(6, 4, 8)).contains("past the step's last"));
        assert!(err(node_of(0, 0, 8)).contains("empty"));
        assert_eq!(node_of(4, 3, 7).unwrap(), (2, 1));
        assert_eq!(node_of(4, 1, 5).unwrap(), (0, 4));
        let all = leaves(4, 3, 2);
        let mut fold = TreeFold::new(4).unwrap();
        fold.push(0, 2, tree_sum(all[..2].to_vec()).unwrap())
            .unwrap();
        let e = fold.push_leaf(1, all[1].clone()).unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
        let short = Partial {
            grad: vec![0.0; 2],
            ..all[2].clone()
        };
        assert!(fold.push_leaf(3, all[3].clone()).is_ok());
        assert!(
            fold.push_leaf(2, short)
                .unwrap_err()
                .to_string()
                .contains("2 values where the others have 3")
        );
        let e = fold.finish().unwrap_err().to_string();
        assert!(e.contains("1 of 4 micro-batches are missing"), "{e}");
        assert!(TreeFold::new(0).is_err());
        assert!(TreeFold::new(MAX_LEAVES + 1).is_err());
        assert_eq!(into_mean(vec![2.0, 4.0], 4), vec![0.5, 1.0]);
    }
}
