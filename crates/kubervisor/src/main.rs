use std::process::ExitCode;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

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
