//! Result headers on the wire.

use ctcluster_proto as pb;

use crate::dtype::GradientDtype;
use crate::task::{FailureKind, ResultHeader, TaskFailure};
use crate::{Error, JobId, Step, TaskId, WorkerId};

impl From<FailureKind> for pb::TaskFailureKind {
    fn from(k: FailureKind) -> Self {
        match k {
            FailureKind::BadInput => pb::TaskFailureKind::BadInput,
            FailureKind::Retryable => pb::TaskFailureKind::Retryable,
            FailureKind::Aggregator => pb::TaskFailureKind::Aggregator,
        }
    }
}

/// Unset and unknown values are retryable: a worker that does not say is treated as before the
/// field existed.
fn failure_kind(raw: i32) -> FailureKind {
    match pb::TaskFailureKind::try_from(raw) {
        Ok(pb::TaskFailureKind::BadInput) => FailureKind::BadInput,
        Ok(pb::TaskFailureKind::Aggregator) => FailureKind::Aggregator,
        Ok(pb::TaskFailureKind::Retryable | pb::TaskFailureKind::Unspecified) | Err(_) => {
            FailureKind::Retryable
        }
    }
}

impl From<ResultHeader> for pb::ResultHeader {
    fn from(h: ResultHeader) -> Self {
        let (error, error_kind) = match h.failure {
            Some(f) => (f.message, pb::TaskFailureKind::from(f.kind) as i32),
            None => (String::new(), pb::TaskFailureKind::Unspecified as i32),
        };
        pb::ResultHeader {
            worker_id: h.worker.to_string(),
            job_id: h.job.to_string(),
            task_id: h.task.0,
            step: h.step.0,
            samples: h.samples,
            loss_sum: h.loss_sum,
            correct: h.correct,
            gradient_len: h.gradient_len,
            compute_seconds: h.compute_seconds,
            error,
            fetch_seconds: h.fetch_seconds,
            confusion: h.confusion,
            error_kind,
            probabilities: h.probs,
            labels: h.labels,
            gradient_dtype: pb::GradientDtype::from(h.gradient_dtype) as i32,
        }
    }
}

impl TryFrom<pb::ResultHeader> for ResultHeader {
    type Error = Error;

    fn try_from(h: pb::ResultHeader) -> Result<Self, Error> {
        let failure = (!h.error.is_empty()).then(|| TaskFailure {
            kind: failure_kind(h.error_kind),
            message: h
                .error
                .chars()
                .take(TaskFailure::MAX_MESSAGE_CHARS)
                .collect(),
        });
        Ok(ResultHeader {
            worker: h.worker_id.parse::<WorkerId>()?,
            job: JobId::try_from(h.job_id)?,
            task: TaskId(h.task_id),
            step: Step(h.step),
            samples: h.samples,
            loss_sum: h.loss_sum,
            correct: h.correct,
            gradient_len: h.gradient_len,
            gradient_dtype: GradientDtype::try_from(h.gradient_dtype)?,
            compute_seconds: h.compute_seconds,
            fetch_seconds: h.fetch_seconds,
            confusion: h.confusion,
            probs: h.probabilities,
            labels: h.labels,
            failure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ResultHeader {
        ResultHeader {
            worker: WorkerId(4),
            job: JobId::generate(),
            task: TaskId(11),
            step: Step(3),
            samples: 8,
            loss_sum: 5.5,
            correct: 6,
            gradient_len: 0,
            gradient_dtype: GradientDtype::Bf16,
            compute_seconds: 0.25,
            fetch_seconds: 0.5,
            confusion: vec![3, 1, 1, 3],
            probs: vec![0.75, 0.25],
            labels: vec![0],
            failure: None,
        }
    }

    #[test]
    fn headers_round_trip_with_and_without_a_failure() {
        let h = header();
        assert_eq!(
            ResultHeader::try_from(pb::ResultHeader::from(h.clone())).unwrap(),
            h
        );
        let mut failed = header();
        failed.failure = Some(TaskFailure::bad_input("shard 2: truncated"));
        assert_eq!(
            ResultHeader::try_from(pb::ResultHeader::from(failed.clone())).unwrap(),
            failed
        );
    }

    #[test]
    fn a_worker_that_does_not_classify_its_failure_is_retried_and_long_messages_are_cut() {
        let mut p = pb::ResultHeader::from(header());
        p.error = "x".repeat(10_000);
        p.error_kind = 0;
        let h = ResultHeader::try_from(p.clone()).unwrap();
        let f = h.failure.unwrap();
        assert_eq!(f.kind, FailureKind::Retryable);
        assert_eq!(f.message.len(), TaskFailure::MAX_MESSAGE_CHARS);
        p.error_kind = 42;
        assert_eq!(
            ResultHeader::try_from(p).unwrap().failure.unwrap().kind,
            FailureKind::Retryable
        );
    }

    #[test]
    fn forged_ids_are_refused() {
        let mut p = pb::ResultHeader::from(header());
        p.worker_id = "4".into();
        assert!(
            matches!(ResultHeader::try_from(p), Err(Error::Invalid { field, .. }) if field == "worker_id")
        );
        let mut p = pb::ResultHeader::from(header());
        p.job_id = "a/b".into();
        assert!(
            matches!(ResultHeader::try_from(p), Err(Error::Invalid { field, .. }) if field == "job_id")
        );
    }
}
