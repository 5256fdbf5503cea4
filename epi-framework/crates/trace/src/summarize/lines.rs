//! The line loop of a block: canonical lines through the fastest parser the CPU allows (portable,
//! AVX2 or AVX-512, same results), the rest through the general parser; each row goes to the
//! block's integrator. Stops at the first error, recorded in the block with its line.

use super::integrator::BlockIntegrator;
use super::{Block, Rec};
use crate::parse::{parse_row, Header};
#[cfg(any(test, feature = "fuzzing"))]
use std::sync::atomic::Ordering;

/// The canonical-line parsers, from the plainest.
#[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum LineParser {
    Portable = 0,
    Avx2 = 1,
    Avx512 = 2,
}

/// The most advanced [`LineParser`] the workers may use (the CPU permitting); tests lower it to
/// check that every path gives the same results (and so do the fuzz targets, feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) static LINE_PARSER_FOR_TESTS: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(LineParser::Avx512 as u8);

/// Lines to parse: those of `padded[..data_len]` that start in `[pos, owned_end)`. `padded` has
/// [`crate::parse::SIMD_PADDING`] readable bytes after `data_len` where it can.
pub(super) struct Piece<'a> {
    pub(super) padded: &'a [u8],
    pub(super) data_len: usize,
    pub(super) pos: usize,
    pub(super) owned_end: usize,
    pub(super) header: &'a Header,
}

/// Parses the lines of `piece` into `sink`, with the code compiled for the CPU's extensions when it
/// has them (AVX2 or AVX-512BW, with POPCNT/BMI for the bit handling); the result is the same.
pub(super) fn parse_lines<const COUNTER: bool>(
    piece: &Piece,
    b: &mut Block,
    sink: &mut BlockIntegrator<COUNTER>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(any(test, feature = "fuzzing"))]
        let most = LINE_PARSER_FOR_TESTS.load(Ordering::Relaxed);
        #[cfg(not(any(test, feature = "fuzzing")))]
        let most = LineParser::Avx512 as u8;
        if most >= LineParser::Avx512 as u8 && crate::fast_x86::available_avx512() {
            // SAFETY: the CPU has every feature the function is compiled for (checked above).
            unsafe { parse_lines_x86_v4(piece, b, sink) };
            return;
        }
        if most >= LineParser::Avx2 as u8 && crate::fast_x86::available() {
            // SAFETY: the CPU has every feature the function is compiled for (checked above).
            unsafe { parse_lines_x86_v3(piece, b, sink) };
            return;
        }
    }
    parse_lines_generic(piece, b, sink, &mut PortableLines)
}

/// Reads one canonical line: `(timestamp, node, watts, line length)`, or `None` for a line the
/// general parser must read. Implementations are inlined into the parse loop.
pub(super) trait CanonicalLines {
    fn parse(&mut self, buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)>;
}

/// The portable canonical-line parser.
struct PortableLines;

impl CanonicalLines for PortableLines {
    #[inline(always)]
    fn parse(&mut self, buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)> {
        crate::parse::parse_canonical_at(buf, pos)
    }
}

/// The SIMD canonical-line parser, with its cache of line shapes, classifying with `C`; only
/// made (by [`SimdLines::new`]) in functions compiled for `C`'s features, where the CPU has them.
#[cfg(target_arch = "x86_64")]
struct SimdLines<C> {
    shapes: crate::fast_x86::ShapeCache,
    classify: std::marker::PhantomData<C>,
}

#[cfg(target_arch = "x86_64")]
impl<C: crate::fast_x86::Classify> SimdLines<C> {
    /// # Safety
    /// The CPU must have `C`'s features, and the value may only be used in functions compiled
    /// for them.
    unsafe fn new() -> Self {
        SimdLines {
            shapes: crate::fast_x86::ShapeCache::new(),
            classify: std::marker::PhantomData,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<C: crate::fast_x86::Classify> CanonicalLines for SimdLines<C> {
    #[inline(always)]
    fn parse(&mut self, buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)> {
        // SAFETY: a `SimdLines<C>` exists only where the CPU has `C`'s features (see `new`).
        unsafe { self.shapes.parse::<C>(buf, pos) }
    }
}

/// Defines `$name`: [`parse_lines_generic`] with [`SimdLines`] classifying by `$classify`,
/// compiled for the CPU features `$features` (which the caller must have checked).
macro_rules! simd_parse_lines {
    ($name:ident, $features:literal, $classify:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const COUNTER: bool>(
            piece: &Piece,
            b: &mut Block,
            sink: &mut BlockIntegrator<COUNTER>,
        ) {
            // SAFETY: the caller checked that the CPU has the features.
            let mut lines = unsafe { SimdLines::<$classify>::new() };
            parse_lines_generic(piece, b, sink, &mut lines)
        }
    };
}

simd_parse_lines!(
    parse_lines_x86_v3,
    "avx2,bmi1,bmi2,popcnt,lzcnt,sse4.1,ssse3",
    crate::fast_x86::Avx2
);
simd_parse_lines!(
    parse_lines_x86_v4,
    "avx512f,avx512bw,avx2,bmi1,bmi2,popcnt,lzcnt,sse4.1,ssse3",
    crate::fast_x86::Avx512
);

/// Parses the lines of `piece` into `sink`. The fast path (`fast`) is used wherever `padded` has
/// its padding after the line start. Stops at the first error (recorded in `b`, or in the sink for
/// errors it finds).
#[inline(always)]
fn parse_lines_generic<const COUNTER: bool>(
    piece: &Piece,
    b: &mut Block,
    sink: &mut BlockIntegrator<COUNTER>,
    fast: &mut impl CanonicalLines,
) {
    let &Piece {
        padded,
        data_len,
        mut pos,
        owned_end,
        header,
    } = piece;
    let canonical = crate::parse::is_canonical(header);
    let data = &padded[..data_len];
    let mut line_idx = b.lines;
    while pos < owned_end {
        if canonical {
            if sink.steady_ready() {
                (pos, line_idx) = sink.steady(padded, pos, owned_end, line_idx, fast);
                if pos >= owned_end {
                    break;
                }
            }
            if let Some((t, node, w, n)) = fast.parse(padded, pos) {
                pos += n + 1;
                let rec = Rec {
                    t,
                    w,
                    e: f64::NAN,
                    node,
                };
                let go_on = sink.row(line_idx, rec);
                line_idx += 1;
                if !go_on {
                    break;
                }
                continue;
            }
        }
        let nl = memchr::memchr(b'\n', &data[pos..])
            .map(|p| pos + p)
            .unwrap_or(data.len());
        let line = &data[pos..nl];
        let this_line = line_idx;
        line_idx += 1;
        pos = nl + 1;
        if line.is_empty() || line == b"\r" {
            continue;
        }
        let parsed = if nl == data.len() && data.last() != Some(&b'\n') {
            crate::parse::check_unterminated_last_line(header, line)
                .and_then(|_| parse_row(header, line))
        } else {
            parse_row(header, line)
        };
        match parsed {
            Ok(r) => {
                let rec = Rec {
                    t: r.t_ms,
                    w: r.watts,
                    e: r.energy_j.unwrap_or(f64::NAN),
                    node: r.node,
                };
                if !sink.row(this_line, rec) {
                    break;
                }
            }
            Err(e) => {
                b.set_error(this_line, e.field, e.message);
                break;
            }
        }
    }
    b.lines = line_idx;
}
