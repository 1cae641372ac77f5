//! Job states on the wire.

use ctcluster_proto as pb;

use crate::Error;
use crate::job::JobState;

impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
            JobState::Waiting => pb::JobState::Waiting,
        }
    }
}

impl TryFrom<pb::JobState> for JobState {
    type Error = Error;

    fn try_from(s: pb::JobState) -> Result<Self, Error> {
        Ok(match s {
            pb::JobState::Queued => JobState::Queued,
            pb::JobState::Running => JobState::Running,
            pb::JobState::Succeeded => JobState::Succeeded,
            pb::JobState::Failed => JobState::Failed,
            pb::JobState::Cancelled => JobState::Cancelled,
            pb::JobState::Waiting => JobState::Waiting,
            pb::JobState::Unspecified => {
                return Err(Error::invalid("state", "the job state is not set"));
            }
        })
    }
}

/// The raw `int32` of a `JobStatus.state` field.
impl TryFrom<i32> for JobState {
    type Error = Error;

    fn try_from(raw: i32) -> Result<Self, Error> {
        pb::JobState::try_from(raw)
            .map_err(|_| Error::invalid("state", format!("{raw} is not a job state")))?
            .try_into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_and_unknown_values_are_refused() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Waiting,
        ] {
            let raw = pb::JobState::from(s) as i32;
            assert_eq!(JobState::try_from(raw).unwrap(), s);
        }
        assert!(JobState::try_from(0).is_err());
        assert!(JobState::try_from(99).is_err());
    }
}
