#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushlite::fuzz::phoenix_frame(data));
