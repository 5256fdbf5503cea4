//! Links every plugin crate into the binary so their `inventory` registrations are collected.

/// Refers to each plugin crate once (see `epi_metrics::link`).
pub fn link_all() {
    epi_power::link();
    epi_backends::link();
    epi_suites::link();
    epi_metrics::link();
    epi_plots::link();
}
