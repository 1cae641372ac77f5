//! Sharded aggregation: a job's flat parameter vector (and its Adam state) cut into K contiguous
//! ranges, each held by one aggregator process. Adam and the reduction tree's sums are
//! element-wise, so stepping each range on its own gives the same bits as stepping the whole
//! vector in one place: results do not depend on K.

use std::ops::Range;

use crate::{Error, Result};

/// Most aggregators one job may use.
pub const MAX_SHARDS: usize = 64;

/// One aggregator's part of a job's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRoute {
    /// The aggregator's gRPC URL.
    pub url: String,
    /// First parameter of the range.
    pub offset: u64,
    /// Parameters in the range.
    pub len: u64,
}

impl ShardRoute {
    /// The range as indices into the parameter vector.
    pub fn range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.len) as usize
    }
}

/// The K contiguous ranges `num_params` parameters are cut into: as equal as they can be, the
/// first ones one longer when K does not divide the count.
pub fn shard_ranges(num_params: u64, k: usize) -> Vec<Range<u64>> {
    let k = k.max(1) as u64;
    let (base, extra) = (num_params / k, num_params % k);
    let mut start = 0;
    (0..k)
        .map(|i| {
            let len = base + u64::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Routes for a job: aggregator `i` of `urls` holds range `i` of [`shard_ranges`].
pub fn routes(urls: &[String], num_params: u64) -> Vec<ShardRoute> {
    urls.iter()
        .zip(shard_ranges(num_params, urls.len()))
        .map(|(url, r)| ShardRoute {
            url: url.clone(),
            offset: r.start,
            len: r.end - r.start,
        })
        .collect()
}

/// Checks routes read from the wire against the parameter count: at most [`MAX_SHARDS`],
/// non-empty ranges in order, contiguous from 0 and covering all `num_params`, each to an
/// `http://` or `https://` URL.
pub fn check_routes(routes: &[ShardRoute], num_params: u64, field: &str) -> Result<()> {
    if routes.len() > MAX_SHARDS {
        return Err(Error::invalid(
            field,
            format!("{} shards; at most {MAX_SHARDS}", routes.len()),
        ));
    }
    let mut next = 0u64;
    for (i, r) in routes.iter().enumerate() {
        if !(r.url.starts_with("http://") || r.url.starts_with("https://")) || r.url.len() > 512 {
            return Err(Error::invalid(
                field,
                format!("shard {i}: {:?} is not an http(s) URL", r.url),
            ));
        }
        if r.offset != next || r.len == 0 {
            return Err(Error::invalid(
                field,
                format!(
                    "shard {i} covers {}..+{}, expected a non-empty range from {next}",
                    r.offset, r.len
                ),
            ));
        }
        next = r
            .offset
            .checked_add(r.len)
            .ok_or_else(|| Error::invalid(field, format!("shard {i}: range overflows")))?;
    }
    if !routes.is_empty() && next != num_params {
        return Err(Error::invalid(
            field,
            format!("the shards cover {next} parameters of {num_params}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_vector_in_order_as_evenly_as_possible() {
        for n in [1u64, 7, 10, 11_173_962] {
            for k in 1..=7usize {
                let r = shard_ranges(n, k);
                assert_eq!(r.len(), k);
                assert_eq!(r[0].start, 0);
                assert_eq!(r[k - 1].end, n);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
                let lens: Vec<u64> = r.iter().map(|r| r.end - r.start).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "n {n} k {k}: {lens:?}");
            }
        }
    }

    #[test]
    fn routes_that_do_not_tile_the_parameters_are_refused() {
        let urls: Vec<String> = (0..3).map(|i| format!("http://a{i}:1")).collect();
        let good = routes(&urls, 100);
        check_routes(&good, 100, "shards").unwrap();
        check_routes(&[], 100, "shards").unwrap();
        let err = |r: &[ShardRoute], n| check_routes(r, n, "shards").unwrap_err().to_string();
        assert!(err(&good, 101).contains("cover 100 parameters of 101"));
        let mut gap = good.clone();
        gap[1].offset += 1;
        assert!(err(&gap, 100).contains("shard 1"));
        let mut empty = good.clone();
        empty[2].len = 0;
        assert!(err(&empty, 100).contains("shard 2"));
        let mut scheme = good.clone();
        scheme[0].url = "file:///etc/passwd".into();
        assert!(err(&scheme, 100).contains("not an http(s) URL"));
        let urls: Vec<String> = (0..=MAX_SHARDS).map(|i| format!("http://a{i}:1")).collect();
        let many = routes(&urls, 1000);
        assert!(err(&many, 1000).contains("at most"));
        let mut huge = good;
        huge[2].len = u64::MAX;
        assert!(err(&huge, 100).contains("overflows"));
    }
}
