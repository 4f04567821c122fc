//! Links the system OpenBLAS (Debian: `apt-get install -y libopenblas-dev`).
//!
//! Done here rather than through `openblas-src`'s "system" feature because that crate always
//! compiles its downloader (`openblas-build`), which needs a TLS stack (rustls or native-tls)
//! even when nothing is downloaded; linking the library by name needs none of it.
fn main() {
    println!("cargo:rustc-link-lib=dylib=openblas");
}
