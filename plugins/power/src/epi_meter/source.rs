//! The serial source: opens the port, waits for the first valid sample, reads bytes into the
//! framing and the stream state machine, and reconnects with back-off when the port vanishes.
//!
//! `open` fails with [`PowerError::NotAvailable`] (no such port, no permission, busy, no valid
//! sample line within `open_timeout_ms`) or [`PowerError::Io`]; once open, `next_batch` does not
//! fail on the meter's account: an unplugged port is a `disconnected` and later a `reconnected`
//! event.

use super::framing;
use super::parse::Hello;
use super::stream::MeterStream;
use super::{EpiMeterConfig, FieldNames, FlowControl, Parity, KEY};
use crate::host_time::{Arrival, HostClock};
use epi_core::lines::LineSplitter;
use epi_core::power::PowerError;
use epi_core::sample::{
    ChannelInfo, EnergyMethod, PowerSample, SampleBatch, SourceEvent, SourceInfo, SourceStats,
};
use epi_core::PowerSource;
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The `epi-meter` power source.
pub struct EpiMeter {
    config: EpiMeterConfig,
    clock: Option<HostClock>,
    port: Option<tokio_serial::SerialStream>,
    stream: MeterStream,
    splitter: LineSplitter,
    buf: Vec<u8>,
    pending: Vec<PowerSample>,
    disconnected_since: Option<f64>,
    backoff_ms: u64,
    closed: bool,
    /// The hello known when `open` returned (to tell whether the info changed since).
    opened_hello: Option<Hello>,
}

impl std::fmt::Debug for EpiMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpiMeter")
            .field("config", &self.config)
            .finish()
    }
}

impl EpiMeter {
    /// A source for `config` (no I/O until [`PowerSource::open`]).
    pub fn new(config: EpiMeterConfig) -> Result<EpiMeter, PowerError> {
        config.validate().map_err(|message| PowerError::Config {
            source_key: KEY.into(),
            message,
        })?;
        Ok(EpiMeter {
            stream: MeterStream::new(config.fields.clone()),
            backoff_ms: config.reconnect_initial_ms,
            splitter: framing::splitter(config.max_line_bytes),
            config,
            clock: None,
            port: None,
            buf: vec![0; 8192],
            pending: Vec::new(),
            disconnected_since: None,
            closed: false,
            opened_hello: None,
        })
    }

    fn open_port(&self) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
        use tokio_serial::SerialPortBuilderExt;
        let c = &self.config;
        let data_bits = match c.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let parity = match c.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        };
        let stop_bits = if c.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        let flow = match c.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        };
        tokio_serial::new(&c.port, c.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(flow)
            .open_native_async()
    }

    fn open_error(&self, e: &tokio_serial::Error) -> PowerError {
        let port = &self.config.port;
        let reason = match e.kind() {
            tokio_serial::ErrorKind::Io(std::io::ErrorKind::NotFound) => format!(
                "serial port {port} does not exist: is the meter plugged in? (ls /dev/serial/by-id/ lists USB serial devices)"
            ),
            tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => format!(
                "no permission to open {port}: add your user to the group owning it (usually `dialout`: sudo usermod -aG dialout $USER, then log in again)"
            ),
            tokio_serial::ErrorKind::NoDevice => {
                format!("serial port {port} is busy or not a device: {e} (is another program using it?)")
            }
            _ => format!("cannot open serial port {port}: {e}"),
        };
        PowerError::NotAvailable {
            source_key: KEY.into(),
            reason,
        }
    }

    fn clock(&self) -> HostClock {
        self.clock.unwrap_or_else(HostClock::start)
    }

    /// Feeds bytes that arrived at `at`; samples go to `self.pending`.
    fn feed(&mut self, n: usize, at: Arrival) {
        framing::feed(
            &mut self.splitter,
            &mut self.stream,
            &self.buf[..n],
            at,
            &mut self.pending,
        );
    }

    fn take_batch(&mut self) -> SampleBatch {
        SampleBatch {
            samples: std::mem::take(&mut self.pending),
            events: std::mem::take(&mut self.stream.events),
        }
    }

    fn info(&self, clock: &HostClock) -> SourceInfo {
        let hello = self.stream.hello.clone();
        let (nodes, all_wh) = self.stream.first_sample.clone().unwrap_or_default();
        let mut ids: Vec<u32> = nodes;
        if let Some(c) = hello.as_ref().and_then(|h| h.channels) {
            ids.extend(0..c.min(4096));
        }
        ids.sort_unstable();
        ids.dedup();
        let instrument = match &hello {
            Some(h) => format!(
                "{} fw {}, {}",
                h.board.as_deref().unwrap_or("epi-meter"),
                h.fw.as_deref().unwrap_or("?"),
                h.ic.as_deref().unwrap_or("metering IC not stated")
            ),
            None => "epi-meter (no hello line received yet)".to_string(),
        };
        let mut details = Map::new();
        details.insert("port".into(), Value::from(self.config.port.clone()));
        details.insert("baud".into(), Value::from(self.config.baud));
        details.insert("protocol".into(), Value::from("epi-meter UART v1"));
        if self.config.fields != FieldNames::default() {
            details.insert(
                "fields".into(),
                serde_json::to_value(&self.config.fields).unwrap_or(Value::Null),
            );
        }
        details.insert(
            "hello".into(),
            serde_json::to_value(&hello).unwrap_or(Value::Null),
        );
        details.insert(
            "timeline".into(),
            Value::from("meter clock (t_ms unwrapped), anchored at the first sample's host arrival; reboots bridged on the host clock"),
        );
        details.insert(
            "timeline_zero_utc_ms".into(),
            Value::from(clock.zero_utc_ms()),
        );
        details.insert(
            "energy".into(),
            Value::from(if all_wh {
                "counter: the metering IC's Wh register (energy_j), bridged across reboots; integrated watts kept beside it"
            } else {
                "integrated: trapezoid of the meter's watts (no wh field)"
            }),
        );
        SourceInfo {
            source: KEY.into(),
            method: if all_wh {
                EnergyMethod::Counter
            } else {
                EnergyMethod::Integrated
            },
            instrument,
            sample_rate_hz: hello.as_ref().and_then(|h| h.rate_hz),
            accuracy_rel: self.config.accuracy_rel,
            channels: ids
                .into_iter()
                .map(|id| ChannelInfo {
                    id,
                    name: format!("node {id}"),
                    scope: "ac-inlet".into(),
                })
                .collect(),
            replay: false,
            details,
        }
    }

    fn disconnect(&mut self, why: String) {
        let clock = self.clock();
        let at = clock.now().mono_ms;
        self.port = None;
        self.splitter.reset();
        self.disconnected_since = Some(at);
        self.backoff_ms = self.config.reconnect_initial_ms;
        self.stream.events.push(SourceEvent {
            host_mono_ms: at,
            kind: "disconnected".into(),
            detail: format!("{}: {why}; reconnecting", self.config.port),
        });
    }

    /// Tries to reopen the port until it succeeds (with back-off).
    async fn reconnect(&mut self) {
        let clock = self.clock();
        loop {
            tokio::time::sleep(Duration::from_millis(self.backoff_ms)).await;
            self.backoff_ms = (self.backoff_ms * 2).min(self.config.reconnect_max_ms);
            if let Ok(port) = self.open_port() {
                let at = clock.now().mono_ms;
                let since = self.disconnected_since.take().unwrap_or(at);
                let gap = at - since;
                self.stats_add_gap(gap);
                self.port = Some(port);
                self.stream.connected();
                self.backoff_ms = self.config.reconnect_initial_ms;
                self.stream.events.push(SourceEvent {
                    host_mono_ms: at,
                    kind: "reconnected".into(),
                    detail: format!("{} back after {:.0} ms without data", self.config.port, gap),
                });
                return;
            }
        }
    }

    fn stats_add_gap(&mut self, gap: f64) {
        self.stream.stats.reconnects += 1;
        self.stream.stats.disconnected_ms += gap;
    }
}

#[epi_core::async_trait]
impl PowerSource for EpiMeter {
    async fn open(&mut self) -> Result<SourceInfo, PowerError> {
        let clock = HostClock::start();
        self.clock = Some(clock);
        let mut port = self.open_port().map_err(|e| self.open_error(&e))?;
        self.stream.connected();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.open_timeout_ms);
        while self.stream.first_sample.is_none() {
            let read = tokio::time::timeout_at(deadline, port.read(&mut self.buf)).await;
            match read {
                Err(_) => {
                    let bad = self.stream.stats.bad_lines;
                    return Err(PowerError::NotAvailable {
                        source_key: KEY.into(),
                        reason: format!(
                            "no valid epi-meter sample line on {} within {} ms ({bad} unreadable line(s)){}",
                            self.config.port,
                            self.config.open_timeout_ms,
                            if bad > 0 {
                                format!(": wrong baud rate (configured {}) or not an epi-meter?", self.config.baud)
                            } else {
                                ": is the meter powered and streaming? is this the right port?".to_string()
                            }
                        ),
                    });
                }
                Ok(Ok(0)) => {
                    return Err(PowerError::Io {
                        source_key: KEY.into(),
                        message: format!(
                            "{}: the port closed while waiting for the first sample",
                            self.config.port
                        ),
                    })
                }
                Ok(Err(e)) => {
                    return Err(PowerError::Io {
                        source_key: KEY.into(),
                        message: format!(
                            "{}: read failed while waiting for the first sample: {e}",
                            self.config.port
                        ),
                    })
                }
                Ok(Ok(n)) => self.feed(n, clock.now()),
            }
        }
        self.port = Some(port);
        self.opened_hello = self.stream.hello.clone();
        Ok(self.info(&clock))
    }

    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError> {
        if self.closed || self.clock.is_none() {
            return Err(PowerError::Io {
                source_key: KEY.into(),
                message: "next_batch called before open or after close".into(),
            });
        }
        let clock = self.clock();
        loop {
            if !self.pending.is_empty() || !self.stream.events.is_empty() {
                return Ok(Some(self.take_batch()));
            }
            let Some(port) = self.port.as_mut() else {
                self.reconnect().await;
                continue;
            };
            match port.read(&mut self.buf).await {
                Ok(0) => self.disconnect("the port closed (end of file)".into()),
                Err(e) => self.disconnect(format!("read failed: {e}")),
                Ok(n) => self.feed(n, clock.now()),
            }
        }
    }

    fn stats(&self) -> SourceStats {
        let mut s = self.stream.stats.clone();
        if let (Some(since), Some(clock)) = (self.disconnected_since, self.clock) {
            s.disconnected_ms += (clock.now().mono_ms - since).max(0.0);
        }
        s
    }

    /// The info with the meter's latest `hello` when one arrived (or changed) after `open`.
    fn current_info(&self) -> Option<SourceInfo> {
        match self.clock {
            Some(clock) if self.stream.hello != self.opened_hello => Some(self.info(&clock)),
            _ => None,
        }
    }

    async fn close(&mut self) -> Result<(), PowerError> {
        self.port = None;
        self.closed = true;
        Ok(())
    }
}
