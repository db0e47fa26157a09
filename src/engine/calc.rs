//! The calculator tool (upstream `use_calculator`), as a small evaluator: nothing is ever executed.
//!
//! Accepted, as upstream's filters accept them before `eval`:
//! - arithmetic over `0-9 . + - * / ( )` and spaces (commas are removed first, `**` is rejected) with Python's
//!   semantics: integers stay integers under `+ - *` and `//`, `/` gives a float, division by zero is an
//!   error, and results print as Python's `str()` does (`10.0`, `0.1`, `1e+16`);
//! - `"literal".count("x")` with single or double quotes (non-overlapping count, as `str.count`).
//!
//! Anything else, and anything upstream's `eval` would reject or raise on, gives None (no tool output).
//! Integers are 128-bit: a result that would overflow gives None where Python would print a big integer.

/// Evaluates a calculator expression; None when upstream would inject no output.
pub fn use_calculator(expr: &str) -> Option<String> {
    let expr: String = expr.chars().filter(|&c| c != ',').collect();
    if expr.chars().all(|c| "0123456789*+-/.() ".contains(c)) {
        if expr.contains("**") {
            return None;
        }
        return eval_arith(&expr).map(|n| n.to_string());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "'\"()._ ".contains(c);
    if !expr.chars().all(allowed) {
        return None;
    }
    let lower = expr.to_lowercase();
    const DANGEROUS: [&str; 17] = [
        "__",
        "import",
        "exec",
        "eval",
        "compile",
        "open",
        "file",
        "input",
        "raw_input",
        "globals",
        "locals",
        "vars",
        "dir",
        "getattr",
        "setattr",
        "delattr",
        "hasattr",
    ];
    if DANGEROUS.iter().any(|d| lower.contains(d)) || !expr.contains(".count(") {
        return None;
    }
    eval_count(&expr).map(|n| n.to_string())
}

/// `"haystack".count("needle")`, with optional spaces between the parts.
fn eval_count(expr: &str) -> Option<usize> {
    let s = expr.trim();
    let (hay, rest) = string_literal(s)?;
    let rest = rest.trim_start().strip_prefix('.')?.trim_start();
    let rest = rest.strip_prefix("count")?.trim_start().strip_prefix('(')?;
    let (needle, rest) = string_literal(rest.trim_start())?;
    if rest.trim_start().strip_prefix(')')?.trim().is_empty() {
        Some(hay.matches(needle).count())
    } else {
        None
    }
}

/// A quoted literal at the start of `s`: (contents, remainder).
fn string_literal(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|&c| c == '"' || c == '\'')?;
    let end = s[1..].find(q)? + 1;
    Some((&s[1..end], &s[end + 1..]))
}

/// A Python number: int or float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }
}

impl std::fmt::Display for Num {
    /// Python's `str()`: ints as ints; floats by shortest round-trip digits, `.0` on integral values,
    /// exponent form below 1e-4 and from 1e16.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Num::Int(i) => write!(f, "{i}"),
            Num::Float(x) if x.is_nan() => write!(f, "nan"),
            Num::Float(x) if x.is_infinite() => {
                write!(f, "{}", if x > 0.0 { "inf" } else { "-inf" })
            }
            Num::Float(x) => {
                // `{:e}` gives the shortest round-trip digits: "d.ddde±x".
                let sci = format!("{:e}", x.abs());
                let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
                let exp: i32 = exp.parse().unwrap_or(0);
                let digits: String = mant.chars().filter(|c| *c != '.').collect();
                let sign = if x.is_sign_negative() { "-" } else { "" };
                if (-4..16).contains(&exp) {
                    let body = if exp >= 0 {
                        let e = exp as usize;
                        if digits.len() > e + 1 {
                            format!("{}.{}", &digits[..e + 1], &digits[e + 1..])
                        } else {
                            format!("{}{}.0", digits, "0".repeat(e + 1 - digits.len()))
                        }
                    } else {
                        format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
                    };
                    write!(f, "{sign}{body}")
                } else {
                    let m = if digits.len() > 1 {
                        format!("{}.{}", &digits[..1], &digits[1..])
                    } else {
                        digits
                    };
                    let es = if exp < 0 { '-' } else { '+' };
                    write!(f, "{sign}{m}e{es}{:02}", exp.abs())
                }
            }
        }
    }
}

/// Evaluates arithmetic with Python's grammar for `+ - * / // ( )` and unary signs.
pub fn eval_arith(s: &str) -> Option<Num> {
    let toks = lex(s)?;
    let mut p = Parser { toks, i: 0, depth: 0 };
    let v = p.expr()?;
    (p.i == p.toks.len()).then_some(v)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Num(Num),
    Op(char),
    FloorDiv,
    Open,
    Close,
}

fn lex(s: &str) -> Option<Vec<Tok>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1
            }
            b')' => {
                out.push(Tok::Close);
                i += 1
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                out.push(Tok::FloorDiv);
                i += 2
            }
            b'+' | b'-' | b'*' | b'/' => {
                out.push(Tok::Op(c as char));
                i += 1
            }
            _ => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                out.push(Tok::Num(number(&s[start..i])?));
            }
        }
    }
    Some(out)
}

/// A Python numeric literal made of digits and at most one dot; `007` is a syntax error, `00` and `007.5` are not.
fn number(lit: &str) -> Option<Num> {
    if lit.is_empty() || lit == "." || lit.matches('.').count() > 1 {
        return None;
    }
    if lit.contains('.') {
        return lit.parse::<f64>().ok().map(Num::Float);
    }
    if lit.len() > 1 && lit.starts_with('0') && lit.bytes().any(|d| d != b'0') {
        return None;
    }
    lit.parse::<i128>().ok().map(Num::Int)
}

struct Parser {
    toks: Vec<Tok>,
    i: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.i).copied()
    }

    fn expr(&mut self) -> Option<Num> {
        let mut acc = self.term()?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.peek() {
            self.i += 1;
            let rhs = self.term()?;
            acc = binary(acc, op, rhs)?;
        }
        Some(acc)
    }

    fn term(&mut self) -> Option<Num> {
        let mut acc = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(op @ ('*' | '/'))) => op,
                Some(Tok::FloorDiv) => 'f',
                _ => return Some(acc),
            };
            self.i += 1;
            let rhs = self.unary()?;
            acc = binary(acc, op, rhs)?;
        }
    }

    fn unary(&mut self) -> Option<Num> {
        match self.peek()? {
            Tok::Op(op @ ('+' | '-')) => {
                // Deep chains of signs are legal Python; bound the recursion all the same.
                self.depth += 1;
                if self.depth > 200 {
                    return None;
                }
                self.i += 1;
                let v = self.unary()?;
                self.depth -= 1;
                Some(match (op, v) {
                    ('+', v) => v,
                    (_, Num::Int(i)) => Num::Int(i.checked_neg()?),
                    (_, Num::Float(x)) => Num::Float(-x),
                })
            }
            Tok::Num(n) => {
                self.i += 1;
                Some(n)
            }
            Tok::Open => {
                self.depth += 1;
                if self.depth > 200 {
                    return None;
                }
                self.i += 1;
                let v = self.expr()?;
                if self.peek()? != Tok::Close {
                    return None;
                }
                self.i += 1;
                self.depth -= 1;
                Some(v)
            }
            _ => None,
        }
    }
}

fn binary(a: Num, op: char, b: Num) -> Option<Num> {
    use Num::*;
    Some(match (a, b) {
        (Int(x), Int(y)) => match op {
            '+' => Int(x.checked_add(y)?),
            '-' => Int(x.checked_sub(y)?),
            '*' => Int(x.checked_mul(y)?),
            '/' if y == 0 => return None,
            '/' => Float(x as f64 / y as f64),
            _ if y == 0 => return None,
            _ => Int(x.checked_div_euclid(y).map(|q| {
                // Python floors toward −∞; div_euclid differs when the divisor is negative.
                if y < 0 && x.rem_euclid(y) != 0 {
                    q - 1
                } else {
                    q
                }
            })?),
        },
        _ => {
            let (x, y) = (a.f(), b.f());
            match op {
                '+' => Float(x + y),
                '-' => Float(x - y),
                '*' => Float(x * y),
                _ if y == 0.0 => return None,
                '/' => Float(x / y),
                _ => Float((x / y).floor()),
            }
        }
    })
}
