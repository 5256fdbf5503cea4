//! The stream state machine: parsed lines and their host arrival times in, samples and events
//! out. No I/O, so the serial source and the fuzz targets drive the same code.
//!
//! It never fails: a bad line, a duplicate or lost sample, a reboot, a counter reset are counted
//! in [`SourceStats`] and reported as [`SourceEvent`]s (see the module documentation of
//! [`super`] for the rules).

use super::parse::{Hello, Line, LineParser, Reading, SampleLine};
use super::FieldNames;
use crate::host_time::Arrival;
use epi_core::sample::{PowerSample, SourceEvent, SourceStats};
use std::collections::BTreeMap;

/// Bad lines reported one by one as events; later ones are only counted.
const MAX_LINE_EVENTS: u64 = 50;

/// A meter clock that runs ahead of the host clock by more than this between two samples is taken
/// for a reboot (the uptime before the reboot was long enough that `t_ms` going back looks like a
/// step forward modulo 2^32).
const MAX_CLOCK_LEAD_MS: f64 = 60_000.0;

#[derive(Debug, Clone, Copy)]
struct LastSample {
    seq: u32,
    t_raw: u32,
    /// Meter time made continuous within the boot, ms.
    t_cont: i64,
    /// Timeline time, ms.
    timeline: f64,
    host_mono: f64,
}

#[derive(Debug, Clone, Copy)]
struct NodeState {
    last_timeline: f64,
    last_w: f64,
    /// Continuous counter: joules = offset_j + wh × 3600.
    counter: Option<CounterState>,
}

#[derive(Debug, Clone, Copy)]
struct CounterState {
    offset_j: f64,
    last_wh: f64,
    last_j: f64,
    /// The boot the offset belongs to.
    boot: u64,
}

/// Turns parsed lines into samples and events. Pure: the caller supplies arrival times.
#[derive(Debug)]
pub(crate) struct MeterStream {
    parser: LineParser,
    /// The next complete line may be the tail of a line sent before the port was opened.
    first_line: bool,
    last: Option<LastSample>,
    /// Timeline and continuous meter time of the first sample of the current boot.
    boot_anchor: (f64, i64),
    boot: u64,
    hello_since_sample: bool,
    pub hello: Option<Hello>,
    nodes: BTreeMap<u32, NodeState>,
    pub stats: SourceStats,
    pub events: Vec<SourceEvent>,
    line_events: u64,
    ignored_types: Vec<String>,
    /// Nodes of the first valid sample, and whether all of them carried `wh`.
    pub first_sample: Option<(Vec<u32>, bool)>,
}

impl MeterStream {
    pub fn new(names: FieldNames) -> MeterStream {
        MeterStream {
            parser: LineParser::new(names),
            first_line: true,
            last: None,
            boot_anchor: (0.0, 0),
            boot: 0,
            hello_since_sample: false,
            hello: None,
            nodes: BTreeMap::new(),
            stats: SourceStats::default(),
            events: Vec::new(),
            line_events: 0,
            ignored_types: Vec::new(),
            first_sample: None,
        }
    }

    /// The port was (re)opened: the next line may be partial.
    pub fn connected(&mut self) {
        self.first_line = true;
    }

    fn event(&mut self, at: f64, kind: &str, detail: String) {
        self.events.push(SourceEvent {
            host_mono_ms: at,
            kind: kind.to_string(),
            detail,
        });
    }

    fn bad_line(&mut self, at: f64, kind: &str, reason: String) {
        self.stats.bad_lines += 1;
        self.line_events += 1;
        if self.line_events < MAX_LINE_EVENTS {
            self.event(at, kind, reason);
        } else if self.line_events == MAX_LINE_EVENTS {
            self.event(
                at,
                kind,
                format!("{reason} (further bad lines are only counted)"),
            );
        }
    }

    /// An over-long line.
    pub fn too_long(&mut self, at: Arrival, max: usize) {
        self.first_line = false;
        self.bad_line(
            at.mono_ms,
            "bad-line",
            format!("line longer than {max} bytes without a newline (garbage?)"),
        );
    }

    /// Processes one line; samples go to `out`, events to `self.events`.
    pub fn line(&mut self, raw: &[u8], at: Arrival, out: &mut Vec<PowerSample>) {
        let first = std::mem::replace(&mut self.first_line, false);
        match self.parser.parse(raw) {
            Ok(Line::Sample(s)) => self.sample(s, at, out),
            Ok(Line::Hello(h)) => self.hello(h, at),
            Ok(Line::Error(e)) => {
                let mut d = String::new();
                if let Some(n) = e.node {
                    d.push_str(&format!("node {n}: "));
                }
                d.push_str(e.code.as_deref().unwrap_or("error"));
                if let Some(m) = &e.msg {
                    d.push_str(&format!(": {m}"));
                }
                if let Some(t) = e.t_ms {
                    d.push_str(&format!(" (meter t_ms {t})"));
                }
                self.event(at.mono_ms, "meter-error", d);
            }
            Ok(Line::Other(kind)) => {
                if self.ignored_types.len() < 16 && !self.ignored_types.contains(&kind) {
                    self.ignored_types.push(kind.clone());
                    self.event(
                        at.mono_ms,
                        "ignored-line",
                        format!("unknown line type `{kind}` ignored"),
                    );
                }
            }
            Err(b) => {
                let (kind, reason) = if first {
                    (
                        "partial-line",
                        format!(
                            "first line after opening the port skipped (partial line): {}",
                            b.reason
                        ),
                    )
                } else {
                    ("bad-line", b.reason)
                };
                self.bad_line(at.mono_ms, kind, reason);
                if let (Some(seq), Some(last)) = (b.seq, self.last.as_mut()) {
                    // The line was a sample whose number we know: not a lost sample.
                    let d = seq.wrapping_sub(last.seq) as i32;
                    if d > 0 {
                        self.stats.lost_samples += (d - 1) as u64;
                        last.seq = seq;
                    }
                }
            }
        }
    }

    fn hello(&mut self, h: Hello, at: Arrival) {
        if self.hello.as_ref() != Some(&h) {
            let what = if self.hello.is_none() {
                "meter says hello"
            } else {
                "meter hello changed"
            };
            let detail = format!(
                "{what}: board {}, fw {}, {} channels, {} Hz, IC {}",
                h.board.as_deref().unwrap_or("?"),
                h.fw.as_deref().unwrap_or("?"),
                h.channels
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into()),
                h.rate_hz
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into()),
                h.ic.as_deref().unwrap_or("?"),
            );
            self.event(at.mono_ms, "hello", detail);
            self.hello = Some(h);
        }
        self.hello_since_sample = true;
    }

    fn sample(&mut self, s: SampleLine, at: Arrival, out: &mut Vec<PowerSample>) {
        let hello_seen = std::mem::replace(&mut self.hello_since_sample, false);
        let (t_cont, timeline, rebooted) = match self.last {
            None => {
                let timeline = at.mono_ms.round().max(0.0);
                self.boot_anchor = (timeline, s.t_ms as i64);
                (s.t_ms as i64, timeline, false)
            }
            Some(last) => {
                let dseq = s.seq.wrapping_sub(last.seq) as i32;
                let dt = s.t_ms.wrapping_sub(last.t_raw) as i32;
                let host_elapsed = (at.mono_ms - last.host_mono).max(0.0);
                if dseq == 0 {
                    self.bad_line(
                        at.mono_ms,
                        "bad-line",
                        format!("duplicate sample: seq {} repeated", s.seq),
                    );
                    self.hello_since_sample = hello_seen;
                    return;
                }
                let reboot = dseq < 0 || dt < 0 || (dt as f64) > host_elapsed + MAX_CLOCK_LEAD_MS;
                if reboot {
                    // The new boot continues after the gap measured on the host, which is at least
                    // the meter's time since boot.
                    let gap = host_elapsed.round().max(s.t_ms as f64);
                    let timeline = last.timeline + gap;
                    self.boot += 1;
                    self.stats.reboots += 1;
                    self.boot_anchor = (timeline, s.t_ms as i64);
                    self.event(
                        at.mono_ms,
                        "reboot",
                        format!(
                            "meter rebooted ({}): seq {} → {}, t_ms {} → {}; timeline continues after a {gap} ms gap measured on the host clock",
                            if hello_seen { "new hello" } else { "no hello seen" },
                            last.seq,
                            s.seq,
                            last.t_raw,
                            s.t_ms
                        ),
                    );
                    (s.t_ms as i64, timeline, true)
                } else {
                    if dseq > 1 {
                        let lost = (dseq - 1) as u64;
                        self.stats.lost_samples += lost;
                        self.event(
                            at.mono_ms,
                            "lost-samples",
                            format!("{lost} sample(s) lost: seq {} → {}", last.seq, s.seq),
                        );
                    }
                    let t_cont = last.t_cont + dt as i64;
                    (
                        t_cont,
                        self.boot_anchor.0 + (t_cont - self.boot_anchor.1) as f64,
                        false,
                    )
                }
            }
        };
        self.last = Some(LastSample {
            seq: s.seq,
            t_raw: s.t_ms,
            t_cont,
            timeline,
            host_mono: at.mono_ms,
        });
        if self.first_sample.is_none() {
            let nodes = s.ch.iter().map(|r| r.node).collect();
            let all_wh = s.ch.iter().all(|r| r.wh.is_some());
            self.first_sample = Some((nodes, all_wh));
        }
        for r in &s.ch {
            let energy_j = self.counter(r, timeline, at, rebooted);
            self.nodes
                .entry(r.node)
                .and_modify(|n| {
                    n.last_timeline = timeline;
                    n.last_w = r.w;
                })
                .or_insert(NodeState {
                    last_timeline: timeline,
                    last_w: r.w,
                    counter: None,
                });
            out.push(PowerSample {
                channel: r.node,
                t_ms: timeline,
                host_mono_ms: at.mono_ms,
                host_utc_ms: at.utc_ms,
                source_t_ms: Some(s.t_ms as f64),
                watts: r.w,
                volts: r.v,
                amps: r.a,
                power_factor: r.pf,
                energy_j,
            });
            self.stats.samples += 1;
        }
    }

    /// The continuous counter of one reading (updates the node's counter state).
    fn counter(&mut self, r: &Reading, timeline: f64, at: Arrival, rebooted: bool) -> Option<f64> {
        let wh = r.wh?;
        let here = wh * 3600.0;
        let boot = self.boot;
        let node = self.nodes.get(&r.node).copied();
        let (state, reset) = match node.and_then(|n| n.counter.map(|c| (n, c))) {
            None => (
                CounterState {
                    offset_j: 0.0,
                    last_wh: wh,
                    last_j: here,
                    boot,
                },
                false,
            ),
            Some((n, c)) => {
                let restarted = rebooted || c.boot != boot || wh < c.last_wh;
                if restarted {
                    // Bridge the gap with the bounding power readings (the energy kernel's rule).
                    let bridge = epi_core::energy::Interval::forward(
                        n.last_timeline,
                        n.last_w,
                        timeline,
                        r.w,
                    )
                    .map_or(0.0, |iv| iv.joules());
                    let j = c.last_j + bridge;
                    (
                        CounterState {
                            offset_j: j - here,
                            last_wh: wh,
                            last_j: j,
                            boot,
                        },
                        !rebooted && c.boot == boot,
                    )
                } else {
                    let j = c.offset_j + here;
                    (
                        CounterState {
                            last_wh: wh,
                            last_j: j,
                            ..c
                        },
                        false,
                    )
                }
            }
        };
        if reset {
            self.event(
                at.mono_ms,
                "counter-reset",
                format!("node {}: the IC energy counter went back without a reboot; bridged with integrated power", r.node),
            );
        }
        if let Some(n) = self.nodes.get_mut(&r.node) {
            n.counter = Some(state);
        } else {
            self.nodes.insert(
                r.node,
                NodeState {
                    last_timeline: timeline,
                    last_w: r.w,
                    counter: Some(state),
                },
            );
        }
        Some(state.last_j)
    }
}
