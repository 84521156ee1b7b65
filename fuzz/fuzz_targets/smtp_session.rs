//! libFuzzer entry point; the harness and its checks are in `postling_fuzz::smtp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postling_fuzz::smtp::fuzz(data));
