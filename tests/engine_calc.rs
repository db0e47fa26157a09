//! The calculator: what upstream's `use_calculator` accepts and prints, what it rejects, and no panics.

use nanochat::engine::calc::use_calculator;
use proptest::prelude::*;

#[test]
fn accepted_expressions_print_as_python() {
    let cases = [
        ("2+3", "5"),
        ("12/4", "3.0"),
        ("10/4", "2.5"),
        ("1/3", "0.3333333333333333"),
        ("2*(3+4)", "14"),
        ("1,000 * 3", "3000"),
        ("7//2", "3"),
        ("-7//2", "-4"),
        ("7//-2", "-4"),
        ("-7//-2", "3"),
        ("0.1+0.2", "0.30000000000000004"),
        ("1.5*2", "3.0"),
        ("-(-3)", "3"),
        ("--3", "3"),
        (" 4 - 10 ", "-6"),
        ("1.", "1.0"),
        (".5", "0.5"),
        ("00", "0"),
        ("007.5", "7.5"),
        ("10000000000000000.0", "1e+16"),
        ("1/10000", "0.0001"),
        ("1/100000", "1e-05"),
        ("123456789*1000/7", "17636684142.857143"),
        ("0.0*-1", "-0.0"),
        ("\"strawberry\".count(\"r\")", "3"),
        ("'banana'.count('an')", "2"),
        ("'aaaa'.count('aa')", "2"),
        ("'abc'.count('')", "4"),
        ("\"hello world\" .count( \"o\" )", "2"),
    ];
    for (expr, want) in cases {
        assert_eq!(use_calculator(expr).as_deref(), Some(want), "{expr}");
    }
}

#[test]
fn rejected_expressions() {
    let cases = [
        "2**10",
        "1/0",
        "1//0",
        "1.0/0",
        "007",
        "1..2",
        "1.2.3",
        "()",
        "(1",
        "1)",
        "2(3)",
        "1 2",
        "",
        "+",
        "2^3",
        "5 % 2",
        "__import__('os').system('ls')",
        "open('x').read().count('a')",
        "'abc'.upper()",
        "'a'.count('a') + 1",
        "eval('1').count('1')",
        "'dir'.count('d')",
        "'x'.count('x'); 1",
        "abs(-1)",
        // Upstream requires the literal substring ".count(".
        "\"hello\" . count (\"l\")",
        "'unterminated.count('a')",
        "99999999999999999999999999999999999999999+1",
    ];
    for expr in cases {
        assert_eq!(use_calculator(expr), None, "{expr:?} should be rejected");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn arithmetic_fuzz_never_panics(s in "[0-9*+/.() ,-]{0,40}") {
        let _ = use_calculator(&s);
    }

    #[test]
    fn any_text_never_panics(s in "\\PC{0,60}") {
        let _ = use_calculator(&s);
    }

    #[test]
    fn count_matches_a_naive_count(hay in "[a-c ]{0,20}", needle in "[a-c]{1,3}") {
        let got = use_calculator(&format!("'{hay}'.count('{needle}')"));
        prop_assert_eq!(got, Some(hay.matches(needle.as_str()).count().to_string()));
    }

    #[test]
    fn integer_sums_are_exact(a in -100000i64..100000, b in -100000i64..100000) {
        prop_assert_eq!(use_calculator(&format!("{a} + {b}")), Some((a + b).to_string()));
        prop_assert_eq!(use_calculator(&format!("{a} * ({b})")), Some((a * b).to_string()));
    }
}

#[test]
fn deep_nesting_is_bounded() {
    let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(use_calculator(&deep), None);
    let signs = format!("{}1", "-".repeat(5000));
    assert_eq!(use_calculator(&signs), None);
}
