//! The `grucell` command-line tool: a thin shell over the library.

fn main() {
    println!("grucell {}", env!("CARGO_PKG_VERSION"));
}
