//! The JSON wire types the server and client parse from the network.
#![no_main]

use letterme_protocol::{Address, Attestation, KeyBinding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<KeyBinding>(data);
    if let Ok(a) = serde_json::from_slice::<Attestation>(data) {
        let _ = a.signed_bytes();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Address::parse(s);
    }
});
