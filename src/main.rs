//! `rust-celery-worker`: see the library docs for the map.

fn main() -> std::process::ExitCode {
    rust_celery_worker::cli::main()
}
