//! The one progress display of `epi eval` and `epi profile`: a run's [`RunEvent`]s as a bar per
//! suite (queries, ETA, accuracy so far, live watts and joules) and a status line for what the
//! run waits for, on a terminal; plain lines on stderr otherwise (a line per phase, per wait
//! every 10 s, per suite every 10 % of its items, and at its end).

use epi_framework::backend::ProgressLines;
use epi_framework::run::observe::{RunEvent, RunObserver};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// Renders run events on stderr.
pub struct Progress {
    bars: Option<MultiProgress>,
    inner: Mutex<Inner>,
    quiet: bool,
}

#[derive(Default)]
struct Inner {
    status: Option<ProgressBar>,
    suites: BTreeMap<String, ProgressBar>,
    power: Option<(f64, f64)>,
    waits: Option<ProgressLines>,
    last_tenth: BTreeMap<String, usize>,
    accuracy: BTreeMap<String, String>,
}

impl Progress {
    /// Bars when stderr is a terminal (and `quiet` is off), plain lines otherwise; nothing at all
    /// with `quiet` (`--json`).
    pub fn new(quiet: bool) -> Progress {
        let bars = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            bars,
            inner: Mutex::new(Inner::default()),
            quiet,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn power_text(p: Option<(f64, f64)>) -> String {
        p.map(|(w, j)| format!("  {w:.1} W  {j:.1} J"))
            .unwrap_or_default()
    }

    fn plain(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    /// Ends every bar (before the summary is printed).
    pub fn finish(&self) {
        let mut g = self.lock();
        if let Some(s) = g.status.take() {
            s.finish_and_clear();
        }
        for b in g.suites.values() {
            if !b.is_finished() {
                b.abandon();
            }
        }
    }
}

impl RunObserver for Progress {
    fn event(&self, e: RunEvent) {
        if self.quiet {
            return;
        }
        let mut g = self.lock();
        match (&self.bars, e) {
            (Some(m), RunEvent::Phase { detail, .. }) => {
                let s = g.status.get_or_insert_with(|| {
                    let s = m.add(ProgressBar::new_spinner());
                    s.enable_steady_tick(Duration::from_millis(200));
                    s
                });
                s.set_message(detail);
            }
            (None, RunEvent::Phase { detail, .. }) => self.plain(&detail),
            (Some(m), RunEvent::BackendWaiting(p)) => {
                let s = g
                    .status
                    .get_or_insert_with(|| m.add(ProgressBar::new_spinner()));
                s.set_message(p.to_string());
            }
            (None, RunEvent::BackendWaiting(p)) => {
                let lines = g.waits.get_or_insert_with(|| ProgressLines::new(10.0));
                if lines.offer(&p) {
                    self.plain(&p.to_string());
                }
            }
            (
                bars,
                RunEvent::SuiteStarted {
                    suite,
                    repetition,
                    items,
                    mode,
                    concurrency,
                },
            ) => {
                let name = match repetition {
                    Some(r) => format!("{suite} #{r}"),
                    None => suite.clone(),
                };
                g.last_tenth.insert(suite.clone(), 0);
                match bars {
                    Some(m) => {
                        let b = m.add(ProgressBar::new(items as u64));
                        b.set_style(
                            ProgressStyle::with_template(
                                "{prefix:>18} [{bar:30}] {pos}/{len} ETA {eta} {msg}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        b.set_prefix(name);
                        b.set_message(format!("{mode}, {concurrency} at a time"));
                        if let Some(old) = g.suites.insert(suite, b) {
                            old.finish();
                        }
                    }
                    None => self.plain(&format!(
                        "{name}: {items} items, {mode} scoring, {concurrency} at a time"
                    )),
                }
            }
            (
                bars,
                RunEvent::QueryDone {
                    suite,
                    done,
                    total,
                    correct,
                    answered,
                    failed,
                },
            ) => {
                let acc = if answered > 0 {
                    format!("acc {:.3}", correct as f64 / answered as f64)
                } else {
                    "acc —".into()
                };
                let fails = if failed > 0 {
                    format!("  failed {failed}")
                } else {
                    String::new()
                };
                let power = Self::power_text(g.power);
                g.accuracy.insert(suite.clone(), acc.clone());
                match bars {
                    Some(_) => {
                        if let Some(b) = g.suites.get(&suite) {
                            b.set_position(done as u64);
                            b.set_message(format!("{acc}{fails}{power}"));
                        }
                    }
                    None => {
                        let tenth = done * 10 / total.max(1);
                        let last = g.last_tenth.entry(suite.clone()).or_default();
                        if tenth > *last || done == total {
                            *last = tenth;
                            self.plain(&format!("{suite}: {done}/{total} {acc}{fails}{power}"));
                        }
                    }
                }
            }
            (_, RunEvent::SuiteDone { suite, accuracy }) => {
                if let Some(b) = g.suites.get(&suite) {
                    b.finish();
                } else if let Some(a) = accuracy {
                    self.plain(&format!("{suite}: done, headline {a:.4}"));
                }
            }
            (bars, RunEvent::Power { watts, joules }) => {
                g.power = Some((watts, joules));
                if bars.is_some() {
                    let power = Self::power_text(g.power);
                    for (suite, b) in &g.suites {
                        if !b.is_finished() {
                            let acc = g.accuracy.get(suite).cloned().unwrap_or_default();
                            b.set_message(format!("{acc}{power}"));
                        }
                    }
                    if let Some(s) = &g.status {
                        let _ = s;
                    }
                }
            }
            (Some(m), RunEvent::Warning(w)) => {
                let _ = m.println(format!("warning: {w}"));
            }
            (None, RunEvent::Warning(w)) => self.plain(&format!("warning: {w}")),
        }
    }
}
