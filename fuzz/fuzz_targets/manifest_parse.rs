//! Manifest parsing and request compilation must refuse bad input with an error naming
//! the field, never panic.
#![no_main]
use covenant_policy::{compile_request, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(mut manifest) = Manifest::parse(text) {
            manifest.base_dir = std::path::PathBuf::from("/nonexistent-fuzz-base");
            let _ = compile_request(&manifest, "job-fuzz");
        }
    }
});
