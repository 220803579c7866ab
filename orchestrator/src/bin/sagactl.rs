//! `sagactl`: the operators' command-line tool for the saga orchestrator (`sagactl --help`). The code lives
//! in `src/cli/`; this file only hands over to it.

// A command-line tool's output is its interface: printing to stdout is its job, not a stray debug print.
#![allow(clippy::print_stdout)]

#[path = "../cli/mod.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
