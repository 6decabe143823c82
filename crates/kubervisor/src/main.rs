use std::process::ExitCode;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

// jemalloc rather than glibc's malloc: at 10,000 pods the operator's heap is a few
// hundred thousand small long-lived allocations, and glibc left about as many bytes
// again in free chunks between them that it could not hand back, even with
// `malloc_trim` every 10 s (BENCHMARKS.md, "Where the steady memory went, and the
// allocator"). jemalloc keeps small objects of one size together and returns pages as
// soon as they are empty.
#[cfg(all(target_os = "linux", feature = "jemalloc", not(feature = "dhat-heap")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the environment
/// overrides them): one arena, since the operator runs a few threads, and emptied pages
/// returned to the system at once rather than after ten seconds, so that the resident
/// size follows the heap (its steady maximum is what a memory limit must allow).
#[cfg(all(target_os = "linux", feature = "jemalloc", not(feature = "dhat-heap")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr());

/// A C string pointer as jemalloc declares `malloc_conf`: `const char *`.
#[cfg(all(target_os = "linux", feature = "jemalloc", not(feature = "dhat-heap")))]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a string literal, never written.
#[cfg(all(target_os = "linux", feature = "jemalloc", not(feature = "dhat-heap")))]
unsafe impl Sync for MallocConf {}

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::builder()
        .file_name(
            std::env::var_os("KUBERVISOR_DHAT_FILE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "dhat-heap.json".into()),
        )
        .build();
    kubervisor::cli::main()
}
