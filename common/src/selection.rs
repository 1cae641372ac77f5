//! Model selection: which epoch's weights a job exports, judged by a validation metric at
//! every epoch end, and early stopping when that metric stops improving.
//!
//! The judgement is a pure function of the metric's history, so a job resumed from a
//! checkpoint (which carries [`Best`]) decides exactly as an uninterrupted one.

use serde::{Deserialize, Serialize};

use crate::evaluate::EvalReport;
use crate::{Error, Result};

/// A validation metric a job can select its model by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMetric {
    /// ROC-AUC (class 1 for two classes, the one-vs-rest mean for more): higher is better.
    ValAuc,
    /// Mean cross-entropy: lower is better.
    ValLoss,
    /// Accuracy: higher is better.
    ValAccuracy,
    /// Mean recall over the classes: higher is better.
    ValBalancedAccuracy,
}

impl SelectionMetric {
    /// Every metric, for messages.
    pub const ALL: [SelectionMetric; 4] = [
        SelectionMetric::ValAuc,
        SelectionMetric::ValLoss,
        SelectionMetric::ValAccuracy,
        SelectionMetric::ValBalancedAccuracy,
    ];

    /// The name used in job specs and model cards.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectionMetric::ValAuc => "val_auc",
            SelectionMetric::ValLoss => "val_loss",
            SelectionMetric::ValAccuracy => "val_accuracy",
            SelectionMetric::ValBalancedAccuracy => "val_balanced_accuracy",
        }
    }

    /// Whether a larger value is a better model.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, SelectionMetric::ValLoss)
    }

    /// The metric's value in a validation report; an error saying why when it is undefined
    /// there (ROC-AUC of a split holding one class, say).
    pub fn of(self, report: &EvalReport) -> Result<f64> {
        let value = match self {
            SelectionMetric::ValAuc => report.roc_auc,
            SelectionMetric::ValLoss => Some(report.loss),
            SelectionMetric::ValAccuracy => Some(report.accuracy),
            SelectionMetric::ValBalancedAccuracy => report.balanced_accuracy,
        };
        value.filter(|v| v.is_finite()).ok_or_else(|| {
            let why = if report.notes.is_empty() {
                "it is not a finite number".to_string()
            } else {
                report.notes.join("; ")
            };
            Error::invalid(
                "selection.metric",
                format!(
                    "{} is undefined on validation split {:?} ({} images): {why}",
                    self.as_str(),
                    report.split,
                    report.samples
                ),
            )
        })
    }
}

/// `selection:` in a job spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSpec {
    /// The metric judged at every epoch end.
    pub metric: SelectionMetric,
    /// Stop training after this many epochs in a row without an improvement (early stopping);
    /// absent: train every epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<u32>,
    /// An epoch improves on the best only by more than this (in the metric's units).
    #[serde(default)]
    pub min_delta: f64,
}

impl SelectionSpec {
    /// Checks the values, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.patience == Some(0) {
            return Err(Error::invalid(
                "selection.patience",
                "must be at least 1 (leave it out to train every epoch)",
            ));
        }
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return Err(Error::invalid(
                "selection.min_delta",
                format!("{}: must be a finite number >= 0", self.min_delta),
            ));
        }
        Ok(())
    }

    /// Judges one epoch's value against the best so far: the new best, and whether training
    /// stops here.
    pub fn judge(&self, best: Option<&Best>, epoch: u32, step: u64, value: f64) -> Judgement {
        let improved = match best {
            None => true,
            Some(b) if self.metric.higher_is_better() => value > b.value + self.min_delta,
            Some(b) => value < b.value - self.min_delta,
        };
        let best = match best {
            Some(b) if !improved => Best {
                stale_epochs: b.stale_epochs + 1,
                ..b.clone()
            },
            _ => Best {
                epoch,
                step,
                value,
                stale_epochs: 0,
            },
        };
        let stop = self.patience.is_some_and(|p| best.stale_epochs >= p);
        Judgement {
            best,
            improved,
            stop,
        }
    }
}

/// The best epoch so far, carried in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Best {
    /// The 0-based epoch whose weights are the best so far.
    pub epoch: u32,
    /// The step count at its end.
    pub step: u64,
    /// Its metric value.
    pub value: f64,
    /// Epochs since, none of which improved on it.
    pub stale_epochs: u32,
}

/// What [`SelectionSpec::judge`] decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// The best epoch after this one.
    pub best: Best,
    /// Whether this epoch is the new best (its weights are exported).
    pub improved: bool,
    /// Whether training stops early here.
    pub stop: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metric: SelectionMetric, patience: Option<u32>, min_delta: f64) -> SelectionSpec {
        SelectionSpec {
            metric,
            patience,
            min_delta,
        }
    }

    /// Runs a metric history through the judge: the epochs that improved, and where it stopped.
    fn run(s: &SelectionSpec, values: &[f64]) -> (Vec<u32>, Option<u32>, Best) {
        let mut best = None;
        let mut improved = Vec::new();
        for (epoch, &v) in values.iter().enumerate() {
            let epoch = epoch as u32;
            let j = s.judge(best.as_ref(), epoch, u64::from(epoch) * 10 + 10, v);
            if j.improved {
                improved.push(epoch);
            }
            best = Some(j.best);
            if j.stop {
                return (improved, Some(epoch), best.unwrap());
            }
        }
        (improved, None, best.unwrap())
    }

    #[test]
    fn the_best_epoch_is_kept_and_patience_stops_training() {
        let auc = spec(SelectionMetric::ValAuc, Some(2), 0.0);
        let (improved, stopped, best) = run(&auc, &[0.80, 0.85, 0.84, 0.86, 0.86, 0.85, 0.99]);
        // 0.86 again is no improvement; two epochs without one stop at epoch 5, before 0.99.
        assert_eq!(improved, [0, 1, 3]);
        assert_eq!(stopped, Some(5));
        assert_eq!((best.epoch, best.step, best.value), (3, 40, 0.86));
        // Loss: lower is better; without patience every epoch runs.
        let loss = spec(SelectionMetric::ValLoss, None, 0.0);
        let (improved, stopped, best) = run(&loss, &[0.7, 0.5, 0.6, 0.4, 0.9]);
        assert_eq!(improved, [0, 1, 3]);
        assert_eq!(stopped, None);
        assert_eq!((best.epoch, best.stale_epochs), (3, 1));
    }

    #[test]
    fn improvements_smaller_than_min_delta_do_not_count() {
        let s = spec(SelectionMetric::ValAccuracy, Some(3), 0.01);
        let (improved, stopped, best) = run(&s, &[0.80, 0.805, 0.809, 0.812]);
        assert_eq!(improved, [0, 3]);
        assert_eq!(stopped, None);
        assert_eq!(best.value, 0.812);
        let (improved, stopped, _) = run(&s, &[0.80, 0.805, 0.809, 0.8099, 0.9]);
        assert_eq!(improved, [0]);
        assert_eq!(stopped, Some(3));
    }

    #[test]
    fn a_resumed_judge_decides_as_an_uninterrupted_one() {
        let s = spec(SelectionMetric::ValBalancedAccuracy, Some(2), 0.0);
        let values = [0.6, 0.7, 0.65, 0.72, 0.71, 0.70];
        let whole = run(&s, &values);
        // Stop after epoch 2, keep only `Best` (as a checkpoint does), go on.
        let mut best = run(&s, &values[..3]).2;
        best = serde_json::from_str(&serde_json::to_string(&best).unwrap()).unwrap();
        let mut stopped = None;
        for (i, &v) in values.iter().enumerate().skip(3) {
            let j = s.judge(Some(&best), i as u32, i as u64 * 10 + 10, v);
            best = j.best;
            if j.stop {
                stopped = Some(i as u32);
                break;
            }
        }
        assert_eq!((stopped, best), (whole.1, whole.2));
    }

    #[test]
    fn bad_values_and_undefined_metrics_are_named() {
        let e = spec(SelectionMetric::ValAuc, Some(0), 0.0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("selection.patience"), "{e}");
        let e = spec(SelectionMetric::ValAuc, None, -0.1)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("selection.min_delta"), "{e}");
        let yaml = "metric: val_f1\n";
        let e = serde_norway::from_str::<SelectionSpec>(yaml).unwrap_err();
        assert!(e.to_string().contains("val_auc"), "{e}");
        // One class in the split: no AUC, and the message says why.
        let report = crate::evaluate::report(
            "val".into(),
            vec!["a".into(), "b".into()],
            1.0,
            &[0.9, 0.1, 0.8, 0.2],
            &[0, 0],
        );
        let e = SelectionMetric::ValAuc.of(&report).unwrap_err().to_string();
        assert!(e.contains("val_auc") && e.contains("one class"), "{e}");
        assert_eq!(SelectionMetric::ValAccuracy.of(&report).unwrap(), 1.0);
    }
}
