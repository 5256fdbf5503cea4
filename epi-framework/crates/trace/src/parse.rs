//! The trace CSV line format: header, columns, and a fast, exact number parser.

use epi_core::error::{InputError, Location};
use std::path::Path;

/// The six required columns, in the order the spec writes them.
pub const REQUIRED_COLUMNS: [&str; 6] = [
    "timestamp_ms",
    "node_id",
    "watts_rms",
    "volts_rms",
    "amps_rms",
    "power_factor",
];

/// Optional columns epi-bench writes when it records a trace itself.
pub const OPTIONAL_COLUMNS: [&str; 3] = ["utc_ms", "source_t_ms", "energy_j"];

/// The role of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// `timestamp_ms`: ms on the trace's timeline.
    Timestamp,
    /// `node_id`: channel index.
    Node,
    /// `watts_rms`.
    Watts,
    /// `volts_rms` (may be empty: not measured).
    Volts,
    /// `amps_rms` (may be empty).
    Amps,
    /// `power_factor` in [0, 1] (may be empty).
    PowerFactor,
    /// `utc_ms`: host UTC arrival time, epoch ms (may be empty).
    UtcMs,
    /// `source_t_ms`: the source's own clock (may be empty).
    SourceTime,
    /// `energy_j`: cumulative energy counter, J (may be empty).
    EnergyCounter,
}

impl Column {
    fn from_name(name: &str) -> Option<Column> {
        Some(match name {
            "timestamp_ms" => Column::Timestamp,
            "node_id" => Column::Node,
            "watts_rms" => Column::Watts,
            "volts_rms" => Column::Volts,
            "amps_rms" => Column::Amps,
            "power_factor" => Column::PowerFactor,
            "utc_ms" => Column::UtcMs,
            "source_t_ms" => Column::SourceTime,
            "energy_j" => Column::EnergyCounter,
            _ => return None,
        })
    }
}

/// The columns of a trace file, from its header line.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Column roles in file order.
    pub columns: Vec<Column>,
    /// Column names in file order.
    pub names: Vec<String>,
}

impl Header {
    /// Parses the header line (line 1) of `path`.
    pub fn parse(path: &Path, line: &[u8]) -> Result<Header, InputError> {
        let loc = || Location::file(path).at_line(1);
        let text = std::str::from_utf8(line)
            .map_err(|_| InputError::new(loc().field("header"), "header is not UTF-8 text"))?;
        let text = text
            .strip_prefix('\u{feff}')
            .unwrap_or(text)
            .trim_end_matches('\r');
        let expected = REQUIRED_COLUMNS.join(",");
        if text.trim().is_empty() {
            return Err(InputError::new(
                loc().field("header"),
                format!("missing header line; expected \"{expected}\""),
            ));
        }
        if text.as_bytes()[0].is_ascii_digit() || text.starts_with('-') {
            return Err(InputError::new(
                loc().field("header"),
                format!("missing header line (the first line is data); expected \"{expected}\""),
            ));
        }
        let mut columns = Vec::new();
        let mut names = Vec::new();
        for raw in text.split(',') {
            let name = raw.trim();
            let col = Column::from_name(name).ok_or_else(|| {
                InputError::new(
                    loc().field(format!("column \"{name}\"")),
                    format!(
                        "unknown column; expected the columns {expected} (optionally also {})",
                        OPTIONAL_COLUMNS.join(",")
                    ),
                )
            })?;
            if columns.contains(&col) {
                return Err(InputError::new(
                    loc().field(format!("column \"{name}\"")),
                    "column appears twice",
                ));
            }
            columns.push(col);
            names.push(name.to_string());
        }
        for (req, name) in [
            (Column::Timestamp, "timestamp_ms"),
            (Column::Node, "node_id"),
            (Column::Watts, "watts_rms"),
            (Column::Volts, "volts_rms"),
            (Column::Amps, "amps_rms"),
            (Column::PowerFactor, "power_factor"),
        ] {
            if !columns.contains(&req) {
                return Err(InputError::new(
                    loc().field(format!("column \"{name}\"")),
                    format!("required column missing; expected \"{expected}\""),
                ));
            }
        }
        Ok(Header { columns, names })
    }

    /// Whether the file has a column.
    pub fn has(&self, c: Column) -> bool {
        self.columns.contains(&c)
    }
}

/// One data row, validated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Row {
    /// `timestamp_ms`.
    pub t_ms: f64,
    /// `node_id`.
    pub node: u32,
    /// `watts_rms`.
    pub watts: f64,
    /// `volts_rms`, when present.
    pub volts: Option<f64>,
    /// `amps_rms`, when present.
    pub amps: Option<f64>,
    /// `power_factor`, when present.
    pub power_factor: Option<f64>,
    /// `utc_ms`, when present.
    pub utc_ms: Option<i64>,
    /// `source_t_ms`, when present.
    pub source_t_ms: Option<f64>,
    /// `energy_j`, when present.
    pub energy_j: Option<f64>,
}

/// What was wrong with a row: the column name and the message (the caller adds file and line).
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// Column name (or `row`).
    pub field: String,
    /// What was expected and what was found.
    pub message: String,
}

fn show(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    if s.len() > 40 {
        format!(
            "\"{}…\"",
            &s[..s.char_indices().nth(40).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        format!("\"{s}\"")
    }
}

/// Parses one data line (without its newline; a trailing `\r` is ignored).
pub fn parse_row(header: &Header, line: &[u8]) -> Result<Row, RowError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut row = Row::default();
    let mut rest = line;
    let n = header.columns.len();
    for (i, col) in header.columns.iter().enumerate() {
        let field = if i + 1 < n {
            match memchr::memchr(b',', rest) {
                Some(p) => {
                    let f = &rest[..p];
                    rest = &rest[p + 1..];
                    f
                }
                None => {
                    let found = i + 1;
                    return Err(RowError {
                        field: "row".into(),
                        message: format!(
                            "expected {n} fields ({}), found {found}{}",
                            header.names.join(","),
                            if line.is_empty() {
                                " (empty line)"
                            } else {
                                " (is the file truncated?)"
                            }
                        ),
                    });
                }
            }
        } else {
            if memchr::memchr(b',', rest).is_some() {
                let found = n + bytecount(rest, b',');
                return Err(RowError {
                    field: "row".into(),
                    message: format!(
                        "expected {n} fields ({}), found {found}",
                        header.names.join(",")
                    ),
                });
            }
            rest
        };
        parse_field(*col, &header.names[i], field, &mut row)?;
    }
    Ok(row)
}

fn bytecount(s: &[u8], b: u8) -> usize {
    s.iter().filter(|&&c| c == b).count()
}

#[inline]
fn parse_field(col: Column, name: &str, raw: &[u8], row: &mut Row) -> Result<(), RowError> {
    let err = |msg: String| RowError {
        field: name.to_string(),
        message: msg,
    };
    match col {
        Column::Timestamp => {
            let v = parse_f64(raw).filter(|v| v.is_finite());
            row.t_ms = v.ok_or_else(|| {
                err(format!(
                    "expected a time in milliseconds, found {}",
                    show(raw)
                ))
            })?;
        }
        Column::Node => {
            row.node = parse_u32(raw).ok_or_else(|| {
                err(format!(
                    "expected a node index (integer ≥ 0), found {}",
                    show(raw)
                ))
            })?;
        }
        Column::Watts => {
            let v = parse_f64(raw);
            row.watts = match v {
                Some(w) if w.is_finite() && w >= 0.0 => w,
                Some(w) if w.is_finite() => {
                    return Err(err(format!(
                        "expected watts ≥ 0, found {} (negative power)",
                        show(raw)
                    )))
                }
                _ => {
                    return Err(err(format!(
                        "expected a finite number of watts ≥ 0, found {}",
                        show(raw)
                    )))
                }
            };
        }
        Column::Volts | Column::Amps => {
            if raw.is_empty() {
                return Ok(());
            }
            let v = parse_f64(raw)
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    err(format!(
                        "expected a finite number ≥ 0 (or an empty field), found {}",
                        show(raw)
                    ))
                })?;
            if col == Column::Volts {
                row.volts = Some(v);
            } else {
                row.amps = Some(v);
            }
        }
        Column::PowerFactor => {
            if raw.is_empty() {
                return Ok(());
            }
            let v = parse_f64(raw)
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| {
                    err(format!(
                        "expected a power factor in [0, 1] (or an empty field), found {}",
                        show(raw)
                    ))
                })?;
            row.power_factor = Some(v);
        }
        Column::UtcMs => {
            if raw.is_empty() {
                return Ok(());
            }
            let v = std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| {
                    err(format!(
                        "expected Unix epoch milliseconds (integer), found {}",
                        show(raw)
                    ))
                })?;
            row.utc_ms = Some(v);
        }
        Column::SourceTime => {
            if raw.is_empty() {
                return Ok(());
            }
            let v = parse_f64(raw).filter(|v| v.is_finite()).ok_or_else(|| {
                err(format!(
                    "expected a time in milliseconds, found {}",
                    show(raw)
                ))
            })?;
            row.source_t_ms = Some(v);
        }
        Column::EnergyCounter => {
            if raw.is_empty() {
                return Ok(());
            }
            let v = parse_f64(raw)
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    err(format!(
                        "expected a cumulative energy in joules ≥ 0, found {}",
                        show(raw)
                    ))
                })?;
            row.energy_j = Some(v);
        }
    }
    Ok(())
}

/// Parses a non-negative decimal integer that fits in u32.
#[inline]
pub fn parse_u32(raw: &[u8]) -> Option<u32> {
    if raw.is_empty() || raw.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in raw {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + d as u64;
    }
    u32::try_from(v).ok()
}

pub(super) const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses a decimal number, correctly rounded.
///
/// Plain decimals (`-12.450`, `1000`) with at most 15 significant digits take an exact fast path
/// (an integer mantissa below 2^53 divided by an exact power of ten is correctly rounded by IEEE
/// division); everything else goes to the standard library's parser. `nan`/`inf` parse to
/// non-finite values the callers reject.
#[inline]
pub fn parse_f64(raw: &[u8]) -> Option<f64> {
    let (neg, digits) = match raw.first() {
        Some(b'-') => (true, &raw[1..]),
        Some(b'+') => (false, &raw[1..]),
        Some(_) => (false, raw),
        None => return None,
    };
    let mut mant: u64 = 0;
    let mut n_digits = 0u32;
    let mut frac = 0u32;
    let mut seen_dot = false;
    let mut any = false;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d <= 9 {
            any = true;
            if mant == 0 && d == 0 {
                if seen_dot {
                    frac += 1;
                }
                continue;
            }
            n_digits += 1;
            if n_digits > 15 {
                return slow(raw);
            }
            mant = mant * 10 + d as u64;
            if seen_dot {
                frac += 1;
            }
        } else if b == b'.' && !seen_dot {
            seen_dot = true;
        } else {
            return slow(raw);
        }
    }
    if !any || frac > 22 {
        return slow(raw);
    }
    let v = mant as f64 / POW10[frac as usize];
    Some(if neg { -v } else { v })
}

#[cold]
fn slow(raw: &[u8]) -> Option<f64> {
    std::str::from_utf8(raw).ok()?.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_parser_is_exact() {
        for s in [
            "0",
            "12.450",
            "-3.5",
            "121.300",
            "0.9970",
            "1000",
            "0.1",
            "1e3",
            "123456789012345.6",
            "0.000001",
            "+7",
            "9.999999999999999",
            ".5",
            "5.",
        ] {
            let expect: f64 = s.parse().unwrap();
            assert_eq!(parse_f64(s.as_bytes()), Some(expect), "{s}");
        }
        assert!(parse_f64(b"nan").unwrap().is_nan());
        assert!(parse_f64(b"abc").is_none());
        assert!(parse_f64(b"").is_none());
        assert!(parse_f64(b"-").is_none());
        assert!(parse_f64(b"1.2.3").is_none());
    }

    #[test]
    fn fast_parser_matches_std_on_many_values() {
        let mut x: u64 = 12345;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let digits = (x >> 33) % 1_000_000_000;
            let scale = (x >> 20) % 9;
            let s = format!(
                "{}.{:0width$}",
                digits / 10u64.pow(scale as u32),
                digits % 10u64.pow(scale as u32),
                width = scale as usize
            );
            let s = if scale == 0 { format!("{digits}") } else { s };
            assert_eq!(parse_f64(s.as_bytes()), s.parse::<f64>().ok(), "{s}");
        }
    }

    #[test]
    fn u32_parser() {
        assert_eq!(parse_u32(b"0"), Some(0));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_u32(b"1.0"), None);
    }
}

/// The last line of a file that does not end in a newline may have been cut mid-write: it is
/// accepted only if every field is present and non-empty (a recorder always ends its lines, so an
/// empty "not measured" field on an unterminated last line means the file was truncated).
pub fn check_unterminated_last_line(header: &Header, line: &[u8]) -> Result<(), RowError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    for (i, field) in line.split(|&b| b == b',').enumerate() {
        if field.is_empty() {
            let name = header.names.get(i).cloned().unwrap_or_else(|| "row".into());
            return Err(RowError {
                field: name,
                message:
                    "empty field on the last line, which has no newline: is the file truncated?"
                        .into(),
            });
        }
    }
    Ok(())
}

/// Whether the header is exactly the spec's six columns in the spec's order (the fast path).
pub fn is_canonical(header: &Header) -> bool {
    header.columns
        == [
            Column::Timestamp,
            Column::Node,
            Column::Watts,
            Column::Volts,
            Column::Amps,
            Column::PowerFactor,
        ]
}

#[inline(always)]
fn value(mant: u64, frac: u32) -> f64 {
    if frac == 0 {
        mant as f64
    } else {
        mant as f64 / POW10[frac as usize]
    }
}

/// Bytes of readable padding [`parse_canonical_at`] needs after a line start.
pub const SIMD_PADDING: usize = 128;

/// Bitmasks of the 64 bytes at `p`: (newline, comma, dot, digit).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify64(bytes: &[u8; 64]) -> (u64, u64, u64, u64) {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline; the loads read inside `bytes`.
    unsafe {
        let nlv = _mm_set1_epi8(b'\n' as i8);
        let cv = _mm_set1_epi8(b',' as i8);
        let dv = _mm_set1_epi8(b'.' as i8);
        let zero = _mm_set1_epi8(b'0' as i8);
        let flip = _mm_set1_epi8(i8::MIN);
        let lim = _mm_set1_epi8((10u8 ^ 0x80) as i8);
        let (mut nl, mut co, mut dot, mut dig) = (0u64, 0u64, 0u64, 0u64);
        for k in 0..4 {
            let v = _mm_loadu_si128(bytes.as_ptr().add(16 * k) as *const __m128i);
            let sh = 16 * k as u32;
            nl |= (_mm_movemask_epi8(_mm_cmpeq_epi8(v, nlv)) as u32 as u64) << sh;
            co |= (_mm_movemask_epi8(_mm_cmpeq_epi8(v, cv)) as u32 as u64) << sh;
            dot |= (_mm_movemask_epi8(_mm_cmpeq_epi8(v, dv)) as u32 as u64) << sh;
            // b - '0' < 10 as unsigned, via a signed compare after flipping the top bit.
            let d = _mm_xor_si128(_mm_sub_epi8(v, zero), flip);
            dig |= (_mm_movemask_epi8(_mm_cmplt_epi8(d, lim)) as u32 as u64) << sh;
        }
        (nl, co, dot, dig)
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn classify64(bytes: &[u8; 64]) -> (u64, u64, u64, u64) {
    let (mut nl, mut co, mut dot, mut dig) = (0u64, 0u64, 0u64, 0u64);
    for (i, &b) in bytes.iter().enumerate() {
        nl |= ((b == b'\n') as u64) << i;
        co |= ((b == b',') as u64) << i;
        dot |= ((b == b'.') as u64) << i;
        dig |= (b.is_ascii_digit() as u64) << i;
    }
    (nl, co, dot, dig)
}

/// Bits `s..e` set.
#[inline(always)]
fn span(s: u32, e: u32) -> u64 {
    ((1u64 << e) - 1) & !((1u64 << s) - 1)
}

/// The value of `n` (0..=8) ASCII digits stored little-endian in `w` (first digit in the lowest
/// byte; bytes above the `n` digits are ignored), in a few multiplications (SWAR).
#[inline(always)]
fn swar_digits(w: u64, n: u32) -> u64 {
    if n == 0 {
        return 0;
    }
    // Move the n digits to the top and fill the low bytes with '0'.
    let w = if n == 8 {
        w
    } else {
        (w << (8 * (8 - n))) | (0x3030_3030_3030_3030u64 >> (8 * n))
    };
    let mut v = w.wrapping_sub(0x3030_3030_3030_3030);
    v = v.wrapping_mul(10).wrapping_add(v >> 8);
    (((v & 0x0000_00FF_0000_00FF).wrapping_mul(100 + (1_000_000 << 32)))
        .wrapping_add(((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32))))
        >> 32
}

#[inline(always)]
fn load8(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The integer value of the `n` (0..=16) digits at `buf[at..]`.
#[inline(always)]
fn digits_value(buf: &[u8], at: usize, n: u32) -> u64 {
    if n <= 8 {
        swar_digits(load8(buf, at), n)
    } else {
        swar_digits(load8(buf, at), n - 8) * 100_000_000
            + swar_digits(load8(buf, at + (n - 8) as usize), 8)
    }
}

/// Mantissa and fraction digits of the field `[s, e)` of the line at `buf[pos..]`, known to hold
/// 1..=15 digits and at most one dot (`dm`: the dot's bit, or 0).
#[inline(always)]
fn field_value(buf: &[u8], pos: usize, s: u32, e: u32, dm: u64) -> (u64, u32) {
    if dm == 0 {
        (digits_value(buf, pos + s as usize, e - s), 0)
    } else {
        let d = dm.trailing_zeros();
        let frac = e - d - 1;
        let int = digits_value(buf, pos + s as usize, d - s);
        let f = digits_value(buf, pos + d as usize + 1, frac);
        (int * POW10_INT[frac as usize] + f, frac)
    }
}

pub(super) const POW10_INT: [u64; 20] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
    100_000_000_000,
    1_000_000_000_000,
    10_000_000_000_000,
    100_000_000_000_000,
    1_000_000_000_000_000,
    10_000_000_000_000_000,
    100_000_000_000_000_000,
    1_000_000_000_000_000_000,
    10_000_000_000_000_000_000,
];

/// The fast path of the canonical layout: classifies the up to 64 bytes of the line starting at
/// `buf[pos]` with SIMD bitmasks, validates every field as [`parse_row`] would, and returns
/// `(timestamp_ms, node_id, watts_rms, line length without the newline)`. `buf` must have
/// [`SIMD_PADDING`] readable bytes after `pos`. `None` when the line needs the general parser
/// (longer lines, CR, signs, exponents, empty fields, anything wrong).
#[inline(always)]
pub fn parse_canonical_at(buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)> {
    if buf.len() < pos + SIMD_PADDING {
        return None;
    }
    let bytes: &[u8; 64] = buf[pos..pos + 64].try_into().ok()?;
    let (nl, co, dot, dig) = classify64(bytes);
    if nl == 0 {
        return None;
    }
    let len = nl.trailing_zeros();
    let lm = (1u64 << len) - 1;
    if (dig | co | dot) & lm != lm {
        return None;
    }
    // Exactly five commas: take them one by one (no popcount: not in the x86_64 baseline).
    let mut c = co & lm;
    let mut bounds = [0u32; 7];
    for b in bounds.iter_mut().take(6).skip(1) {
        if c == 0 {
            return None;
        }
        *b = c.trailing_zeros();
        c &= c - 1;
    }
    if c != 0 {
        return None;
    }
    bounds[6] = len;
    // Field i spans [start_i, bounds[i + 1]); start_0 = 0, start_i = bounds[i] + 1. Each needs a
    // digit and at most one dot.
    let mut fields = [(0u32, 0u32, 0u64); 6];
    for (i, f) in fields.iter_mut().enumerate() {
        let s = if i == 0 { 0 } else { bounds[i] + 1 };
        let e = bounds[i + 1];
        let m = span(s, e);
        let dm = dot & m;
        if dig & m == 0 || dm & dm.wrapping_sub(1) != 0 {
            return None;
        }
        *f = (s, e, dm);
    }
    // node_id: digits only, fits u32.
    let (ns, ne, ndot) = fields[1];
    if ndot != 0 || ne - ns > 10 {
        return None;
    }
    let node = digits_value(buf, pos + ns as usize, ne - ns);
    if node > u32::MAX as u64 {
        return None;
    }
    // Values needed: timestamp, watts, and the power factor for its ≤ 1 check (≤ 15 digits each).
    let mut vals = [(0u64, 0u32); 3];
    for (v, &i) in vals.iter_mut().zip(&[0usize, 2, 5]) {
        let (s, e, dm) = fields[i];
        if e - s - (dm != 0) as u32 > 15 {
            return None;
        }
        *v = field_value(buf, pos, s, e, dm);
    }
    let (pm, pf) = vals[2];
    if pm > POW10_INT[pf as usize] {
        return None;
    }
    Some((
        value(vals[0].0, vals[0].1),
        node as u32,
        value(vals[1].0, vals[1].1),
        len as usize,
    ))
}

/// Lines every fast path must leave to the general parser (which accepts or rejects them).
#[cfg(test)]
pub(super) const LINES_FOR_THE_GENERAL_PARSER: &[&str] = &[
    "0,0,-1,121,0.1,0.9\n",
    "0,0,1,121,0.1,1.0001\n",
    "0,0,1,121,0.1,\n",
    "0,0,1e1,121,0.1,0.9\n",
    "-5,0,1,121,0.1,0.9\n",
    "0,x,1,121,0.1,0.9\n",
    "0,0,1,121,0.1,0.9,7\n",
    "0,0,1,121,0.1\n",
    "0,4294967296,1,1,1,1\n",
    "0,0,.,1,1,1\n",
    "0,0,1..2,1,1,1\n",
    "0,0,1,1,1,1\r\n",
    "0,0.5,1,1,1,1\n",
    "0,0,1234567890123456,1,1,1\n",
    "0,0,1,1,1,1", // no newline within the line
    "0,0,1,1111111111111111111111111111111111111111111111111111111111,1,1\n", // longer than 64
];

#[cfg(test)]
mod simd_tests {
    use super::*;

    fn run(line: &str) -> Option<(f64, u32, f64, usize)> {
        let mut buf = line.as_bytes().to_vec();
        buf.resize(buf.len() + SIMD_PADDING, 0);
        parse_canonical_at(&buf, 0)
    }

    #[test]
    fn swar_digits_match_scalar_parsing() {
        let mut x: u64 = 17;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = ((x >> 60) % 17) as usize;
            let digits: String = (0..n)
                .map(|i| char::from(b'0' + ((x >> (i * 3)) % 10) as u8))
                .collect();
            let mut buf = digits.clone().into_bytes();
            buf.extend_from_slice(b",9.87,654");
            buf.resize(buf.len() + 16, b'7');
            let expect: u64 = if n == 0 { 0 } else { digits.parse().unwrap() };
            assert_eq!(digits_value(&buf, 0, n as u32), expect, "{digits}");
        }
    }

    #[test]
    fn simd_path_agrees_with_the_scalar_paths() {
        let h = Header::parse(Path::new("t.csv"), REQUIRED_COLUMNS.join(",").as_bytes()).unwrap();
        let mut x: u64 = 5;
        for _ in 0..50_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t = (x >> 40) % 100_000_000;
            let node = (x >> 20) % 7;
            let w = format!("{}.{:03}", (x >> 30) % 100, (x >> 10) % 1000);
            let pf = if x.is_multiple_of(11) {
                "1".to_string()
            } else {
                format!("0.{:04}", (x >> 5) % 10_000)
            };
            let line = format!("{t},{node},{w},121.300,0.0836,{pf}");
            let fast = run(&format!("{line}\n")).unwrap_or_else(|| panic!("{line}"));
            let row = parse_row(&h, line.as_bytes()).unwrap();
            assert_eq!(
                (fast.0, fast.1, fast.2),
                (row.t_ms, row.node, row.watts),
                "{line}"
            );
            assert_eq!(fast.3, line.len());
        }
    }

    #[test]
    fn simd_path_defers_everything_unusual() {
        for line in LINES_FOR_THE_GENERAL_PARSER {
            assert!(run(line).is_none(), "fast path accepted {line:?}");
        }
        assert_eq!(run("0,0,1,1,1,1\n"), Some((0.0, 0, 1.0, 11)));
    }
}
