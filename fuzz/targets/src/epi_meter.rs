//! Target `epi_meter`: the epi-meter UART stream (`epi-meter-uart.md`) — line framing, the JSON
//! line parser and the stream state machine (timeline, reboots, lost samples, the energy counter
//! made continuous) — fed as the source feeds it from its serial port. Every sample it produces
//! must survive the trace recorder and reader unchanged, with timestamps and energy counter that
//! never go back (the trace integrator refuses those), and the counters must add up.
//!
//! Input: four option bytes — chunk lengths, milliseconds between chunks, field table and line
//! limit (bits 0–1: default names, no optional fields, renamed fields; bits 2–7: limit = 64 + 16 ×
//! value), reconnect every N chunks (0: never) — then the bytes from the port.

use crate::support::{assert_recorded_trace_reads_back, Order};
use epi_power::epi_meter::FieldNames;
use epi_power::fuzzing::{epi_meter, Feed};

fn names(variant: u8) -> FieldNames {
    let mut n = FieldNames::default();
    match variant {
        1 => {
            n.v = String::new();
            n.a = String::new();
            n.pf = String::new();
            n.wh = String::new();
        }
        2 => {
            for (field, name) in [
                (&mut n.kind, "k"),
                (&mut n.type_sample, "S"),
                (&mut n.type_hello, "H"),
                (&mut n.type_error, "E"),
                (&mut n.seq, "n"),
                (&mut n.t_ms, "t"),
                (&mut n.ch, "c"),
                (&mut n.node, "i"),
                (&mut n.w, "p"),
                (&mut n.v, "u"),
                (&mut n.a, "j"),
                (&mut n.pf, "f"),
                (&mut n.wh, "e"),
            ] {
                *field = name.to_string();
            }
        }
        _ => {}
    }
    n
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let [cut, step, table, reconnect, stream @ ..] = data else {
        return;
    };
    let max_line = 64 + 16 * usize::from(table >> 2);
    let mut feeds = Vec::new();
    let mut rest = stream;
    let mut k = usize::from(*cut);
    let (mut mono, mut chunks) = (5.0, 0u32);
    while !rest.is_empty() {
        let n = (k % 131 + 1).min(rest.len());
        feeds.push(Feed::Bytes {
            data: &rest[..n],
            mono_ms: mono,
            utc_ms: 1_700_000_000_000 + mono as i64,
        });
        rest = &rest[n..];
        k = k.wrapping_mul(33).wrapping_add(11);
        mono += f64::from(*step) * 1.5;
        chunks += 1;
        if *reconnect != 0 && chunks % u32::from(*reconnect) == 0 {
            feeds.push(Feed::Reconnect);
        }
    }
    let run = epi_meter(names(table & 3), max_line, &feeds);
    assert_eq!(
        run.stats.samples,
        run.samples.len() as u64,
        "samples counted and delivered"
    );
    assert_recorded_trace_reads_back(
        "epi-meter",
        &run.samples,
        Order {
            time: true,
            counter: true,
        },
    );
}
