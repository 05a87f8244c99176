//! Fuzz target `h2_session`: the properties are in
//! tests/fuzz_props/h2_session.rs, shared with the stable replay of the
//! corpora (tests/fuzz_replay.rs).
#![no_main]

#[path = "../../tests/fuzz_props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::h2_session::h2_session(data));
