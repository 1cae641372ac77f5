//! A job spec's YAML, as `Submit` receives it.
#![no_main]

use ctcluster_common::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(spec) = JobSpec::from_yaml(text)
    {
        // What validated must round-trip.
        let again = JobSpec::from_yaml(&spec.to_yaml()).expect("a valid spec re-parses");
        assert_eq!(again.to_yaml(), spec.to_yaml());
    }
});
