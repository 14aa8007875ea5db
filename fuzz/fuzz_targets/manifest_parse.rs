//! Manifest parsing and request compilation must refuse bad input with an error naming
//! the field, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    covenant_fuzz::manifest_parse(data);
});
