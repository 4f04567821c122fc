//! One module per subcommand, each with a clap `Args` struct and `run(&Args) -> anyhow::Result<()>`
//! (wired up in `main.rs`).

pub mod bench;
pub mod demo;
pub mod fit;
pub mod forecast;
pub mod inspect;
pub mod predict;
