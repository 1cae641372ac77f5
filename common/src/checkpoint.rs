//! Checkpoints: files first, then `manifest.json` with the sha256 of each, written last. A
//! checkpoint without a manifest, or whose files do not match it, is never loaded.
//!
//! Layout under a job's output: `checkpoints/step-NNNNNNNNNN/{params.bin, adam_m1.bin,
//! adam_m2.bin, state.json, manifest.json}`. The exported model and its card are
//! [`crate::card`]'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::ModelConfig;
use crate::optim::AdamSnapshot;
use crate::seal::{DataKey, Encryption, aad};
use crate::spec::JobSpec;
use crate::storage::StoreUrl;
use crate::tensor_bytes::{f32_from_le_bytes, f32_to_le_bytes};
use crate::{Error, Result, Step};

/// Name of a checkpoint's manifest.
pub const CHECKPOINT_MANIFEST: &str = "manifest.json";
/// Folder of a job's checkpoints, under its output.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Format tag of checkpoint manifests.
pub const CHECKPOINT_FORMAT: &str = "ctcluster.checkpoint.v1";

/// The data cursor and counters a job resumes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingState {
    /// Optimizer steps taken.
    pub step: Step,
    /// Epoch the next step belongs to.
    pub epoch: u32,
    /// Steps already taken within that epoch (the data cursor).
    pub step_in_epoch: u64,
    /// Summed training loss and sample count so far in that epoch (for the epoch's mean).
    pub epoch_loss_sum: f64,
    /// Samples seen so far in that epoch.
    pub epoch_samples: u64,
    /// Of those, the ones the model classified correctly before its update.
    #[serde(default)]
    pub epoch_correct: u64,
    /// The job spec, as YAML.
    pub spec_yaml: String,
    /// The model's configuration.
    pub model: ModelConfig,
    /// Adam's step counter.
    pub adam_time: u64,
    /// With `selection` in the spec: the best epoch so far by its metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<crate::selection::Best>,
}

/// A checkpoint in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Counters and configuration.
    pub state: TrainingState,
    /// Parameters, flat.
    pub params: Vec<f32>,
    /// Adam's moments.
    pub adam: AdamSnapshot,
    /// The key id its files were sealed with, when read from sealed files (`None` when
    /// written in the clear, and for a checkpoint built in memory).
    pub sealed_with: Option<String>,
}

/// Largest checkpoint `manifest.json` or `state.json` read.
pub const MAX_CHECKPOINT_META_BYTES: u64 = 16 << 20;
/// Most parameters a checkpoint may hold (4 GiB of f32), whatever its `state.json` says.
pub const MAX_CHECKPOINT_PARAMS: usize = 1 << 30;
/// Bytes a seal adds to a file (header, key id, nonce, tag), rounded up.
const SEAL_OVERHEAD: u64 = 512;

/// A checkpoint's `manifest.json`, written last: the files and their sha256.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointManifest {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// The step it holds.
    pub step: u64,
    /// File name -> sha256 (of the stored, possibly sealed, bytes).
    pub files: BTreeMap<String, String>,
    /// Set when the files are sealed: which key opens them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// The folder name of the checkpoint at a step.
pub fn checkpoint_dir_name(step: Step) -> String {
    format!("step-{:010}", step.0)
}

/// sha256 of bytes, lowercase hex.
pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Checkpoint {
    /// Writes the checkpoint under `job_output/checkpoints/step-N`, each file sealed with
    /// `key` when given; returns its URL.
    pub async fn write(&self, job_output: &StoreUrl, key: Option<&DataKey>) -> Result<StoreUrl> {
        let dir = job_output
            .join(CHECKPOINTS_DIR)?
            .join(&checkpoint_dir_name(self.state.step))?;
        let state = serde_json::to_vec_pretty(&TrainingState {
            adam_time: self.adam.time,
            ..self.state.clone()
        })
        .map_err(|e| Error::Compute(format!("checkpoint state: {e}")))?;
        let files = [
            ("params.bin", f32_to_le_bytes(&self.params)),
            ("adam_m1.bin", f32_to_le_bytes(&self.adam.moment_1)),
            ("adam_m2.bin", f32_to_le_bytes(&self.adam.moment_2)),
            ("state.json", state),
        ];
        let binding = binding_of(dir.as_str());
        let mut hashes = BTreeMap::new();
        for (name, bytes) in files {
            let bytes = match key {
                Some(k) => k.seal(&aad(Some(&binding), name), &bytes)?,
                None => bytes,
            };
            hashes.insert(name.to_string(), sha(&bytes));
            dir.join(name)?.put(bytes).await?;
        }
        let manifest = CheckpointManifest {
            format: CHECKPOINT_FORMAT.into(),
            step: self.state.step.0,
            files: hashes,
            encryption: key.map(|k| Encryption::bound(k, &binding)),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Compute(format!("checkpoint manifest: {e}")))?;
        dir.join(CHECKPOINT_MANIFEST)?.put(json).await?;
        Ok(dir)
    }

    /// Loads and verifies a checkpoint from its folder URL.
    pub async fn load(dir: &StoreUrl) -> Result<Checkpoint> {
        Checkpoint::load_limited(dir, MAX_CHECKPOINT_PARAMS).await
    }

    /// Loads and verifies a checkpoint of at most `max_params` parameters. Nothing is read
    /// whole before its size is known to fit: the manifest and `state.json` have a fixed
    /// limit, and `state.json` (checked and opened first) gives the model, so the tensor files
    /// may be exactly as large as its parameters and no larger.
    pub async fn load_limited(dir: &StoreUrl, max_params: usize) -> Result<Checkpoint> {
        let loc = dir.as_str().to_string();
        let manifest = dir
            .join(CHECKPOINT_MANIFEST)?
            .get_bounded(MAX_CHECKPOINT_META_BYTES, "a checkpoint manifest")
            .await
            .map_err(|e| match e {
                Error::NotFound { .. } => {
                    Error::checkpoint(&loc, "no manifest.json: the checkpoint is incomplete")
                }
                other => other,
            })?;
        let manifest = parse_manifest(&manifest, &loc)?;
        let key = manifest
            .encryption
            .as_ref()
            .map(|e| DataKey::from_env(&e.key_id, &format!("checkpoint {loc}")))
            .transpose()?;
        let state_bytes = dir
            .join("state.json")?
            .get_bounded(MAX_CHECKPOINT_META_BYTES, "a checkpoint's state.json")
            .await?;
        let state = open_file(&manifest, key.as_ref(), "state.json", &state_bytes, &loc)?;
        let state: TrainingState = serde_json::from_slice(&state)
            .map_err(|e| Error::checkpoint(&loc, format!("bad state.json: {e}")))?;
        let n = state.model.num_params();
        if n > max_params {
            return Err(Error::checkpoint(
                &loc,
                format!("its model has {n} parameters, more than the {max_params} allowed here"),
            ));
        }
        let tensor_limit = 4 * n as u64 + SEAL_OVERHEAD;
        let mut files = BTreeMap::new();
        files.insert("state.json", state_bytes);
        for name in ["params.bin", "adam_m1.bin", "adam_m2.bin"] {
            let bytes = dir
                .join(name)?
                .get_bounded(tensor_limit, "a tensor of this checkpoint's model")
                .await?;
            files.insert(name, bytes);
        }
        Checkpoint::decode(&manifest, &files, &loc)
    }

    /// Verifies a checkpoint's files against its manifest and decodes them; `loc` names the
    /// checkpoint in errors. Pure: what [`Checkpoint::load`] does once the bytes are read.
    pub fn decode(
        manifest: &CheckpointManifest,
        files: &BTreeMap<&str, bytes::Bytes>,
        loc: &str,
    ) -> Result<Checkpoint> {
        let key = manifest
            .encryption
            .as_ref()
            .map(|e| DataKey::from_env(&e.key_id, &format!("checkpoint {loc}")))
            .transpose()?;
        let mut opened = BTreeMap::new();
        for name in CHECKPOINT_FILES {
            let bytes = files
                .get(name)
                .ok_or_else(|| Error::checkpoint(loc, format!("no {name}")))?;
            opened.insert(name, open_file(manifest, key.as_ref(), name, bytes, loc)?);
        }
        let files = opened;
        let loc = loc.to_string();
        let state: TrainingState = serde_json::from_slice(&files["state.json"])
            .map_err(|e| Error::checkpoint(&loc, format!("bad state.json: {e}")))?;
        let params = f32_from_le_bytes(&files["params.bin"], "params.bin")?;
        if params.len() != state.model.num_params() {
            return Err(Error::checkpoint(
                &loc,
                format!(
                    "{} parameters, the model needs {}",
                    params.len(),
                    state.model.num_params()
                ),
            ));
        }
        let adam = AdamSnapshot {
            time: state.adam_time,
            moment_1: f32_from_le_bytes(&files["adam_m1.bin"], "adam_m1.bin")?,
            moment_2: f32_from_le_bytes(&files["adam_m2.bin"], "adam_m2.bin")?,
        };
        if adam.time > 0
            && (adam.moment_1.len() != params.len() || adam.moment_2.len() != params.len())
        {
            return Err(Error::checkpoint(
                &loc,
                "Adam moments do not match the parameters",
            ));
        }
        Ok(Checkpoint {
            state,
            params,
            adam,
            sealed_with: key.map(|k| k.id().to_string()),
        })
    }

    /// The job spec the checkpoint was trained with.
    pub fn spec(&self) -> Result<JobSpec> {
        JobSpec::from_yaml(&self.state.spec_yaml)
    }
}

/// Checks one checkpoint file against the sha256 its manifest lists, and opens it when the
/// checkpoint is sealed.
fn open_file(
    manifest: &CheckpointManifest,
    key: Option<&DataKey>,
    name: &str,
    bytes: &[u8],
    loc: &str,
) -> Result<Vec<u8>> {
    let want = manifest
        .files
        .get(name)
        .ok_or_else(|| Error::checkpoint(loc, format!("manifest lists no {name}")))?;
    if &sha(bytes) != want {
        return Err(Error::checkpoint(
            loc,
            format!("{name} does not match its sha256: corrupt or truncated"),
        ));
    }
    let (Some(key), Some(e)) = (key, &manifest.encryption) else {
        return Ok(bytes.to_vec());
    };
    if let Some(bound) = &e.binding
        && *bound != binding_of(loc)
    {
        return Err(Error::checkpoint(
            loc,
            format!("its files were sealed for {bound}, not for this place: moved or swapped"),
        ));
    }
    key.open(&e.aad(name), bytes, &format!("{loc}/{name}"))
}

/// What a checkpoint's sealed files are bound to: the last three segments of its folder,
/// `<job id>/checkpoints/step-N`. Files moved to another job or step do not open.
fn binding_of(dir: &str) -> String {
    let parts: Vec<&str> = dir.trim_end_matches('/').rsplit('/').take(3).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// The files of a checkpoint besides its manifest.
pub const CHECKPOINT_FILES: [&str; 4] = ["params.bin", "adam_m1.bin", "adam_m2.bin", "state.json"];

/// Parses and checks a checkpoint's `manifest.json`.
pub fn parse_manifest(bytes: &[u8], loc: &str) -> Result<CheckpointManifest> {
    let manifest: CheckpointManifest = serde_json::from_slice(bytes)
        .map_err(|e| Error::checkpoint(loc, format!("bad manifest.json: {e}")))?;
    if manifest.format != CHECKPOINT_FORMAT {
        return Err(Error::checkpoint(
            loc,
            format!("unknown format {:?}", manifest.format),
        ));
    }
    Ok(manifest)
}

/// Step folders under `job_output/checkpoints` that have a manifest, oldest first.
pub async fn list_complete(job_output: &StoreUrl) -> Result<Vec<StoreUrl>> {
    let root = job_output.join(CHECKPOINTS_DIR)?;
    let mut dirs: Vec<String> = root
        .list()
        .await?
        .into_iter()
        .filter_map(|f| {
            f.strip_suffix(&format!("/{CHECKPOINT_MANIFEST}"))
                .map(str::to_string)
        })
        .filter(|d| d.starts_with("step-") && !d.contains('/'))
        .collect();
    dirs.sort();
    dirs.iter().map(|d| root.join(d)).collect()
}

/// Deletes all but the newest `keep` complete checkpoints.
pub async fn apply_retention(job_output: &StoreUrl, keep: usize) -> Result<()> {
    let dirs = list_complete(job_output).await?;
    let excess = dirs.len().saturating_sub(keep);
    for dir in &dirs[..excess] {
        // Manifest first, so a half-deleted checkpoint is never taken for a complete one.
        dir.join(CHECKPOINT_MANIFEST)?.delete().await?;
        for file in dir.list().await? {
            dir.join(&file)?.delete().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{ImageInfo, PixelType};

    fn sample() -> Checkpoint {
        let image = ImageInfo {
            height: 12,
            width: 12,
            channels: 1,
            pixel_type: PixelType::U8,
        };
        let model = ModelConfig::seed_cnn(&image, 2, 0.5, 0.0, 1.0).unwrap();
        let params = model.init_params(1);
        let n = params.len();
        Checkpoint {
            state: TrainingState {
                step: Step(7),
                epoch: 1,
                step_in_epoch: 2,
                epoch_loss_sum: 3.5,
                epoch_samples: 64,
                epoch_correct: 40,
                spec_yaml: "name: t\ndataset: memory://a/b\noutput: memory://a/c\n".into(),
                model,
                adam_time: 7,
                best: None,
            },
            params,
            adam: AdamSnapshot {
                time: 7,
                moment_1: vec![0.5; n],
                moment_2: vec![0.25; n],
            },
            sealed_with: None,
        }
    }

    #[tokio::test]
    async fn round_trip_retention_and_corruption() {
        let out = StoreUrl::parse("memory://ckpt-test/job").unwrap();
        let mut ck = sample();
        for step in [7, 8, 9] {
            ck.state.step = Step(step);
            ck.write(&out, None).await.unwrap();
        }
        let dirs = list_complete(&out).await.unwrap();
        assert_eq!(dirs.len(), 3);
        assert_eq!(Checkpoint::load(&dirs[2]).await.unwrap(), ck);
        apply_retention(&out, 2).await.unwrap();
        let dirs = list_complete(&out).await.unwrap();
        assert_eq!(dirs.len(), 2);
        assert!(dirs[0].as_str().ends_with("step-0000000008"));
        // Truncate a file: the checkpoint is refused, naming the file.
        let params = dirs[1].join("params.bin").unwrap();
        let bytes = params.get().await.unwrap();
        params.put(bytes.slice(..bytes.len() / 2)).await.unwrap();
        let err = Checkpoint::load(&dirs[1]).await.unwrap_err().to_string();
        assert!(
            err.contains("params.bin") && err.contains("step-0000000009"),
            "{err}"
        );
        // A tensor file larger than the model it belongs to is refused before it is read,
        // even with a manifest that lists its hash.
        let big = vec![0u8; 4 * ck.params.len() + 4096];
        let mut m: CheckpointManifest = serde_json::from_slice(
            &dirs[0]
                .join(CHECKPOINT_MANIFEST)
                .unwrap()
                .get()
                .await
                .unwrap(),
        )
        .unwrap();
        m.files.insert("adam_m1.bin".into(), sha(&big));
        dirs[0]
            .join(CHECKPOINT_MANIFEST)
            .unwrap()
            .put(serde_json::to_vec(&m).unwrap())
            .await
            .unwrap();
        dirs[0].join("adam_m1.bin").unwrap().put(big).await.unwrap();
        let err = Checkpoint::load(&dirs[0]).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("adam_m1.bin"), "{err}");
        // A checkpoint of a larger model than the caller allows is refused from its state.
        let err = Checkpoint::load_limited(&dirs[0], ck.params.len() - 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than the"), "{err}");
        // A folder without a manifest is not complete.
        let half = out.join("checkpoints/step-0000000010/params.bin").unwrap();
        half.put(vec![0u8; 8]).await.unwrap();
        assert_eq!(list_complete(&out).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn sealed_files_open_only_where_they_were_written() {
        let key = DataKey::generate("site-a").unwrap();
        let ck = sample();
        let a = StoreUrl::parse("memory://ckpt-bind/out/job-a").unwrap();
        let b = StoreUrl::parse("memory://ckpt-bind/out/job-b").unwrap();
        let dir_a = ck.write(&a, Some(&key)).await.unwrap();
        let dir_b = ck.write(&b, Some(&key)).await.unwrap();
        let manifest = |dir: &StoreUrl| {
            let dir = dir.clone();
            async move {
                let m = dir.join(CHECKPOINT_MANIFEST).unwrap().get().await.unwrap();
                parse_manifest(&m, dir.as_str()).unwrap()
            }
        };
        let (ma, mb) = (manifest(&dir_a).await, manifest(&dir_b).await);
        assert_eq!(
            ma.encryption.as_ref().unwrap().binding.as_deref(),
            Some("job-a/checkpoints/step-0000000007")
        );
        let params_a = dir_a.join("params.bin").unwrap().get().await.unwrap();
        let plain = open_file(&ma, Some(&key), "params.bin", &params_a, dir_a.as_str()).unwrap();
        assert_eq!(plain, f32_to_le_bytes(&ck.params));
        // Job a's file and manifest copied into job b's folder: refused by place.
        let e = open_file(&ma, Some(&key), "params.bin", &params_a, dir_b.as_str())
            .unwrap_err()
            .to_string();
        assert!(e.contains("moved or swapped"), "{e}");
        // Job a's file under job b's manifest (its hash edited in): refused by the seal.
        let mut forged = mb.clone();
        forged.files.insert("params.bin".into(), sha(&params_a));
        let e = open_file(&forged, Some(&key), "params.bin", &params_a, dir_b.as_str())
            .unwrap_err()
            .to_string();
        assert!(e.contains("authentication failed"), "{e}");
        // The binding removed from the manifest: the seal still holds it.
        let mut unbound = ma.clone();
        unbound.encryption.as_mut().unwrap().binding = None;
        assert!(
            open_file(
                &unbound,
                Some(&key),
                "params.bin",
                &params_a,
                dir_a.as_str()
            )
            .is_err()
        );
    }
}
