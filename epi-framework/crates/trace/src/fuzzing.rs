//! Hooks for the fuzz targets (`fuzz/targets`, cargo feature `fuzzing`): choose which canonical-line
//! parser the trace reader's workers use, as the crate's own tests do, so that every parser the CPU
//! has is compared with the row-by-row reader. Not for production use: the choice is process-wide.
//! Nothing here fails; asking for a parser the CPU lacks falls back to the next plainer one, which
//! [`available`] tells beforehand.

use super::summarize::{LineParser as Inner, LINE_PARSER_FOR_TESTS};
use std::sync::atomic::Ordering;

/// The canonical-line parsers of the trace reader, from the plainest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineParser {
    /// The portable parser (SSE2 bitmasks, scalar digits).
    Portable,
    /// The AVX2 parser (x86-64-v3).
    Avx2,
    /// The AVX-512BW parser.
    Avx512,
}

impl LineParser {
    /// Every parser, from the plainest.
    pub const ALL: [LineParser; 3] = [LineParser::Portable, LineParser::Avx2, LineParser::Avx512];

    fn inner(self) -> Inner {
        match self {
            LineParser::Portable => Inner::Portable,
            LineParser::Avx2 => Inner::Avx2,
            LineParser::Avx512 => Inner::Avx512,
        }
    }
}

/// Makes `parser` the most advanced one the workers may use from now on (process-wide).
pub fn set_line_parser(parser: LineParser) {
    LINE_PARSER_FOR_TESTS.store(parser.inner() as u8, Ordering::Relaxed);
}

/// Whether this CPU runs `parser` natively (else the reader uses the next plainer one).
pub fn available(parser: LineParser) -> bool {
    match parser {
        LineParser::Portable => true,
        #[cfg(target_arch = "x86_64")]
        LineParser::Avx2 => super::fast_x86::available(),
        #[cfg(target_arch = "x86_64")]
        LineParser::Avx512 => super::fast_x86::available_avx512(),
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}
