//! The canonical-line fast path for x86_64 CPUs with AVX2 (x86-64-v3): the same contract as
//! [`super::parse::parse_canonical_at`] (same accepted lines, same values, `None` for everything
//! else), in about a third of the instructions.
//!
//! - The line is classified with two 32-byte compares per character class.
//! - Field syntax is checked for all six fields at once with bit arithmetic on the masks: exactly
//!   five commas, no empty field, no field that is a lone dot, at most one dot per field.
//! - Each number is read with one 16-byte shuffle that drops the dot and right-aligns the digits
//!   (a table indexed by field length and dot position), then three multiply-add steps (the
//!   method of simdjson's 8-digit parser, here for 16 digits).

use super::parse::{POW10, POW10_INT};
use std::arch::x86_64::*;

/// Shuffle masks by `field length n (1..=15) * 16 + dot position d (0..n, or n for no dot)`:
/// output byte `16 - m + k` takes the field's `k`-th digit (`m` digits in all); the others
/// become 0.
static SHUFFLE: [[u8; 16]; 256] = build_shuffles();

const fn build_shuffles() -> [[u8; 16]; 256] {
    let mut t = [[0x80u8; 16]; 256];
    let mut n = 1;
    while n <= 15 {
        let mut d = 0;
        while d <= n {
            let m = if d == n { n } else { n - 1 };
            let mut k = 0; // k-th digit
            let mut src = 0;
            while src < n {
                if src != d {
                    t[n * 16 + d][16 - m + k] = src as u8;
                    k += 1;
                }
                src += 1;
            }
            d += 1;
        }
        n += 1;
    }
    t
}

/// The digits of two fields as integers, one field per 128-bit lane: the field at `pa` (`na`
/// bytes, 1..=15, dot at `da`, or `da == na` for none) and the one at `pb`. The values are the
/// 64-bit elements 0 and 2 of the result.
///
/// # Safety
/// `pa..pa + 16` and `pb..pb + 16` must be readable; the CPU must have AVX2 (inlined into a
/// caller that has it).
#[inline(always)]
unsafe fn field_pair(pa: *const u8, na: u32, da: u32, pb: *const u8, nb: u32, db: u32) -> __m256i {
    let raw = _mm256_loadu2_m128i(pb as *const __m128i, pa as *const __m128i);
    let v = _mm256_sub_epi8(raw, _mm256_set1_epi8(b'0' as i8));
    let mask = _mm256_loadu2_m128i(
        SHUFFLE[((nb << 4) | db) as usize & 255].as_ptr() as *const __m128i,
        SHUFFLE[((na << 4) | da) as usize & 255].as_ptr() as *const __m128i,
    );
    let digits = _mm256_shuffle_epi8(v, mask);
    let pairs = _mm256_maddubs_epi16(digits, _mm256_set1_epi16(0x010A)); // d0*10 + d1
    let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi32(0x0001_0064)); // p0*100 + p1
    let packed = _mm256_packus_epi32(quads, quads);
    let eights = _mm256_madd_epi16(packed, _mm256_set1_epi32(0x0001_2710)); // q0*10000 + q1
                                                                            // Each 64-bit element: the first eight digits' value (low half) and the last eight's.
    let high = _mm256_mul_epu32(eights, _mm256_set1_epi64x(100_000_000));
    _mm256_add_epi64(high, _mm256_srli_epi64::<32>(eights))
}

/// Bitmasks of the 64 bytes at `p`: (newline, comma, dot, digit).
///
/// # Safety
/// `p..p + 64` must be readable; the CPU must have AVX2 (inlined into a caller that has it).
#[inline(always)]
unsafe fn classify64(p: *const u8) -> (u64, u64, u64, u64) {
    let nlv = _mm256_set1_epi8(b'\n' as i8);
    let cv = _mm256_set1_epi8(b',' as i8);
    let dv = _mm256_set1_epi8(b'.' as i8);
    let zero = _mm256_set1_epi8(b'0' as i8);
    let nine = _mm256_set1_epi8(9);
    let mut out = [0u64; 4];
    for half in 0..2 {
        let v = _mm256_loadu_si256(p.add(32 * half) as *const __m256i);
        let sh = 32 * half as u32;
        out[0] |= (_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, nlv)) as u32 as u64) << sh;
        out[1] |= (_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, cv)) as u32 as u64) << sh;
        out[2] |= (_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, dv)) as u32 as u64) << sh;
        // b - '0' in 0..=9 as unsigned: min(x, 9) == x.
        let d = _mm256_sub_epi8(v, zero);
        let is_digit = _mm256_cmpeq_epi8(_mm256_min_epu8(d, nine), d);
        out[3] |= (_mm256_movemask_epi8(is_digit) as u32 as u64) << sh;
    }
    (out[0], out[1], out[2], out[3])
}

/// See [`super::parse::parse_canonical_at`].
///
/// # Safety
/// The CPU must have AVX2, BMI1, BMI2, POPCNT, LZCNT, SSE4.1 and SSSE3.
#[cfg(test)]
#[target_feature(enable = "avx2,bmi1,bmi2,popcnt,lzcnt,sse4.1,ssse3")]
pub unsafe fn parse_canonical_at(buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)> {
    parse_canonical_inline(buf, pos)
}

/// [`parse_canonical_at`] for inlining into a caller compiled with its features.
///
/// # Safety
/// As [`parse_canonical_at`]; only call it from a function that has those features.
#[inline(always)]
pub(super) unsafe fn parse_canonical_inline(
    buf: &[u8],
    pos: usize,
) -> Option<(f64, u32, f64, usize)> {
    if buf.len() < pos + super::parse::SIMD_PADDING {
        return None;
    }
    let p = buf.as_ptr().add(pos);
    let (nl, co, dot, dig) = classify64(p);
    if nl == 0 {
        return None;
    }
    let len = nl.trailing_zeros();
    let lm = (1u64 << len) - 1;
    let co = co & lm;
    let dot = dot & lm;
    // Only digits, commas and dots; exactly five commas.
    if (dig | co | dot) & lm != lm || co.count_ones() != 5 {
        return None;
    }
    // Separators: the commas and the end of the line.
    let sep = co | (1u64 << len);
    // No empty field (two separators in a row, or a comma first); no field that is a lone dot;
    // no second dot before the next separator (a carry started after each dot stops at the next
    // dot or separator: it must not stop at a dot).
    let lone_dot = dot & ((sep << 1) | 1) & (sep >> 1);
    let second_dot = (!(dot | sep)).wrapping_add(dot << 1) & dot;
    if (sep & (sep << 1)) | (co & 1) | lone_dot | second_dot != 0 {
        return None;
    }
    let c0 = co.trailing_zeros();
    let co1 = co & (co - 1);
    let c1 = co1.trailing_zeros();
    let c2 = (co1 & (co1 - 1)).trailing_zeros();
    let c4 = 63 - co.leading_zeros();
    // Field lengths (each at least 1, from the checks above).
    let tn = c0;
    let nn = c1 - c0 - 1;
    let wn = c2 - c1 - 1;
    let pn = len - c4 - 1;
    // Timestamp, watts and power factor of at most 15 bytes (so at most 15 digits: exact as f64
    // after the scaling); node_id of at most 9 digits (fits u32), without a dot.
    if (tn | wn | pn) > 15 || nn > 9 || (dot >> (c0 + 1)).trailing_zeros() < nn {
        return None;
    }
    // Dot position within each field (the field's length when it has none).
    let td = dot.trailing_zeros().min(tn);
    let wd = (dot >> (c1 + 1)).trailing_zeros().min(wn);
    let pd = (dot >> (c4 + 1)).trailing_zeros().min(pn);
    let frac = |n: u32, d: u32| if d == n { 0 } else { (n - 1 - d) as usize };
    let node_pf = field_pair(
        p.add(c0 as usize + 1),
        nn,
        nn,
        p.add(c4 as usize + 1),
        pn,
        pd,
    );
    let pf = _mm256_extract_epi64::<2>(node_pf) as u64;
    if pf > POW10_INT[frac(pn, pd)] {
        return None;
    }
    let node = _mm256_extract_epi64::<0>(node_pf) as u64;
    // Timestamp and watts: both mantissas (below 2^52) to f64 exactly, then one two-lane
    // division by their powers of ten (correctly rounded, as the general parser's).
    let tw = field_pair(p, tn, td, p.add(c1 as usize + 1), wn, wd);
    let two52 = _mm256_set1_pd(4_503_599_627_370_496.0);
    let f = _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_or_si256(tw, _mm256_castpd_si256(two52))),
        two52,
    );
    let tw = _mm256_castpd256_pd128(_mm256_permute4x64_pd::<0b10_00>(f));
    let scale = _mm_set_pd(POW10[frac(wn, wd)], POW10[frac(tn, td)]);
    let q = _mm_div_pd(tw, scale);
    Some((
        _mm_cvtsd_f64(q),
        node as u32,
        _mm_cvtsd_f64(_mm_unpackhi_pd(q, q)),
        len as usize,
    ))
}

/// Whether this CPU can run [`parse_canonical_at`].
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("popcnt")
        && std::arch::is_x86_feature_detected!("lzcnt")
        && std::arch::is_x86_feature_detected!("sse4.1")
        && std::arch::is_x86_feature_detected!("ssse3")
}

#[cfg(test)]
mod tests {
    use super::super::parse::{parse_canonical_at as portable, parse_row, Header};
    use super::super::parse::{REQUIRED_COLUMNS, SIMD_PADDING};
    use std::path::Path;

    fn fast(line: &str) -> Option<(f64, u32, f64, usize)> {
        let mut buf = line.as_bytes().to_vec();
        buf.resize(buf.len() + SIMD_PADDING, 0);
        assert!(super::available(), "the test machine has AVX2");
        // SAFETY: checked above.
        unsafe { super::parse_canonical_at(&buf, 0) }
    }

    /// Whether `line` has a timestamp, watts or power factor field longer than 15 bytes or a
    /// node id longer than 9.
    fn exceeds_avx2_limits(line: &str) -> bool {
        let f: Vec<&str> = line.trim_end().split(',').collect();
        f.len() == 6 && ([0, 2, 5].iter().any(|&i| f[i].len() > 15) || f[1].len() > 9)
    }

    fn slow(line: &str) -> Option<(f64, u32, f64, usize)> {
        let mut buf = line.as_bytes().to_vec();
        buf.resize(buf.len() + SIMD_PADDING, 0);
        portable(&buf, 0)
    }

    #[test]
    fn shuffle_table_drops_the_dot_and_right_aligns() {
        assert_eq!(super::SHUFFLE[3 * 16 + 1][13..], [0x80, 0, 2]);
        assert_eq!(super::SHUFFLE[3 * 16 + 3][13..], [0, 1, 2]);
        assert_eq!(super::SHUFFLE[16 + 1][15], 0);
        assert_eq!(
            super::SHUFFLE[15 * 16 + 15][1..],
            core::array::from_fn::<u8, 15, _>(|i| i as u8)
        );
        assert!(super::SHUFFLE[4 * 16 + 2][..13].iter().all(|&b| b == 0x80));
    }

    #[test]
    fn agrees_with_the_general_parser_and_the_portable_fast_path() {
        let h = Header::parse(Path::new("t.csv"), REQUIRED_COLUMNS.join(",").as_bytes()).unwrap();
        let mut x: u64 = 11;
        let mut accepted = 0;
        for i in 0..200_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t = match i % 4 {
                0 => format!("{}", (x >> 40) % 100_000_000),
                1 => format!("{}", x >> 14), // up to 15+ digits
                2 => format!("{}.{}", (x >> 44) % 1_000_000, (x >> 5) % 1000),
                _ => format!("{}", (x >> 60)),
            };
            let node = match i % 5 {
                0 => format!("{}", (x >> 20) % 7),
                1 => format!("{}", (x >> 30)), // may overflow u32
                _ => format!("{}", (x >> 33) % 4096),
            };
            let w = match i % 3 {
                0 => format!("{}.{:03}", (x >> 30) % 100, (x >> 10) % 1000),
                1 => format!("{}", (x >> 25) % 1_000_000),
                _ => format!("{}.{}", (x >> 12) % 10_000_000, (x >> 40) % 100_000_000),
            };
            let pf = match i % 7 {
                0 => "1".to_string(),
                1 => "1.0000".to_string(),
                2 => format!("1.{:04}", (x >> 7) % 10_000),
                3 => format!("0{}", (x >> 9) % 3),
                _ => format!("0.{:04}", (x >> 5) % 10_000),
            };
            let line = format!("{t},{node},{w},121.300,0.0836,{pf}\n");
            let f = fast(&line);
            // The AVX2 path takes a subset of what the portable one takes (fields of at most 15
            // bytes, node ids of at most 9 digits), with the same values.
            let s = slow(&line);
            if f.is_some() || !exceeds_avx2_limits(&line) {
                assert_eq!(f, s, "{line}");
            }
            let row = parse_row(&h, line.trim_end().as_bytes());
            if let Some((t, node, w, n)) = f {
                let row = row.unwrap_or_else(|e| panic!("{line}: {e:?}"));
                assert_eq!((t, node, w), (row.t_ms, row.node, row.watts), "{line}");
                assert_eq!(n, line.len() - 1);
                accepted += 1;
            }
        }
        // Both outcomes are exercised.
        assert!((40_000..160_000).contains(&accepted), "{accepted}");
    }

    #[test]
    fn defers_everything_unusual() {
        for &line in super::super::parse::LINES_FOR_THE_GENERAL_PARSER
            .iter()
            .chain(&[
                ".,0,1,1,1,1\n",
                "0,0,1,1,1,.\n",
                "0,0,1.2.3,1,1,1\n",
                "0,0,1,1,1.2.,1\n",
                ",0,1,1,1,1\n",
                "0,,1,1,1,1\n",
                "0,0,1,1,1,1,\n",
                "0,0,1,1,1,0.12345678901234567\n",
            ])
        {
            assert_eq!(fast(line), None, "{line:?}");
            assert_eq!(slow(line), None, "{line:?}");
        }
        assert_eq!(fast("5.,0,1.,1,1,1.\n"), slow("5.,0,1.,1,1,1.\n"));
        assert_eq!(fast("12,3,4.5,1,1,.5\n"), Some((12.0, 3, 4.5, 15)));
    }
}
