//! Fuzz target `hpack_decode`: the properties are in
//! tests/fuzz_props/hpack_decode.rs, shared with the stable replay of the
//! corpora (tests/fuzz_replay.rs).
#![no_main]

#[path = "../../tests/fuzz_props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::hpack_decode::hpack_decode(data));
