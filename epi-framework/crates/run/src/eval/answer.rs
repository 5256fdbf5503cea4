//! Reading a generated answer: [`parse_answer`], strict, so that a reply that does not name one
//! choice plainly counts as unparseable (wrong, and counted) instead of being guessed at.

pub use epi_core::generative::choice_letter;

/// Reads a generated answer strictly; `None` when it is not one of these forms (letters are
/// upper case and must name one of the `n_choices` choices):
///
/// - optional leading white space;
/// - optionally one of `The correct answer is`, `The answer is`, `Correct answer:`, `Answer:`
///   (any case), followed by an optional `:` and white space;
/// - optionally `(` or `**` or `[`;
/// - the letter;
/// - then the end of the text, or white space up to the end or a new line, or one of
///   `.` `)` `]` `:` `,` `**` (anything may follow those).
///
/// So `B`, ` B.`, `(C)`, `**D**`, `Answer: A`, `The answer is B, because…`, `B) Paris` are read;
/// `A good question`, `I think B`, `b`, a letter past the last choice, and the empty reply are not.
pub fn parse_answer(text: &str, n_choices: usize) -> Option<usize> {
    let mut s = text.trim_start();
    const PREFIXES: [&str; 4] = [
        "the correct answer is",
        "the answer is",
        "correct answer:",
        "answer:",
    ];
    for p in PREFIXES {
        if s.len() >= p.len() && s.is_char_boundary(p.len()) && s[..p.len()].eq_ignore_ascii_case(p)
        {
            s = s[p.len()..].trim_start();
            s = s.strip_prefix(':').unwrap_or(s).trim_start();
            break;
        }
    }
    for open in ["**", "(", "["] {
        if let Some(r) = s.strip_prefix(open) {
            s = r;
            break;
        }
    }
    let mut chars = s.chars();
    let letter = chars.next()?;
    if !letter.is_ascii_uppercase() {
        return None;
    }
    let idx = (letter as u8 - b'A') as usize;
    if idx >= n_choices {
        return None;
    }
    let rest = chars.as_str();
    let ok = rest.is_empty()
        || rest.starts_with(['.', ')', ']', ':', ','])
        || rest.starts_with("**")
        || {
            let after_ws = rest.trim_start_matches([' ', '\t', '\r']);
            rest.starts_with(char::is_whitespace)
                && (after_ws.is_empty() || after_ws.starts_with('\n'))
        };
    ok.then_some(idx)
}
