//! Capability decoding must reject every malformed input with an error, never a panic,
//! and whatever it accepts must print back to the same text.
#![no_main]
use covenant_policy::token::{Capability, TokenBody};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = TokenBody::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cap) = Capability::parse(text) {
            assert_eq!(Capability::parse(&cap.print()).unwrap(), cap);
        }
    }
});
