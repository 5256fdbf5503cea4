//! The canonical-line fast path for x86_64 CPUs with AVX2 (x86-64-v3), and AVX-512BW where the
//! CPU has it: the same contract as [`super::parse::parse_canonical_at`] (same accepted lines, same
//! values, `None` for everything else), in about a sixth of the instructions.
//!
//! - The 64 bytes at the line start are classified into bitmasks of newlines, commas, dots and
//!   digits ([`Classify`]: two 32-byte compares per class with AVX2, one 64-byte compare with
//!   AVX-512BW).
//! - The commas, newline and dots make the line's *shape*. Whether a shape is a canonical line's
//!   (exactly five commas, no empty field, no field that is a lone dot, at most one dot per field,
//!   short enough fields) and where its fields are is worked out once per shape and kept in a
//!   small [`ShapeCache`]: the lines of a trace have few shapes.
//! - Each number is read with one 16-byte shuffle that drops the dot and right-aligns the digits
//!   (a table indexed by field length and dot position), then three multiply-add steps (the
//!   method of simdjson's 8-digit parser, here for 16 digits); two fields per 256-bit register.

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

/// The digits of two fields as integers, one field per 128-bit lane: the field at `pa` and the
/// one at `pb`, each read with its half of `mask` (a [`SHUFFLE`] entry for its length and dot).
/// The values are the 64-bit elements 0 and 2 of the result.
///
/// # Safety
/// `pa..pa + 16` and `pb..pb + 16` must be readable; the CPU must have AVX2 (inlined into a
/// caller that has it).
#[inline(always)]
unsafe fn field_pair(pa: *const u8, pb: *const u8, mask: __m256i) -> __m256i {
    let raw = _mm256_loadu2_m128i(pb as *const __m128i, pa as *const __m128i);
    let v = _mm256_sub_epi8(raw, _mm256_set1_epi8(b'0' as i8));
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

/// How the 64 bytes at a line start are classified: with AVX2, or with AVX-512BW (one compare
/// per class, straight to a bitmask).
pub(super) trait Classify {
    /// Bitmasks of the 64 bytes at `p`: (newline, comma, dot, digit).
    ///
    /// # Safety
    /// `p..p + 64` must be readable; the CPU must have the implementation's features (inlined
    /// into a caller that has them).
    unsafe fn classify64(p: *const u8) -> (u64, u64, u64, u64);
}

/// Classification with AVX2.
pub(super) struct Avx2;

impl Classify for Avx2 {
    #[inline(always)]
    unsafe fn classify64(p: *const u8) -> (u64, u64, u64, u64) {
        classify64(p)
    }
}

/// Classification with AVX-512BW.
pub(super) struct Avx512;

impl Classify for Avx512 {
    #[inline(always)]
    unsafe fn classify64(p: *const u8) -> (u64, u64, u64, u64) {
        let v = _mm512_loadu_si512(p as *const __m512i);
        let nl = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'\n' as i8));
        let co = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b',' as i8));
        let dot = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'.' as i8));
        let d = _mm512_sub_epi8(v, _mm512_set1_epi8(b'0' as i8));
        let dig = _mm512_cmple_epu8_mask(d, _mm512_set1_epi8(9));
        (nl, co, dot, dig)
    }
}

/// See [`super::parse::parse_canonical_at`]: the AVX2 path with a fresh shape cache (every line a
/// miss), for tests.
///
/// # Safety
/// The CPU must have AVX2, BMI1, BMI2, POPCNT, LZCNT, SSE4.1 and SSSE3.
#[cfg(test)]
#[target_feature(enable = "avx2,bmi1,bmi2,popcnt,lzcnt,sse4.1,ssse3")]
pub unsafe fn parse_canonical_at(buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)> {
    ShapeCache::new().parse::<Avx2>(buf, pos)
}

/// The line's shape key and dot mask (both within the line; the key is the commas and the
/// newline) and its length without the newline, or `None` when the line is not within 64 bytes
/// or has a character other than digits, commas and dots.
///
/// # Safety
/// As [`Classify::classify64`].
#[inline(always)]
unsafe fn line_key<C: Classify>(p: *const u8) -> Option<(u64, u64, usize)> {
    let (nl, co, dot, dig) = C::classify64(p);
    if nl == 0 {
        return None;
    }
    let len = nl.trailing_zeros();
    let lm = (1u64 << len) - 1;
    // Only digits, commas and dots before the newline.
    if (dig | co | dot) & lm != lm {
        return None;
    }
    Some(((co & lm) | (1u64 << len), dot & lm, len as usize))
}

/// Where a canonical line's fields are and how to read them, as a function of its shape: the
/// positions of its commas, dots and newline. Lines of one trace have few shapes; a
/// [`ShapeCache`] keeps them, so the syntax checks and position arithmetic run once per shape.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Shape {
    /// The commas and the newline (0: an empty cache slot).
    key: u64,
    dot: u64,
    node_at: u32,
    watts_at: u32,
    pf_at: u32,
    /// Shuffle masks for [`field_pair`]: timestamp and watts; node id and power factor.
    mask_tw: [u8; 32],
    mask_np: [u8; 32],
    /// Divisors of the timestamp and watts mantissas.
    scale: [f64; 2],
    /// The power factor's mantissa for 1.
    pf_one: u64,
    /// A one-digit node id and a power factor with one digit before its dot: the node id is that
    /// digit, and a power factor whose first digit is 0 is below 1 (no need to read either).
    quick_np: bool,
}

impl Shape {
    const EMPTY: Shape = Shape {
        key: 0,
        dot: 0,
        node_at: 0,
        watts_at: 0,
        pf_at: 0,
        mask_tw: [0; 32],
        mask_np: [0; 32],
        scale: [1.0; 2],
        pf_one: 0,
        quick_np: false,
    };

    /// The shape of a line with the separators `key` (commas and the newline) and dots `dot`, if
    /// that is a canonical line's: exactly five commas, no empty field, no field that is a lone
    /// dot, at most one dot per field, timestamp, watts and power factor of at most 15 bytes, a
    /// node id of at most 9 digits without a dot.
    #[inline(always)]
    fn of(key: u64, dot: u64) -> Option<Shape> {
        let len = 63 - key.leading_zeros();
        let co = key & !(1u64 << len);
        if co.count_ones() != 5 {
            return None;
        }
        let sep = key;
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
        // Timestamp, watts and power factor of at most 15 bytes (so at most 15 digits: exact as
        // f64 after the scaling); node_id of at most 9 digits (fits u32), without a dot.
        if (tn | wn | pn) > 15 || nn > 9 || (dot >> (c0 + 1)).trailing_zeros() < nn {
            return None;
        }
        // Dot position within each field (the field's length when it has none).
        let td = dot.trailing_zeros().min(tn);
        let wd = (dot >> (c1 + 1)).trailing_zeros().min(wn);
        let pd = (dot >> (c4 + 1)).trailing_zeros().min(pn);
        let frac = |n: u32, d: u32| if d == n { 0 } else { (n - 1 - d) as usize };
        let mask = |n: u32, d: u32| SHUFFLE[((n << 4) | d) as usize & 255];
        let pair = |a: [u8; 16], b: [u8; 16]| {
            let mut m = [0u8; 32];
            m[..16].copy_from_slice(&a);
            m[16..].copy_from_slice(&b);
            m
        };
        Some(Shape {
            key,
            dot,
            node_at: c0 + 1,
            watts_at: c1 + 1,
            pf_at: c4 + 1,
            mask_tw: pair(mask(tn, td), mask(wn, wd)),
            mask_np: pair(mask(nn, nn), mask(pn, pd)),
            scale: [POW10[frac(tn, td)], POW10[frac(wn, wd)]],
            pf_one: POW10_INT[frac(pn, pd)],
            quick_np: nn == 1 && pd == 1,
        })
    }

    /// The line's values: `(timestamp, node, watts)`, or `None` when its power factor is above 1.
    ///
    /// # Safety
    /// `p..p + 64 + 16` must be readable and hold a line of this shape; AVX2 as [`field_pair`].
    #[inline(always)]
    unsafe fn values(&self, p: *const u8) -> Option<(f64, u32, f64)> {
        let node = if self.quick_np && *p.add(self.pf_at as usize) == b'0' {
            u32::from(*p.add(self.node_at as usize) - b'0')
        } else {
            self.node_and_pf(p)?
        };
        // Timestamp and watts: both mantissas (below 2^52) to f64 exactly, then one two-lane
        // division by their powers of ten (correctly rounded, as the general parser's).
        let tw = field_pair(
            p,
            p.add(self.watts_at as usize),
            _mm256_loadu_si256(self.mask_tw.as_ptr() as *const __m256i),
        );
        let two52 = _mm256_set1_pd(4_503_599_627_370_496.0);
        let f = _mm256_sub_pd(
            _mm256_castsi256_pd(_mm256_or_si256(tw, _mm256_castpd_si256(two52))),
            two52,
        );
        let tw = _mm256_castpd256_pd128(_mm256_permute4x64_pd::<0b10_00>(f));
        let q = _mm_div_pd(tw, _mm_loadu_pd(self.scale.as_ptr()));
        Some((_mm_cvtsd_f64(q), node, _mm_cvtsd_f64(_mm_unpackhi_pd(q, q))))
    }

    /// The node id, when the power factor is at most 1.
    ///
    /// # Safety
    /// As [`Self::values`].
    #[inline(always)]
    unsafe fn node_and_pf(&self, p: *const u8) -> Option<u32> {
        let node_pf = field_pair(
            p.add(self.node_at as usize),
            p.add(self.pf_at as usize),
            _mm256_loadu_si256(self.mask_np.as_ptr() as *const __m256i),
        );
        let pf = _mm256_extract_epi64::<2>(node_pf) as u64;
        if pf > self.pf_one {
            return None;
        }
        Some(_mm256_extract_epi64::<0>(node_pf) as u32)
    }
}

/// The shapes of recent lines, by a hash of the shape (direct mapped).
pub(super) struct ShapeCache {
    slots: Box<[Shape; ShapeCache::SLOTS]>,
}

impl ShapeCache {
    const SLOTS: usize = 16;

    /// An empty cache.
    pub(super) fn new() -> Self {
        ShapeCache {
            slots: Box::new([Shape::EMPTY; Self::SLOTS]),
        }
    }

    /// [`super::parse::parse_canonical_at`] with the line classified by `C` and its shape looked
    /// up here first (and kept on a miss).
    ///
    /// # Safety
    /// The CPU must have AVX2, BMI1, BMI2, POPCNT, LZCNT, SSE4.1 and SSSE3 ([`available`]) and
    /// `C`'s features; inlined into a function compiled for them.
    #[inline(always)]
    pub(super) unsafe fn parse<C: Classify>(
        &mut self,
        buf: &[u8],
        pos: usize,
    ) -> Option<(f64, u32, f64, usize)> {
        if buf.len() < pos + super::parse::SIMD_PADDING {
            return None;
        }
        let p = buf.as_ptr().add(pos);
        // The length comes from the newline, not from the shape: the next line's position then
        // waits only on the classification, not on the cache lookup.
        let (key, dot, len) = line_key::<C>(p)?;
        let h = ((key ^ dot.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize;
        let slot = &mut self.slots[h & (Self::SLOTS - 1)];
        if slot.key != key || slot.dot != dot {
            *slot = Shape::of(key, dot)?;
        }
        let (t, node, w) = slot.values(p)?;
        Some((t, node, w, len))
    }
}

/// [`ShapeCache::parse`] with [`Avx2`], for tests.
///
/// # Safety
/// As [`parse_canonical_at`].
#[cfg(test)]
#[target_feature(enable = "avx2,bmi1,bmi2,popcnt,lzcnt,sse4.1,ssse3")]
unsafe fn cached_avx2(cache: &mut ShapeCache, buf: &[u8]) -> Option<(f64, u32, f64, usize)> {
    cache.parse::<Avx2>(buf, 0)
}

/// [`ShapeCache::parse`] with [`Avx512`], for tests.
///
/// # Safety
/// The CPU must have the features [`available_avx512`] checks.
#[cfg(test)]
#[target_feature(enable = "avx512f,avx512bw,avx2,bmi1,bmi2,popcnt,lzcnt,sse4.1,ssse3")]
unsafe fn cached_avx512(cache: &mut ShapeCache, buf: &[u8]) -> Option<(f64, u32, f64, usize)> {
    cache.parse::<Avx512>(buf, 0)
}

/// Whether this CPU has AVX-512BW (for [`Avx512`]), besides what [`available`] needs.
pub fn available_avx512() -> bool {
    available()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Whether this CPU can run the AVX2 path.
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

    /// Random lines in many shapes, about half of them canonical.
    fn random_lines(count: u64) -> Vec<String> {
        let mut x: u64 = 11;
        (0..count)
            .map(|i| {
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
                format!("{t},{node},{w},121.300,0.0836,{pf}\n")
            })
            .collect()
    }

    #[test]
    fn agrees_with_the_general_parser_and_the_portable_fast_path() {
        let h = Header::parse(Path::new("t.csv"), REQUIRED_COLUMNS.join(",").as_bytes()).unwrap();
        let mut accepted = 0;
        for line in random_lines(200_000) {
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

    /// Parses `lines` in order through one shape cache with classifier `C` (hits, misses and
    /// slots taken over by other shapes), each line with different bytes after it.
    type Parsed = Option<(f64, u32, f64, usize)>;

    fn through_cache(
        lines: &[String],
        parse: unsafe fn(&mut super::ShapeCache, &[u8]) -> Parsed,
    ) -> Vec<Parsed> {
        let mut cache = super::ShapeCache::new();
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut buf = line.as_bytes().to_vec();
                // What follows the line must not matter: the next line's start, or zeros.
                buf.extend_from_slice(if i % 2 == 0 { b"12,3,4.5,1,1,1\n" } else { b"" });
                buf.resize(line.len() + SIMD_PADDING + 16, 0);
                // SAFETY: the callers check the CPU's features.
                unsafe { parse(&mut cache, &buf) }
            })
            .collect()
    }

    #[test]
    fn the_shape_cache_gives_what_the_uncached_path_gives_with_either_classifier() {
        let mut lines = random_lines(100_000);
        // Runs of one shape with values that change, power factors of 1 and above 1 and node ids
        // of one and more digits among them.
        for i in 0..2_000u32 {
            let pf = ["0.9971", "1.0000", "1.0001", "0.5000", "0.0000", "1.9999"][i as usize % 6];
            lines.push(format!(
                "{},{},{}.{:03},121.301,0.0755,{pf}\n",
                100_000 + i,
                i % 10,
                5 + i % 5,
                i % 1000
            ));
            lines.push(format!("{},{},1{}.5,1,1,1\n", 100_000 + i, i % 100, i % 10));
        }
        let uncached: Vec<_> = lines.iter().map(|l| fast(l)).collect();
        assert!(super::available(), "the test machine has AVX2");
        let avx2 = through_cache(&lines, super::cached_avx2);
        for ((line, a), b) in lines.iter().zip(&avx2).zip(&uncached) {
            assert_eq!(a, b, "{line}");
        }
        let accepted = avx2.iter().filter(|r| r.is_some()).count();
        assert!((20_000..80_000).contains(&accepted), "{accepted}");
        if super::available_avx512() {
            let avx512 = through_cache(&lines, super::cached_avx512);
            assert_eq!(avx512, avx2);
        } else {
            eprintln!("this CPU has no AVX-512BW: its classifier is not tested here");
        }
    }

    #[test]
    fn the_shape_cache_reads_each_value_even_when_the_shape_repeats() {
        let lines: Vec<String> = [
            "100,3,9.123,121.301,0.0755,0.9971\n",
            "101,4,9.124,121.301,0.0755,1.0000\n",
            "102,5,9.125,121.301,0.0755,1.0001\n",
            "103,6,9.126,121.301,0.0755,0.5000\n",
            "104,7,9.127,121.301,0.0755,2.0000\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(super::available());
        let got = through_cache(&lines, super::cached_avx2);
        assert_eq!(
            got,
            vec![
                Some((100.0, 3, 9.123, 33)),
                Some((101.0, 4, 9.124, 33)),
                None,
                Some((103.0, 6, 9.126, 33)),
                None
            ]
        );
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
