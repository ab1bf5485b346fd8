//! Links the embedded CPython (feature `python`) with an rpath to its
//! libpython, so the binary runs without LD_LIBRARY_PATH.

fn main() {
    if std::env::var_os("CARGO_FEATURE_PYTHON").is_some() {
        pyo3_build_config::add_libpython_rpath_link_args();
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
