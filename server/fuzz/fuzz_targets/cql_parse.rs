//! Fuzzes the CQL parser: any text parses or fails with a position; it
//! never panics or overflows the stack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(error) = concord_cql_parser::parse(text)
    {
        assert!(error.line >= 1 && error.column >= 1);
    }
});
