//! Data-driven parser tests: every case of `test_data/*.cql` (cases are
//! separated by blank lines) parsed, printed, and compared with the
//! `.expected` file beside it (`UPDATE_EXPECT=1` regenerates it).

use std::fmt::Write;

use expect_test::expect_file;

fn cases(text: &str) -> Vec<String> {
    text.split("\n\n")
        .map(str::trim)
        .filter(|case| !case.is_empty())
        .map(str::to_owned)
        .collect()
}

fn render(input: &str) -> String {
    let mut out = String::new();
    for case in cases(input) {
        let _ = writeln!(out, "=== {case}");
        match crate::parse(&case) {
            Ok(parsed) => {
                let _ = writeln!(out, "{:#?}", parsed.statement);
                if !parsed.bind_markers.is_empty() {
                    let _ = writeln!(out, "bind markers: {:?}", parsed.bind_markers);
                }
            }
            Err(error) => {
                let _ = writeln!(out, "error: {error}");
            }
        }
    }
    out
}

#[test]
fn valid_statements() {
    let output = render(include_str!("../test_data/valid.cql"));
    assert!(
        !output.contains("error: "),
        "a valid case failed:\n{output}"
    );
    expect_file!["../test_data/valid.expected"].assert_eq(&output);
}

#[test]
fn invalid_statements_carry_positions() {
    let input = include_str!("../test_data/invalid.cql");
    let output = render(input);
    assert_eq!(
        output.matches("error: line ").count(),
        cases(input).len(),
        "every invalid case must fail with a position:\n{output}"
    );
    expect_file!["../test_data/invalid.expected"].assert_eq(&output);
}

#[test]
fn hostile_input_never_panics() {
    // Every prefix of every case: truncated statements must error, not panic.
    for case in cases(include_str!("../test_data/valid.cql")) {
        for (idx, _) in case.char_indices() {
            let _ = crate::parse(&case[..idx]);
        }
    }
    let deep = format!(
        "SELECT {}1{} FROM t",
        "f(".repeat(10_000),
        ")".repeat(10_000)
    );
    let error = crate::parse(&deep).expect_err("too deep");
    assert!(error.message.contains("PARSER_DEPTH_MAX"), "{error}");
    for garbage in [
        "\u{0}",
        "'",
        "\"\"",
        "$$",
        "/*",
        ":",
        "0x",
        "-",
        "{",
        "SELECT ? ? ?",
    ] {
        assert!(crate::parse(garbage).is_err(), "{garbage:?} parsed");
    }
}

#[test]
fn bind_markers_are_numbered_in_order() {
    let parsed =
        crate::parse("UPDATE t SET a = ?, b = :bee WHERE k IN ? AND c = ?").expect("parses");
    assert_eq!(
        parsed.bind_markers,
        vec![None, Some("bee".to_owned()), None, None]
    );
}

mod fuzz {
    //! Property tests standing in for a fuzzer in CI: arbitrary text, and
    //! valid statements with bytes flipped, must parse or fail with a
    //! position, never panic.

    use proptest::prelude::*;

    fn valid_cases() -> Vec<String> {
        super::cases(include_str!("../test_data/valid.cql"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            if let Err(error) = crate::parse(&text) {
                prop_assert!(error.line >= 1 && error.column >= 1);
            }
        }

        #[test]
        fn cql_shaped_text_never_panics(
            tokens in proptest::collection::vec(
                prop_oneof![
                    Just("SELECT"), Just("FROM"), Just("WHERE"), Just("("), Just(")"),
                    Just(","), Just("?"), Just(":n"), Just("'s'"), Just("1"), Just("-"),
                    Just("{"), Just("}"), Just("["), Just("]"), Just(":"), Just("="),
                    Just("IF"), Just("BEGIN"), Just("TRANSACTION"), Just("LET"), Just("t"),
                    Just("."), Just(";"), Just("token"), Just("IN"), Just("AND"),
                    Just("INSERT"), Just("INTO"), Just("VALUES"), Just("BATCH"), Just("0x"),
                ],
                0..40,
            )
        ) {
            let _ = crate::parse(&tokens.join(" "));
        }

        #[test]
        fn mutated_valid_statements_never_panic(
            case_idx in 0usize..1_000,
            position_permille in 0usize..1_000,
            replacement in proptest::char::any(),
        ) {
            let cases = valid_cases();
            let case = &cases[case_idx % cases.len()];
            let mut chars: Vec<char> = case.chars().collect();
            let position = position_permille * chars.len() / 1_000;
            chars[position] = replacement;
            let mutated: String = chars.into_iter().collect();
            let _ = crate::parse(&mutated);
        }
    }
}
