//! Capability decoding must reject every malformed input with an error, never a panic,
//! and whatever it accepts must print back to the same text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    covenant_fuzz::token_decode(data);
});
