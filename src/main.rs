//! `rust-celery-worker`: see the library docs for the map.

/// mimalloc: the pipeline allocates many small, short-lived JSON nodes;
/// glibc malloc showed up as ~15% of worker CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rust_celery_worker::boot::main()
}
