//! epi-bench inference backends: OpenAI-compatible HTTP servers and distributed-llama over SSH.
#![deny(missing_docs)]

/// Forces this crate's plugin registrations into a binary that links it (linkers drop archive
/// members nothing refers to, and `inventory` registrations are referred to by nothing).
#[inline(never)]
pub fn link() {
    std::hint::black_box(module_path!());
}
