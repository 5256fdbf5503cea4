//! Python `str` methods the task templates use, with Python's exact semantics.

/// Python `str.isspace()` for one character: Unicode White_Space plus the four information
/// separators U+001C..U+001F, which Python counts as white space and Rust does not.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `str.strip()` (no argument).
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_python_space)
}

/// Python (3.8+) `str.capitalize()`: the first character in title case, every other character
/// lower-cased (`"tHE Batter IS"` → `"The batter is"`).
///
/// Lower-casing uses the context of the whole string, as CPython does (a final capital sigma
/// becomes `ς`); the first character takes its full title-case mapping, which differs from its
/// upper case for the Latin digraphs (`ǆ` → `ǅ`), `ß` (`Ss`), the Latin and Armenian ligatures
/// and the Greek letters with ypogegrammeni.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out = titlecase(first);
    // Rust lower-cases character by character except for the final sigma, which it decides from
    // the surrounding characters: lower-case the whole string and drop the first character's part.
    let lowered = s.to_lowercase();
    let first_lower_len: usize = first.to_lowercase().map(char::len_utf8).sum();
    out.push_str(&lowered[first_lower_len..]);
    out
}

/// Full title-case mapping of one character (UnicodeData titlecase + SpecialCasing.txt).
fn titlecase(c: char) -> String {
    let special: Option<&str> = match c {
        '\u{01C4}' | '\u{01C5}' | '\u{01C6}' => Some("\u{01C5}"),
        '\u{01C7}' | '\u{01C8}' | '\u{01C9}' => Some("\u{01C8}"),
        '\u{01CA}' | '\u{01CB}' | '\u{01CC}' => Some("\u{01CB}"),
        '\u{01F1}' | '\u{01F2}' | '\u{01F3}' => Some("\u{01F2}"),
        '\u{00DF}' => Some("Ss"),
        '\u{FB00}' => Some("Ff"),
        '\u{FB01}' => Some("Fi"),
        '\u{FB02}' => Some("Fl"),
        '\u{FB03}' => Some("Ffi"),
        '\u{FB04}' => Some("Ffl"),
        '\u{FB05}' | '\u{FB06}' => Some("St"),
        '\u{0587}' => Some("\u{0535}\u{0582}"),
        '\u{FB13}' => Some("\u{0544}\u{0576}"),
        '\u{FB14}' => Some("\u{0544}\u{0565}"),
        '\u{FB15}' => Some("\u{0544}\u{056B}"),
        '\u{FB16}' => Some("\u{054E}\u{0576}"),
        '\u{FB17}' => Some("\u{0544}\u{056D}"),
        '\u{1FB2}' => Some("\u{1FBA}\u{0345}"),
        '\u{1FB4}' => Some("\u{0386}\u{0345}"),
        '\u{1FB7}' => Some("\u{0391}\u{0342}\u{0345}"),
        '\u{1FC2}' => Some("\u{1FCA}\u{0345}"),
        '\u{1FC4}' => Some("\u{0389}\u{0345}"),
        '\u{1FC7}' => Some("\u{0397}\u{0342}\u{0345}"),
        '\u{1FF2}' => Some("\u{1FFA}\u{0345}"),
        '\u{1FF4}' => Some("\u{038F}\u{0345}"),
        '\u{1FF7}' => Some("\u{03A9}\u{0342}\u{0345}"),
        _ => None,
    };
    if let Some(s) = special {
        return s.to_string();
    }
    let cp = c as u32;
    // Greek with ypogegrammeni / prosgegrammeni: the title case keeps one letter.
    let greek = match cp {
        0x1F80..=0x1F87 | 0x1F90..=0x1F97 | 0x1FA0..=0x1FA7 => Some(cp + 8),
        0x1F88..=0x1F8F | 0x1F98..=0x1F9F | 0x1FA8..=0x1FAF => Some(cp),
        0x1FB3 | 0x1FBC => Some(0x1FBC),
        0x1FC3 | 0x1FCC => Some(0x1FCC),
        0x1FF3 | 0x1FFC => Some(0x1FFC),
        _ => None,
    };
    if let Some(t) = greek.and_then(char::from_u32) {
        return t.to_string();
    }
    c.to_uppercase().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_lowers_the_rest() {
        assert_eq!(capitalize("tHE Batter IS"), "The batter is");
        assert_eq!(capitalize(""), "");
        assert_eq!(capitalize("then, the man"), "Then, the man");
        assert_eq!(capitalize(" a"), " a");
        assert_eq!(capitalize("1ST PLACE"), "1st place");
    }

    #[test]
    fn capitalize_uses_title_case_and_sigma_context() {
        // CPython 3.11: 'ǆEMAL'.capitalize() == 'ǅemal', 'ßA'.capitalize() == 'Ssa',
        // 'ﬁNE'.capitalize() == 'Fine', 'ᾳΣ'.capitalize() == 'ᾼς', 'ΣΑΣ'.capitalize() == 'Σας'
        assert_eq!(capitalize("ǆEMAL"), "ǅemal");
        assert_eq!(capitalize("ßA"), "Ssa");
        assert_eq!(capitalize("ﬁNE"), "Fine");
        assert_eq!(capitalize("ᾳΣ"), "ᾼς");
        assert_eq!(capitalize("ΣΑΣ"), "Σας");
        assert_eq!(capitalize("AΣ"), "Aς");
    }

    #[test]
    fn strip_uses_python_white_space() {
        assert_eq!(strip("\u{1f} x \u{a0}\n"), "x");
        assert_eq!(strip("  "), "");
    }
}
