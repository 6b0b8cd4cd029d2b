//! State files on arbitrary bytes, resumed into the CPU reference of a small fixture
//! (torchscale_swish_tied, compiled in): every input must resume (and then generate) or give a
//! `ModelError`, never a panic, an abort or an allocation the input does not back. Seeds:
//! states that fixture saved (`fuzz/seed.sh`), so the fingerprints are there to mutate around.
#![no_main]

mod body {
    include!("../bodies/state.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::check(data));
