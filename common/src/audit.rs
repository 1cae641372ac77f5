//! The sample audit of a job (`audit: true` in its spec): for every applied step, which samples
//! its batch reduced, at `<output>/<job>/audit/step-N.json`. Whoever checks that each epoch
//! used every sample exactly once (the chaos suite, an auditor) reads these records back.

use serde::{Deserialize, Serialize};

use crate::storage::StoreUrl;
use crate::{Error, Result, Step};

/// Largest audit record read back (a step's batch is at most a few thousand samples).
const MAX_AUDIT_BYTES: u64 = 16 << 20;

/// One applied step's samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepAudit {
    /// 0-based epoch of the step.
    pub epoch: u32,
    /// The step (0-based: the update it applied).
    pub step: u64,
    /// Training samples in the epoch (all of them are used once per epoch).
    pub train_samples: usize,
    /// `[shard, row]` of every sample of the step's batch, in batch order.
    pub samples: Vec<[u32; 2]>,
}

impl StepAudit {
    fn dir(job_output: &StoreUrl) -> Result<StoreUrl> {
        job_output.join("audit")
    }

    /// Writes the record under a job's output (replacing one of a step computed again after a
    /// restart: same step, same samples).
    pub async fn write(&self, job_output: &StoreUrl) -> Result<()> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| Error::invalid("audit", format!("cannot encode: {e}")))?;
        Self::dir(job_output)?
            .join(&format!("step-{:010}.json", self.step))?
            .put(bytes)
            .await
    }

    /// Every step's record under a job's output, in step order.
    pub async fn read_all(job_output: &StoreUrl) -> Result<Vec<StepAudit>> {
        let dir = Self::dir(job_output)?;
        let mut out = Vec::new();
        for file in dir.list().await? {
            let url = dir.join(&file)?;
            let bytes = url.get_bounded(MAX_AUDIT_BYTES, "an audit record").await?;
            let record: StepAudit = serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid("audit", format!("{}: {e}", url.as_str())))?;
            out.push(record);
        }
        out.sort_by_key(|r| r.step);
        Ok(out)
    }

    /// The step, typed.
    pub fn step(&self) -> Step {
        Step(self.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_round_trip_in_step_order_and_foreign_files_are_refused() {
        let out = StoreUrl::parse("memory://audit-test/job").unwrap();
        for step in [2u64, 0, 1] {
            StepAudit {
                epoch: 0,
                step,
                train_samples: 6,
                samples: vec![[0, step as u32 * 2], [1, step as u32 * 2 + 1]],
            }
            .write(&out)
            .await
            .unwrap();
        }
        let all = StepAudit::read_all(&out).await.unwrap();
        assert_eq!(
            all.iter().map(StepAudit::step).collect::<Vec<_>>(),
            [Step(0), Step(1), Step(2)]
        );
        assert_eq!(all[1].samples, [[0, 2], [1, 3]]);
        out.join("audit/step-0000000009.json")
            .unwrap()
            .put(b"{\"epoch\": 0, \"surprise\": 1}".to_vec())
            .await
            .unwrap();
        let err = StepAudit::read_all(&out).await.unwrap_err().to_string();
        assert!(err.contains("step-0000000009.json"), "{err}");
    }
}
