//! What a job writes as it goes: checkpoints (the sample audit is `common::audit`).

use ctcluster_common::checkpoint::{Checkpoint, apply_retention};
use ctcluster_common::optim::AdamSnapshot;
use ctcluster_common::seal::DataKey;
use ctcluster_common::storage::StoreUrl;

use crate::job::JobHandle;
use crate::retry::with_retries;

use super::run::Stop;
use super::start::Progress;

pub(super) async fn checkpoint(
    job: &JobHandle,
    p: &Progress,
    job_output: &StoreUrl,
) -> Result<(), Stop> {
    let ck = Checkpoint {
        state: p.state.clone(),
        params: p.params.clone(),
        adam: p.adam.snapshot().unwrap_or(AdamSnapshot {
            time: 0,
            moment_1: vec![],
            moment_2: vec![],
        }),
        sealed_with: None,
    };
    let key = match &job.spec.encryption {
        Some(e) => Some(DataKey::from_env(
            &e.key_id,
            &format!("the checkpoints of job {}", job.id),
        )?),
        None => None,
    };
    // Files first, manifest last: a write tried again after a transient failure rewrites the
    // same bytes, and a checkpoint without its manifest is never read.
    let url = with_retries("a checkpoint", || ck.write(job_output, key.as_ref())).await?;
    with_retries("checkpoint retention", || {
        apply_retention(job_output, job.spec.checkpoint.keep as usize)
    })
    .await?;
    tracing::info!(job = %job.id, checkpoint = %url, "checkpoint written");
    job.update(|r| r.checkpoint = Some(url.to_string()));
    Ok(())
}
