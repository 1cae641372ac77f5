//! Object-store URLs: `file://`, `memory://`, `s3://`, `gs://`, `az://` (and plain local paths).
//!
//! Cloud stores are configured from the usual environment variables (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`); credentials never travel in job specs or RPCs. `memory://NAME` stores live in the
//! process, shared by every component in it (the demo and tests use them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::{Error, Result};

/// A location in an object store: the store, and a prefix inside it.
#[derive(Clone)]
pub struct StoreUrl {
    url: Url,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.url)
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn stores() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Turns user input (a URL or a plain local path) into a URL string.
pub fn normalize_url(input: &str) -> Result<Url> {
    let input = input.trim();
    if input.is_empty() {
        return Err(Error::Url {
            url: input.into(),
            reason: "empty".into(),
        });
    }
    if !input.contains("://") {
        let path = std::path::Path::new(input);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|source| Error::Io {
                    path: input.into(),
                    source,
                })?
                .join(path)
        };
        return Url::from_directory_path(&abs).map_err(|()| Error::Url {
            url: input.into(),
            reason: "not a usable local path".into(),
        });
    }
    Url::parse(input).map_err(|e| Error::Url {
        url: input.into(),
        reason: e.to_string(),
    })
}

impl StoreUrl {
    /// Parses a URL or local path and opens (or reuses) its store.
    pub fn parse(input: &str) -> Result<Self> {
        let url = normalize_url(input)?;
        let bad = |reason: &str| Error::Url {
            url: input.into(),
            reason: reason.into(),
        };
        // Checked on the raw text: URL parsing would silently resolve the dots away.
        let lowered = input.to_ascii_lowercase().replace("%2e", ".");
        if lowered.split(['/', '\\']).any(|seg| seg == "..") {
            return Err(bad("'..' segments are not allowed"));
        }
        let scheme = url.scheme().to_string();
        let host = url.host_str().unwrap_or("").to_string();
        let key = format!("{scheme}://{host}");
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match scheme.as_str() {
            "file" => {
                if !host.is_empty() && host != "localhost" {
                    return Err(bad("file URLs take no host: use file:///absolute/path"));
                }
                let prefix = Path::from_url_path(url.path()).map_err(|e| bad(&e.to_string()))?;
                (
                    // Every write is flushed to the disk (file and folder) before it counts as
                    // done: a checkpoint or job record that was reported written survives a
                    // power loss.
                    Self::cached(&key, || {
                        Ok(Arc::new(
                            object_store::local::LocalFileSystem::new().with_fsync(true),
                        ))
                    })?,
                    prefix,
                )
            }
            "memory" => {
                let prefix = Path::from_url_path(url.path()).map_err(|e| bad(&e.to_string()))?;
                (
                    Self::cached(&key, || Ok(Arc::new(object_store::memory::InMemory::new())))?,
                    prefix,
                )
            }
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {
                if host.is_empty() {
                    return Err(bad("a bucket or container name is required"));
                }
                let prefix = Path::from_url_path(url.path()).map_err(|e| bad(&e.to_string()))?;
                let bucket_url = format!("{scheme}://{host}");
                let store = Self::cached(&key, || {
                    let built: Arc<dyn ObjectStore> = match scheme.as_str() {
                        "s3" | "s3a" => Arc::new(
                            object_store::aws::AmazonS3Builder::from_env()
                                .with_url(&bucket_url)
                                .build()?,
                        ),
                        "gs" => Arc::new(
                            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                                .with_url(&bucket_url)
                                .build()?,
                        ),
                        _ => Arc::new(
                            object_store::azure::MicrosoftAzureBuilder::from_env()
                                .with_url(&bucket_url)
                                .build()?,
                        ),
                    };
                    Ok(built)
                })
                .map_err(|e| match e {
                    Error::Storage { source, .. } => bad(&source.to_string()),
                    other => other,
                })?;
                (store, prefix)
            }
            other => {
                return Err(bad(&format!(
                    "unknown scheme {other:?}; use file://, memory://, s3://, gs:// or az://"
                )));
            }
        };
        let mut url = url;
        let trimmed = url.path().trim_end_matches('/').to_string();
        url.set_path(&trimmed);
        Ok(StoreUrl { url, store, prefix })
    }

    /// Uses `store` for every URL under `base` (`scheme://host`: a bucket, a container) from
    /// now on, instead of a store configured from the environment: for an embedding
    /// application that configures its stores in code, and for tests against a local server.
    /// A store already in use for `base` is replaced for URLs parsed afterwards.
    pub fn register_store(base: &str, store: Arc<dyn ObjectStore>) -> Result<()> {
        let url = normalize_url(base)?;
        if !url.path().trim_matches('/').is_empty() {
            return Err(Error::Url {
                url: base.into(),
                reason: "register a store for scheme://host, without a path".into(),
            });
        }
        let key = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
        let mut map = stores().lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, store);
        Ok(())
    }

    fn cached(
        key: &str,
        make: impl FnOnce() -> std::result::Result<Arc<dyn ObjectStore>, object_store::Error>,
    ) -> Result<Arc<dyn ObjectStore>> {
        let mut map = stores().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(key) {
            return Ok(s.clone());
        }
        let store = make().map_err(|source| Error::Storage {
            location: key.into(),
            source,
        })?;
        map.insert(key.to_string(), store.clone());
        Ok(store)
    }

    /// The URL as text, without a trailing slash.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The URL's scheme (`file`, `s3`, ...).
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// A location below this one; `rel` is a `/`-separated relative path.
    pub fn join(&self, rel: &str) -> Result<StoreUrl> {
        let mut prefix = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if part == ".." || part == "." {
                return Err(Error::Url {
                    url: format!("{}/{rel}", self.as_str()),
                    reason: "'.' and '..' segments are not allowed".into(),
                });
            }
            prefix = prefix.clone().join(part);
        }
        let mut url = self.url.clone();
        let path = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            rel.trim_matches('/')
        );
        url.set_path(&path);
        Ok(StoreUrl {
            url,
            store: self.store.clone(),
            prefix,
        })
    }

    fn storage_err(&self, source: object_store::Error) -> Error {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound {
                what: "object".into(),
                location: self.as_str().into(),
            },
            source => Error::Storage {
                location: self.as_str().into(),
                source,
            },
        }
    }

    /// Reads the whole object at this location.
    pub async fn get(&self) -> Result<Bytes> {
        let res = self
            .store
            .get(&self.prefix)
            .await
            .map_err(|e| self.storage_err(e))?;
        res.bytes().await.map_err(|e| self.storage_err(e))
    }

    /// Reads the whole object at this location if it holds at most `limit` bytes; a larger
    /// one is refused before its body is read (from the size the store reports) and, should
    /// the store's size be wrong, as soon as the bytes read pass the limit. `what` names the
    /// object in the error.
    pub async fn get_bounded(&self, limit: u64, what: &str) -> Result<Bytes> {
        let too_large = |size: u64| Error::TooLarge {
            location: self.as_str().into(),
            what: what.into(),
            size,
            limit,
        };
        let res = self
            .store
            .get(&self.prefix)
            .await
            .map_err(|e| self.storage_err(e))?;
        if res.meta.size > limit {
            return Err(too_large(res.meta.size));
        }
        let cap = usize::try_from(res.meta.size).unwrap_or(0);
        let mut out = bytes::BytesMut::with_capacity(cap);
        let mut stream = res.into_stream();
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.storage_err(e))? {
            let size = (out.len() + chunk.len()) as u64;
            if size > limit {
                return Err(too_large(size));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// The size in bytes of the object at this location, as the store reports it.
    pub async fn size(&self) -> Result<u64> {
        self.store
            .head(&self.prefix)
            .await
            .map(|m| m.size)
            .map_err(|e| self.storage_err(e))
    }

    /// Writes the object at this location (whole-object put: readers never see half of it).
    pub async fn put(&self, data: impl Into<Bytes>) -> Result<()> {
        self.store
            .put(&self.prefix, PutPayload::from_bytes(data.into()))
            .await
            .map_err(|e| self.storage_err(e))?;
        Ok(())
    }

    /// Whether an object exists at this location.
    pub async fn exists(&self) -> Result<bool> {
        match self.store.head(&self.prefix).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.storage_err(e)),
        }
    }

    /// Deletes the object at this location; deleting nothing is not an error.
    pub async fn delete(&self) -> Result<()> {
        match self.store.delete(&self.prefix).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.storage_err(e)),
        }
    }

    /// Relative paths of every object below this location, sorted.
    pub async fn list(&self) -> Result<Vec<String>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.storage_err(e))?;
        let mut out: Vec<String> = metas
            .into_iter()
            .filter_map(|m| {
                m.location.prefix_match(&self.prefix).map(|parts| {
                    parts
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_and_file_stores_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for base in [
            "memory://unit-test/a".to_string(),
            format!("file://{}/b", dir.path().display()),
            format!("{}/c", dir.path().display()),
        ] {
            let root = StoreUrl::parse(&base).unwrap();
            let obj = root.join("x/y.bin").unwrap();
            assert!(!obj.exists().await.unwrap());
            obj.put(Bytes::from_static(b"hello")).await.unwrap();
            assert_eq!(&obj.get().await.unwrap()[..], b"hello");
            assert_eq!(root.list().await.unwrap(), vec!["x/y.bin".to_string()]);
            assert!(obj.as_str().ends_with("/x/y.bin"), "{}", obj.as_str());
            assert_eq!(obj.size().await.unwrap(), 5);
            assert_eq!(&obj.get_bounded(5, "greeting").await.unwrap()[..], b"hello");
            let e = obj.get_bounded(4, "greeting").await.unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::TooLarge {
                        size: 5,
                        limit: 4,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("greeting"), "{e}");
            obj.delete().await.unwrap();
            assert!(matches!(obj.get().await, Err(Error::NotFound { .. })));
        }
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let err = StoreUrl::parse("ftp://host/x").unwrap_err().to_string();
        assert!(
            err.contains("unknown scheme") && err.contains("ftp"),
            "{err}"
        );
        let err = StoreUrl::parse("file:///data/../etc")
            .unwrap_err()
            .to_string();
        assert!(err.contains(".."), "{err}");
        let root = StoreUrl::parse("memory://t/root").unwrap();
        assert!(root.join("../escape").is_err());
        assert!(StoreUrl::parse("s3:///nobucket").is_err());
    }
}
