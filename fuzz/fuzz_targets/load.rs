//! Config + safetensors loading on arbitrary bytes: `config.json` text, a NUL byte, then the
//! bytes of a safetensors file (JSON text cannot contain a raw NUL). Every input must give a
//! model or a `ModelError`, never a panic, an abort or an allocation the input does not back.
#![no_main]

mod body {
    include!("../bodies/load.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::check(data));
