//! Unwrapping of wrapping hardware energy counters (RAPL `energy_uj`) with the counter's range
//! (`measurement-methodology.md` §2): a wrap is never a negative or huge jump. Nothing here fails;
//! a reading below the previous one is taken as one wrap.

/// Turns readings of a wrapping counter (RAPL `energy_uj`) into a monotonic total, using the
/// counter's range (`max_energy_range_uj`), so a wrap is never a negative or huge jump.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterUnwrapper {
    range: u64,
    last: Option<u64>,
    total: u128,
    wraps: u64,
}

impl CounterUnwrapper {
    /// A new unwrapper for a counter that wraps after `range` (its largest value).
    pub fn new(range: u64) -> Self {
        CounterUnwrapper {
            range,
            last: None,
            total: 0,
            wraps: 0,
        }
    }

    /// Adds a raw reading; returns the unwrapped total since the first reading.
    pub fn push(&mut self, raw: u64) -> u128 {
        if let Some(last) = self.last {
            let delta = if raw >= last {
                raw - last
            } else {
                self.wraps += 1;
                self.range.saturating_sub(last) + raw
            };
            self.total += delta as u128;
        }
        self.last = Some(raw);
        self.total
    }

    /// Wraps seen.
    pub fn wraps(&self) -> u64 {
        self.wraps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_wrap_is_unwrapped() {
        let mut u = CounterUnwrapper::new(1000);
        assert_eq!(u.push(900), 0);
        assert_eq!(u.push(990), 90);
        assert_eq!(u.push(40), 140);
        assert_eq!(u.wraps(), 1);
    }
}
