//! libFuzzer entry point; the harness and its checks are in `postling_fuzz::dns`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postling_fuzz::dns::fuzz(data));
