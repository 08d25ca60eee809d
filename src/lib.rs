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
/// ended), measured by fermata-bench on 10,000 compositions:
/// - freed pages go back to the system after 30 ms. jemalloc's default of
///   10 s added about 60 MiB to a large pass's peak RSS; 0 (at once) made
///   every free of a large block an `madvise` with a TLB shootdown, and
///   libyaml allocates 40-56 KiB of buffers for each YAML document it reads
///   or writes, four per composition staged: 27,000 `madvise` calls per
///   1,000 compositions, a quarter of a staging pass's CPU. With 30 ms:
///   2,500, and the cold pass 4.4 s instead of 6.2 s;
/// - one arena, so that what one thread frees another reuses: with the
///   default eight (four per core), pages freed in an arena whose threads
///   went idle wait there, and the peak was 260 MiB instead of 189 MiB.
pub static JEMALLOC_CONF: [std::ffi::c_char; 45] =
    c_chars(b"narenas:1,dirty_decay_ms:30,muzzy_decay_ms:0\0");

const fn c_chars<const N: usize>(bytes: &[u8; N]) -> [std::ffi::c_char; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i] as std::ffi::c_char;
        i += 1;
    }
    out
}
