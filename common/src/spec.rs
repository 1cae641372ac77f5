//! The job spec: the YAML file a user submits. Every field is documented in the README; unknown
//! fields and bad values are refused with an error naming the field.

use serde::{Deserialize, Serialize};

use crate::dtype::GradientDtype;
use crate::model::{Norm, ResNetShape};
use crate::preprocess::{Augment, Window};
use crate::selection::SelectionSpec;
use crate::storage::StoreUrl;
use crate::{Error, Result};

/// Largest global batch accepted (a guard against a typo allocating the world).
pub const MAX_BATCH_SIZE: u32 = 65_536;
/// Most micro-batches in one task.
pub const MAX_MICRO_BATCHES_PER_TASK: u32 = 1024;
/// Most epochs accepted.
pub const MAX_EPOCHS: u32 = 100_000;
/// Most users a job's output may be shared with.
pub const MAX_SHARE_WITH: usize = 256;

/// A training job as the user describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A human-readable name, shown by `ctctl list`.
    pub name: String,
    /// URL of the dataset (a prefix holding `manifest.json` and shards).
    pub dataset: String,
    /// The model to train.
    #[serde(default)]
    pub model: ModelSpec,
    /// Samples per optimizer step (the global batch, across all workers).
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    /// Samples per task handed to one worker. The global batch is cut into micro-batches of this
    /// size whatever the number of workers, which is what makes results independent of it.
    #[serde(default = "defaults::micro_batch_size")]
    pub micro_batch_size: u32,
    /// Consecutive micro-batches handed to a worker as one task (a power of two): the worker
    /// sums their gradients in the step's fixed reduction tree and pushes one, so the
    /// coordinator receives that many times fewer bytes; the result is the same bits as with 1
    /// (the default), whatever the number of workers (see `crate::reduce_tree`).
    #[serde(default = "defaults::micro_batches_per_task")]
    pub micro_batches_per_task: u32,
    /// Sharded aggregation: split the parameters and Adam's state over this many of the
    /// coordinator's aggregator processes (`--aggregators`); workers fetch parameters from and
    /// push gradients to them by range, so no one process receives every gradient. 0 (the
    /// default): the coordinator holds them. The result is the same bits for every value.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub aggregators: u32,
    /// Passes over the training split.
    #[serde(default = "defaults::epochs")]
    pub epochs: u32,
    /// Stop after this many optimizer steps in all (counting steps before a resume), if set.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Record the samples of every applied step under `<output>/<job>/audit/` (for checking
    /// that every sample is seen exactly once per epoch, whatever failed).
    #[serde(default)]
    pub audit: bool,
    /// The job waits (state `waiting`) while fewer workers than this are registered.
    #[serde(default = "defaults::min_workers")]
    pub min_workers: u32,
    /// Adam's hyper-parameters.
    #[serde(default)]
    pub optimizer: AdamSpec,
    /// The seed every random choice derives from (initial weights, shuffling, dropout).
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// How the validation split is chosen.
    #[serde(default)]
    pub validation: ValidationSpec,
    /// When to checkpoint and how many to keep.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Export the epoch that is best by a validation metric (not the last one), and optionally
    /// stop early when it stops improving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionSpec>,
    /// How workers send gradients: `f32` (exact, the default) or `bf16` (half the bytes; each
    /// micro-batch's gradient rounded to nearest even, summed in f32: still the same bits for
    /// any number of workers).
    #[serde(default, skip_serializing_if = "is_f32")]
    pub gradient_dtype: GradientDtype,
    /// URL under which the job writes `<job id>/checkpoints/...` and `<job id>/model.safetensors`.
    pub output: String,
    /// URL of a checkpoint (`.../checkpoints/step-NNNNNNNN`) to continue from.
    #[serde(default)]
    pub resume_from: Option<String>,
    /// Users who may read this job's output (resume from its checkpoints). Nobody else may,
    /// except admins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub share_with: Vec<String>,
    /// Seal the job's checkpoints with this key (AES-256-GCM). The key itself never travels:
    /// the coordinator finds it by id in its environment (`CT_KEY_<ID>` or `$CT_KEYRING/<id>.key`).
    #[serde(default)]
    pub encryption: Option<SpecEncryption>,
    /// What workers do to stored pixels before the model sees them (also at evaluation).
    #[serde(default, skip_serializing_if = "PreprocessSpec::is_default")]
    pub preprocess: PreprocessSpec,
    /// Random augmentation of training samples, drawn from (seed, epoch, sample id).
    #[serde(default, skip_serializing_if = "Augment::is_off")]
    pub augment: Augment,
    /// Evaluate an exported model on a split with the cluster's workers instead of training
    /// (what `ctctl evaluate` submits); the report is `<output>/<job id>/evaluation.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate: Option<EvaluateSpec>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_f32(d: &GradientDtype) -> bool {
    *d == GradientDtype::F32
}

/// `evaluate:` in a job spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// The model: a job's output folder, or its `model.safetensors` URL.
    pub model: String,
    /// The split of the dataset to evaluate.
    #[serde(default = "defaults::test_split")]
    pub split: String,
}

/// Windowing, resizing and normalisation of the model's input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// A CT window: a preset name (`brain`, `subdural`, `bone`, `lung`) or `{center, width}`
    /// in Hounsfield units. Windowed values lie in [0, 1].
    #[serde(default)]
    pub window: Option<WindowSpec>,
    /// Resize every image to `[height, width]` (the model's input size).
    #[serde(default)]
    pub resize: Option<[u32; 2]>,
    /// Subtract `mean` and divide by `std` last. Default: the dataset's pixel statistics, or
    /// mean 0.5 and std 0.5 after a window.
    #[serde(default)]
    pub normalize: Option<Normalize>,
}

/// A window by preset name or by value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WindowSpec {
    /// A preset's name.
    Preset(String),
    /// Centre and width.
    Custom(Window),
}

/// Fixed normalisation constants.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// Subtracted from every value.
    pub mean: f32,
    /// Values are divided by this (> 0).
    pub std: f32,
}

impl PreprocessSpec {
    fn is_default(&self) -> bool {
        *self == PreprocessSpec::default()
    }

    /// The window, if any, with presets resolved.
    pub fn window(&self) -> Result<Option<Window>> {
        let w = match &self.window {
            None => return Ok(None),
            Some(WindowSpec::Preset(name)) => Window::preset(name)?,
            Some(WindowSpec::Custom(w)) => *w,
        };
        w.validate()?;
        Ok(Some(w))
    }

    /// The normalisation: given, or 0.5/0.5 after a window, or the dataset's statistics.
    pub fn normalization(&self, dataset_mean: f64, dataset_std: f64) -> Result<(f32, f32)> {
        if let Some(n) = self.normalize {
            return Ok((n.mean, n.std));
        }
        if self.window()?.is_some() {
            return Ok((0.5, 0.5));
        }
        let std = if dataset_std > 0.0 { dataset_std } else { 1.0 };
        Ok((dataset_mean as f32, std as f32))
    }

    fn validate(&self) -> Result<()> {
        self.window()?;
        if let Some([h, w]) = self.resize {
            check(
                (10..=crate::dataset::MAX_SIDE).contains(&h)
                    && (10..=crate::dataset::MAX_SIDE).contains(&w),
                "preprocess.resize",
                format!(
                    "[{h}, {w}]: sides must be in 10..={}",
                    crate::dataset::MAX_SIDE
                ),
            )?;
        }
        if let Some(n) = self.normalize {
            check(
                n.mean.is_finite() && n.std.is_finite() && n.std > 0.0,
                "preprocess.normalize",
                "mean and std must be finite with std > 0",
            )?;
        }
        Ok(())
    }
}

/// Encryption at rest for a job's checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecEncryption {
    /// The key's id.
    pub key_id: String,
}

/// The model architecture and its options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Architecture name: `seed-cnn` (the default), `resnet18` or `resnet`.
    #[serde(default = "defaults::model_name")]
    pub name: String,
    /// `resnet` only: basic blocks per stage, 1 to 4 stages (default [1, 1, 1, 1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<usize>>,
    /// `resnet` only: channels of the first stage, doubled by each later one (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    /// `resnet18` and `resnet`: `group` (GroupNorm, the default) or `none` (README, Model zoo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<Norm>,
    /// Dropout probability before the last layer (0 turns it off).
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
}

/// Adam's hyper-parameters (defaults are PyTorch's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamSpec {
    /// Learning rate.
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    /// Decay of the first moment.
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    /// Decay of the second moment.
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    /// Added to the denominator for numerical stability.
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    /// L2 penalty added to the gradient (Adam's classic weight decay, not AdamW's).
    #[serde(default)]
    pub weight_decay: f64,
}

/// Which samples are held out for validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    /// Use this split of the dataset for validation (e.g. `val`) instead of carving one out.
    #[serde(default)]
    pub split: Option<String>,
    /// Otherwise, the fraction of the training split held out, chosen by a hash of each sample's
    /// id (not its position), so re-sharding never moves a sample across.
    #[serde(default = "defaults::val_fraction")]
    pub fraction: f64,
}

/// Checkpoint schedule and retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Write a checkpoint every this many steps (and always at the end).
    #[serde(default = "defaults::ckpt_every")]
    pub every_steps: u64,
    /// How many complete checkpoints to keep (the newest ones).
    #[serde(default = "defaults::ckpt_keep")]
    pub keep: u32,
}

mod defaults {
    pub fn batch_size() -> u32 {
        128
    }
    pub fn micro_batch_size() -> u32 {
        32
    }
    pub fn micro_batches_per_task() -> u32 {
        1
    }
    pub fn epochs() -> u32 {
        5
    }
    pub fn min_workers() -> u32 {
        1
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn model_name() -> String {
        crate::model::SEED_CNN.into()
    }
    pub fn dropout() -> f64 {
        0.5
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn val_fraction() -> f64 {
        0.1
    }
    pub fn ckpt_every() -> u64 {
        100
    }
    pub fn ckpt_keep() -> u32 {
        3
    }
    pub fn test_split() -> String {
        "test".into()
    }
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            name: defaults::model_name(),
            blocks: None,
            width: None,
            norm: None,
            dropout: defaults::dropout(),
        }
    }
}

impl ModelSpec {
    /// The ResNet structure the spec asks for: `resnet18`'s fixed one, `resnet`'s `blocks` and
    /// `width` (each defaulted), none for the seed CNN. Structure fields on an architecture
    /// that has a fixed structure, and unknown names, are errors naming the field.
    pub fn resnet_shape(&self) -> Result<Option<ResNetShape>> {
        use crate::model::{ARCHITECTURES, RESNET, RESNET18, SEED_CNN};
        let custom = self.blocks.is_some() || self.width.is_some();
        match self.name.as_str() {
            RESNET => {
                let default = ResNetShape::small();
                let shape = ResNetShape {
                    blocks: self.blocks.clone().unwrap_or(default.blocks),
                    width: self.width.unwrap_or(default.width),
                    norm: self.norm.unwrap_or_default(),
                };
                shape.validate()?;
                Ok(Some(shape))
            }
            SEED_CNN | RESNET18 if custom => Err(Error::invalid(
                if self.blocks.is_some() {
                    "model.blocks"
                } else {
                    "model.width"
                },
                format!(
                    "{} has a fixed structure; use `name: {RESNET}` to choose blocks and width",
                    self.name
                ),
            )),
            RESNET18 => Ok(Some(ResNetShape {
                norm: self.norm.unwrap_or_default(),
                ..ResNetShape::resnet18()
            })),
            SEED_CNN if self.norm.is_some() => Err(Error::invalid(
                "model.norm",
                format!("{SEED_CNN} has no normalisation layers"),
            )),
            SEED_CNN => Ok(None),
            other => Err(Error::invalid(
                "model.name",
                format!(
                    "unknown model {other:?}; available: {}",
                    ARCHITECTURES.join(", ")
                ),
            )),
        }
    }
}

impl Default for AdamSpec {
    fn default() -> Self {
        AdamSpec {
            lr: defaults::lr(),
            beta1: defaults::beta1(),
            beta2: defaults::beta2(),
            eps: defaults::eps(),
            weight_decay: 0.0,
        }
    }
}

impl Default for ValidationSpec {
    fn default() -> Self {
        ValidationSpec {
            split: None,
            fraction: defaults::val_fraction(),
        }
    }
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            every_steps: defaults::ckpt_every(),
            keep: defaults::ckpt_keep(),
        }
    }
}

fn check(ok: bool, field: &str, reason: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, reason))
    }
}

fn check_url(field: &str, value: &str) -> Result<()> {
    StoreUrl::parse(value)
        .map(|_| ())
        .map_err(|e| Error::invalid(field, e.to_string()))
}

/// Largest job spec accepted, as YAML text: wherever a spec is read (a submit, a job record, a
/// checkpoint), this one limit applies before any parsing.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;

impl JobSpec {
    /// Parses and validates a YAML spec.
    pub fn from_yaml(text: &str) -> Result<Self> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(Error::invalid(
                "spec",
                format!(
                    "{} bytes; a job spec may have at most {MAX_SPEC_BYTES}",
                    text.len()
                ),
            ));
        }
        let spec: JobSpec = serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            Error::invalid("spec", format!("{e}{at}"))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as YAML (what checkpoints store).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    /// Checks every value; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        check(
            !self.name.trim().is_empty() && self.name.len() <= 128,
            "name",
            "must be 1 to 128 characters",
        )?;
        check_url("dataset", &self.dataset)?;
        check_url("output", &self.output)?;
        if let Some(r) = &self.resume_from {
            check_url("resume_from", r)?;
        }
        self.model.resnet_shape()?;
        check(
            (0.0..1.0).contains(&self.model.dropout),
            "model.dropout",
            format!("{} is not in [0, 1)", self.model.dropout),
        )?;
        check(
            (1..=MAX_BATCH_SIZE).contains(&self.batch_size),
            "batch_size",
            format!("{} is not in 1..={MAX_BATCH_SIZE}", self.batch_size),
        )?;
        check(
            self.micro_batch_size >= 1 && self.micro_batch_size <= self.batch_size,
            "micro_batch_size",
            format!(
                "{} is not in 1..=batch_size ({})",
                self.micro_batch_size, self.batch_size
            ),
        )?;
        check(
            self.micro_batches_per_task.is_power_of_two()
                && self.micro_batches_per_task <= MAX_MICRO_BATCHES_PER_TASK,
            "micro_batches_per_task",
            format!(
                "{} is not a power of two in 1..={MAX_MICRO_BATCHES_PER_TASK}",
                self.micro_batches_per_task
            ),
        )?;
        check(
            self.aggregators as usize <= crate::shards::MAX_SHARDS,
            "aggregators",
            format!(
                "{} is more than {}",
                self.aggregators,
                crate::shards::MAX_SHARDS
            ),
        )?;
        check(
            (1..=MAX_EPOCHS).contains(&self.epochs),
            "epochs",
            format!("{} is not in 1..={MAX_EPOCHS}", self.epochs),
        )?;
        check(self.max_steps != Some(0), "max_steps", "must be at least 1")?;
        check(
            (1..=10_000).contains(&self.min_workers),
            "min_workers",
            format!("{} is not in 1..=10000", self.min_workers),
        )?;
        let o = &self.optimizer;
        check(
            o.lr.is_finite() && o.lr > 0.0 && o.lr < 10.0,
            "optimizer.lr",
            format!("{} is not in (0, 10)", o.lr),
        )?;
        check(
            (0.0..1.0).contains(&o.beta1),
            "optimizer.beta1",
            format!("{} is not in [0, 1)", o.beta1),
        )?;
        check(
            (0.0..1.0).contains(&o.beta2),
            "optimizer.beta2",
            format!("{} is not in [0, 1)", o.beta2),
        )?;
        check(
            o.eps.is_finite() && o.eps > 0.0,
            "optimizer.eps",
            format!("{} is not positive", o.eps),
        )?;
        check(
            o.weight_decay.is_finite() && o.weight_decay >= 0.0,
            "optimizer.weight_decay",
            format!("{} is negative", o.weight_decay),
        )?;
        check(
            (0.0..1.0).contains(&self.validation.fraction),
            "validation.fraction",
            format!("{} is not in [0, 1)", self.validation.fraction),
        )?;
        if let Some(ev) = &self.evaluate {
            check_url("evaluate.model", &ev.model)?;
            check(!ev.split.is_empty(), "evaluate.split", "must name a split")?;
            for (field, set) in [
                ("resume_from", self.resume_from.is_some()),
                ("selection", self.selection.is_some()),
            ] {
                check(
                    !set,
                    field,
                    "a job that evaluates a model trains nothing: leave it out",
                )?;
            }
        }
        if let Some(selection) = &self.selection {
            selection.validate()?;
            check(
                self.validation.split.is_some() || self.validation.fraction > 0.0,
                "selection",
                "needs a validation split (validation.split, or validation.fraction > 0)",
            )?;
        }
        if let Some(split) = &self.validation.split {
            check(
                split != "train" && !split.is_empty(),
                "validation.split",
                "must name a split other than train",
            )?;
        }
        check(
            self.checkpoint.every_steps >= 1,
            "checkpoint.every_steps",
            "must be at least 1",
        )?;
        check(
            self.checkpoint.keep >= 1,
            "checkpoint.keep",
            "must be at least 1",
        )?;
        check(
            self.share_with.len() <= MAX_SHARE_WITH
                && self
                    .share_with
                    .iter()
                    .all(|u| !u.is_empty() && u.len() <= 64 && !u.chars().any(char::is_control)),
            "share_with",
            format!("at most {MAX_SHARE_WITH} user names of 1 to 64 characters"),
        )?;
        self.preprocess.validate()?;
        self.augment.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name: t\ndataset: memory://d/x\noutput: memory://d/out\n";

    /// The YAML parser's own limits, which every spec and users file relies on: aliases may
    /// not expand without bound (a "billion laughs" of 9^7 nodes), nesting is bounded.
    #[test]
    fn the_yaml_parser_refuses_alias_bombs_and_deep_nesting() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (name, prev) in [("b", "a"), ("c", "b"), ("d", "c"), ("e", "d"), ("f", "e")] {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        bomb.push_str(&format!("g: [{}]\n", ["*f"; 9].join(", ")));
        let err = serde_norway::from_str::<serde_norway::Value>(&bomb).unwrap_err();
        assert!(err.to_string().contains("repetition limit"), "{err}");
        let deep = format!("name: {}\n", "[".repeat(20_000));
        let err = serde_norway::from_str::<serde_norway::Value>(&deep).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        // And a spec is refused by size before it is parsed at all.
        let big = format!("{MINIMAL}# {}\n", "x".repeat(MAX_SPEC_BYTES));
        let err = JobSpec::from_yaml(&big).unwrap_err().to_string();
        assert!(err.contains(&format!("at most {MAX_SPEC_BYTES}")), "{err}");
    }

    #[test]
    fn minimal_spec_gets_pytorch_like_defaults() {
        let s = JobSpec::from_yaml(MINIMAL).unwrap();
        assert_eq!(s.batch_size, 128);
        assert_eq!(s.optimizer.lr, 1e-3);
        assert_eq!(s.optimizer.eps, 1e-8);
        assert_eq!(s.model.name, "seed-cnn");
        assert_eq!(s.model.resnet_shape().unwrap(), None);
        assert_eq!(s.validation.fraction, 0.1);
        let r = JobSpec::from_yaml(&format!(
            "{MINIMAL}model:\n  name: resnet\n  blocks: [2, 2]\n  width: 32\n  norm: none\n"
        ))
        .unwrap();
        let shape = r.model.resnet_shape().unwrap().unwrap();
        assert_eq!((shape.blocks, shape.width), (vec![2, 2], 32));
        assert_eq!(shape.norm, Norm::None);
        assert_eq!(JobSpec::from_yaml(&r.to_yaml()).unwrap(), r);
        assert_eq!(JobSpec::from_yaml(&s.to_yaml()).unwrap(), s);
    }

    #[test]
    fn selection_and_evaluation_sections_parse_and_refuse_what_cannot_apply() {
        let s = JobSpec::from_yaml(&format!(
            "{MINIMAL}selection:\n  metric: val_auc\n  patience: 3\n"
        ))
        .unwrap();
        let sel = s.selection.as_ref().unwrap();
        assert_eq!(sel.metric, crate::selection::SelectionMetric::ValAuc);
        assert_eq!((sel.patience, sel.min_delta), (Some(3), 0.0));
        assert_eq!(JobSpec::from_yaml(&s.to_yaml()).unwrap(), s);
        let field = |yaml: String| match JobSpec::from_yaml(&yaml) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("accepted or wrong error: {other:?}"),
        };
        // No validation samples to select by.
        assert_eq!(
            field(format!(
                "{MINIMAL}validation:\n  fraction: 0.0\nselection:\n  metric: val_loss\n"
            )),
            "selection"
        );
        let e = JobSpec::from_yaml(&format!("{MINIMAL}evaluate:\n  model: memory://d/out/j\n"))
            .unwrap();
        assert_eq!(e.evaluate.as_ref().unwrap().split, "test");
        assert_eq!(JobSpec::from_yaml(&e.to_yaml()).unwrap(), e);
        assert_eq!(
            field(format!("{MINIMAL}evaluate:\n  model: ftp://host/m\n")),
            "evaluate.model"
        );
        assert_eq!(
            field(format!(
                "{MINIMAL}evaluate:\n  model: memory://d/m\nresume_from: memory://d/c\n"
            )),
            "resume_from"
        );
    }

    #[test]
    fn preprocessing_and_augmentation_parse_and_round_trip() {
        let yaml = format!(
            "{MINIMAL}preprocess:\n  window: brain\n  resize: [64, 64]\naugment:\n  crop_padding: 4\n  rotation_degrees: 10\n  hflip: true\n  intensity: 0.1\n"
        );
        let s = JobSpec::from_yaml(&yaml).unwrap();
        assert_eq!(
            s.preprocess.window().unwrap(),
            Some(Window {
                center: 40.0,
                width: 80.0
            })
        );
        assert_eq!(s.preprocess.normalization(100.0, 20.0).unwrap(), (0.5, 0.5));
        assert_eq!(s.augment.crop_padding, 4);
        assert_eq!(JobSpec::from_yaml(&s.to_yaml()).unwrap(), s);
        let custom = format!("{MINIMAL}preprocess:\n  window: {{center: -600, width: 1500}}\n");
        let s = JobSpec::from_yaml(&custom).unwrap();
        assert_eq!(s.preprocess.window().unwrap().unwrap().center, -600.0);
        let plain = JobSpec::from_yaml(MINIMAL).unwrap();
        assert_eq!(
            plain.preprocess.normalization(100.0, 20.0).unwrap(),
            (100.0, 20.0)
        );
    }

    #[test]
    fn the_example_specs_are_valid_and_cover_every_architecture() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let spec =
                    JobSpec::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                names.push(spec.model.name);
            }
        }
        for arch in crate::model::ARCHITECTURES {
            assert!(names.iter().any(|n| n == arch), "no example for {arch}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (format!("{MINIMAL}learning_rate: 0.1\n"), "learning_rate"),
            (format!("{MINIMAL}batch_size: 0\n"), "batch_size"),
            (format!("{MINIMAL}batch_size: -3\n"), "batch_size"),
            (format!("{MINIMAL}optimizer:\n  lr: -1\n"), "optimizer.lr"),
            (
                format!("{MINIMAL}optimizer:\n  momentum: 0.9\n"),
                "momentum",
            ),
            (
                format!("{MINIMAL}model:\n  name: resnet-9000\n"),
                "model.name",
            ),
            (
                format!("{MINIMAL}model:\n  dropout: 1.5\n"),
                "model.dropout",
            ),
            (
                format!("{MINIMAL}model:\n  name: resnet18\n  width: 32\n"),
                "model.width",
            ),
            (
                format!("{MINIMAL}model:\n  blocks: [1, 1]\n"),
                "model.blocks",
            ),
            (
                format!("{MINIMAL}model:\n  name: resnet\n  blocks: [1, 1, 1, 1, 1]\n"),
                "model.blocks",
            ),
            (
                format!("{MINIMAL}model:\n  name: resnet\n  width: 7\n"),
                "model.width",
            ),
            (format!("{MINIMAL}model:\n  norm: none\n"), "model.norm"),
            (
                format!("{MINIMAL}model:\n  name: resnet\n  norm: batch\n"),
                "norm",
            ),
            (
                format!("{MINIMAL}micro_batch_size: 500\n"),
                "micro_batch_size",
            ),
            (
                format!("{MINIMAL}micro_batches_per_task: 3\n"),
                "micro_batches_per_task",
            ),
            (
                format!("{MINIMAL}micro_batches_per_task: 2048\n"),
                "micro_batches_per_task",
            ),
            ("name: t\noutput: memory://d/o\n".to_string(), "dataset"),
            (
                "name: t\ndataset: ftp://x/y\noutput: memory://d/o\n".to_string(),
                "dataset",
            ),
            ("name: [unclosed\n".to_string(), "spec"),
            (
                format!("{MINIMAL}preprocess:\n  window: liver\n"),
                "preprocess.window",
            ),
            (
                format!("{MINIMAL}preprocess:\n  window: {{center: 40, width: -1}}\n"),
                "preprocess.window",
            ),
            (
                format!("{MINIMAL}preprocess:\n  resize: [4, 4]\n"),
                "preprocess.resize",
            ),
            (
                format!("{MINIMAL}augment:\n  rotation_degrees: 400\n"),
                "augment.rotation_degrees",
            ),
            (format!("{MINIMAL}augment:\n  shear: 3\n"), "shear"),
        ];
        for (yaml, field) in cases {
            let err = JobSpec::from_yaml(&yaml).unwrap_err().to_string();
            assert!(
                err.contains(field),
                "error for {yaml:?} does not name {field}: {err}"
            );
        }
    }
}
