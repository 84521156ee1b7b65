//! libFuzzer entry point; the harness and its checks are in `postling_fuzz::smtp_client`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postling_fuzz::smtp_client::fuzz(data));
