//! The integration kernel: what one interval between two consecutive readings of a channel
//! contributes (`measurement-methodology.md` §2). Every integrator of epi-bench calls it — the
//! trace summary's fast path, per-row path and block merger (epi-trace), the segments that windows
//! and attribution integrate ([`super::Segment`]), the run recorder's live figure and the live
//! monitor — so the rule is written once:
//!
//! - **Power samples**: the power is linear between the two readings (the trapezoid rule).
//! - **Counter readings** (cumulative joules): the power is the constant ΔE/Δt, so the integral
//!   is exactly the counter difference.
//! - **Gap rule**: readings further apart than the gap limit are a gap: the interval is still
//!   integrated (the trapezoid bridges it) but not counted as covered time, and it is counted and
//!   reported as a gap.
//! - **Window edges**: the energy of a part `[a, b]` of an interval is the trapezoid of the power
//!   interpolated linearly at `a` and `b`.
//!
//! Sums are kept in the accumulation form `Δt · (p₀ + p₁)` (W·ms, twice the energy), halved into
//! joules once at the end ([`wms2_to_joules`]): one multiplication per interval, and the same
//! rounding wherever the sum is made.
//!
//! Nothing here fails: a reversed or empty interval is the caller's to refuse or skip (the trace
//! summary refuses decreasing timestamps; the series, monitor and recorder skip them, see
//! [`Interval::forward`]).

/// W·ms ×2 per joule: the accumulation form `Δt · (p₀ + p₁)` divided by this is joules.
pub const WMS2_PER_JOULE: f64 = 2000.0;

/// Joules from a sum in the accumulation form (W·ms ×2).
#[inline(always)]
pub fn wms2_to_joules(wms2: f64) -> f64 {
    wms2 / WMS2_PER_JOULE
}

/// The gap rule: two consecutive readings `dt_ms` apart are a gap when further apart than
/// `gap_limit_ms` (an infinite limit: never; a NaN limit: never).
#[inline(always)]
pub fn is_gap(dt_ms: f64, gap_limit_ms: f64) -> bool {
    dt_ms > gap_limit_ms
}

/// One channel's power between two consecutive readings, linear from `(t0, p0)` to `(t1, p1)`.
/// Times in ms, power in W.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Start, ms.
    pub t0: f64,
    /// End, ms.
    pub t1: f64,
    /// Power at the start, W.
    pub p0: f64,
    /// Power at the end, W.
    pub p1: f64,
}

impl Interval {
    /// Between two power samples `(t0, w0)` and `(t1, w1)`: the trapezoid.
    #[inline(always)]
    pub fn power(t0: f64, w0: f64, t1: f64, w1: f64) -> Interval {
        Interval {
            t0,
            t1,
            p0: w0,
            p1: w1,
        }
    }

    /// Between two cumulative counter readings `(t0, e0)` and `(t1, e1)` (joules): the constant
    /// power ΔE/Δt, so that the interval's energy is the counter difference. `t1 > t0` expected
    /// (an empty interval gives an infinite or NaN power).
    #[inline(always)]
    pub fn counter(t0: f64, e0: f64, t1: f64, e1: f64) -> Interval {
        let p = (e1 - e0) * 1000.0 / (t1 - t0);
        Interval {
            t0,
            t1,
            p0: p,
            p1: p,
        }
    }

    /// [`Interval::power`] when time moves forward (`t1 > t0`); `None` for an empty or reversed
    /// pair, which contributes nothing (for the integrators that skip such pairs rather than
    /// refuse them).
    #[inline(always)]
    pub fn forward(t0: f64, w0: f64, t1: f64, w1: f64) -> Option<Interval> {
        (t1 > t0).then(|| Interval::power(t0, w0, t1, w1))
    }

    /// Length, ms.
    #[inline(always)]
    pub fn dt(&self) -> f64 {
        self.t1 - self.t0
    }

    /// Energy in the accumulation form `Δt · (p₀ + p₁)` (W·ms, twice the energy).
    #[inline(always)]
    pub fn wms2(&self) -> f64 {
        self.dt() * (self.p0 + self.p1)
    }

    /// Energy, J.
    #[inline(always)]
    pub fn joules(&self) -> f64 {
        wms2_to_joules(self.wms2())
    }

    /// Whether the interval is a gap under `gap_limit_ms` ([`is_gap`]).
    #[inline(always)]
    pub fn is_gap(&self, gap_limit_ms: f64) -> bool {
        is_gap(self.dt(), gap_limit_ms)
    }

    /// Power at `t`, interpolated linearly (clamped to the interval; an empty interval has the
    /// end power).
    #[inline]
    pub fn power_at(&self, t: f64) -> f64 {
        if self.t1 <= self.t0 {
            return self.p1;
        }
        let f = ((t - self.t0) / (self.t1 - self.t0)).clamp(0.0, 1.0);
        self.p0 + (self.p1 - self.p0) * f
    }

    /// Energy over `[a, b] ∩ [t0, t1]`, J, the edges interpolated.
    #[inline]
    pub fn joules_between(&self, a: f64, b: f64) -> f64 {
        let lo = a.max(self.t0);
        let hi = b.min(self.t1);
        if hi <= lo {
            return 0.0;
        }
        Interval::power(lo, self.power_at(lo), hi, self.power_at(hi)).joules()
    }

    /// Length of `[a, b] ∩ [t0, t1]`, ms (0 when they do not meet).
    #[inline]
    pub fn overlap_ms(&self, a: f64, b: f64) -> f64 {
        (b.min(self.t1) - a.max(self.t0)).max(0.0)
    }
}

/// A channel's integral so far: the intervals added with [`ChannelIntegral::add`] (in time order)
/// and whole stretches joined with [`ChannelIntegral::join`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChannelIntegral {
    /// Energy in the accumulation form (W·ms ×2; [`ChannelIntegral::joules`] halves it).
    pub wms2: f64,
    /// Time covered by intervals that are not gaps, ms.
    pub covered_ms: f64,
    /// Gaps.
    pub gaps: u64,
    /// Longest interval, ms.
    pub max_dt_ms: f64,
}

impl ChannelIntegral {
    /// Adds the next interval; returns whether it is a gap (for the caller to report).
    #[inline(always)]
    pub fn add(&mut self, iv: &Interval, gap_limit_ms: f64) -> bool {
        let dt = iv.dt();
        self.wms2 += iv.wms2();
        let gap = is_gap(dt, gap_limit_ms);
        if gap {
            self.gaps += 1;
        } else {
            self.covered_ms += dt;
        }
        if dt > self.max_dt_ms {
            self.max_dt_ms = dt;
        }
        gap
    }

    /// Appends `next`, a later stretch of the same channel, joined to this one by the interval
    /// `bridge` (from this stretch's last reading to `next`'s first); returns whether the bridge
    /// is a gap. The sums are those of adding every interval in order, up to rounding: the
    /// bridge and `next` are summed first, then added.
    #[inline]
    pub fn join(&mut self, bridge: &Interval, next: &ChannelIntegral, gap_limit_ms: f64) -> bool {
        let dt = bridge.dt();
        self.wms2 += bridge.wms2() + next.wms2;
        let gap = is_gap(dt, gap_limit_ms);
        if gap {
            self.gaps += 1;
        } else {
            self.covered_ms += dt;
        }
        self.covered_ms += next.covered_ms;
        self.gaps += next.gaps;
        self.max_dt_ms = self.max_dt_ms.max(dt).max(next.max_dt_ms);
        gap
    }

    /// Energy, J.
    #[inline]
    pub fn joules(&self) -> f64 {
        wms2_to_joules(self.wms2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trapezoid_in_the_accumulation_form() {
        // 10 W → 20 W over 1 s: 15 J; W·ms ×2 = 1000 · 30.
        let iv = Interval::power(0.0, 10.0, 1000.0, 20.0);
        assert_eq!(iv.dt(), 1000.0);
        assert_eq!(iv.wms2(), 30_000.0);
        assert_eq!(iv.joules(), 15.0);
        // Bit for bit the expression the integrators used to spell out.
        let (t0, w0, t1, w1) = (12.345_f64, 101.3_f64, 32.817_f64, 99.7_f64);
        let iv = Interval::power(t0, w0, t1, w1);
        assert_eq!(iv.wms2().to_bits(), ((t1 - t0) * (w1 + w0)).to_bits());
        assert_eq!(
            iv.joules().to_bits(),
            ((t1 - t0) * (w0 + w1) / 2000.0).to_bits()
        );
        assert_eq!(wms2_to_joules(iv.wms2()), iv.joules());
    }

    #[test]
    fn gap_rule_edges() {
        // Exactly the limit apart: not a gap; anything further: a gap.
        assert!(!is_gap(1000.0, 1000.0));
        assert!(is_gap(1000.0 + 1e-9, 1000.0));
        assert!(!Interval::power(0.0, 1.0, 500.0, 1.0).is_gap(500.0));
        assert!(Interval::power(0.0, 1.0, 500.5, 1.0).is_gap(500.0));
        // No limit: never a gap; an empty interval never is one.
        assert!(!is_gap(1e300, f64::INFINITY));
        assert!(!is_gap(0.0, 0.0));
    }

    #[test]
    fn a_gap_is_integrated_but_not_covered() {
        let mut c = ChannelIntegral::default();
        assert!(!c.add(&Interval::power(0.0, 2.0, 100.0, 2.0), 500.0));
        assert!(c.add(&Interval::power(100.0, 2.0, 2100.0, 4.0), 500.0));
        assert!(!c.add(&Interval::power(2100.0, 4.0, 2600.0, 4.0), 500.0));
        assert_eq!(c.gaps, 1);
        assert_eq!(c.covered_ms, 600.0);
        assert_eq!(c.max_dt_ms, 2000.0);
        // 0.2 J + 6 J + 2 J.
        assert!((c.joules() - 8.2).abs() < 1e-12);
    }

    #[test]
    fn joining_stretches_adds_the_bridge() {
        // A channel in two stretches [0, 200] and [1300, 1400], joined by a 1100 ms bridge.
        let gap = 1000.0;
        let pts = [
            (0.0, 1.0),
            (100.0, 3.0),
            (200.0, 1.0),
            (1300.0, 1.0),
            (1400.0, 5.0),
        ];
        let mut whole = ChannelIntegral::default();
        for w in pts.windows(2) {
            whole.add(&Interval::power(w[0].0, w[0].1, w[1].0, w[1].1), gap);
        }
        let mut first = ChannelIntegral::default();
        let mut second = ChannelIntegral::default();
        for w in pts[..3].windows(2) {
            first.add(&Interval::power(w[0].0, w[0].1, w[1].0, w[1].1), gap);
        }
        for w in pts[3..].windows(2) {
            second.add(&Interval::power(w[0].0, w[0].1, w[1].0, w[1].1), gap);
        }
        let bridge = Interval::power(200.0, 1.0, 1300.0, 1.0);
        assert!(first.join(&bridge, &second, gap));
        // Exact here: every partial sum is an integer.
        assert_eq!(first, whole);
        assert_eq!(first.gaps, 1);
        assert_eq!(first.covered_ms, 300.0);
        assert_eq!(first.max_dt_ms, 1100.0);
    }

    #[test]
    fn window_edges_are_interpolated() {
        let iv = Interval::power(0.0, 10.0, 1000.0, 20.0);
        assert_eq!(iv.power_at(250.0), 12.5);
        assert_eq!(iv.power_at(-5.0), 10.0); // clamped
        assert_eq!(iv.power_at(2000.0), 20.0);
        // 250..750: 12.5 W → 17.5 W, 7.5 J; a window sticking out is cut to the interval.
        assert_eq!(iv.joules_between(250.0, 750.0), 7.5);
        assert_eq!(iv.joules_between(-100.0, 500.0), 6.25);
        assert_eq!(iv.joules_between(0.0, 1000.0), iv.joules());
        // Outside or inverted: nothing.
        assert_eq!(iv.joules_between(1000.0, 2000.0), 0.0);
        assert_eq!(iv.joules_between(700.0, 300.0), 0.0);
        assert_eq!(iv.overlap_ms(900.0, 1200.0), 100.0);
        assert_eq!(iv.overlap_ms(1200.0, 1300.0), 0.0);
        // An empty interval has its end power and no energy.
        let empty = Interval::power(5.0, 1.0, 5.0, 3.0);
        assert_eq!(empty.power_at(5.0), 3.0);
        assert_eq!(empty.joules_between(0.0, 10.0), 0.0);
    }

    #[test]
    fn counter_intervals_have_constant_power_and_the_counter_difference() {
        // 1.5 J over 100 ms: 15 W throughout.
        let iv = Interval::counter(0.0, 100.0, 100.0, 101.5);
        assert_eq!((iv.p0, iv.p1), (15.0, 15.0));
        assert_eq!(iv.joules(), 1.5);
        assert_eq!(iv.joules_between(0.0, 50.0), 0.75);
        assert_eq!(iv.joules_between(25.0, 75.0), 0.75);
        assert!(!iv.is_gap(100.0));
        assert!(Interval::counter(0.0, 0.0, 100.0, 1.0).is_gap(99.0));
    }

    #[test]
    fn only_forward_pairs_make_intervals() {
        assert!(Interval::forward(1.0, 5.0, 1.0, 5.0).is_none());
        assert!(Interval::forward(2.0, 5.0, 1.0, 5.0).is_none());
        assert_eq!(
            Interval::forward(1.0, 5.0, 2.0, 7.0),
            Some(Interval::power(1.0, 5.0, 2.0, 7.0))
        );
    }
}
