//! The metrics a clinician reads beside accuracy: per-class precision, recall and F1, balanced
//! accuracy, sensitivity and specificity, a bootstrap interval for ROC-AUC and the expected
//! calibration error. A metric that is undefined on the data (no image of a class, or none
//! predicted as it) is `None` with a note saying why, never NaN.

use serde::{Deserialize, Serialize};

use super::auc_of;
use crate::model::argmax;
use crate::rng::{KeyedRng, derive};

/// Bootstrap resamples behind the ROC-AUC interval.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Confidence bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// One class's figures, the class taken as positive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class name.
    pub class: String,
    /// Images of this class.
    pub support: u64,
    /// Of the images predicted as this class, the share that are.
    pub precision: Option<f64>,
    /// Of the images of this class, the share predicted as it (its sensitivity).
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall.
    pub f1: Option<f64>,
}

/// Per-class metrics from `confusion[true][predicted]`, with notes for what is undefined.
pub fn per_class(
    confusion: &[Vec<u64>],
    classes: &[String],
    notes: &mut Vec<String>,
) -> Vec<ClassMetrics> {
    let k = confusion.len();
    (0..k)
        .map(|c| {
            let name = classes
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("class {c}"));
            let tp = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = (0..k).map(|t| confusion[t][c]).sum();
            let precision = (predicted > 0).then(|| tp / predicted as f64);
            let recall = (support > 0).then(|| tp / support as f64);
            if support == 0 {
                notes.push(format!(
                    "no image of class {name}: its recall and F1 are undefined"
                ));
            }
            if predicted == 0 {
                notes.push(format!(
                    "no image predicted as {name}: its precision and F1 are undefined"
                ));
            }
            let f1 = match (precision, recall) {
                (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                (Some(_), Some(_)) => Some(0.0),
                _ => None,
            };
            ClassMetrics {
                class: name,
                support,
                precision,
                recall,
                f1,
            }
        })
        .collect()
}

/// The mean recall over the classes present.
pub fn balanced_accuracy(per_class: &[ClassMetrics]) -> Option<f64> {
    let recalls: Vec<f64> = per_class.iter().filter_map(|c| c.recall).collect();
    (!recalls.is_empty()).then(|| recalls.iter().sum::<f64>() / recalls.len() as f64)
}

/// Expected calibration error: over [`ECE_BINS`] equal-width bins of the top probability, the
/// share-weighted gap between mean confidence and accuracy. `None` for no images.
pub fn expected_calibration_error(probs: &[f32], labels: &[u32], classes: usize) -> Option<f64> {
    let n = labels.len();
    if n == 0 || classes == 0 {
        return None;
    }
    let mut conf = [0f64; ECE_BINS];
    let mut hits = [0f64; ECE_BINS];
    let mut count = [0usize; ECE_BINS];
    for (row, &label) in probs.chunks_exact(classes).zip(labels) {
        let top = argmax(row);
        let p = f64::from(row[top]).clamp(0.0, 1.0);
        let bin = ((p * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        conf[bin] += p;
        hits[bin] += f64::from(u8::from(top == label as usize));
        count[bin] += 1;
    }
    Some(
        (0..ECE_BINS)
            .filter(|&b| count[b] > 0)
            .map(|b| (conf[b] - hits[b]).abs() / n as f64)
            .sum(),
    )
}

/// The reliability diagram's points: per non-empty bin, (mean confidence, accuracy, images).
pub fn reliability(probs: &[f32], labels: &[u32], classes: usize) -> Vec<(f64, f64, usize)> {
    let mut bins = vec![(0f64, 0f64, 0usize); ECE_BINS];
    for (row, &label) in probs.chunks_exact(classes.max(1)).zip(labels) {
        let top = argmax(row);
        let p = f64::from(row[top]).clamp(0.0, 1.0);
        let b = &mut bins[((p * ECE_BINS as f64) as usize).min(ECE_BINS - 1)];
        b.0 += p;
        b.1 += f64::from(u8::from(top == label as usize));
        b.2 += 1;
    }
    bins.into_iter()
        .filter(|b| b.2 > 0)
        .map(|(c, h, n)| (c / n as f64, h / n as f64, n))
        .collect()
}

/// A 95% percentile-bootstrap interval for ROC-AUC ([`BOOTSTRAP_RESAMPLES`] resamples of the
/// images with replacement, drawn from a fixed key: the same data gives the same interval).
/// `None` where the AUC itself is undefined.
pub fn auc_interval(probs: &[f32], labels: &[u32], classes: usize) -> Option<[f64; 2]> {
    auc_of(probs, labels, classes)?;
    let n = labels.len();
    let mut rng = KeyedRng::new(derive(&[0xB007, n as u64]));
    let mut aucs = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let (mut p, mut l) = (Vec::with_capacity(probs.len()), Vec::with_capacity(n));
    for _ in 0..BOOTSTRAP_RESAMPLES {
        p.clear();
        l.clear();
        for _ in 0..n {
            let i = rng.below(n);
            p.extend_from_slice(&probs[i * classes..(i + 1) * classes]);
            l.push(labels[i]);
        }
        // A resample holding one class only has no AUC; it is skipped.
        if let Some(a) = auc_of(&p, &l, classes) {
            aucs.push(a);
        }
    }
    if aucs.len() < BOOTSTRAP_RESAMPLES / 2 {
        return None;
    }
    aucs.sort_by(f64::total_cmp);
    let at = |q: f64| aucs[((aucs.len() - 1) as f64 * q).round() as usize];
    Some([at(0.025), at(0.975)])
}

/// The ROC curve of class 1 (false-positive rate, true-positive rate), from the highest score
/// down; `None` unless both classes are present.
pub fn roc_curve(probs: &[f32], labels: &[u32], classes: usize) -> Option<Vec<(f64, f64)>> {
    if classes != 2 {
        return None;
    }
    let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..labels.len()).collect();
    idx.sort_by(|&a, &b| probs[b * 2 + 1].total_cmp(&probs[a * 2 + 1]));
    let mut out = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (j, &i) in idx.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        // One point per distinct score.
        let last = j + 1 == idx.len() || probs[idx[j + 1] * 2 + 1] != probs[i * 2 + 1];
        if last {
            out.push((fp / neg, tp / pos));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|c| format!("c{c}")).collect()
    }

    #[test]
    fn per_class_figures_by_hand() {
        // true 0: 8 right, 2 called 1; true 1: 1 called 0, 9 right.
        let confusion = vec![vec![8, 2], vec![1, 9]];
        let mut notes = Vec::new();
        let m = per_class(&confusion, &names(2), &mut notes);
        assert!(notes.is_empty());
        assert_eq!(m[1].precision, Some(9.0 / 11.0));
        assert_eq!(m[1].recall, Some(0.9));
        assert_eq!(m[0].recall, Some(0.8));
        let f1 = 2.0 * (9.0 / 11.0) * 0.9 / (9.0 / 11.0 + 0.9);
        assert!((m[1].f1.unwrap() - f1).abs() < 1e-12);
        assert!((balanced_accuracy(&m).unwrap() - 0.85).abs() < 1e-12);
    }

    #[test]
    fn a_one_class_split_gives_notes_and_no_nan() {
        let confusion = vec![vec![0, 0], vec![3, 7]];
        let mut notes = Vec::new();
        let m = per_class(&confusion, &names(2), &mut notes);
        assert_eq!(m[0].recall, None);
        assert_eq!(m[0].precision, Some(0.0));
        assert!(
            notes.iter().any(|n| n.contains("no image of class c0")),
            "{notes:?}"
        );
        assert_eq!(balanced_accuracy(&m), Some(0.7));
        let probs = [0.6, 0.4, 0.2, 0.8, 0.3, 0.7];
        assert_eq!(auc_interval(&probs, &[1, 1, 1], 2), None);
        assert_eq!(roc_curve(&probs, &[1, 1, 1], 2), None);
        assert_eq!(expected_calibration_error(&[], &[], 2), None);
    }

    #[test]
    fn calibration_and_the_auc_interval() {
        // Perfectly calibrated at 0.75: three of four right in the one bin.
        let probs = [0.75, 0.25, 0.75, 0.25, 0.75, 0.25, 0.75, 0.25];
        let ece = expected_calibration_error(&probs, &[0, 0, 0, 1], 2).unwrap();
        assert!(ece.abs() < 1e-9, "{ece}");
        // Over-confident: 0.95 claimed, half right.
        let probs = [0.95, 0.05, 0.95, 0.05];
        let ece = expected_calibration_error(&probs, &[0, 1], 2).unwrap();
        assert!((ece - 0.45).abs() < 1e-6, "{ece}");
        assert_eq!(reliability(&probs, &[0, 1], 2).len(), 1);
        // A separable-ish sample: the interval holds the AUC and stays in [0, 1].
        let mut rng = KeyedRng::new(3);
        let mut probs = Vec::new();
        let mut labels = Vec::new();
        for i in 0..200 {
            let l = (i % 2) as u32;
            let s = (0.5 + (f64::from(l) - 0.5) * 0.4 + (rng.next_f64() - 0.5) * 0.6)
                .clamp(0.0, 1.0) as f32;
            probs.extend([1.0 - s, s]);
            labels.push(l);
        }
        let auc = auc_of(&probs, &labels, 2).unwrap();
        let [lo, hi] = auc_interval(&probs, &labels, 2).unwrap();
        assert!(
            lo < auc && auc < hi && lo > 0.5 && hi <= 1.0,
            "{lo} {auc} {hi}"
        );
        assert_eq!(auc_interval(&probs, &labels, 2), Some([lo, hi]));
        let roc = roc_curve(&probs, &labels, 2).unwrap();
        assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(roc.last(), Some(&(1.0, 1.0)));
        // The trapezoids under the curve are the AUC.
        let area: f64 = roc
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - auc).abs() < 1e-9, "{area} {auc}");
    }
}
