//! Job records in the object store: `<state_url>/jobs/<job id>.json`, written on every change of
//! state and at every epoch end, read back when the coordinator starts.

use ctcluster_common::job::JobRecord;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, Result};

use crate::retry::with_retries;

/// Largest job record read back (a spec of 64 KiB, the thinned loss curve and one line of
/// metrics per epoch fit many times over).
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

fn record_url(state: &StoreUrl, record: &JobRecord) -> Result<StoreUrl> {
    state.join(&format!("jobs/{}.json", record.id))
}

/// Writes a job's record; a store that is briefly unreachable is tried again
/// ([`crate::retry`]).
pub async fn save(state: &StoreUrl, record: &JobRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Compute(e.to_string()))?;
    let json = bytes::Bytes::from(json);
    let url = record_url(state, record)?;
    with_retries("a job record", || url.put(json.clone())).await
}

/// Every record under the state URL; unreadable ones are logged and skipped.
pub async fn load_all(state: &StoreUrl) -> Result<Vec<JobRecord>> {
    let jobs = state.join("jobs")?;
    let mut out = Vec::new();
    for file in jobs.list().await? {
        if !file.ends_with(".json") || file.contains('/') {
            continue;
        }
        let url = jobs.join(&file)?;
        match url
            .get_bounded(MAX_RECORD_BYTES, "a job record")
            .await
            .map(|b| serde_json::from_slice::<JobRecord>(&b))
        {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(e)) => {
                tracing::warn!(record = %url, error = %e, "skipping unreadable job record")
            }
            Err(e) => tracing::warn!(record = %url, error = %e, "skipping unreadable job record"),
        }
    }
    Ok(out)
}
