#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| genosdb_fallback::fuzzing::journal_damage(data));
