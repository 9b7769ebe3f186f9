#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushlite::fuzz::pusher_query(data));
