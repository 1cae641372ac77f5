//! Who may name what: every URL a job reads or writes is authorised for the job's owner, not
//! only for the cluster. A URL must lie in the cluster's storage scope and in the user's own
//! (from the users file); what lies inside another user's job output (its checkpoints, its
//! model) may be read only by an admin or a user that job shares its output with, and never
//! written. Refusals name the field and the caller's URL, never the other job or its owner.

use std::sync::Arc;

use ctcluster_common::checkpoint::Checkpoint;
use ctcluster_common::spec::JobSpec;

use crate::auth::Principal;
use crate::error::CoordError;
use crate::job::JobHandle;
use crate::scope::{StorageScope, canonical};

/// How a job touches a URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    Read,
    Write,
}

/// The URLs a spec names, with how the job uses each.
fn urls(spec: &JobSpec) -> Vec<(&'static str, &str, Use)> {
    let mut v = vec![
        ("dataset", spec.dataset.as_str(), Use::Read),
        ("output", spec.output.as_str(), Use::Write),
    ];
    if let Some(r) = &spec.resume_from {
        v.push(("resume_from", r.as_str(), Use::Read));
    }
    if let Some(e) = &spec.evaluate {
        v.push(("evaluate.model", e.model.as_str(), Use::Read));
    }
    v
}

/// Checks every URL of `spec` for `who` against the cluster's scope, the user's scope and the
/// outputs of the other jobs the coordinator knows.
pub fn check_spec(
    spec: &JobSpec,
    who: &Principal,
    cluster: &StorageScope,
    jobs: &[Arc<JobHandle>],
) -> Result<(), CoordError> {
    for (field, url, how) in urls(spec) {
        match how {
            Use::Read => cluster.check_read(field, url)?,
            Use::Write => cluster.check_write(field, url)?,
        }
        if let Principal::User { scope, .. } = who
            && scope.is_restricted()
        {
            match how {
                Use::Read => scope.check_read(field, url),
                Use::Write => scope.check_write(field, url),
            }
            .map_err(|e| match e {
                CoordError::OutOfScope { field, url, reason } => CoordError::OutOfScope {
                    field,
                    url,
                    reason: format!("{reason} (your prefixes in the users file)"),
                },
                other => other,
            })?;
        }
        let target = canonical(url).map_err(|e| CoordError::bad(field, format!("{url}: {e}")))?;
        for job in jobs {
            let owner = job.owner();
            if owner == who.name() {
                continue;
            }
            let Ok(dir) = canonical(&format!(
                "{}/{}",
                job.spec.output.trim_end_matches('/'),
                job.id
            )) else {
                continue;
            };
            // Writing next to another job's folder (the same output prefix) is fine: each job
            // writes under its own id. Inside it, nobody but its owner writes.
            if !target.starts_with(dir.as_str()) {
                continue;
            }
            let shared = who.is_admin() || job.spec.share_with.iter().any(|u| u == who.name());
            if how == Use::Read && shared {
                continue;
            }
            return Err(CoordError::NotYours {
                field,
                url: url.to_string(),
                reason: match how {
                    Use::Read => "it lies in the output of another user's job, which is not \
                                  shared with you (its owner can add you to share_with)"
                        .into(),
                    Use::Write => "it lies in the output of another user's job".into(),
                },
            });
        }
    }
    Ok(())
}

/// A checkpoint may seed a job only if the job keeps it as sealed as it was: a sealed
/// checkpoint resumes only into a job sealing with the same key (else its weights would be
/// exported in the clear), and a sealed job never resumes from an unsealed checkpoint (which
/// anybody with write access to storage could have planted).
pub fn check_sealing(spec: &JobSpec, ck: &Checkpoint) -> Result<(), String> {
    let wants = spec.encryption.as_ref().map(|e| e.key_id.as_str());
    match (ck.sealed_with.as_deref(), wants) {
        (a, b) if a == b => Ok(()),
        (Some(k), _) => Err(format!(
            "the checkpoint is sealed with key {k:?}; a job resuming from it must seal its own \
             checkpoints with the same key (encryption: {{key_id: {k}}})"
        )),
        (None, Some(_)) => Err(
            "the checkpoint is not sealed, and a job that seals its checkpoints never resumes \
             from an unsealed one"
                .into(),
        ),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use ctcluster_common::checkpoint::{Checkpoint, TrainingState};
    use ctcluster_common::model::ModelConfig;
    use ctcluster_common::optim::AdamSnapshot;
    use ctcluster_common::{Step, spec::SpecEncryption};

    use super::*;

    fn checkpoint(sealed_with: Option<&str>, model: ModelConfig) -> Checkpoint {
        Checkpoint {
            state: TrainingState {
                step: Step(1),
                epoch: 0,
                step_in_epoch: 1,
                epoch_loss_sum: 0.0,
                epoch_samples: 0,
                epoch_correct: 0,
                spec_yaml: String::new(),
                model,
                adam_time: 1,
                best: None,
            },
            params: Vec::new(),
            adam: AdamSnapshot {
                time: 1,
                moment_1: Vec::new(),
                moment_2: Vec::new(),
            },
            sealed_with: sealed_with.map(str::to_string),
        }
    }

    #[test]
    fn a_checkpoint_stays_as_sealed_as_it_was() {
        let mut spec =
            JobSpec::from_yaml("name: t\ndataset: memory://a/b\noutput: memory://a/c\n").unwrap();
        let manifest = ctcluster_common::dataset::Manifest {
            format: "ctcluster.dataset.v1".into(),
            image: ctcluster_common::dataset::ImageInfo {
                height: 28,
                width: 28,
                channels: 1,
                pixel_type: ctcluster_common::dataset::PixelType::U8,
            },
            classes: vec!["a".into(), "b".into()],
            splits: Default::default(),
            pixel_stats: ctcluster_common::dataset::PixelStats {
                mean: 0.0,
                std: 1.0,
                min: 0.0,
                max: 1.0,
            },
            schema: Default::default(),
            source: String::new(),
            encryption: None,
            deidentification: None,
        };
        let model: ModelConfig = ctcluster_common::model::model_for_job(&spec, &manifest).unwrap();
        assert!(check_sealing(&spec, &checkpoint(None, model.clone())).is_ok());
        let e = check_sealing(&spec, &checkpoint(Some("site-a"), model.clone())).unwrap_err();
        assert!(e.contains("site-a") && e.contains("same key"), "{e}");
        spec.encryption = Some(SpecEncryption {
            key_id: "site-a".into(),
        });
        assert!(check_sealing(&spec, &checkpoint(Some("site-a"), model.clone())).is_ok());
        let e = check_sealing(&spec, &checkpoint(None, model.clone())).unwrap_err();
        assert!(e.contains("not sealed"), "{e}");
        assert!(check_sealing(&spec, &checkpoint(Some("site-b"), model)).is_err());
    }
}
