//! libFuzzer target: every parser of wire bytes (`rust_celery_worker::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rust_celery_worker::fuzzing::wire(data));
