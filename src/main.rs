//! The `switchyard` binary: everything lives in the library; see [`switchyard::cli`].

/// jemalloc: per-thread caches and an arena per worker, where glibc's
/// malloc cost a tenth of the CPU under HTTP/2 load (see `memory.rs`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
