//! Envelope::decode is total: any bytes give Ok or a typed error, never a panic, and a
//! decoded envelope re-encodes to exactly the input (one encoding per value).
#![no_main]

use letterme_protocol::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        assert_eq!(env.encode(), data);
        let _ = env.verify_signature();
    }
});
