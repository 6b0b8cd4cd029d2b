//! Token lists on arbitrary bytes through every retention form of a small fixture's CPU
//! reference and its fast CPU engine: the first byte picks the form and chunk size, the rest are
//! little-endian u32 ids (out of range ones included). Every input must give logits of the
//! right length or a `ModelError`, never a panic; logits returned are finite.
#![no_main]

mod body {
    include!("../bodies/tokens.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::check(data));
