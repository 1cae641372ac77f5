//! Storage scope: the URL prefixes jobs may read from and write to. A job naming anything else
//! is refused at submit. Credentials never appear here: the coordinator and workers take them
//! from their own environment.

use ctcluster_common::storage::normalize_url;

use crate::error::CoordError;

/// Where jobs may read and write; unrestricted when both lists are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageScope {
    read: Vec<String>,
    write: Vec<String>,
    /// The coordinator's own state: never a job's output.
    state: Option<String>,
}

/// A URL in comparable form: normalised, `..` refused, ending in `/`.
pub(crate) fn canonical(input: &str) -> Result<String, String> {
    let lowered = input.to_ascii_lowercase().replace("%2e", ".");
    if lowered.split(['/', '\\']).any(|seg| seg == "..") {
        return Err("'..' segments are not allowed".into());
    }
    let url = normalize_url(input).map_err(|e| e.to_string())?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("query strings and fragments are not allowed".into());
    }
    let mut s = url.as_str().to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

fn within(url: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| url.starts_with(p.as_str()))
}

impl StorageScope {
    /// A scope from the configured prefixes (URLs or local paths).
    pub fn new(read: &[String], write: &[String]) -> Result<Self, String> {
        let norm = |list: &[String], what: &str| {
            list.iter()
                .map(|p| canonical(p).map_err(|e| format!("--allow-{what} {p}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(StorageScope {
            read: norm(read, "read")?,
            write: norm(write, "write")?,
            state: None,
        })
    }

    /// Also keeps jobs from writing into the coordinator's state.
    pub fn protecting_state(mut self, state_url: &str) -> Self {
        self.state = canonical(state_url).ok();
        self
    }

    /// Whether any prefix is configured.
    pub fn is_restricted(&self) -> bool {
        !self.read.is_empty() || !self.write.is_empty()
    }

    /// The prefixes, for messages and logs.
    pub fn describe(&self) -> String {
        format!(
            "read: [{}], write: [{}]",
            self.read.join(", "),
            self.write.join(", ")
        )
    }

    fn refuse(field: &'static str, url: &str, why: String) -> CoordError {
        CoordError::OutOfScope {
            field,
            url: url.to_string(),
            reason: why,
        }
    }

    /// Checks a URL a job reads (its dataset, a checkpoint to resume from).
    pub fn check_read(&self, field: &'static str, url: &str) -> Result<(), CoordError> {
        let c = canonical(url).map_err(|e| CoordError::bad(field, format!("{url}: {e}")))?;
        if self.is_restricted() && !within(&c, &self.read) && !within(&c, &self.write) {
            return Err(Self::refuse(
                field,
                url,
                format!(
                    "jobs may read only under {}",
                    [self.read.as_slice(), self.write.as_slice()]
                        .concat()
                        .join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Checks a URL a job writes (its output).
    pub fn check_write(&self, field: &'static str, url: &str) -> Result<(), CoordError> {
        let c = canonical(url).map_err(|e| CoordError::bad(field, format!("{url}: {e}")))?;
        if let Some(state) = &self.state
            && (c.starts_with(state.as_str()) || state.starts_with(c.as_str()))
        {
            return Err(Self::refuse(
                field,
                url,
                "it overlaps the coordinator's own state".into(),
            ));
        }
        if self.is_restricted() && !within(&c, &self.write) {
            return Err(Self::refuse(
                field,
                url,
                if self.write.is_empty() {
                    "no writable prefix is configured (--allow-write)".into()
                } else {
                    format!("jobs may write only under {}", self.write.join(", "))
                },
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> StorageScope {
        StorageScope::new(&["s3://data/scans".into()], &["s3://results/".into()])
            .unwrap()
            .protecting_state("s3://results/state")
    }

    #[test]
    fn prefixes_match_whole_path_segments() {
        let s = scope();
        assert!(s.check_read("dataset", "s3://data/scans/ct1").is_ok());
        assert!(s.check_read("dataset", "s3://data/scans").is_ok());
        assert!(s.check_read("dataset", "s3://results/job-1/ck").is_ok());
        assert!(
            s.check_read("dataset", "s3://data/scans-private/x")
                .is_err()
        );
        assert!(s.check_read("dataset", "s3://data/").is_err());
        assert!(s.check_write("output", "s3://data/scans/out").is_err());
        assert!(s.check_write("output", "s3://results/run").is_ok());
    }

    #[test]
    fn other_schemes_dots_and_the_state_are_refused() {
        let s = scope();
        for url in [
            "file:///etc/passwd",
            "gs://data/scans/x",
            "/data/scans",
            "s3://data/scans/../../etc",
            "s3://data/scans/%2e%2e/x",
            "s3://data/scans?x=1",
        ] {
            assert!(s.check_read("dataset", url).is_err(), "{url}");
        }
        assert!(s.check_write("output", "s3://results/state/jobs").is_err());
        assert!(
            s.check_write("output", "s3://results").is_err(),
            "contains the state"
        );
    }

    #[test]
    fn no_prefixes_means_unrestricted_but_dots_still_fail() {
        let s = StorageScope::default();
        assert!(s.check_read("dataset", "file:///anything").is_ok());
        assert!(s.check_read("dataset", "/a/../b").is_err());
    }
}
