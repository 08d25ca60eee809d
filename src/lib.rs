//! fermata: a GitOps reconciler for fleets of edge sites.
//!
//! The crate is organised by concept, in the order data flows through it:
//! [`source`] reads a commit out of Git, [`model`] turns its YAML into typed,
//! resolved objects, [`synth`] renders each composition, [`window`] decides when
//! an apply may start, [`stage`] fetches artifacts before it, [`target`]
//! stages and applies, [`status`] reports back into Git, and [`cli`] is the
//! command-line edge. See `DESIGN.md`.

pub mod campaign;
pub mod cli;
pub mod errors;
pub mod fleet;
pub mod forge;
pub mod leader;
pub mod libgit2;
pub mod model;
pub mod par;
pub mod reconcile;
pub mod report;
pub mod serve;
pub mod source;
pub mod stage;
pub mod status;
pub mod synth;
pub mod target;
pub mod window;

/// jemalloc's options for fermata's binaries (`_rjem_malloc_conf`, NUL
/// ended): freed pages are returned to the system at once. By default
/// jemalloc keeps them for 10 s, and a pass over 10,000 compositions frees
/// enough within that time to add about 60 MiB to its peak RSS (measured by
/// fermata-bench: 224 MiB by default, 166 MiB with these).
pub static JEMALLOC_CONF: [std::ffi::c_char; 34] = c_chars(b"dirty_decay_ms:0,muzzy_decay_ms:0\0");

const fn c_chars<const N: usize>(bytes: &[u8; N]) -> [std::ffi::c_char; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i] as std::ffi::c_char;
        i += 1;
    }
    out
}
