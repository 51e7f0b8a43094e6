//! Fuzz the WUA criteria parser: no panic, positions inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Err(e) = upkeep::criteria::Criteria::parse(s) {
            assert!(e.position <= s.chars().count());
        }
    }
});
