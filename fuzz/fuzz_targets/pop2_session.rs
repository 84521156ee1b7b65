//! libFuzzer entry point; the harness and its checks are in `postling_fuzz::pop`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postling_fuzz::pop::fuzz_pop2(data));
